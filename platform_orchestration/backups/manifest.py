"""The backup format: ids, object keys, and the manifest that makes a backup exist.

Layout in every store:

    backups/<database>/<backup_id>/dump.pgdump.zst   pg_dump custom format, zstd-compressed
                                                     (then encrypted, when the manifest has
                                                     an `encryption` section)
    backups/<database>/<backup_id>/globals.sql.zst   pg_dumpall --globals-only --no-role-passwords
                                                     (roles, memberships, role settings,
                                                     tablespaces), zstd, encrypted like the dump
    backups/<database>/<backup_id>/manifest.json     written last, only after the copy verified
    drills/<database>/<drill_id>.json                restore-drill evidence

A backup without a manifest does not exist for anybody: listing, restore, retention and
checks all start from manifests, so an interrupted backup or copy is never mistaken for
a good one and the previous backup stays the latest.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from platform_orchestration.errors import PlatformError

FORMAT_VERSION = 1
DUMP_OBJECT = "dump.pgdump.zst"
GLOBALS_OBJECT = "globals.sql.zst"
MANIFEST_OBJECT = "manifest.json"


class ManifestError(PlatformError, ValueError):
    """A stored manifest is unreadable or does not describe the backup it sits beside."""


def new_backup_id(now: datetime) -> str:
    """A backup id that sorts by time: UTC timestamp to the millisecond, plus a random tail.

    >>> new_backup_id(datetime(2026, 11, 25, 21, 33, 7, 123456, tzinfo=timezone.utc))[:19]
    '20261125T213307123Z'
    """
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    return f"{stamp}-{secrets.token_hex(3)}"


def backup_prefix(database: str, backup_id: str) -> str:
    return f"backups/{database}/{backup_id}/"


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
    snapshot_at: datetime = Field(description="server clock when the dump's snapshot was taken")
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

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

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
        exclude = {name for name in ("encryption", "credentials", "globals") if getattr(self, name) is None} or None
        return self.model_dump_json(by_alias=True, indent=2, exclude=exclude).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> BackupManifest:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(document)"
            raise ManifestError(f"{where}: unreadable manifest: {field}: {first['msg']}") from None


class DrillRecord(_Frozen):
    """Evidence of one restore drill: which backup, from which store, how fast, with what result."""

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

    @property
    def key(self) -> str:
        return drill_key(self.database, self.drill_id)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def drill_key(database: str, drill_id: str) -> str:
    return f"drills/{database}/{drill_id}.json"
