"""Local PostgreSQL data directories for standbys, their copies and re-pointed primaries: filled by a
tool (pg_basebackup, barman-cloud-restore, pg_rewind) instead of initdb, handed to the server's
user, configured as standbys, started and watched until they stream.

The servers are this project's local clusters (:class:`~platform_orchestration.postgres.LocalCluster`,
started with ``pg_ctl`` as ``nobody`` when we are root), as point-in-time restores are.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psycopg

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.postgres.binaries import PgInstall, find_installs
from platform_orchestration.postgres.cluster import LocalCluster, local_cluster
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.server_user import hand_to_server_user

# Settings a copy of a server must not inherit: where it archives to, where it streams from.
_INHERITED = ("archive_", "restore_command", "primary_conninfo", "primary_slot_name", "recovery_")


class ReplicationFailed(PlatformError):
    """A standby could not be seeded, started, promoted or re-pointed; or a drill's copy could not."""


class ReplicationRefused(PlatformError):
    """A replication operation was asked for something it must not do (nothing was changed)."""

    exit_code = 2


def server_major(connection: PgConnection) -> tuple[int, str]:
    """The major and version of the server behind ``connection``."""
    with connection.connect(autocommit=True) as conn:
        number, version = conn.execute(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')").fetchone()
    return int(number) // 10000, str(version)


def exact_install(major: int) -> PgInstall:
    """An installed PostgreSQL of exactly ``major`` (a physical copy only starts on its own major)."""
    exact = [i for i in find_installs() if i.major == major and i.has("postgres", "pg_ctl", "pg_basebackup")]
    if not exact:
        raise ReplicationFailed(f"no PostgreSQL {major} server is installed here (a physical copy only starts "
                                "on its own major)")
    return exact[0]


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def prepare_cluster(base_dir: Path, port: int, major: int, *, what: str) -> LocalCluster:
    """A local cluster of ``major`` in ``base_dir`` whose empty data directory the server's user owns;
    ReplicationRefused if a data directory with anything in it is there, or the port is taken."""
    cluster = local_cluster(Path(base_dir).absolute(), port, major)
    if cluster.install.major != major:
        raise ReplicationFailed(f"{what}: no PostgreSQL {major} server is installed here "
                                f"(found {cluster.install.version}; a physical copy only starts on its own major)")
    if cluster.data_dir.exists() and any(cluster.data_dir.iterdir()):
        raise ReplicationRefused(f"{what}: {cluster.data_dir} is not empty: a seed never writes over an existing "
                                 "data directory (stop that server and move it away, or give another directory)")
    if port_in_use(port):
        raise ReplicationRefused(f"{what}: port {port} is in use: a seed never starts over a running server")
    cluster.base_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cluster.base_dir, 0o755)
    cluster.data_dir.mkdir(mode=0o700, exist_ok=True)
    cluster.socket_dir.mkdir(exist_ok=True)
    cluster.log_file.touch()
    for path in (cluster.data_dir, cluster.socket_dir, cluster.log_file):
        hand_to_server_user(path)
    return cluster


def run_tool(command: Sequence[str], *, what: str, timeout: float, env: Mapping[str, str] | None = None,
             secrets: Sequence[str | None] = ()) -> str:
    """Run a PostgreSQL tool; its output, or ReplicationFailed naming ``what`` and the tool's last
    words (any of ``secrets`` blanked)."""
    try:
        result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout,
                                env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired:
        raise ReplicationFailed(f"{what}: {Path(command[0]).name if command else 'tool'} did not finish "
                                f"in {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        detail = one_line(" ".join(lines[-3:]) or "no output")
        for secret in secrets:
            if secret:
                detail = detail.replace(secret, "***")
        tool = next((Path(part).name for part in command if Path(part).name.startswith("pg_")), command[0])
        raise ReplicationFailed(f"{what}: {tool} exited {result.returncode}: {detail}")
    return result.stdout


def quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def write_standby_settings(data_dir: Path, settings: Mapping[str, str], *, signal: str | None = "standby.signal") -> None:
    """Replace what ``postgresql.auto.conf`` says about archiving, recovery and the upstream (a copy
    must not archive into its source's repository nor stream through its source's slot) with
    ``settings``, and leave exactly ``signal`` (``standby.signal``, or none) as recovery signal."""
    auto = data_dir / "postgresql.auto.conf"
    kept = []
    if auto.exists():
        for line in auto.read_text().splitlines():
            name = line.split("=", 1)[0].strip()
            if name and name not in settings and not name.startswith(_INHERITED):
                kept.append(line)
    auto.write_text("\n".join([*kept, *(f"{k} = {quote_setting(v)}" for k, v in settings.items())]) + "\n")
    for name in ("standby.signal", "recovery.signal"):
        if name != signal:
            (data_dir / name).unlink(missing_ok=True)
    if signal is not None:
        (data_dir / signal).write_text("")
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    hand_to_server_user(data_dir)


def log_tail(cluster: LocalCluster, lines: int = 3) -> str:
    if not cluster.log_file.exists():
        return "no log"
    text = cluster.log_file.read_text(errors="replace").splitlines()
    fatal = [line for line in text if "FATAL" in line or "PANIC" in line]
    return one_line(" ".join((fatal or text)[-lines:]) or "empty log")


def local_connection(cluster: LocalCluster, dbname: str = "postgres") -> PgConnection:
    return cluster.connection(dbname)


def wait_until(probe, *, timeout: float, what: str, interval: float = 0.1):
    """Call ``probe()`` until it returns something true (returned) or ``timeout`` passes
    (ReplicationFailed naming ``what``). Connection errors count as "not yet"."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            value = probe()
            if value:
                return value
        except (psycopg.Error, PlatformError) as exc:
            last = f" (last: {one_line(exc)[:300]})"
        if time.monotonic() > deadline:
            raise ReplicationFailed(f"{what} did not happen within {timeout:.0f}s{last}")
        time.sleep(interval)


def receiver_status(connection: PgConnection) -> str | None:
    """The standby's walreceiver status (``streaming`` when it streams), None without one."""
    with connection.connect(autocommit=True, connect_timeout=3) as conn:
        row = conn.execute("SELECT status FROM pg_stat_wal_receiver").fetchone()
    return row[0] if row else None


def wait_streaming(cluster: LocalCluster, connection: PgConnection, *, timeout: float, what: str) -> None:
    """Wait until the standby's walreceiver streams; ReplicationFailed with the server's log if it
    stops or does not get there within ``timeout``."""
    def streaming() -> bool:
        if not (cluster.data_dir / "postmaster.pid").exists():
            raise ReplicationFailed(f"{what}: the server stopped: {log_tail(cluster)}")
        return receiver_status(connection) == "streaming"

    try:
        wait_until(streaming, timeout=timeout, what=f"{what}: streaming")
    except ReplicationFailed as exc:
        raise ReplicationFailed(f"{exc}; server log: {log_tail(cluster)}") from None
