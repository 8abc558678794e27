"""What a server needs to archive its WAL into its repository and to recover from it.

:func:`server_settings` generates ``archive_mode``, ``archive_command`` (barman-cloud-wal-archive)
and ``archive_timeout`` for a cluster; :func:`recovery_settings` the ``restore_command``
(barman-cloud-wal-restore) and recovery target of a point-in-time restore. Credentials never
appear in a setting (``SHOW archive_command`` is readable by monitoring roles): with
``server_credentials: store`` they go to a file beside the data directory that only the server's
user can read, and the command sources it; with ``ambient`` the server's own environment or
instance role supplies them.

:func:`apply_archiving` applies the settings to a local cluster (the demo's, the tests'), with
ALTER SYSTEM, restarting it when ``archive_mode`` changes (that one needs a restart).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
from psycopg import sql

from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.cluster import LocalCluster
from platform_orchestration.postgres.server_user import chown_to_server_user

_GCS_KEY = "PLATFORM_GCS_SERVICE_ACCOUNT_JSON"
# archive_timeout bounds how long written WAL can wait in an unfinished segment: half the
# policy's allowed lag, within these limits (each switch ships a whole, mostly empty, segment).
MIN_ARCHIVE_TIMEOUT = timedelta(seconds=15)
MAX_ARCHIVE_TIMEOUT = timedelta(hours=1)
DEFAULT_ARCHIVE_TIMEOUT = timedelta(minutes=1)


def _compression_flag(compression: str) -> list[str]:
    return [] if compression == "none" else [f"--{compression}"]


def _prefixed_with_credentials(command: list[str], credentials_file: Path | None) -> str:
    line = " ".join(shlex.quote(part) if part not in ("%p", "%f") else part for part in command)
    if credentials_file is None:
        return line
    return f"set -a && . {shlex.quote(str(credentials_file))} && set +a && exec {line}"


def archive_command(tools: BarmanTools, repository: Repository, credentials_file: Path | None) -> str:
    """The ``archive_command`` shipping one segment (``%p``) with barman-cloud-wal-archive."""
    command = [*tools.command("wal-archive"), *repository.connection_options(for_server=True),
               *_compression_flag(repository.wal_compression), *repository.encryption_options(),
               repository.url, repository.server_name, "%p"]
    return _prefixed_with_credentials(command, credentials_file)


RESTORE_PREFETCH = 4


def restore_command(tools: BarmanTools, repository: Repository, credentials_file: Path | None,
                    spool_dir: Path | None = None) -> str:
    """The ``restore_command`` fetching one segment (``%f`` to ``%p``) with barman-cloud-wal-restore;
    with ``spool_dir`` (writable by the server's user) it prefetches the next segments there, so
    most calls find theirs on local disk instead of asking the store."""
    prefetch = ["--parallel", str(RESTORE_PREFETCH), "--spool-dir", str(spool_dir)] if spool_dir else []
    command = [*tools.command("wal-restore"), *repository.connection_options(for_server=True), *prefetch,
               repository.url, repository.server_name, "%f", "%p"]
    return _prefixed_with_credentials(command, credentials_file)


def archive_timeout(repository: Repository) -> timedelta:
    if repository.policy is None:
        return DEFAULT_ARCHIVE_TIMEOUT
    return max(MIN_ARCHIVE_TIMEOUT, min(MAX_ARCHIVE_TIMEOUT, repository.policy.wal_max_lag / 2))


def server_settings(tools: BarmanTools, repository: Repository, credentials_file: Path | None) -> dict[str, str]:
    """The server parameters that archive ``repository``'s cluster continuously."""
    return {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": archive_command(tools, repository, credentials_file),
        "archive_timeout": f"{int(archive_timeout(repository).total_seconds())}s",
    }


def credentials_file_for(base_dir: Path) -> Path:
    """Where a local cluster in ``base_dir`` keeps its repository credentials."""
    return base_dir / "physical" / "repository.env"


def write_credentials_file(path: Path, environment: Mapping[str, str]) -> Path:
    """Write ``environment`` as a shell file only the server's user can read (0600, its own
    directory 0700); a GCS service-account key goes to a file of its own beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    chown_to_server_user(path.parent)
    variables = dict(environment)
    gcs_key = variables.pop(_GCS_KEY, None)
    if gcs_key is not None:
        key_file = path.with_name("gcs-service-account.json")
        _write_private(key_file, gcs_key)
        variables["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
    _write_private(path, "".join(f"{name}={shlex.quote(value)}\n" for name, value in sorted(variables.items())))
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)
    chown_to_server_user(path)


@contextlib.contextmanager
def tool_environment(repository: Repository) -> Iterator[dict[str, str]]:
    """The environment for running a barman-cloud tool ourselves: ours plus the repository's
    credentials (a GCS key written to a private temporary file for the duration)."""
    env = {**os.environ, **repository.environment}
    gcs_key = env.pop(_GCS_KEY, None)
    if gcs_key is None:
        yield env
        return
    with tempfile.TemporaryDirectory(prefix="barman-gcs-") as directory:
        key_file = Path(directory) / "service-account.json"
        _write_private(key_file, gcs_key)
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key_file)
        yield env


@dataclass(frozen=True)
class ArchivingApplied:
    """What :func:`apply_archiving` changed: the parameters set, and whether it restarted."""

    cluster_dir: Path
    parameters: Mapping[str, str]
    restarted: bool


def _current_settings(conn: psycopg.Connection, names: list[str]) -> dict[str, str]:
    rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", (names,)).fetchall()
    return {name: setting for name, setting in rows}


def apply_archiving(cluster: LocalCluster, tools: BarmanTools, repository: Repository) -> ArchivingApplied:
    """Make the local ``cluster`` archive into ``repository``: credentials file, ALTER SYSTEM,
    then a reload, or a restart when ``archive_mode`` or ``wal_level`` must change."""
    credentials_file = None
    if repository.server_credentials == "store":
        credentials_file = write_credentials_file(credentials_file_for(cluster.base_dir),
                                                   repository.environment_for(for_server=True))
    parameters = server_settings(tools, repository, credentials_file)
    with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
        before = _current_settings(conn, ["archive_mode", "wal_level"])
        for name, value in parameters.items():
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
    needs_restart = before.get("archive_mode") != "on" or before.get("wal_level") not in ("replica", "logical")
    if needs_restart:
        cluster.stop()
        cluster.start()
    return ArchivingApplied(cluster.base_dir, parameters, needs_restart)
