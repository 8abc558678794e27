"""Base backups with barman-cloud-backup, and the repository's list of them.

barman-cloud-backup runs on the server's host (it reads the data directory and talks to the
server over libpq); we run it, name the backup, and read back what barman recorded
(``barman-cloud-backup-list --format json``): begin/end LSN and WAL, timeline, the cluster's
size, times. The bytes stored come from listing the backup's objects in the store.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import Future
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


# Variables of a repository's environment that hold no secret (shown as they are in errors).
NOT_SECRET = frozenset({"AWS_DEFAULT_REGION", "STORAGE_EMULATOR_HOST", "API_ENDPOINT_OVERRIDE", "GOOGLE_CLOUD_PROJECT"})


def scrub(text: str, repository: Repository, *extra: str | None) -> str:
    """``text`` with every credential of ``repository`` (and ``extra`` secrets) blanked."""
    values = [value for env in (repository.environment, repository.server_environment or {})
              for name, value in env.items() if name not in NOT_SECRET] + list(extra)
    # A connection string's key or signature may be echoed alone.
    parts = [part.split("=", 1)[1] for value in values if value and ";" in value
             for part in value.split(";") if part.startswith(("AccountKey=", "SharedAccessSignature="))]
    for secret in sorted({*(v for v in values if v), *parts}, key=len, reverse=True):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def run_tool(tools: BarmanTools, repository: Repository, tool: str, arguments: Sequence[str], *,
             what: str, timeout: float, extra_env: dict[str, str] | None = None,
             die_with_parent: bool = False) -> str:
    """Run ``barman-cloud-<tool>`` against ``repository``; its stdout, or PhysicalBackupFailed
    naming ``what`` failed and the tool's last words (credentials blanked). With
    ``die_with_parent`` the tool is SIGKILLed by the kernel if this process dies (a throwaway
    restore, whose directory the reaper then removes, must not be written to after that)."""
    command = [*tools.command(tool), *repository.connection_options(), *arguments]
    if die_with_parent and shutil.which("setpriv") is not None:
        command = ["setpriv", "--pdeathsig", "SIGKILL", *command]
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


def parse_backup_info(text: str, backup_id: str) -> BaseBackup:
    """A ``backup.info`` as barman writes it (``key=value`` lines, the time with its zone) as a
    :class:`BaseBackup`.

    >>> b = parse_backup_info("backup_name=x\\nstatus=DONE\\nbegin_time=2026-12-01 22:56:20.9+00:00\\n"
    ...                       "end_time=None\\ncluster_size=22553157\\nversion=160014\\ntimeline=1\\n", "20261201T225620")
    >>> (b.backup_id, b.status, b.cluster_bytes, b.server_major, b.end_time == b.begin_time)
    ('20261201T225620', 'DONE', 22553157, 16, True)
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and value != "None":
            fields[key.strip()] = value
    entry = {**fields, "backup_id": backup_id, "begin_time_iso": fields.get("begin_time"),
             "end_time_iso": fields.get("end_time")}
    try:
        return _parse_backup(entry)
    except (KeyError, TypeError, ValueError) as exc:
        raise PhysicalBackupFailed(f"backup {backup_id}: unreadable backup.info ({one_line(exc)})") from None


def _taken_from_store(store: ObjectStore, repository: Repository, name: str) -> list[BaseBackup]:
    """The backup named ``name``, from its ``backup.info`` in the store (newest ids first: it
    is normally the newest), with the bytes its objects take."""
    try:
        sizes = _stored_sizes(store, repository)
        for backup_id in sorted(sizes, reverse=True):
            key = f"{repository.base_prefix}{backup_id}/backup.info"
            backup = parse_backup_info(b"".join(store.read(key)).decode("utf-8", "replace"), backup_id)
            if backup.backup_name == name:
                return [_with_size(backup, sizes[backup_id])]
    except StoreError as exc:
        raise PhysicalBackupFailed(f"base backup of cluster {repository.cluster}: reading barman's record of "
                                   f"backup {name}: {one_line(exc)}") from exc
    return []


def _with_size(backup: BaseBackup, size: int | None) -> BaseBackup:
    return replace(backup, stored_bytes=size)


def backup_name_for(now: datetime) -> str:
    """The name we give a base backup: ``platform-<UTC time>`` (barman reserves a few words,
    and ids are barman's own)."""
    return "platform-" + now.strftime("%Y%m%dT%H%M%SZ")


def take_base_backup(tools: BarmanTools, repository: Repository, connection: PgConnection, *,
                     jobs: int = 2, clock: Clock = utc_now,
                     store: ObjectStore | Future[ObjectStore] | None = None) -> BaseBackupOutcome:
    """Take a base backup of the server behind ``connection`` into ``repository``.

    ``store`` (the repository's store, or a future of it being opened while barman-cloud-backup
    runs) is where barman's record of the backup is read back from; without it,
    barman-cloud-backup-list is asked.

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
    if isinstance(store, Future):
        store = store.result()
    # barman's own record, read from the store by our client (one listing, one read), not by a
    # second barman-cloud process (barman-cloud-backup-list cost 1.5 s a backup here, +14%).
    taken = (_taken_from_store(store, repository, name) if store is not None else
             [b for b in list_base_backups(tools, repository) if b.backup_name == name])
    if not taken or not taken[-1].done:
        status = taken[-1].status if taken else "not listed"
        raise PhysicalBackupFailed(f"{what}: barman-cloud-backup succeeded but backup {name} is {status}")
    return BaseBackupOutcome(backup=taken[-1], repository=repository.describe(), seconds=seconds)
