"""Seeding a standby: a new data directory filled from the primary, configured to stream from it
through a replication slot, started, and watched until it streams.

Two ways in, as CloudNativePG replica clusters have:

- **pg_basebackup** over the network (``-C -S SLOT``: the slot is created by the backup itself, so
  no WAL the standby needs can be removed between the backup and the first stream), with the
  standby's own replication login, whose password comes from a password file;
- **the physical repository** (barman-cloud-restore of the newest complete base backup of the
  primary's major, then ``restore_command`` replays the archived WAL until the standby catches up
  and streams): the primary only serves the stream, the bulk comes from the store.

Either way the standby keeps a ``restore_command`` when the primary has a repository: PostgreSQL
falls back to the archive whenever streaming breaks, and goes back to streaming when it can.
Archiving is turned *off* on the standby (it must never write into its primary's repository).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from platform_orchestration.physical.base_backup import BaseBackup, list_base_backups
from platform_orchestration.physical.base_backup import run_tool as run_barman
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.settings import credentials_file_for, restore_command, write_credentials_file
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.cluster import LocalCluster
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.replication.conninfo import passfile_for, primary_conninfo, write_passfile
from platform_orchestration.postgres.server_user import hand_to_server_user
from platform_orchestration.replication.server import (
    ReplicationFailed,
    ReplicationRefused,
    log_tail,
    prepare_cluster,
    run_tool,
    server_major,
    wait_streaming,
    write_standby_settings,
)
from platform_orchestration.replication.target import StandbyTarget

BASEBACKUP_TIMEOUT_SECONDS = 6 * 3600
STREAMING_TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True)
class ArchiveFallback:
    """The primary's repository, for the standby's ``restore_command`` (and a repository seed)."""

    tools: BarmanTools
    repository: Repository


@dataclass(frozen=True)
class SeedResult:
    standby: str
    method: str
    data_dir: Path
    port: int
    slot: str
    server_version: str
    seconds: float
    backup_id: str | None = None
    archive_fallback: bool = False
    # Where the time went, in order: (phase, seconds); the phases sum to ``seconds``.
    phases: tuple[tuple[str, float], ...] = ()


class _Phases:
    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.done: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.monotonic()
        self.done.append((name, now - self.last))
        self.last = now


def slot_state(primary: PgConnection, slot: str) -> tuple[bool, bool] | None:
    """(exists, active) of ``slot`` on the primary; None when it does not exist."""
    with primary.connect(autocommit=True) as conn:
        row = conn.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()
    return None if row is None else (True, bool(row[0]))


def release_stale_slot(primary: PgConnection, slot: str, standby: str) -> bool:
    """Drop ``slot`` when it exists and nothing streams through it (left by an earlier seed of this
    standby); ReplicationRefused when a server streams through it. True if one was dropped."""
    state = slot_state(primary, slot)
    if state is None:
        return False
    if state[1]:
        raise ReplicationRefused(f"seed of {standby}: replication slot {slot} on the primary is in use by a "
                                 "running standby; stop it (or name another slot) before seeding again")
    with primary.connect(autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    return True


def create_slot(primary: PgConnection, slot: str) -> str:
    """A physical slot reserving WAL from now; returns its restart LSN."""
    with primary.connect(autocommit=True) as conn:
        (lsn,) = conn.execute("SELECT lsn::text FROM pg_create_physical_replication_slot(%s, true)",
                              (slot,)).fetchone()
    return str(lsn)


def standby_settings(target: StandbyTarget, passfile: Path | None, restore: str | None) -> dict[str, str]:
    settings = {
        "primary_conninfo": primary_conninfo(target.stream_dsn, target.application_name, passfile),
        "primary_slot_name": target.slot,
        "recovery_target_timeline": "latest",
        "hot_standby": "on",
        "archive_mode": "off",
    }
    if restore:
        settings["restore_command"] = restore
    return settings


def _restore_for(cluster: LocalCluster, fallback: ArchiveFallback | None) -> str | None:
    if fallback is None:
        return None
    repository = fallback.repository
    credentials_file = None
    if repository.server_credentials == "store":
        credentials_file = write_credentials_file(credentials_file_for(cluster.base_dir), repository.environment)
    return restore_command(fallback.tools, repository, credentials_file)


def _passfile(cluster: LocalCluster, target: StandbyTarget) -> Path | None:
    if not target.stream_password:
        return None
    return write_passfile(passfile_for(cluster.base_dir), target.stream_dsn, target.stream_password)


def _refuse_password_in_settings(cluster: LocalCluster, target: StandbyTarget) -> None:
    secret = target.stream_password
    auto = cluster.data_dir / "postgresql.auto.conf"
    if secret and len(secret) >= 4 and secret in auto.read_text():
        raise ReplicationFailed(f"seed of {target.name}: a password reached {auto}; refusing to start it")


def start_standby(cluster: LocalCluster, *, what: str, timeout: float = STREAMING_TIMEOUT_SECONDS,
                  phases: _Phases | None = None) -> None:
    """Start a configured standby and wait until it streams."""
    from_pid = cluster.data_dir / "postmaster.pid"
    try:
        cluster.start()
    except Exception as exc:  # ClusterError: the server's own words are in its log
        if not from_pid.exists():
            raise ReplicationFailed(f"{what}: the server did not start: {log_tail(cluster)}") from None
        raise ReplicationFailed(f"{what}: {exc}") from None
    if phases is not None:
        phases.mark("server start")
    wait_streaming(cluster, cluster.connection(), timeout=timeout, what=what)
    if phases is not None:
        phases.mark("wait until streaming")


def seed_by_basebackup(target: StandbyTarget, base_dir: Path, *, fallback: ArchiveFallback | None = None,
                       timeout: float = STREAMING_TIMEOUT_SECONDS) -> SeedResult:
    """Seed ``target`` in ``base_dir`` (its data directory ``data/`` must not exist or be empty)
    with pg_basebackup from the primary through a new slot, and start it streaming."""
    what = f"seed of standby {target.name} from {target.primary_name}"
    phases = _Phases()
    major, version = server_major(target.primary)
    cluster = prepare_cluster(base_dir, target.standby_port, major, what=what)
    passfile = _passfile(cluster, target)
    release_stale_slot(target.primary, target.slot, target.name)
    phases.mark("checks")
    source = primary_conninfo(target.stream_dsn, target.application_name, passfile)
    run_tool([cluster.install.tool("pg_basebackup"), "-d", source, "-D", str(cluster.data_dir), "-X", "stream",
              "-c", "fast", "-C", "-S", target.slot, "-R", "--no-sync"],
             what=what, timeout=BASEBACKUP_TIMEOUT_SECONDS, secrets=[target.stream_password])
    phases.mark("pg_basebackup")
    hand_to_server_user(cluster.data_dir)
    write_standby_settings(cluster.data_dir, standby_settings(target, passfile, _restore_for(cluster, fallback)))
    _refuse_password_in_settings(cluster, target)
    phases.mark("settings")
    start_standby(cluster, what=what, timeout=timeout, phases=phases)
    return SeedResult(standby=target.name, method="basebackup", data_dir=cluster.data_dir, port=cluster.port,
                      slot=target.slot, server_version=version, seconds=time.monotonic() - phases.started,
                      archive_fallback=fallback is not None, phases=tuple(phases.done))


def newest_base_backup(backups: Sequence[BaseBackup], major: int) -> BaseBackup:
    done = [b for b in backups if b.done and b.server_major == major]
    if not done:
        raise ReplicationFailed(f"the repository holds no complete base backup of PostgreSQL {major} to seed from "
                                "(take one with platform-dr base-backup, or seed with basebackup)")
    return max(done, key=lambda b: (b.end_time, b.backup_id))


def seed_from_repository(target: StandbyTarget, base_dir: Path, fallback: ArchiveFallback, *,
                         timeout: float = STREAMING_TIMEOUT_SECONDS) -> SeedResult:
    """Seed ``target`` from the newest base backup in its primary's repository, replay the archive
    (restore_command) until it can stream through a new slot, and start it streaming."""
    what = f"seed of standby {target.name} from the repository of {target.primary_name}"
    started = time.monotonic()
    major, version = server_major(target.primary)
    backup = newest_base_backup(list_base_backups(fallback.tools, fallback.repository), major)
    cluster = prepare_cluster(base_dir, target.standby_port, major, what=what)
    passfile = _passfile(cluster, target)
    release_stale_slot(target.primary, target.slot, target.name)
    # Reserved from now: WAL older than this is in the archive, newer is kept for the stream.
    create_slot(target.primary, target.slot)
    run_barman(fallback.tools, fallback.repository, "restore",
               [fallback.repository.url, fallback.repository.server_name, backup.backup_id, str(cluster.data_dir)],
               what=f"{what}: restoring base backup {backup.backup_id}", timeout=BASEBACKUP_TIMEOUT_SECONDS)
    hand_to_server_user(cluster.data_dir)
    write_standby_settings(cluster.data_dir, standby_settings(target, passfile, _restore_for(cluster, fallback)))
    _refuse_password_in_settings(cluster, target)
    start_standby(cluster, what=what, timeout=timeout)
    return SeedResult(standby=target.name, method="repository", data_dir=cluster.data_dir, port=cluster.port,
                      slot=target.slot, server_version=version, seconds=time.monotonic() - started,
                      backup_id=backup.backup_id, archive_fallback=True)
