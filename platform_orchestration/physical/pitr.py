"""Point-in-time restore: a new cluster brought up at a chosen time, LSN or the end of the archive.

1. Refuse a target directory that holds anything and a port something listens on: a restore
   never writes over an existing (let alone running) cluster.
2. Pick the newest DONE base backup that ends before the target (for ``latest``: the newest).
3. barman-cloud-restore it into the new data directory; write the recovery settings
   (``restore_command`` = barman-cloud-wal-restore, the recovery target, promote at the target)
   and ``recovery.signal``; turn archiving *off*, so the restored server can never write into
   its source's repository.
4. Start it (as the server's user), wait until recovery ends and it is promoted, then verify
   the point it reached: ``pg_last_wal_replay_lsn()`` at or past a target LSN, the last replayed
   commit not after a target time, and the server's own "recovery stopping" line in its log.

RTO is the wall time of steps 2-4. A recovery that ends before the target (a missing
segment) fails loudly: PostgreSQL refuses to promote, and we report its reason.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
import zstandard

from platform_orchestration.errors import InvalidDeclaration, PlatformError, one_line
from platform_orchestration.physical.archiving import Segment, segments_in_store
from platform_orchestration.physical.base_backup import BaseBackup, list_base_backups, run_tool
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.settings import credentials_file_for, restore_command, write_credentials_file
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.binaries import PgInstall, find_installs
from platform_orchestration.ownership import Lease
from platform_orchestration.postgres.cluster import (
    ClusterError,
    LocalCluster,
    free_port,
    local_cluster,
    start_owned_server,
)
from platform_orchestration.storage import ObjectStore
from platform_orchestration.postgres.server_user import hand_to_server_user

_LSN = re.compile(r"[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}")
RESTORE_TIMEOUT_SECONDS = 6 * 3600
RECOVERY_TIMEOUT_SECONDS = 3600


class PitrRefused(InvalidDeclaration):
    """A point-in-time restore was asked for something it must not do (nothing was changed)."""


class PitrFailed(PlatformError):
    """A point-in-time restore did not bring up a cluster at the target."""


def lsn_value(lsn: str) -> int:
    """``0/2000028`` as a number.

    >>> lsn_value("1/0") - lsn_value("0/FFFFFFFF")
    1
    """
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass(frozen=True)
class RecoveryTarget:
    """Where to stop replaying: a time (timezone-aware), an LSN, or the end of the archive."""

    time: datetime | None = None
    lsn: str | None = None

    @property
    def latest(self) -> bool:
        return self.time is None and self.lsn is None

    @staticmethod
    def parse(text: str) -> RecoveryTarget:
        """``latest``, an LSN like ``0/3000060``, or an ISO time with its zone.

        >>> RecoveryTarget.parse("0/3000060").lsn
        '0/3000060'
        >>> RecoveryTarget.parse("2026-12-01T19:36:56Z").time.isoformat()
        '2026-12-01T19:36:56+00:00'
        """
        value = text.strip()
        if value == "latest":
            return RecoveryTarget()
        if _LSN.fullmatch(value):
            return RecoveryTarget(lsn=value.upper())
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise PitrRefused(f"--to {text!r}: expected latest, an LSN like 0/3000060, or an ISO time with its "
                              "zone like 2026-12-01T19:36:56Z") from None
        if moment.tzinfo is None:
            raise PitrRefused(f"--to {text!r}: give the time's zone (e.g. {value}Z or {value}+01:00)")
        return RecoveryTarget(time=moment)

    def describe(self) -> str:
        if self.time is not None:
            return f"time {self.time.isoformat()}"
        return f"LSN {self.lsn}" if self.lsn is not None else "latest"


@dataclass(frozen=True)
class PitrResult:
    """A cluster brought up at a point in time, still running at ``port`` in ``data_dir``."""

    cluster: str
    repository: str
    backup_id: str
    target: str
    reached_lsn: str
    last_replayed_commit: datetime | None
    stopped_at: str | None
    data_dir: Path
    port: int
    server_version: str
    rto_seconds: float
    restore_seconds: float
    recovery_seconds: float
    prefetched_segments: int = 0
    # The server process, when it is our throwaway child (restore_to_point with a lease).
    server: subprocess.Popen | None = field(default=None, compare=False, repr=False)


def choose_base_backup(backups: Sequence[BaseBackup], target: RecoveryTarget) -> BaseBackup:
    """The newest DONE backup a replay can reach ``target`` from: one that ended before it."""
    done = [b for b in backups if b.done]
    if target.time is not None:
        usable = [b for b in done if b.end_time < target.time]
    elif target.lsn is not None:
        usable = [b for b in done if b.end_lsn and lsn_value(b.end_lsn) <= lsn_value(target.lsn)]
    else:
        usable = done
    if not usable:
        oldest = f" (the oldest ends at {done[0].end_time.isoformat()}, LSN {done[0].end_lsn})" if done else ""
        raise PitrFailed(f"no base backup ends before {target.describe()}: "
                         f"{len(done)} complete base backup(s){oldest}")
    return max(usable, key=lambda b: (b.end_time, b.backup_id))


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _server_install(major: int) -> PgInstall:
    exact = [i for i in find_installs() if i.major == major and i.has("initdb", "pg_ctl", "postgres")]
    if not exact:
        raise PitrFailed(f"the base backup is of PostgreSQL {major}, and no PostgreSQL {major} server is installed "
                         "(a physical backup only starts on its own major)")
    return exact[0]


def _recovery_settings(target: RecoveryTarget, restore: str) -> dict[str, str]:
    # hot_standby off: no read-only phase, and no check of max_connections & co. against the source's.
    settings = {"restore_command": restore, "archive_mode": "off", "archive_command": "", "hot_standby": "off",
                "recovery_target_action": "promote", "recovery_target_timeline": "latest"}
    if target.time is not None:
        settings["recovery_target_time"] = target.time.isoformat()
    elif target.lsn is not None:
        settings["recovery_target_lsn"] = target.lsn
    return settings


def _quote_setting(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def write_recovery_config(data_dir: Path, settings: dict[str, str]) -> None:
    """Replace the restored ``postgresql.auto.conf`` (the source's archive settings must not
    survive) with our recovery settings, and add ``recovery.signal``."""
    auto = data_dir / "postgresql.auto.conf"
    kept = []
    if auto.exists():
        for line in auto.read_text().splitlines():
            name = line.split("=", 1)[0].strip()
            if name and name not in settings and not name.startswith(("archive_", "restore_", "recovery_")):
                kept.append(line)
    auto.write_text("\n".join([*kept, *(f"{k} = {_quote_setting(v)}" for k, v in settings.items())]) + "\n")
    (data_dir / "recovery.signal").write_text("")


def _log_lines(cluster: LocalCluster) -> list[str]:
    return cluster.log_file.read_text(errors="replace").splitlines() if cluster.log_file.exists() else []


def _recovery_failure(cluster: LocalCluster) -> str:
    lines = _log_lines(cluster)
    fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
    return one_line((fatal or lines[-3:] or ["no log"])[-1])


def _wait_for_promotion(cluster: LocalCluster, deadline: float) -> None:
    while True:
        if not (cluster.data_dir / "postmaster.pid").exists():
            raise PitrFailed(f"recovery stopped before it could promote: {_recovery_failure(cluster)}")
        try:
            with psycopg.connect(cluster.connection().dsn, autocommit=True, connect_timeout=5) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError:
            pass  # still starting, or replaying before consistency
        if time.monotonic() > deadline:
            raise PitrFailed(f"recovery did not finish within {RECOVERY_TIMEOUT_SECONDS}s; see {cluster.log_file}")
        time.sleep(0.2)


def _verify(cluster: LocalCluster, target: RecoveryTarget) -> tuple[str, datetime | None, str | None, str]:
    with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
        reached, last_commit, version = conn.execute(
            "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
            "current_setting('server_version')").fetchone()
    stopping = [line.split("LOG:", 1)[-1].strip() for line in _log_lines(cluster) if "recovery stopping" in line]
    stopped_at = stopping[-1] if stopping else None
    if not target.latest and stopped_at is None:
        raise PitrFailed(f"the server promoted without reaching {target.describe()} (no 'recovery stopping' in "
                         f"its log; replayed to {reached})")
    if target.lsn is not None and (reached is None or lsn_value(reached) < lsn_value(target.lsn)):
        raise PitrFailed(f"replayed to {reached}, short of the target LSN {target.lsn}")
    if target.time is not None and last_commit is not None and last_commit > target.time:
        raise PitrFailed(f"the last replayed commit ({last_commit.isoformat()}) is after the target "
                         f"{target.time.isoformat()}")
    return reached or "", last_commit, stopped_at, version


def _segment_of(lsn: str, segment_bytes: int, timeline: int) -> Segment:
    return Segment(timeline, lsn_value(lsn) // segment_bytes)


def check_wal_reaches(store: ObjectStore, repository: Repository, backup: BaseBackup,
                      target: RecoveryTarget) -> Segment | None:
    """PitrFailed if a segment a replay from ``backup`` to ``target`` needs is missing from the
    repository; returns the newest segment there (what ``latest`` must reach). A time target is
    left to the replay: where in the WAL a time falls is only known by replaying it. Timelines
    after the backup's are not followed (yet)."""
    present = [s for s in segments_in_store(store, repository, backup.segment_bytes) if s.timeline == backup.timeline]
    first = Segment.parse(backup.begin_wal, backup.segment_bytes)
    if first is None or not present:
        raise PitrFailed(f"the repository {repository.describe()} holds no WAL for base backup {backup.backup_id}")
    last = present[-1]
    if target.lsn is not None:
        last = min(last, _segment_of(target.lsn, backup.segment_bytes, last.timeline))
    held = set(present)
    gaps = [Segment(first.timeline, n) for n in range(first.number, last.number + 1)
            if Segment(first.timeline, n) not in held]
    if gaps and target.time is None:
        names = ", ".join(s.name(backup.segment_bytes) for s in gaps[:5])
        raise PitrFailed(f"{len(gaps)} WAL segment(s) missing from the repository between base backup "
                         f"{backup.backup_id} and {target.describe()}: {names}; a replay would stop at the first")
    return present[-1]


# Segments fetched by us before the server starts, at once: each restore_command call that finds
# its segment on local disk costs a `cp` instead of a Python process and a store round trip.
PREFETCH_THREADS = 4
PREFETCH_MAX_SEGMENTS = 4096
_DECOMPRESS = {".zst": lambda data: zstandard.ZstdDecompressor().stream_reader(data).read(),
               ".gz": gzip.decompress, ".bz2": bz2.decompress, "": lambda data: data}


_HISTORY = re.compile(r"([0-9A-F]{8}\.history)((?:\.[a-z0-9]+)?)")


def prefetch_wal(store: ObjectStore, repository: Repository, backup: BaseBackup, target: RecoveryTarget,
                 directory: Path) -> int:
    """Download and decompress, in parallel into ``directory``, every timeline history file and
    the segments a replay from ``backup`` to ``target`` reads (for a time target: up to the newest);
    returns how many. Everything else the repository held at the listing is marked in
    ``directory/.remote`` for barman-cloud-wal-restore to fetch (a compression we do not read
    here: lz4, xz, snappy; past the prefetch limit). What the listing did not hold does not exist
    for this restore: ``latest`` is the newest WAL when the restore began."""
    first = Segment.parse(backup.begin_wal, backup.segment_bytes)
    last = _segment_of(target.lsn, backup.segment_bytes, backup.timeline) if target.lsn else None
    wanted, remote = [], []
    for info in store.list(repository.wals_prefix):
        name = info.key.rsplit("/", 1)[-1]
        history = _HISTORY.fullmatch(name)
        if history is not None:
            plain, suffix = history.groups()
        else:
            segment = Segment.parse(name, backup.segment_bytes)
            if segment is None:
                continue  # a backup label or a partial segment: never asked for by its own name
            plain, suffix = name[:24], name[24:]
            if first is None or segment < first or (last is not None and segment > last):
                remote.append(plain)
                continue
        (wanted if suffix in _DECOMPRESS else remote).append((info.key, plain, suffix) if suffix in _DECOMPRESS
                                                             else plain)
    wanted.sort(key=lambda item: item[1])
    remote += [plain for _, plain, _ in wanted[PREFETCH_MAX_SEGMENTS:]]
    wanted = wanted[:PREFETCH_MAX_SEGMENTS]
    (directory / ".remote").mkdir(exist_ok=True)
    for plain in remote:
        (directory / ".remote" / plain).touch()

    def fetch(item: tuple[str, str, str]) -> None:
        key, name, suffix = item
        data = _DECOMPRESS[suffix](b"".join(store.read(key)))
        partial = directory / f".{name}.partial"
        partial.write_bytes(data)
        partial.rename(directory / name)

    with ThreadPoolExecutor(max_workers=PREFETCH_THREADS, thread_name_prefix="wal-prefetch") as pool:
        list(pool.map(fetch, wanted))
    return len(wanted)


def _local_first(restore: str, directory: Path) -> str:
    """A restore_command that copies a prefetched file, asks barman-cloud-wal-restore only for what
    the listing held but we did not fetch, and answers "no such file" at once for the rest."""
    local = shlex.quote(str(directory))
    return (f"if [ -f {local}/%f ]; then exec cp {local}/%f %p; fi; "
            f"if [ ! -e {local}/.remote/%f ]; then exit 1; fi; {restore}")


def restore_to_point(tools: BarmanTools, repository: Repository, target: RecoveryTarget, target_dir: Path, *,
                     port: int | None = None, backups: Sequence[BaseBackup] | None = None,
                     store: ObjectStore | None = None, lease: Lease | None = None) -> PitrResult:
    """Bring up a new cluster in ``target_dir`` at ``target`` from ``repository``; it is left running
    (stop it with ``pg_ctl -D <data_dir> stop``). See the module docstring for the steps. With
    ``store`` (the repository's store), missing WAL is found before anything is restored, and a
    restore to ``latest`` is checked to have replayed the newest segment in the repository.

    With ``lease`` the cluster is a throwaway (a drill's), as an ephemeral cluster is: its
    directory is named in the lease before it is made, barman-cloud-restore and the server die
    with this process (a parent-death signal), the server is recorded in the lease, and a
    restore that fails stops its server instead of leaving it for inspection. The reaper
    (``platform-dr cleanup``) removes what a killed owner left; the caller removes the rest
    (:func:`stop_restored` with ``remove``, then ``lease.release()``)."""
    target_dir = Path(target_dir).absolute()
    if target_dir.exists() and (not target_dir.is_dir() or any(target_dir.iterdir())):
        raise PitrRefused(f"target directory {target_dir} is not empty: a point-in-time restore never writes over "
                          "an existing cluster; give a new or empty directory")
    if port is not None and _port_in_use(port):
        raise PitrRefused(f"port {port} is in use: a point-in-time restore never starts over a running server")
    started = time.monotonic()
    chosen = choose_base_backup(backups if backups is not None else list_base_backups(tools, repository), target)
    install = _server_install(chosen.server_major)
    newest = check_wal_reaches(store, repository, chosen, target) if store is not None else None
    cluster = local_cluster(target_dir, port or free_port(), chosen.server_major)
    cluster = LocalCluster(cluster.base_dir, cluster.port, install if cluster.install.major != install.major
                           else cluster.install)
    if cluster.base_dir != target_dir and cluster.base_dir.exists() and any(cluster.base_dir.iterdir()):
        raise PitrRefused(f"{cluster.base_dir} (where {target_dir} is kept, since the server's user cannot reach it) "
                          "is not empty: a point-in-time restore never writes over an existing cluster")
    if lease is not None:
        lease.add_paths(cluster.base_dir)
    cluster.base_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cluster.base_dir, 0o755)
    run_tool(tools, repository, "restore", [repository.url, repository.server_name, chosen.backup_id,
                                            str(cluster.data_dir)],
             what=f"restoring base backup {chosen.backup_id} of cluster {repository.cluster}",
             timeout=RESTORE_TIMEOUT_SECONDS, die_with_parent=lease is not None)
    restored_at = time.monotonic()
    credentials_file = None
    if repository.server_credentials == "store":
        credentials_file = write_credentials_file(credentials_file_for(cluster.base_dir),
                                                   repository.environment_for(for_server=True))
    spool = cluster.base_dir / "physical" / "wal-spool"
    spool.mkdir(parents=True, exist_ok=True)
    hand_to_server_user(spool.parent)
    restore = restore_command(tools, repository, credentials_file, spool)
    prefetched = 0
    if store is not None:
        fetched_dir = cluster.base_dir / "physical" / "wal-prefetched"
        fetched_dir.mkdir(parents=True, exist_ok=True)
        prefetched = prefetch_wal(store, repository, chosen, target, fetched_dir)
        hand_to_server_user(fetched_dir)
        restore = _local_first(restore, fetched_dir)
    write_recovery_config(cluster.data_dir, _recovery_settings(target, restore))
    (cluster.data_dir / "postmaster.pid").unlink(missing_ok=True)
    os.chmod(cluster.data_dir, 0o700)
    cluster.socket_dir.mkdir(exist_ok=True)
    cluster.log_file.touch()
    for path in (cluster.data_dir, cluster.socket_dir, cluster.log_file):
        hand_to_server_user(path)
    server = _start_restored(cluster) if lease is not None else None
    try:
        if server is not None:
            lease.record_server(server.pid, cluster.port, cluster.data_dir)  # type: ignore[union-attr]
        else:
            _start_kept(cluster)
        _wait_for_promotion(cluster, time.monotonic() + RECOVERY_TIMEOUT_SECONDS)
        reached, last_commit, stopped_at, version = _verify(cluster, target)
        if target.latest and newest is not None and reached and (
                _segment_of(reached, chosen.segment_bytes, newest.timeline).number < newest.number):
            kept = "" if server is not None else f"; the cluster in {cluster.data_dir} is left running for inspection"
            raise PitrFailed(f"replay stopped at {reached}, before the newest segment in the repository "
                             f"({newest.name(chosen.segment_bytes)}): WAL between them is missing or unreadable"
                             + kept)
    except BaseException:
        if server is not None:
            _stop_owned(server)
        raise
    finished = time.monotonic()
    return PitrResult(
        cluster=repository.cluster, repository=repository.describe(), backup_id=chosen.backup_id,
        target=target.describe(), reached_lsn=reached, last_replayed_commit=last_commit, stopped_at=stopped_at,
        data_dir=cluster.data_dir, port=cluster.port, server_version=version, rto_seconds=finished - started,
        restore_seconds=restored_at - started, recovery_seconds=finished - restored_at,
        prefetched_segments=prefetched, server=server,
    )


def _start_kept(cluster: LocalCluster) -> None:
    """Start a restored cluster that outlives us (pg_ctl: the operator's new cluster)."""
    try:
        cluster.start()
    except ClusterError as exc:
        if not (cluster.data_dir / "postmaster.pid").exists():
            raise PitrFailed(f"restored cluster did not start: {_recovery_failure(cluster)}") from None
        if "server did not start in time" not in str(exc):
            raise PitrFailed(f"restored cluster did not start: {one_line(exc)}") from None


def _start_restored(cluster: LocalCluster) -> subprocess.Popen:
    """Start a throwaway restored cluster as our child, dying with us (see
    :func:`~platform_orchestration.postgres.cluster.start_owned_server`); it is up once its
    postmaster wrote its pid file (recovery then runs; :func:`_wait_for_promotion` waits)."""
    try:
        return start_owned_server(cluster, ready=lambda: (cluster.data_dir / "postmaster.pid").exists())
    except ClusterError:
        raise PitrFailed(f"recovery stopped before it could promote: {_recovery_failure(cluster)}") from None


def _stop_owned(server: subprocess.Popen, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT) of a server we started, SIGQUIT then SIGKILL if it lingers."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        if server.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(sig)
        try:
            server.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def stop_restored(result: PitrResult, *, remove: bool = False) -> None:
    """Stop a cluster :func:`restore_to_point` brought up (and delete it, with ``remove``)."""
    install = _server_install(int(result.server_version.split(".")[0]))
    cluster = LocalCluster(result.data_dir.parent, result.port, install)
    try:
        if result.server is not None:
            _stop_owned(result.server)
        else:
            cluster.stop()
    finally:
        if remove:
            shutil.rmtree(cluster.base_dir, ignore_errors=True)
