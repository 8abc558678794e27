"""Restoring a stored backup into a PostgreSQL database, and proving what was restored.

Order matters for safety: the target is inspected and every refusal is made first. Into an
existing database (in place, or `replace`), and with `with_globals`, the backup is then
fetched, checksum-verified, decrypted (every segment authenticated) and decompressed to a
private work file *before* the target is touched, so a refused target, or a corrupt,
tampered-with or unreachable backup, or one whose key cannot be had, never costs the target
anything. Into a database the restore creates, an encrypted backup is restored while it is
fetched (_OverlappedRestore): pg_restore is only given authenticated bytes, the database is
created once the archive's TOC has arrived (so a wrong key or a broken head create nothing),
and a failure found later (a truncated object, a checksum or size mismatch, pg_restore
failing, row counts that do not match) drops that database again: nothing is left behind.
The work file lets pg_restore run in parallel (-j), which a pipe cannot.

Targets, as a DBA gives them:

- **An older server is refused.** A target server of an older major than the backup's source
  is refused with the reason before anything is fetched, created or dropped: pg_dump's
  output for a newer server uses what an older one lacks. (Newer is fine: a 16 backup
  restores into 18, with pg_restore of the target's major.)
- **A missing database is created** (TEMPLATE template0, owned by `restore_as` when given),
  through a maintenance database that is not the target: `postgres`, else `template1`.
- **An existing, empty database is restored in place**: not dropped, not recreated, so the
  database the DBA prepared keeps its owner, its settings (ALTER DATABASE ... SET), ACLs,
  comment and OID. This is also how a fresh cluster's `postgres` database is restored into.
  "Empty" means no user object at all: no relation, no schema besides `public`, no
  function, type or large object (extension members do not count). With `restore_as`,
  pg_restore still runs as that role (the objects are its) and the database's owner stays;
  a role that may not create in the database and its `public` schema, or that the login
  cannot SET ROLE to, is refused up front instead of failing half-way.
- **A non-empty database is refused unless `replace`**, which drops it (WITH FORCE) and
  creates it again through a maintenance database other than it, as before: its owner,
  settings and ACLs go with it. An existing empty database is never dropped, `replace` or not.
- **The maintenance database `postgres`, non-empty, with `replace`, is refused**, neither
  dropped nor emptied. Dropping it (through template1) would cut off every session that
  lives there (monitoring agents, poolers, pg_cron, the tools that connect to it by default)
  and break tools that expect it; emptying it by dropping its user schemas would not be a
  faithful replace (large objects, event triggers, publications and what sits in `public`
  would survive, mixed with the restored content) and would silently delete whatever those
  tools keep there. Restore into another database, or empty it yourself first.
- **A template database is refused** (template1 or any `datistemplate`): what is restored
  into it would be copied into every database created afterwards.

`with_globals` applies the backup's globals (roles, memberships, role settings,
tablespaces; never passwords) to the target server after the fetch and before the database
is restored, so `keep_owners` and `restore_as` can use the roles; postgres/globals.py says
what is skipped (existing roles stay as they are, the connecting role is left alone).
Statements that fail are reported in the result, not fatal; failing to connect is.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import re
import select
import shutil
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import psycopg
from psycopg import sql

from platform_orchestration.backups.archive_toc import (
    SECTION_DATA,
    BlockFinder,
    SECTION_NONE,
    ArchiveToc,
    TocEntry,
    TocIncomplete,
    TocUnsupported,
    read_toc,
)
from platform_orchestration.backups.catalog import StoredBackup
from platform_orchestration.backups.encryption import require_key_provider
from platform_orchestration.backups.integrity import BackupCorrupt, checked_stored_chunks, decompressed, globals_sql
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.ownership import leased_work_directory
from platform_orchestration.postgres.binaries import client_tools_for
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.globals import GlobalsApplied, GlobalsError, apply_globals
from platform_orchestration.postgres.snapshot import count_rows, count_table_rows

# Where a database is created or dropped from, in order; never the target itself.
MAINTENANCE_DATABASES = ("postgres", "template1")

_USER_OBJECTS = """
WITH user_schema AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%%'
), extension_member AS (
    SELECT objid FROM pg_depend WHERE deptype = 'e'
)
SELECT kind || ' ' || name FROM (
    SELECT CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                          WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' ELSE 'table' END,
           quote_ident(n.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c JOIN user_schema n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND c.oid NOT IN (SELECT objid FROM extension_member)
    UNION ALL
    SELECT 'schema', quote_ident(n.nspname) FROM user_schema n
    WHERE n.nspname <> 'public' AND n.oid NOT IN (SELECT objid FROM extension_member)
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text FROM pg_proc p JOIN user_schema n ON n.oid = p.pronamespace
    WHERE p.oid NOT IN (SELECT objid FROM extension_member)
    UNION ALL
    SELECT 'type', t.oid::regtype::text FROM pg_type t JOIN user_schema n ON n.oid = t.typnamespace
    WHERE t.typtype IN ('c', 'd', 'e', 'r') AND t.oid NOT IN (SELECT objid FROM extension_member)
      AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
    UNION ALL
    SELECT 'large object', oid::text FROM pg_largeobject_metadata
) AS o (kind, name)
ORDER BY kind = 'large object', 1
"""


class RestoreRefused(PlatformError):
    """The target is not in a state we may restore into (e.g. not empty without replace)."""


class RestoreFailed(PlatformError):
    """pg_restore failed, or the restored data does not match the manifest."""


TargetAction = Literal["created", "restored in place", "dropped and recreated"]


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    database: str
    store: str
    target: str
    fetch_seconds: float
    restore_seconds: float
    verify_seconds: float
    tables_verified: int
    rows_verified: int
    target_action: TargetAction
    globals: GlobalsApplied | None = None  # with_globals: what applying them did
    # Newer backups not restored because their manifest could not be read (a restore of
    # "latest"), each "backup <id> in store(s) <stores>: <reason>".
    passed_over: tuple[str, ...] = ()

    @property
    def recovery_seconds(self) -> float:
        """The measured RTO: from starting the fetch to a restored, usable database."""
        return self.fetch_seconds + self.restore_seconds


@dataclass(frozen=True)
class _TargetState:
    """What the target server and database look like before anything is done to them."""

    exists: bool
    major: int
    objects: tuple[str, ...]       # user objects in the target database ("table public.t", ...)
    is_template: bool
    reachable: PgConnection        # a database of the target server we can connect to now
    role_problem: str | None       # why `restore_as` cannot restore in place, if it cannot
    role_missing: bool = False     # `restore_as` does not exist (yet: the globals may bring it)


def _server_major(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]) // 10000


@contextlib.contextmanager
def _maintenance(target: PgConnection, what: str) -> Iterator[tuple[psycopg.Connection, PgConnection]]:
    """A connection to the first maintenance database that is not the target and that the
    login can reach (`postgres`, then `template1`)."""
    errors = []
    for name in MAINTENANCE_DATABASES:
        if name == target.dbname:
            continue
        maintenance = target.for_database(name)
        try:
            conn = psycopg.connect(maintenance.dsn, autocommit=True, **maintenance.psycopg_kwargs())
        except psycopg.OperationalError as exc:
            errors.append(f"{name}: {one_line(exc)}")
            continue
        with conn:
            yield conn, maintenance
        return
    raise RestoreFailed(f"{what}: no maintenance database of the server of {target.display()} could be "
                        f"reached to create or drop {target.dbname} ({'; '.join(errors)})")


def _server_answers(target: PgConnection) -> bool:
    """Whether any maintenance database of the target's server accepts the login."""
    for name in MAINTENANCE_DATABASES:
        try:
            psycopg.connect(target.for_database(name).dsn, connect_timeout=10, **target.psycopg_kwargs()).close()
            return True
        except psycopg.OperationalError:
            continue
    return False


def _role_problem(conn: psycopg.Connection, role: str, dbname: str) -> str | None:
    """Why `role` cannot receive a restore in place into the current database, or None."""
    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        return f"role {role} does not exist on the target server"
    may_set, may_create, may_create_public = conn.execute(
        """SELECT pg_has_role(current_user, %(role)s, 'MEMBER'),
                  has_database_privilege(%(role)s, current_database(), 'CREATE'),
                  to_regnamespace('public') IS NULL OR has_schema_privilege(%(role)s, 'public', 'CREATE')""",
        {"role": role}).fetchone()
    if not may_set:
        return f"the login is not a member of role {role}, so it cannot SET ROLE to it"
    if not (may_create and may_create_public):
        return (f"role {role} may not create objects in database {dbname} and its public schema "
                f"(GRANT CREATE ON DATABASE {dbname}, SCHEMA public TO {role}, or make it the owner)")
    return None


def _inspect_target(target: PgConnection, restore_as: str | None, what: str) -> _TargetState:
    """Read-only look at the target, through the target database itself when it exists,
    else through a maintenance database. Nothing is created or changed."""
    try:
        try:
            conn = psycopg.connect(target.dsn, autocommit=True, **target.psycopg_kwargs())
        except psycopg.OperationalError as connect_error:
            if not _server_answers(target):
                # Down, wrong address, no socket: say so once, not once per maintenance database.
                raise RestoreFailed(f"{what}: cannot connect to {target.display()}: "
                                    f"{one_line(connect_error)}") from None
            with _maintenance(target, what) as (maintenance_conn, maintenance):
                if maintenance_conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                            (target.dbname,)).fetchone() is not None:
                    raise RestoreFailed(f"{what}: cannot connect to the existing target database "
                                        f"{target.dbname} at {target.display()}: {one_line(connect_error)}"
                                        ) from None
                return _TargetState(exists=False, major=_server_major(maintenance_conn), objects=(),
                                    is_template=False, reachable=maintenance, role_problem=None)
        with conn:
            objects = tuple(r[0] for r in conn.execute(_USER_OBJECTS).fetchall())
            is_template = bool(conn.execute("SELECT datistemplate FROM pg_database "
                                            "WHERE datname = current_database()").fetchone()[0])
            problem = _role_problem(conn, restore_as, target.dbname) if restore_as else None
            missing = bool(restore_as) and conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                                        (restore_as,)).fetchone() is None
            return _TargetState(exists=True, major=_server_major(conn), objects=objects,
                                is_template=is_template, reachable=target, role_problem=problem,
                                role_missing=missing)
    except psycopg.Error as exc:
        raise RestoreFailed(f"{what}: inspecting target database {target.dbname} at {target.display()} "
                            f"failed: {one_line(exc)}") from None


def _prepare_database(target: PgConnection, state: _TargetState, owner: str | None,
                      what: str) -> TargetAction:
    """Create the target database, or drop and create it again, or leave it (empty) as it is."""
    if state.exists and not state.objects:
        return "restored in place"
    name = sql.Identifier(target.dbname)
    create = (sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(name, sql.Identifier(owner))
              if owner else sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))
    try:
        with _maintenance(target, what) as (conn, _):
            if state.exists:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
            conn.execute(create)
    except psycopg.Error as exc:
        verb = "dropping and creating" if state.exists else "creating"
        raise RestoreFailed(f"{what}: {verb} target database {target.dbname} at {target.display()} "
                            f"failed: {one_line(exc)}") from None
    return "dropped and recreated" if state.exists else "created"


class _Growing:
    """The work file as the fetch writes it: how many bytes are on disk, and whether the fetch
    is still running, ended with every check passed ("complete"), or failed."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self.size = 0
        self.state = "running"

    def grew(self, size: int) -> None:
        with self._changed:
            self.size = size
            self._changed.notify_all()

    def end(self, state: str) -> None:
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def wait(self, beyond: int, timeout: float | None = None) -> tuple[int, str]:
        """(size, state) once the file is larger than `beyond` bytes or the fetch has ended."""
        with self._changed:
            self._changed.wait_for(lambda: self.size > beyond or self.state != "running", timeout)
            return self.size, self.state


class _FetchStopped(Exception):
    """The fetch was told to stop (the restore it fed failed)."""


def _fetch_to_file(stored: StoredBackup, path: Path, progress: ProgressListener,
                   keys: DataKeyProvider | None, growing: _Growing | None = None,
                   stop: threading.Event | None = None) -> None:
    """Fetch, check and decompress the backup into `path`. With `growing`, every write is
    published as it lands (for readers that follow the file); the fetch only counts as
    complete when this returns, after the checksum, the last AEAD segment, the zstd frame and
    the size have all been checked."""
    manifest = stored.manifest
    raw = 0
    with open(path, "wb") as out:
        for chunk in decompressed(stored.store, manifest,
                                  checked_stored_chunks(stored.store, manifest, progress, "fetch"),
                                  keys):
            out.write(chunk)
            raw += len(chunk)
            if growing is not None:
                out.flush()
                growing.grew(raw)
                if stop is not None and stop.is_set():
                    raise _FetchStopped
    if raw != manifest.dump.raw_bytes:
        raise BackupCorrupt(f"backup {manifest.backup_id} of {manifest.database} in store "
                            f"{stored.store.name}: decompressed size {raw} differs from the "
                            f"manifest's {manifest.dump.raw_bytes}")


def verify_row_counts(stored: StoredBackup, target: PgConnection,
                      counted: Mapping[str, int] | None = None) -> tuple[int, int]:
    """Compare every table's row count with the manifest; returns (tables, rows).

    Tables are the ordinary ones (relkind 'r'), as in the manifest: a partitioned table's
    partitions are counted one by one and its parent (relkind 'p', no rows of its own) is not,
    so every row is counted exactly once. `counted` holds the tables counted already, as soon
    as their data was in (_RowCounter); the others are counted now. Which tables exist is
    always read now."""
    expected = stored.manifest.row_counts
    try:
        with psycopg.connect(target.dsn, **target.psycopg_kwargs()) as conn:
            actual = count_rows(conn, counted)
    except psycopg.Error as exc:
        raise _counting_failed(stored, target, exc) from None
    problems = []
    for table, rows in sorted(expected.items()):
        if table not in actual:
            problems.append(f"{table}: missing (expected {rows} rows)")
        elif actual[table] != rows:
            problems.append(f"{table}: {actual[table]} rows, expected {rows}")
    if problems:
        raise RestoreFailed(
            f"restore of backup {stored.backup_id} of {stored.manifest.database} from store "
            f"{stored.store.name} into {target.display()} does not match the manifest: "
            + "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        )
    return len(expected), sum(expected.values())


def _counting_failed(stored: StoredBackup, target: PgConnection, exc: Exception) -> RestoreFailed:
    hint = (" (counting every row of a table with row-level security needs a login with BYPASSRLS)"
            if "row-level security" in str(exc) else "")
    return RestoreFailed(f"restore of backup {stored.backup_id} of {stored.manifest.database} into "
                         f"{target.display()}: counting the restored rows failed: {one_line(exc)}{hint}")


class _RowCounter:
    """Counts each table's rows as soon as its data is in, in a thread of its own, one table
    at a time, beside the other tables' loads: the count then leaves the end of the restore,
    and a table's post-data waits for it. Counted before its primary key is built, a freshly
    loaded table is also cheaper to index: the count sets the rows' hint bits with parallel
    workers, which the index build would otherwise do alone (measured on 6 M pgbench rows:
    count then key 1.7-1.9 s, key then count 1.8-2.2 s).

    The counts stay exact to the end: post-data builds indexes, constraints, triggers and
    rules, none of which adds or removes a row (a trigger created after the load never
    fires for it). Each count is its own short transaction, so that its ACCESS SHARE lock
    never holds up the table's ALTER TABLE that follows."""

    def __init__(self, stored: StoredBackup, target: PgConnection) -> None:
        self._stored, self._target = stored, target
        self._wanted: queue.Queue[TocEntry | None] = queue.Queue()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None
        self._stopping = False
        self.counted: dict[str, int] = {}
        self.done: set[int] = set()  # dump ids of the TABLE DATA entries counted
        self.error: RestoreFailed | None = None
        self._thread = threading.Thread(target=self._run, name="restore-count", daemon=True)
        self._thread.start()

    def count(self, entry: TocEntry) -> None:
        self._wanted.put(entry)

    def finished(self) -> set[int]:
        """The entries counted so far (raises what a count failed with)."""
        with self._lock:
            if self.error is not None:
                raise self.error
            return set(self.done)

    def stop(self, *, cancel: bool) -> None:
        """Stop after what is queued (or at once, cancelling a running count, with `cancel`)
        and close the connection: a database that is dropped next has no session of ours."""
        with self._lock:
            self._stopping = cancel
            if cancel and self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.cancel_safe()
        self._wanted.put(None)
        self._thread.join()

    def _run(self) -> None:
        try:
            while (entry := self._wanted.get()) is not None:
                with self._lock:
                    if self._stopping or self.error is not None:
                        continue
                    if self._conn is None:
                        self._conn = psycopg.connect(self._target.dsn, autocommit=True,
                                                     **self._target.psycopg_kwargs())
                    conn = self._conn
                with conn.transaction():
                    conn.execute("SET LOCAL row_security = off")
                    rows = count_table_rows(conn, entry.namespace, entry.tag)
                with self._lock:
                    self.counted[f"{entry.namespace}.{entry.tag}"] = rows
                    self.done.add(entry.dump_id)
        except Exception as exc:  # any error, not only the driver's: the scheduler waits on these counts
            with self._lock:
                if not self._stopping:
                    self.error = _counting_failed(self._stored, self._target, exc)
            while self._wanted.get() is not None:  # until stop()
                pass
        finally:
            if self._conn is not None:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()


# Row-level security entries of a pg_restore --list: enabling RLS, policies, their comments.
_RLS_ENTRY = re.compile(r"^\d+; \d+ \d+ (?:ROW SECURITY|POLICY|COMMENT \S+ POLICY) ")


def _restore_passes(pg_restore: str, archive: Path, scratch: Path, jobs: int, into: str) -> list[list[str]]:
    """pg_restore's options per pass: everything in parallel, then row-level security last.

    In a parallel restore, an ALTER TABLE ... ENABLE ROW LEVEL SECURITY may run before a foreign
    key of that table is validated; if the table also forces RLS on its owner and the restoring
    role does not bypass RLS (`restore_as` sets a role that normally does not), the validation
    fails ("query would be affected by row-level security policy"), depending on scheduling. So
    when the archive has such entries they are held back (pg_restore --use-list) and restored
    after everything else, in one job."""
    listing = subprocess.run([pg_restore, "--list", str(archive)], capture_output=True, text=True)
    if listing.returncode != 0:
        raise RestoreFailed(f"{into}: pg_restore --list exited with {listing.returncode}: "
                            f"{one_line(listing.stderr)}")
    lines = listing.stdout.splitlines()
    held_back = {i for i, line in enumerate(lines) if _RLS_ENTRY.match(line)}
    parallel = [f"--jobs={max(1, jobs)}"]
    if not held_back:
        return [parallel]
    first, last = scratch / "first.list", scratch / "last.list"
    first.write_text("\n".join(";" + line if i in held_back else line for i, line in enumerate(lines)) + "\n")
    last.write_text("\n".join(lines[i] for i in sorted(held_back)) + "\n")
    return [[*parallel, f"--use-list={first}"], [f"--use-list={last}"]]


def _run_passes(command: Sequence[str], tools_version: str, pg_restore: str, archive: Path, scratch: Path,
                jobs: int, into: str, env: dict[str, str], partial: str) -> None:
    """The classic restore of a complete work file: `_restore_passes`, one after the other."""
    for pass_command in _restore_passes(pg_restore, archive, scratch, jobs, into):
        result = subprocess.run([*command, *pass_command, str(archive)], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RestoreFailed(f"{into}: pg_restore {tools_version} exited with {result.returncode} "
                                f"({partial}): {one_line(result.stderr.strip()[-2000:])}")


# TOC entries pg_restore applies on connecting, or only with --create: never in a list.
_CONNECTION_ENTRIES = frozenset({"ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE", "DATABASE PROPERTIES"})


def _is_rls(entry: TocEntry) -> bool:
    """The entries _RLS_ENTRY finds in a listing: enabling RLS, policies, their comments."""
    return entry.desc in ("ROW SECURITY", "POLICY") or (entry.desc == "COMMENT" and entry.tag.startswith("POLICY "))


_SCHEMA_LIKE_DATA = frozenset({"SEQUENCE SET", "BLOB METADATA"})


def _is_acl(entry: TocEntry) -> bool:
    return entry.desc in ("ACL", "DEFAULT ACL")


@dataclass(frozen=True)
class _Phases:
    """An archive's entries as an overlapped restore runs them, each group in TOC order."""

    schema: tuple[TocEntry, ...]     # everything before the data (pre-data, its comments)
    blocks: tuple[TocEntry, ...]     # data entries with a data block, restored as they arrive
    data: tuple[TocEntry, ...]       # the rest of the data section, after the fetch
    post: tuple[TocEntry, ...]       # indexes, constraints, triggers, ACLs..., in parallel
    last: tuple[TocEntry, ...]       # row-level security, held back (see _restore_passes)


def _phases(toc: ArchiveToc) -> _Phases | None:
    """The phases of `toc`, or None when its entries are not in pg_dump's order (pre-data,
    data, post-data; SECTION_NONE entries sit beside their object): then the classic way."""
    entries = [e for e in toc.entries if e.desc not in _CONNECTION_ENTRIES]
    sections = [e.section for e in entries if e.section != SECTION_NONE]
    if sections != sorted(sections):
        return None
    rls = tuple(e for e in entries if _is_rls(e))
    entries = [e for e in entries if not _is_rls(e)]
    first_data = next((i for i, e in enumerate(entries) if e.section >= SECTION_DATA), len(entries))
    schema = tuple(e for e in entries[:first_data] if not _is_acl(e))
    data = [e for e in entries if e.section == SECTION_DATA]
    # Data entries without a block that need no table data go with the schema: sequence
    # values, and large objects' creation (BLOB METADATA, PostgreSQL 17 on), which must come
    # before their contents (BLOBS). Blocks are fed as they arrive up to any other entry
    # without a block (of a kind not known here); from there on, in TOC order after the fetch.
    early = [e for e in data if not e.has_data and e.desc in _SCHEMA_LIKE_DATA]
    data = [e for e in data if e not in early]
    other = next((i for i, e in enumerate(data) if not e.has_data), len(data))
    taken = {e.dump_id for e in (*schema, *early, *data)}
    return _Phases(schema=(*schema, *early), blocks=tuple(data[:other]), data=tuple(data[other:]),
                   post=tuple(e for e in entries if e.dump_id not in taken), last=rls)


# pg_restore's stdin pipe: fewer, larger writes than the default 64 KiB.
_PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
# The feeder tops the pipe up only once pg_restore has drained half of it, pausing this long
# between looks. Fed as soon as there is room, pg_restore's 4 KiB reads each woke the feeder
# for a write of that much: about 100,000 sendfile calls and as many thread wake-ups (and GIL
# hand-offs) for a 600 MiB dump, 1 s of system CPU beside the COPY. pg_restore takes half a
# 1 MiB pipe in about 4 ms at full speed, so a 1 ms pause never lets it run dry.
_FEED_PAUSE_MS = 1
_POLL_SECONDS = 0.02
# Consecutive data blocks starting within this many bytes of the first go to one pg_restore
# (fed them in one stream), so that thousands of small tables do not cost a process each.
_GROUP_BYTES = 64 * 1024 * 1024
_FIND_STEP_BYTES = 4 * 1024 * 1024


# Post-data kinds that may run as soon as the data of their tables is in (pg_restore -j runs
# them by the same dependencies); the others (ACLs, comments, event triggers, materialized
# view data, publications, ...) wait for the one post-data pass after all data, where
# pg_restore keeps its own order of passes. Those taking an exclusive lock on their tables
# (pg_restore's list, identify_locking_dependencies) never run beside another on a same table.
_EARLY_KINDS = frozenset({"INDEX", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "TRIGGER", "RULE",
                          "INDEX ATTACH"})
_EXCLUSIVE_KINDS = frozenset({"CONSTRAINT", "CHECK CONSTRAINT", "FK CONSTRAINT", "RULE", "TRIGGER"})
_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class _PostItem:
    entry: TocEntry
    needs_data: frozenset[int]  # data entries restored first (its tables' TABLE DATA)
    needs_post: frozenset[int]  # post-data entries restored first
    tables: frozenset[int]      # the TABLE entries it locks
    exclusive: bool


@dataclass
class _Unit:
    process: subprocess.Popen[bytes]
    jobs: int
    data: bool
    entries: tuple[TocEntry, ...]


def _loads_own_table(entry: TocEntry) -> bool:
    """Whether a TABLE DATA entry's COPY loads its own table (not the root of its partition
    tree, --load-via-partition-root, whose rows may land in any partition)."""
    def ident(name: str) -> str:
        return name if _PLAIN_IDENTIFIER.fullmatch(name) else '"' + name.replace('"', '""') + '"'
    target = f"COPY {ident(entry.namespace)}.{ident(entry.tag)} "
    return entry.copy_statement.startswith(target)


def _early_post(toc: ArchiveToc, phases: _Phases) -> dict[int, _PostItem]:
    """The post-data entries that may start once the data they depend on is restored: of the
    kinds in _EARLY_KINDS, whose every dependency is in the schema, the data or another such
    entry. A dependency on a TABLE stands for its TABLE DATA, as pg_restore -j repoints it.
    None at all when a table's data loads through another table (its partition root)."""
    table_ids = {e.dump_id for e in toc.entries if e.desc == "TABLE"}
    data_of: dict[int, int] = {}
    for entry in toc.entries:
        if entry.desc == "TABLE DATA":
            if not _loads_own_table(entry):
                return {}
            for dependency in entry.dependencies:
                if dependency in table_ids:
                    data_of[dependency] = entry.dump_id
    schema = {e.dump_id for e in phases.schema}
    data = {e.dump_id for e in (*phases.blocks, *phases.data)}
    items: dict[int, _PostItem] = {}
    for entry in phases.post:  # in TOC order, which pg_dump sorts by dependencies
        if entry.desc not in _EARLY_KINDS or any(
                d not in schema and d not in data and d not in items for d in entry.dependencies):
            continue
        needs_data = {data_of[d] for d in entry.dependencies if d in data_of}
        needs_data |= {d for d in entry.dependencies if d in data}
        items[entry.dump_id] = _PostItem(
            entry=entry, needs_data=frozenset(needs_data),
            needs_post=frozenset(d for d in entry.dependencies if d in items),
            tables=frozenset(d for d in entry.dependencies if d in table_ids),
            exclusive=entry.desc in _EXCLUSIVE_KINDS)
    return items


def _ready_post(early: dict[int, _PostItem], left: Sequence[TocEntry], data_done: set[int], post_done: set[int],
                running: Sequence[_PostItem], sizes: dict[int, int]) -> tuple[TocEntry, ...]:
    """What to start next among the post-data entries `left`: the first ready entry of a large
    table (data of _GROUP_BYTES or more) alone, else every ready entry of small tables in one
    pass; none that would wait for a lock held by a running pass."""
    def conflicts(item: _PostItem) -> bool:
        return any(item.tables & other.tables and (item.exclusive or other.exclusive) for other in running)

    small: list[TocEntry] = []
    for entry in left:
        item = early.get(entry.dump_id)
        if item is None or not item.needs_data <= data_done or not item.needs_post <= post_done or conflicts(item):
            continue
        if any(sizes.get(d, 0) >= _GROUP_BYTES for d in item.needs_data):
            if not small:
                return (entry,)
            continue
        small.append(entry)
    return tuple(small)


class _OverlappedRestore:
    """A restore into a database it creates, run while the backup is still being fetched.

    The fetch writes the work file in a thread of its own. Once the archive's TOC is on disk
    (it comes first: pg_dump wrote it to a pipe), the database is created and the schema
    restored (`pg_restore --use-list` of the pre-data entries, fed the TOC on stdin); then the
    first data block is restored as it arrives (one pg_restore fed the growing file on stdin,
    which restores that one entry and exits). When the fetch is complete (checksum, every AEAD
    segment, zstd frame and size checked), the rest of the data, then the post-data, then
    row-level security are restored from the work file with -j, as `_restore_passes` would.

    What pg_restore sees before the fetch ends is authenticated (every AEAD segment is, before
    its plaintext is handed on), but a truncated or replaced object is only known at the end:
    so this only ever runs into a database it creates (or on a throwaway server), and on any
    failure everything it started is stopped and the caller drops that database."""

    def __init__(self, *, stored: StoredBackup, archive: Path, scratch: Path, progress: ProgressListener,
                 keys: DataKeyProvider | None, command: Sequence[str], version: str, pg_restore: str,
                 jobs: int, env: dict[str, str], into: str, create: Callable[[], object],
                 target: PgConnection) -> None:
        self._stored, self._archive, self._scratch = stored, archive, scratch
        self._target = target
        self._counter: _RowCounter | None = None
        self.counted: dict[str, int] = {}  # tables counted as soon as their data was in
        self._progress, self._keys = progress, keys
        self._command, self._version, self._pg_restore = list(command), version, pg_restore
        self._jobs, self._env, self._into, self._create = max(1, jobs), env, into, create
        self._toc_file = scratch / "toc.pgdump"
        self._growing = _Growing()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._passes: list[tuple[subprocess.Popen[bytes], str, Path]] = []
        self._feeders: list[threading.Thread] = []
        self.created = False
        self.fetched_at = 0.0

    def run(self) -> None:
        fetcher = threading.Thread(target=self._fetch, name="restore-fetch", daemon=True)
        fetcher.start()
        try:
            self._restore()
        except BaseException:
            self._stop.set()
            if self._counter is not None:
                self._counter.stop(cancel=True)
            for process, _, _ in self._passes:
                if process.poll() is None:
                    process.kill()
            for process, _, _ in self._passes:
                process.wait()
            fetcher.join()
            for feeder in self._feeders:
                feeder.join()
            raise
        fetcher.join()
        for feeder in self._feeders:
            feeder.join()
        if self._counter is not None:
            self._counter.stop(cancel=False)
            self.counted = dict(self._counter.counted)

    def _fetch(self) -> None:
        try:
            _fetch_to_file(self._stored, self._archive, self._progress, self._keys, self._growing, self._stop)
            self.fetched_at = time.monotonic()
            self._growing.end("complete")
        except BaseException as exc:  # raised in the restoring thread (_check)
            self._error = exc
            self._growing.end("failed")

    def _restore(self) -> None:
        toc = self._wait_for_toc()
        phases = _phases(toc) if toc is not None else None
        self._create()
        self.created = True
        if phases is None or toc is None:  # an archive this cannot follow: the classic way
            self._wait_for_fetch()
            self._progress("restore", 0)
            _run_passes(self._command, self._version, self._pg_restore, self._archive, self._scratch,
                        self._jobs, self._into, self._env, _DROPPED)
            return
        # The archive's head alone (header and TOC, no data): what the post-data passes read,
        # so that the work file can go as soon as the data is in.
        with open(self._archive, "rb") as head, open(self._toc_file, "wb") as out:
            out.write(head.read(toc.end))
        if phases.schema:
            self._wait([self._start("schema", phases.schema, feed=((0, toc.end),))])
        if all(_loads_own_table(e) for e in toc.entries if e.desc == "TABLE DATA"):
            # (A table loaded through its partition root may put its rows in any partition:
            # those are only counted at the end, all at once.)
            self._counter = _RowCounter(self._stored, self._target)
        finder = BlockFinder(toc, phases.blocks)
        finding = threading.Thread(target=self._find_blocks, args=(finder, toc.end), name="restore-blocks",
                                   daemon=True)
        finding.start()
        self._feeders.append(finding)
        self._schedule(toc, phases, finder)
        self._wait_for_fetch()
        if phases.last:
            self._wait([self._start("row-level security", phases.last, archive=self._toc_file)])

    def _schedule(self, toc: ArchiveToc, phases: _Phases, finder: BlockFinder) -> None:
        """Run the data and post-data passes, at most `jobs` pg_restore jobs at a time: each
        data block (or group) as it arrives; what could not be fed, from the complete file;
        post-data entries of a table (`_early_post`) as soon as its data is in, each entry of
        a large table in a pg_restore of its own, so that its indexes build while other tables
        still load, as pg_restore -j would; and once all data is in and no such pass runs,
        every post-data entry left in one `pg_restore -j`."""
        early = _early_post(toc, phases)
        blocks = phases.blocks
        all_data = {e.dump_id for e in (*blocks, *phases.data)}
        data_done: set[int] = set()  # restored (and, with a counter, counted)
        post_done: set[int] = set()
        post_left = list(phases.post)
        units: list[_Unit] = []
        done = 0  # blocks[:done] are being restored
        rest_started = announced = unlinked = False
        while True:
            self._check()
            for unit in [u for u in units if u.process.poll() is not None]:
                if unit.process.returncode:
                    self._check()  # raises, naming that pass
                units.remove(unit)
                if not unit.data:
                    post_done.update(e.dump_id for e in unit.entries)
                    continue
                for entry in unit.entries:
                    if self._counter is not None and entry.desc == "TABLE DATA":
                        self._counter.count(entry)  # done once counted
                    else:
                        data_done.add(entry.dump_id)
            if self._counter is not None:
                data_done |= self._counter.finished()
            fetched = self._growing.state == "complete"
            if fetched and not announced:
                self._progress("restore", 0)
                announced = True
            data_in = all_data <= data_done
            if data_in and fetched and not unlinked:
                # Nothing reads the data any more (post-data passes read the TOC file): give
                # its disk space and page cache back now, while the indexes build.
                self._unlink()
                unlinked = True
            if data_in and not post_left and not units:
                return
            free = self._jobs - sum(u.jobs for u in units)
            found = len(finder.starts)
            if free > 0 and done < found:
                upto = done + 1
                while upto < found and finder.starts[upto] - finder.starts[done] < _GROUP_BYTES:
                    upto += 1
                units.append(_Unit(self._start("data", blocks[done:upto],
                                               feed=((0, toc.end), (finder.starts[done], None))),
                                   1, True, blocks[done:upto]))
                done = upto
                continue
            if free > 0 and not rest_started and fetched and finder.stopped and done >= len(finder.starts):
                rest_started = True
                # What could not be fed as it arrived: from the complete file.
                rest = {e.dump_id for e in (*blocks[done:], *phases.data)}
                if rest:
                    entries = tuple(e for e in toc.entries if e.dump_id in rest)
                    units.append(_Unit(self._start("data", entries, jobs=free), free, True, entries))
                    continue
            if free > 0 and post_left:
                if data_in and not any(not u.data for u in units):
                    units.append(_Unit(self._start("post-data", post_left, jobs=free, archive=self._toc_file),
                                       free, False, tuple(post_left)))
                    post_left = []
                    continue
                batch = _ready_post(early, post_left, data_done, post_done,
                                    [early[e.dump_id] for u in units if not u.data for e in u.entries
                                     if e.dump_id in early],
                                    self._block_sizes(finder, blocks))
                if batch:
                    units.append(_Unit(self._start("post-data", batch, archive=self._toc_file), 1, False, batch))
                    taken = {e.dump_id for e in batch}
                    post_left = [e for e in post_left if e.dump_id not in taken]
                    continue
            if fetched:
                time.sleep(_POLL_SECONDS)
            else:  # woken early when the fetch ends
                self._growing.wait(1 << 62, timeout=_POLL_SECONDS)

    def _block_sizes(self, finder: BlockFinder, blocks: Sequence[TocEntry]) -> dict[int, int]:
        """Bytes of each data block whose extent is known."""
        starts = finder.starts
        sizes = {blocks[i].dump_id: starts[i + 1] - starts[i] for i in range(len(starts) - 1)}
        if starts and finder.stopped and self._growing.state == "complete" and len(starts) == len(blocks):
            sizes[blocks[len(starts) - 1].dump_id] = self._growing.size - starts[-1]
        return sizes

    def _unlink(self) -> None:
        def unlink() -> None:
            with contextlib.suppress(OSError):
                os.unlink(self._archive)
        thread = threading.Thread(target=unlink, name="restore-unlink", daemon=True)
        thread.start()
        self._feeders.append(thread)

    def _find_blocks(self, finder: BlockFinder, start: int) -> None:
        """Follow the work file as it is written, telling `finder` where its data blocks start."""
        source = os.open(self._archive, os.O_RDONLY)
        pos = seen = start
        try:
            while not finder.stopped:
                size, state = self._growing.wait(seen)
                if state == "failed":
                    return
                while not finder.stopped and pos < size:
                    data = os.pread(source, min(size - pos, _FIND_STEP_BYTES), pos)
                    after = finder.feed(data, pos)
                    more = len(data) == _FIND_STEP_BYTES and after > pos  # a full step read: go on
                    pos = after
                    if not more:
                        break
                if state == "complete":
                    return  # all there is has been looked at
                seen = size
        finally:
            finder.stopped = True
            os.close(source)

    def _wait_for_toc(self) -> ArchiveToc | None:
        """The archive's TOC once it is on disk; None for an archive this cannot read (or a
        complete file without one: pg_restore says what is wrong with it)."""
        beyond = 0
        while True:
            size, state = self._growing.wait(beyond)
            self._check()
            with open(self._archive, "rb") as head:
                written = head.read(size)
            try:
                return read_toc(written)
            except TocIncomplete:
                if state != "running":
                    return None
                beyond = 2 * size  # read again once it has doubled: a huge TOC is not parsed 100 times
            except TocUnsupported:
                return None

    def _start(self, label: str, entries: Sequence[TocEntry], *, jobs: int = 1,
               feed: tuple[tuple[int, int | None], ...] | None = None,
               archive: Path | None = None) -> subprocess.Popen[bytes]:
        """pg_restore of `entries`: from the work file (which must be complete), or, with
        `feed`, fed these (start, end) ranges of the work file on stdin, one after the other
        (end None: to the end, following the file as it grows)."""
        number = len(self._passes)
        listing = self._scratch / f"pass-{number}.list"
        listing.write_text("".join(f"{e.dump_id}\n" for e in entries))
        stderr_path = self._scratch / f"pass-{number}.stderr"
        argv = [*self._command, "--format=custom", f"--use-list={listing}"]
        if jobs > 1:
            argv.append(f"--jobs={jobs}")
        if feed is None:
            argv.append(str(archive or self._archive))
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(argv, stdin=subprocess.PIPE if feed is not None else subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=stderr, env=self._env)
        self._passes.append((process, label, stderr_path))
        if feed is not None:
            assert process.stdin is not None
            with contextlib.suppress(OSError):
                fcntl.fcntl(process.stdin.fileno(), _F_SETPIPE_SZ, _PIPE_BYTES)
            feeder = threading.Thread(target=self._feed, args=(process.stdin, feed),
                                      name=f"restore-feed-{number}", daemon=True)
            feeder.start()
            self._feeders.append(feeder)
        return process

    def _feed(self, stdin: IO[bytes], ranges: tuple[tuple[int, int | None], ...]) -> None:
        """Copy `ranges` of the work file into a pg_restore's stdin as the fetch writes them
        (sendfile: no copy through Python, no GIL held). Stops when pg_restore has read what
        it needed and exited (a broken pipe), at the end of the last range or of a complete
        file, or when the fetch fails (pg_restore is then stopped by the restoring thread)."""
        source = os.open(self._archive, os.O_RDONLY)
        pipe = stdin.fileno()
        try:
            capacity = fcntl.fcntl(pipe, _F_GETPIPE_SZ)
        except OSError:
            capacity = 64 * 1024
        watch = select.poll()
        watch.register(pipe, 0)  # no events asked: only POLLERR/POLLHUP, once the reader is gone
        try:
            for offset, limit in ranges:
                while True:
                    size, state = self._growing.wait(offset)
                    if state == "failed":
                        return
                    end = size if limit is None else min(size, limit)
                    while offset < end:
                        room = capacity - _queued(pipe)
                        if room < capacity // 2 and end - offset > room:
                            # A pause that ends early when pg_restore exits (the write end
                            # then reports POLLERR), so that the sendfile below meets the
                            # broken pipe instead of waiting for room that never comes.
                            if watch.poll(_FEED_PAUSE_MS):
                                room = capacity
                            else:
                                continue
                        offset += os.sendfile(pipe, source, offset, min(end - offset, max(room, 1)))
                    if limit is not None and offset >= limit:
                        break
                    if state == "complete" and offset >= size:
                        return
        except OSError:  # a broken pipe: pg_restore is done (or was stopped)
            return
        finally:
            os.close(source)
            with contextlib.suppress(OSError):
                stdin.close()

    def _check(self) -> None:
        """Raise what went wrong: the fetch first (a broken backup is the cause of whatever
        pg_restore then said), else the first pg_restore that failed."""
        if self._growing.state == "failed" and self._error is not None and not isinstance(self._error, _FetchStopped):
            raise self._error
        for process, label, stderr in self._passes:
            code = process.poll()
            if code:
                message = stderr.read_text(errors="replace").strip()[-2000:]
                raise RestoreFailed(f"{self._into}: pg_restore {self._version} ({label}) exited with {code} "
                                    f"({_DROPPED}): {one_line(message)}")

    def _wait(self, processes: Sequence[subprocess.Popen[bytes]]) -> None:
        while True:
            self._check()
            if all(p.poll() is not None for p in processes):
                self._check()
                return
            time.sleep(_POLL_SECONDS)

    def _wait_for_fetch(self) -> None:
        while self._growing.state != "complete":
            self._check()
            self._growing.wait(1 << 62, timeout=_POLL_SECONDS)
        self._check()


def _queued(pipe: int) -> int:
    """Bytes written into `pipe` that its reader has not read yet."""
    return struct.unpack("i", fcntl.ioctl(pipe, termios.FIONREAD, b"\0\0\0\0"))[0]


_DROPPED = "the database this restore created is dropped again"
_PARTIAL = "the target may hold a partial restore"


def _drop_created(target: PgConnection, what: str, failure: BaseException) -> None:
    """Drop the database this restore created, after a failure; if even that fails, say so."""
    try:
        with _maintenance(target, what) as (conn, _):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(target.dbname)))
    except (psycopg.Error, RestoreFailed) as exc:
        raise RestoreFailed(f"{one_line(failure)}; and dropping the database {target.dbname} this restore "
                            f"created failed: {one_line(exc)}") from None


def _refusal(stored: StoredBackup, target: PgConnection, state: _TargetState, replace: bool,
             with_globals: bool) -> str | None:
    """Why the target must not be restored into, or None (the module's rules, in order)."""
    manifest = stored.manifest
    at = f"target database {target.dbname} at {target.display()}"
    if state.major < manifest.server.major:
        return (f"the target server is PostgreSQL {state.major}, older than the backup's source "
                f"PostgreSQL {manifest.server.version}; restore into a server of {manifest.server.major} "
                "or newer")
    if state.is_template:
        return (f"{at} is a template database: what is restored into it would be copied into every "
                "database created from it")
    if state.objects:
        shown = ", ".join(state.objects[:3]) + (", ..." if len(state.objects) > 3 else "")
        if not replace:
            return (f"{at} is not empty ({len(state.objects)} objects: {shown}); pass replace to drop "
                    "and recreate it")
        if target.dbname == MAINTENANCE_DATABASES[0]:
            return (f"{at} is the server's maintenance database and is not empty ({shown}): replace "
                    "will not drop or empty it; restore into another database, or empty it first")
    if state.exists and not state.objects and state.role_problem and not (with_globals and state.role_missing):
        return f"cannot restore in place into {at} as role: {state.role_problem}"
    return None


def restore_backup(
    stored: StoredBackup,
    target: PgConnection,
    *,
    replace: bool = False,
    jobs: int = 2,
    keep_owners: bool = False,
    progress: ProgressListener = no_progress,
    workdir: Path | None = None,
    keys: DataKeyProvider | None = None,
    restore_as: str | None = None,
    with_globals: bool = False,
    throwaway_target: bool = False,
) -> RestoreResult:
    """Restore `stored` into `target`'s database and verify row counts; the module's
    docstring says which targets are restored in place, created, replaced or refused.

    `restore_as` makes pg_restore SET ROLE to a group role first, so the restored objects
    belong to it rather than to the login: what a short-lived (Vault-issued) login needs,
    since a role that still owns objects cannot be dropped when its lease ends. A database
    created here is owned by it; an existing one keeps its owner.

    Owners and grants are not restored unless `keep_owners`, because a drill or DR target
    rarely has the source's roles (`with_globals` brings them). An encrypted backup needs
    `keys` to unwrap its data key: without it BackupKeyUnavailable is raised before
    anything is fetched. A backup found corrupt (checksum, authentication, truncation, size)
    raises BackupCorrupt and costs the target nothing: an existing database is not touched
    before the whole backup is verified, and one this restore creates (restored while it is
    fetched, see _OverlappedRestore) is dropped again, as on any other failure. Every
    refusal (RestoreRefused) comes before the fetch. `throwaway_target` (a drill's own
    server) lets an unencrypted backup be restored while it is fetched too.

    `fetch_seconds` of the result runs to the end of the fetch and `restore_seconds` from
    there, so their sum stays the time to a restored database when the two overlap.
    """
    manifest = stored.manifest
    require_key_provider(stored.store, manifest, keys)
    what = f"restore of backup {manifest.backup_id} of {manifest.database} from store {stored.store.name}"
    if with_globals and manifest.globals is None:
        raise RestoreRefused(f"refusing the {what} into {target.display()} with globals: the backup has "
                             "none (it was taken before globals were backed up); restore without them")
    state = _inspect_target(target, restore_as, what)
    refusal = _refusal(stored, target, state, replace, with_globals)
    if refusal:
        raise RestoreRefused(f"refusing the {what}: {refusal}")
    tools = client_tools_for(max(state.major, manifest.dump.tool_major))
    into = f"{what} into {target.display()}"
    command = [tools.tool("pg_restore"), "--exit-on-error", f"--dbname={target.dsn}"]
    if restore_as:
        command.append(f"--role={restore_as}")
    if not keep_owners:
        command += ["--no-owner", "--no-privileges"]
    # Restoring while fetching is only for a database this restore creates (dropped again on
    # any failure, so a backup found broken at its end leaves nothing behind), of an encrypted
    # backup (what pg_restore is given before the end is authenticated) or on a throwaway
    # server; never with globals (roles on the server would outlive the dropped database).
    overlap = not state.exists and not with_globals and (manifest.encryption is not None or throwaway_target)
    scratch = leased_work_directory("restore-", workdir)  # reaped if this process is killed
    applied: GlobalsApplied | None = None
    created = False
    counted: dict[str, int] = {}
    try:
        try:
            started = time.monotonic()
            archive = scratch / "dump.pgdump"
            if overlap:
                runner = _OverlappedRestore(
                    stored=stored, archive=archive, scratch=scratch, progress=progress, keys=keys,
                    command=command, version=tools.version, pg_restore=tools.tool("pg_restore"), jobs=jobs,
                    env=target.tool_env(), into=into,
                    create=lambda: _prepare_database(target, state, restore_as, what), target=target)
                try:
                    runner.run()
                finally:
                    created = runner.created
                counted = runner.counted
                action: TargetAction = "created"
                fetched = runner.fetched_at
            else:
                _fetch_to_file(stored, archive, progress, keys)
                script = globals_sql(stored.store, manifest, keys) if with_globals else None
                fetched = time.monotonic()
                if script is not None:
                    progress("globals", 0)
                    try:
                        applied = apply_globals(script, state.reachable, tools)
                    except GlobalsError as exc:
                        raise RestoreFailed(f"{into}: {exc}") from None
                progress("restore", 0)
                action = _prepare_database(target, state, restore_as, what)
                created = action == "created"
                _run_passes(command, tools.version, tools.tool("pg_restore"), archive, scratch, jobs, into,
                            target.tool_env(), _DROPPED if created else _PARTIAL)
            restored = time.monotonic()
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(scratch)
        progress("verify", 0)
        tables, rows = verify_row_counts(stored, target, counted)
    except BaseException as failure:
        if created:  # whatever failed, a database this restore created does not stay behind
            _drop_created(target, into, failure)
        raise
    verified = time.monotonic()
    return RestoreResult(
        backup_id=manifest.backup_id, database=manifest.database, store=stored.store.name,
        target=target.display(), fetch_seconds=fetched - started, restore_seconds=restored - fetched,
        verify_seconds=verified - restored, tables_verified=tables, rows_verified=rows,
        target_action=action, globals=applied,
    )
