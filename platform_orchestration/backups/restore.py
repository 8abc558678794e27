"""Restoring a stored backup into a PostgreSQL database, and proving what was restored.

Order matters for safety: the backup is fetched, checksum-verified, decrypted (every
segment authenticated) and decompressed to a private work file *before* the target is
touched, so a corrupt, tampered-with or unreachable backup, or one whose key cannot be had,
never costs the target anything. A non-empty target is refused unless the caller asked
to replace it. The work file lets pg_restore run in parallel (-j), which a pipe cannot.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from platform_orchestration.backups.catalog import StoredBackup
from platform_orchestration.backups.encryption import require_key_provider
from platform_orchestration.backups.integrity import (
    BackupCorrupt,
    checked_stored_chunks,
    decompressed,
)
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.errors import PlatformError
from platform_orchestration.postgres.binaries import client_tools_for
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.snapshot import count_rows

_NON_EMPTY_PROBE = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1
"""


class RestoreRefused(PlatformError):
    """The target is not in a state we may restore into (e.g. not empty without replace)."""


class RestoreFailed(PlatformError):
    """pg_restore failed, or the restored data does not match the manifest."""


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
    # Newer backups not restored because their manifest could not be read (a restore of
    # "latest"), each "backup <id> in store(s) <stores>: <reason>".
    passed_over: tuple[str, ...] = ()

    @property
    def recovery_seconds(self) -> float:
        """The measured RTO: from starting the fetch to a restored, usable database."""
        return self.fetch_seconds + self.restore_seconds


def _server_major(conn: psycopg.Connection) -> int:
    return int(conn.execute("SELECT current_setting('server_version_num')::int").fetchone()[0]) // 10000


def _inspect_target(target: PgConnection) -> tuple[bool, list[str], int]:
    """(exists, user relations, server major), asked of the maintenance database."""
    maintenance = target.for_database("postgres")
    with psycopg.connect(maintenance.dsn, autocommit=True, **maintenance.psycopg_kwargs()) as conn:
        major = _server_major(conn)
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (target.dbname,)).fetchone() is not None
    if not exists:
        return False, [], major
    with psycopg.connect(target.dsn, autocommit=True, **target.psycopg_kwargs()) as conn:
        relations = [r[0] for r in conn.execute(_NON_EMPTY_PROBE).fetchall()]
    return True, relations, major


def _recreate_database(target: PgConnection, drop_first: bool, owner: str | None = None) -> None:
    maintenance = target.for_database("postgres")
    name = sql.Identifier(target.dbname)
    with psycopg.connect(maintenance.dsn, autocommit=True, **maintenance.psycopg_kwargs()) as conn:
        if drop_first:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        if owner:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(name, sql.Identifier(owner)))
        else:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(name))


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
    """Compare every table's row count with the manifest; returns (tables, rows)."""
    expected = stored.manifest.row_counts
    with psycopg.connect(target.dsn, **target.psycopg_kwargs()) as conn:
        actual = count_rows(conn)
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
) -> RestoreResult:
    """Restore `stored` into `target`'s database (created if missing) and verify row counts.

    `restore_as` makes pg_restore SET ROLE to a group role first, so the restored objects
    belong to it rather than to the login: what a short-lived (Vault-issued) login needs,
    since a role that still owns objects cannot be dropped when its lease ends.

    A target holding any user relation is refused unless `replace`, which drops and
    recreates the database. Owners and grants are not restored unless `keep_owners`,
    because a drill or DR target rarely has the source's roles. An encrypted backup needs
    `keys` to unwrap its data key: without it BackupKeyUnavailable is raised before
    anything is fetched, and a backup that fails authentication raises BackupCorrupt
    before the target is touched.
    """
    manifest = stored.manifest
    require_key_provider(stored.store, manifest, keys)
    what = f"backup {manifest.backup_id} of {manifest.database} from store {stored.store.name}"
    exists, relations, target_major = _inspect_target(target)
    if relations and not replace:
        shown = ", ".join(relations[:3]) + (", ..." if len(relations) > 3 else "")
        raise RestoreRefused(
            f"refusing to restore {what}: target database {target.dbname} at {target.display()} "
            f"is not empty ({len(relations)} relations: {shown}); pass replace to drop and recreate it"
        )
    if target_major < manifest.server.major:
        raise RestoreRefused(f"refusing to restore {what}: target server is PostgreSQL {target_major}, "
                             f"older than the backup's source ({manifest.server.version})")
    tools = client_tools_for(max(target_major, manifest.dump.tool_major))
    scratch = Path(tempfile.mkdtemp(prefix="restore-", dir=workdir))
    try:
        started = time.monotonic()
        archive = scratch / "dump.pgdump"
        _fetch_to_file(stored, archive, progress, keys)
        fetched = time.monotonic()
        progress("restore", 0)
        _recreate_database(target, drop_first=exists, owner=restore_as)
        command = [tools.tool("pg_restore"), "--exit-on-error", f"--jobs={max(1, jobs)}",
                   f"--dbname={target.dsn}"]
        if restore_as:
            command.append(f"--role={restore_as}")
        if not keep_owners:
            command += ["--no-owner", "--no-privileges"]
        result = subprocess.run([*command, str(archive)], capture_output=True, text=True,
                                env=target.tool_env())
        if result.returncode != 0:
            raise RestoreFailed(f"restore of {what} into {target.display()}: pg_restore {tools.version} "
                                f"exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
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
    )
