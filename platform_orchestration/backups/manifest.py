"""The backup format: ids, object keys, and the manifest that makes a backup exist.

Layout in every store (every key is built by the functions here):

    backups/<database>/<backup_id>/dump.pgdump.zst   pg_dump custom format, zstd-compressed
                                                     (then encrypted, when the manifest has
                                                     an `encryption` section)
    backups/<database>/<backup_id>/globals.sql.zst   pg_dumpall --globals-only --no-role-passwords
                                                     (roles, memberships, role settings,
                                                     tablespaces), zstd, encrypted like the dump
    backups/<database>/<backup_id>/manifest.json     written last, only after the copy verified
    drills/<database>/<drill_id>.json                restore-drill evidence
    evidence/compliance/<evidence_id>.json           fleet compliance reports

Ids are made by the function named for what they identify (:func:`new_backup_id`,
:func:`new_drill_id`, :func:`new_evidence_id`) from the worker's clock, and sort by time.

A backup without a manifest does not exist for anybody: listing, restore, retention and
checks all start from manifests, so an interrupted backup or copy is never mistaken for
a good one and the previous backup stays the latest.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from platform_orchestration.errors import PlatformError

FORMAT_VERSION = 1
DUMP_OBJECT = "dump.pgdump.zst"
GLOBALS_OBJECT = "globals.sql.zst"
MANIFEST_OBJECT = "manifest.json"


class ManifestError(PlatformError, ValueError):
    """A stored manifest is unreadable or does not describe the backup it sits beside."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.reason = reason


def _time_sortable_id(now: datetime) -> str:
    """UTC timestamp to the millisecond, plus a random tail: ids that sort by time.

    >>> _time_sortable_id(datetime(2026, 11, 25, 21, 33, 7, 123456, tzinfo=timezone.utc))[:19]
    '20261125T213307123Z'
    """
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(3)}"


def new_backup_id(now: datetime) -> str:
    """The id of a backup started at `now` (the worker's clock)."""
    return _time_sortable_id(now)


def new_drill_id(now: datetime) -> str:
    """The id of a restore drill started at `now` (the worker's clock)."""
    return _time_sortable_id(now)


def new_evidence_id(now: datetime) -> str:
    """The id of a compliance evidence document generated at `now` (the worker's clock)."""
    return _time_sortable_id(now)


BACKUPS_PREFIX = "backups/"
DRILLS_PREFIX = "drills/"
EVIDENCE_PREFIX = "evidence/compliance/"


def backups_prefix(database: str | None = None) -> str:
    """Where every backup of `database` (of every database, when None) lives."""
    return f"{BACKUPS_PREFIX}{database}/" if database else BACKUPS_PREFIX


def backup_prefix(database: str, backup_id: str) -> str:
    return f"{backups_prefix(database)}{backup_id}/"


def dump_key(database: str, backup_id: str) -> str:
    return backup_prefix(database, backup_id) + DUMP_OBJECT


def globals_key(database: str, backup_id: str) -> str:
    return backup_prefix(database, backup_id) + GLOBALS_OBJECT


def manifest_key(database: str, backup_id: str) -> str:
    return backup_prefix(database, backup_id) + MANIFEST_OBJECT


def globals_binding(backup_id: str) -> str:
    """The id the globals object's ciphertext is bound to (as associated data, with the
    database): not the dump's, so the two ciphertexts of one backup cannot be swapped.

    >>> globals_binding("20261125T213307123Z-a1b2c3")
    '20261125T213307123Z-a1b2c3/globals'
    """
    return backup_id + "/globals"
def drills_prefix(database: str) -> str:
    return f"{DRILLS_PREFIX}{database}/"


def drill_key(database: str, drill_id: str) -> str:
    return f"{drills_prefix(database)}{drill_id}.json"


def evidence_key(evidence_id: str) -> str:
    return f"{EVIDENCE_PREFIX}{evidence_id}.json"


def is_manifest_key(key: str) -> bool:
    return key.startswith(BACKUPS_PREFIX) and key.endswith("/" + MANIFEST_OBJECT)


def database_of_key(key: str) -> str | None:
    """The database a backup object or drill record belongs to, from its key, else None.

    >>> database_of_key("backups/orders/20261125T213307123Z-a1b2c3/manifest.json")
    'orders'
    """
    parts = key.split("/")
    return parts[1] if len(parts) >= 3 and parts[0] + "/" in (BACKUPS_PREFIX, DRILLS_PREFIX) else None


def backup_id_of_key(key: str) -> str | None:
    """The backup id in a key of ``backups/<database>/<backup_id>/<object>``, else None: what a
    manifest that cannot be read still says about itself.

    >>> backup_id_of_key("backups/orders/20261125T213307123Z-a1b2c3/manifest.json")
    '20261125T213307123Z-a1b2c3'
    >>> backup_id_of_key("drills/orders/x.json") is None
    True
    """
    parts = key.split("/")
    return parts[2] if len(parts) == 4 and parts[0] + "/" == BACKUPS_PREFIX else None


def drill_id_of_key(key: str) -> str | None:
    """The drill id in a key of ``drills/<database>/<drill_id>.json``, else None.

    >>> drill_id_of_key("drills/orders/20261125T213307123Z-a1b2c3.json")
    '20261125T213307123Z-a1b2c3'
    """
    parts = key.split("/")
    if len(parts) == 3 and parts[0] + "/" == DRILLS_PREFIX and parts[2].endswith(".json"):
        return parts[2].removesuffix(".json")
    return None


def first_problem(exc: ValidationError) -> str:
    """The first thing wrong with a stored document, on one line: ``field: message``."""
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(document)"
    return f"{field}: {first['msg']}"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServerInfo(_Frozen):
    version: str
    version_num: int
    system_identifier: str

    @property
    def major(self) -> int:
        return self.version_num // 10000


class DumpInfo(_Frozen):
    object: str = DUMP_OBJECT
    format: str = "custom"
    tool: str
    tool_major: int
    compression: str = "zstd"
    compression_level: int
    raw_bytes: int
    stored_bytes: int
    sha256: str


class GlobalsInfo(_Frozen):
    """The cluster-wide objects pg_dump leaves out (roles, their memberships and settings,
    tablespaces), dumped by pg_dumpall beside the dump, without role passwords; compressed,
    and encrypted with the dump's data key when the backup is encrypted."""

    object: str = GLOBALS_OBJECT
    tool: str
    compression: str = "zstd"
    raw_bytes: int
    stored_bytes: int
    sha256: str


class EncryptionInfo(_Frozen):
    """How the stored dump is encrypted: after compression, with a data key of its own.

    Only the data key wrapped by the key service is kept here, never the key itself. The
    associated data binding the ciphertext to this backup is not stored: it is derived
    from `database` and `backup_id` (backups/encryption.py), so it cannot be edited to match
    a swapped manifest.
    """

    scheme: str
    wrapped_key: str = Field(repr=False)
    key_service: str
    key_name: str
    key_version: int


class CopyInfo(_Frozen):
    """Which store this manifest sits in and when its copy was verified there."""

    store: str
    verified_at: datetime
    copied_from: str | None = None


class BackupManifest(_Frozen):
    format_version: int = FORMAT_VERSION
    backup_id: str
    database: str
    cluster: str
    policy: str
    started_at: datetime
    finished_at: datetime
    snapshot_at: datetime = Field(description="server clock (now()) when the dump's snapshot was taken; "
                                              "a fact about the server, never used for an age")
    lsn: str
    server: ServerInfo
    dump: DumpInfo
    row_counts: dict[str, int]
    produced_by: str
    copy_info: CopyInfo | None = Field(default=None, alias="copy")
    # Optional so manifests written before encryption existed still load; an unencrypted
    # manifest is written without the key, so older readers still load it too.
    encryption: EncryptionInfo | None = None
    # How the dump logged in: "dynamic" (a Vault database-engine login, revoked after the
    # run) or "static"; evidence for the compliance check. None in older manifests.
    credentials: Literal["static", "dynamic"] | None = None
    # The globals object; None in manifests written before globals were backed up.
    globals: GlobalsInfo | None = None
    # The worker's clock just before the snapshot was taken: what every age (RPO) is measured
    # from. None in manifests written before it was recorded (see snapshot_worker_time).
    snapshot_worker_at: datetime | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @property
    def snapshot_worker_time(self) -> datetime:
        """The snapshot's time on the worker's clock: ``snapshot_worker_at``, or for older
        manifests ``started_at`` (the worker's clock earlier still). Either is no later than
        the snapshot, so an age measured from it is never understated."""
        return self.snapshot_worker_at or self.started_at

    def age_at(self, now: datetime) -> timedelta:
        """How old the backup's data is at `now` (the worker's clock): the RPO figure."""
        return now - self.snapshot_worker_time

    @property
    def server_clock_skew(self) -> timedelta | None:
        """How far the database server's clock ran ahead of the worker's at the snapshot
        (negative: behind), connection time included; None when the worker's was not recorded."""
        return self.snapshot_at - self.snapshot_worker_at if self.snapshot_worker_at else None

    @property
    def dump_key(self) -> str:
        return dump_key(self.database, self.backup_id)

    @property
    def globals_key(self) -> str:
        return globals_key(self.database, self.backup_id)

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.database, self.backup_id)

    def in_store(self, store: str, verified_at: datetime, copied_from: str | None = None) -> BackupManifest:
        return self.model_copy(update={"copy_info": CopyInfo(store=store, verified_at=verified_at,
                                                             copied_from=copied_from)})

    def to_json(self) -> bytes:
        # Absent fields are left out, so manifests without them read as before.
        exclude = {name for name in ("encryption", "credentials", "globals", "snapshot_worker_at")
                   if getattr(self, name) is None} or None
        return self.model_dump_json(by_alias=True, indent=2, exclude=exclude).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> BackupManifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestError(where, f"unreadable manifest: {first_problem(exc)}") from None


class DrillRecord(_Frozen):
    """Evidence of one restore drill: which backup, from which store, how fast, with what result.

    Times are the drill worker's clock. ``rto_seconds`` is the fetch + restore wall time;
    ``rpo_seconds`` is ``started_at`` minus the backup's snapshot time on the worker's clock
    (:attr:`BackupManifest.snapshot_worker_time`), never the database server's."""

    format_version: int = FORMAT_VERSION
    drill_id: str
    database: str
    backup_id: str | None
    source_store: str
    started_at: datetime
    finished_at: datetime
    passed: bool
    failure: str | None = None
    rto_seconds: float | None = None
    rto_target_seconds: float
    rpo_seconds: float | None = None
    rpo_target_seconds: float
    tables_verified: int = 0
    rows_verified: int = 0
    restored_on: str | None = None
    # Newer backups of the drilled store that were not drilled because their manifest could
    # not be read, each "backup <id> in store <store>: <reason>". Left out of the JSON when empty.
    passed_over: list[str] = Field(default_factory=list)

    @property
    def key(self) -> str:
        return drill_key(self.database, self.drill_id)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2, exclude={"passed_over"} if not self.passed_over else None).encode()
