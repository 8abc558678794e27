"""Restoring a stored backup into a PostgreSQL database, and proving what was restored.

Order matters for safety: the target is inspected and every refusal is made first; then the
backup is fetched, checksum-verified, decrypted (every segment authenticated) and
decompressed to a private work file *before* the target is touched, so a refused target,
or a corrupt, tampered-with or unreachable backup, or one whose key cannot be had, never
costs the target anything. The work file lets pg_restore run in parallel (-j), which a
pipe cannot.

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
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psycopg
from psycopg import sql

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
from platform_orchestration.postgres.snapshot import count_rows

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


def _fetch_to_file(stored: StoredBackup, path: Path, progress: ProgressListener,
                   keys: DataKeyProvider | None) -> None:
    manifest = stored.manifest
    raw = 0
    with open(path, "wb") as out:
        for chunk in decompressed(stored.store, manifest,
                                  checked_stored_chunks(stored.store, manifest, progress, "fetch"),
                                  keys):
            out.write(chunk)
            raw += len(chunk)
    if raw != manifest.dump.raw_bytes:
        raise BackupCorrupt(f"backup {manifest.backup_id} of {manifest.database} in store "
                            f"{stored.store.name}: decompressed size {raw} differs from the "
                            f"manifest's {manifest.dump.raw_bytes}")


def verify_row_counts(stored: StoredBackup, target: PgConnection) -> tuple[int, int]:
    """Compare every table's row count with the manifest; returns (tables, rows).

    Tables are the ordinary ones (relkind 'r'), as in the manifest: a partitioned table's
    partitions are counted one by one and its parent (relkind 'p', no rows of its own) is not,
    so every row is counted exactly once."""
    expected = stored.manifest.row_counts
    try:
        with psycopg.connect(target.dsn, **target.psycopg_kwargs()) as conn:
            actual = count_rows(conn)
    except psycopg.Error as exc:
        hint = (" (counting every row of a table with row-level security needs a login with BYPASSRLS)"
                if "row-level security" in str(exc) else "")
        raise RestoreFailed(f"restore of backup {stored.backup_id} of {stored.manifest.database} into "
                            f"{target.display()}: counting the restored rows failed: {one_line(exc)}{hint}"
                            ) from None
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
    anything is fetched, and a backup that fails authentication raises BackupCorrupt
    before the target is touched. Every refusal (RestoreRefused) comes before the fetch.
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
    scratch = leased_work_directory("restore-", workdir)  # reaped if this process is killed
    applied: GlobalsApplied | None = None
    try:
        started = time.monotonic()
        archive = scratch / "dump.pgdump"
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
        command = [tools.tool("pg_restore"), "--exit-on-error", f"--dbname={target.dsn}"]
        if restore_as:
            command.append(f"--role={restore_as}")
        if not keep_owners:
            command += ["--no-owner", "--no-privileges"]
        for pass_command in _restore_passes(tools.tool("pg_restore"), archive, scratch, jobs, into):
            result = subprocess.run([*command, *pass_command, str(archive)], capture_output=True, text=True,
                                    env=target.tool_env())
            if result.returncode != 0:
                raise RestoreFailed(f"{into}: pg_restore {tools.version} exited with {result.returncode} "
                                    f"(the target may hold a partial restore): "
                                    f"{one_line(result.stderr.strip()[-2000:])}")
        restored = time.monotonic()
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    progress("verify", 0)
    tables, rows = verify_row_counts(stored, target)
    verified = time.monotonic()
    return RestoreResult(
        backup_id=manifest.backup_id, database=manifest.database, store=stored.store.name,
        target=target.display(), fetch_seconds=fetched - started, restore_seconds=restored - fetched,
        verify_seconds=verified - restored, tables_verified=tables, rows_verified=rows,
        target_action=action, globals=applied,
    )
