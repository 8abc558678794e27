"""Base backups with barman-cloud-backup, and the repository's list of them.

barman-cloud-backup runs on the server's host (it reads the data directory and talks to the
server over libpq); we run it, name the backup, and read back what barman recorded
(``barman-cloud-backup-list --format json``): begin/end LSN and WAL, timeline, the cluster's
size, times. The bytes stored come from listing the backup's objects in the store.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.physical.repository import Repository
from platform_orchestration.physical.settings import tool_environment
from platform_orchestration.physical.tools import BarmanTools
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.storage import ObjectStore, StoreError

BACKUP_TIMEOUT_SECONDS = 6 * 3600
LIST_TIMEOUT_SECONDS = 300


class PhysicalBackupFailed(PlatformError):
    """A barman-cloud tool failed against a cluster's physical repository."""


@dataclass(frozen=True)
class BaseBackup:
    """One base backup in a physical repository, as barman recorded it."""

    backup_id: str
    backup_name: str | None
    status: str
    begin_lsn: str
    end_lsn: str
    begin_wal: str
    end_wal: str
    timeline: int
    begin_time: datetime
    end_time: datetime
    cluster_bytes: int
    server_version: int
    system_id: str
    stored_bytes: int | None = None
    segment_bytes: int = 16 * 2**20

    @property
    def server_major(self) -> int:
        return self.server_version // 10000

    @property
    def duration_seconds(self) -> float:
        return (self.end_time - self.begin_time).total_seconds()

    @property
    def done(self) -> bool:
        return self.status == "DONE"


@dataclass(frozen=True)
class BaseBackupOutcome:
    """A base backup just taken: what barman recorded, and our wall time for the whole command."""

    backup: BaseBackup
    repository: str
    seconds: float

    @property
    def throughput_mib_s(self) -> float:
        return self.backup.cluster_bytes / 2**20 / self.seconds if self.seconds > 0 else 0.0


def scrub(text: str, repository: Repository, *extra: str | None) -> str:
    """``text`` with every credential of ``repository`` (and ``extra`` secrets) blanked."""
    for secret in [*repository.environment.values(), *extra]:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def run_tool(tools: BarmanTools, repository: Repository, tool: str, arguments: Sequence[str], *,
             what: str, timeout: float, extra_env: dict[str, str] | None = None) -> str:
    """Run ``barman-cloud-<tool>`` against ``repository``; its stdout, or PhysicalBackupFailed
    naming ``what`` failed and the tool's last words (credentials blanked)."""
    command = [*tools.command(tool), *repository.connection_options(), *arguments]
    with tool_environment(repository) as env:
        env.update(extra_env or {})
        try:
            result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PhysicalBackupFailed(f"{what}: barman-cloud-{tool} did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "ERROR" in line] or lines[-3:]
        detail = scrub(one_line(" ".join(errors[-3:]) or "no output"), repository,
                       *(extra_env or {}).values())
        raise PhysicalBackupFailed(f"{what}: barman-cloud-{tool} exited {result.returncode}: {detail}")
    return result.stdout


def _parse_backup(entry: dict) -> BaseBackup:
    return BaseBackup(
        backup_id=entry["backup_id"], backup_name=entry.get("backup_name"), status=entry["status"],
        begin_lsn=entry.get("begin_xlog") or "", end_lsn=entry.get("end_xlog") or "",
        begin_wal=entry.get("begin_wal") or "", end_wal=entry.get("end_wal") or "",
        timeline=int(entry.get("timeline") or 1),
        begin_time=datetime.fromisoformat(entry["begin_time_iso"]),
        end_time=datetime.fromisoformat(entry["end_time_iso"]) if entry.get("end_time_iso")
        else datetime.fromisoformat(entry["begin_time_iso"]),
        cluster_bytes=int(entry.get("cluster_size") or 0), server_version=int(entry.get("version") or 0),
        system_id=str(entry.get("systemid") or ""),
        segment_bytes=int(entry.get("xlog_segment_size") or 16 * 2**20),
    )


def _stored_sizes(store: ObjectStore, repository: Repository) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for info in store.list(repository.base_prefix):
        backup_id = info.key[len(repository.base_prefix):].split("/", 1)[0]
        sizes[backup_id] = sizes.get(backup_id, 0) + info.size
    return sizes


def list_base_backups(tools: BarmanTools, repository: Repository, store: ObjectStore | None = None
                      ) -> list[BaseBackup]:
    """The repository's base backups, oldest first; with ``store`` (the repository's store, opened
    by us) each carries the bytes its objects take there."""
    output = run_tool(tools, repository, "backup-list", ["--format", "json", repository.url, repository.server_name],
                      what=f"listing base backups of cluster {repository.cluster} in {repository.describe()}",
                      timeout=LIST_TIMEOUT_SECONDS)
    try:
        entries = json.loads(output)["backups_list"]
    except (ValueError, KeyError, TypeError) as exc:
        raise PhysicalBackupFailed(f"listing base backups of cluster {repository.cluster}: "
                                   f"barman-cloud-backup-list printed no backup list ({exc})") from None
    backups = [_parse_backup(entry) for entry in entries]
    if store is not None:
        try:
            sizes = _stored_sizes(store, repository)
        except StoreError as exc:
            raise PhysicalBackupFailed(f"listing base backups of cluster {repository.cluster}: {exc}") from exc
        backups = [_with_size(b, sizes.get(b.backup_id)) for b in backups]
    return sorted(backups, key=lambda b: (b.begin_time, b.backup_id))


def _with_size(backup: BaseBackup, size: int | None) -> BaseBackup:
    return replace(backup, stored_bytes=size)


def backup_name_for(now: datetime) -> str:
    """The name we give a base backup: ``platform-<UTC time>`` (barman reserves a few words,
    and ids are barman's own)."""
    return "platform-" + now.strftime("%Y%m%dT%H%M%SZ")


def take_base_backup(tools: BarmanTools, repository: Repository, connection: PgConnection, *,
                     jobs: int = 2, clock: Clock = utc_now, store: ObjectStore | None = None) -> BaseBackupOutcome:
    """Take a base backup of the server behind ``connection`` into ``repository``.

    Runs on the server's host. A failure leaves no backup marked DONE (barman writes
    ``backup.info`` with status DONE last), and raises PhysicalBackupFailed."""
    name = backup_name_for(clock())
    compression = [] if repository.backup_compression == "none" else [f"--{repository.backup_compression}"]
    extra_env = {"PGPASSWORD": connection.password} if connection.password else {}
    what = f"base backup of cluster {repository.cluster} to {repository.describe()}"
    started = time.monotonic()
    run_tool(tools, repository, "backup",
             [*compression, *repository.encryption_options(), "-J", str(jobs), "--immediate-checkpoint",
              "-d", connection.dsn, "-n", name,
              repository.url, repository.server_name],
             what=what, timeout=BACKUP_TIMEOUT_SECONDS, extra_env=extra_env)
    seconds = time.monotonic() - started
    taken = [b for b in list_base_backups(tools, repository, store) if b.backup_name == name]
    if not taken or not taken[-1].done:
        status = taken[-1].status if taken else "not listed"
        raise PhysicalBackupFailed(f"{what}: barman-cloud-backup succeeded but backup {name} is {status}")
    return BaseBackupOutcome(backup=taken[-1], repository=repository.describe(), seconds=seconds)
