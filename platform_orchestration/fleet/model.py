"""Typed, frozen model of the fleet file: clusters, backup stores, databases and their policies.

The models validate one fleet on their own (field types, secret hygiene, cross references), so a
``Fleet`` built in code is as trustworthy as one loaded from YAML. The loader
(:mod:`platform_orchestration.fleet.loader`) adds file names and line numbers to the messages.

No secret is ever resolved here: a :class:`SecretRef` only says where a secret lives.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol, TypeAlias, TypeVar
from urllib.parse import parse_qs, urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from platform_orchestration.declarations import Loc, format_field_path
from platform_orchestration.errors import PlatformError
from platform_orchestration.fleet.durations import format_duration, parse_duration
from platform_orchestration.fleet.sizes import format_size, parse_size

__all__ = [
    "ArgoApplication",
    "AzureStoreSpec",
    "Cloud",
    "Cluster",
    "ClusterPhysical",
    "ClusterRole",
    "CustomerManagedKey",
    "Database",
    "DrillPolicy",
    "Duration",
    "Fleet",
    "FleetValidationContext",
    "GcsStoreSpec",
    "Identifier",
    "KubernetesAccess",
    "KubernetesCluster",
    "KubernetesWorkload",
    "MaintenanceWindow",
    "SupportedVersions",
    "Loc",
    "LocalStoreSpec",
    "PASSWORD_IN_FLEET_FILE",
    "PHYSICAL_STORE_KINDS",
    "PhysicalPolicy",
    "Policy",
    "ReplicationPolicy",
    "StandbySpec",
    "ReferenceProblem",
    "RetentionPolicy",
    "S3ServerSideEncryption",
    "S3StoreSpec",
    "STORE_KINDS",
    "SecretRef",
    "Store",
    "StoreKind",
    "UnknownNameError",
    "find_reference_problems",
    "format_field_path",
]

Cloud: TypeAlias = Literal["aws", "azure", "gcp", "onprem", "local"]
ClusterRole: TypeAlias = Literal["primary", "standby", "dr"]
StoreKind: TypeAlias = Literal["local", "s3", "azure", "gcs"]
STORE_KINDS: tuple[StoreKind, ...] = ("local", "s3", "azure", "gcs")
# barman-cloud writes to object stores only: a physical repository cannot be a local directory.
PHYSICAL_STORE_KINDS: tuple[StoreKind, ...] = ("s3", "azure", "gcs")
WalCompression: TypeAlias = Literal["none", "gzip", "bzip2", "xz", "snappy", "zstd", "lz4"]
BackupCompression: TypeAlias = Literal["none", "gzip", "bzip2", "snappy", "lz4"]

"""A field path inside the fleet document, as in pydantic's ``loc``: ``("databases", 1, "policy")``."""

PASSWORD_IN_FLEET_FILE = (
    "a password must not be written in the fleet file; "
    "use `password: {env: ...}` or a Vault reference"
)


@dataclass(frozen=True)
class FleetValidationContext:
    """Passed as pydantic ``context`` when validating a :class:`Fleet`.

    ``fleet_dir`` anchors relative paths (local stores, ``file:`` secrets); without a context they
    are resolved against the current directory. The loader sets ``check_references=False``
    because it reports reference problems itself, with line numbers.
    """

    fleet_dir: Path
    check_references: bool = True


# --- scalar types -------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def _check_identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            "expected a name of lowercase letters, digits, '-' and '_' starting with a letter "
            f"or digit (at most 63 characters), got {value!r}"
        )
    return value


Identifier = Annotated[str, AfterValidator(_check_identifier)]
"""A fleet-wide name: ``[a-z0-9][a-z0-9_-]*``, at most 63 characters."""


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


_Text = Annotated[str, AfterValidator(_check_not_blank)]


def _check_http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value


_HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


def _strip_slashes(value: str) -> str:
    return value.strip("/")


_KeyPrefix = Annotated[str, AfterValidator(_strip_slashes)]
"""An object-key prefix, stored without leading or trailing ``/``; empty means the bucket root."""


def _bucket_name_checker(pattern: str, description: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"expected {description}, got {value!r}")
        return value

    return AfterValidator(check)


_S3BucketName = Annotated[
    str,
    _bucket_name_checker(
        r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]",
        "a bucket name of 3-63 lowercase letters, digits, '.' and '-'",
    ),
]
_GcsBucketName = Annotated[
    str,
    _bucket_name_checker(
        r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]",
        "a bucket name of 3-63 lowercase letters, digits, '.', '-' and '_'",
    ),
]
_AzureContainerName = Annotated[
    str,
    _bucket_name_checker(
        r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}",
        "a container name of 3-63 lowercase letters, digits and single '-'",
    ),
]


def _parse_duration_field(value: object) -> object:
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"expected a duration greater than zero, got {value}")
        return value
    return parse_duration(value)  # type: ignore[arg-type]  # parse_duration rejects other types


Duration = Annotated[
    timedelta,
    BeforeValidator(_parse_duration_field),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A positive :class:`~datetime.timedelta` written as ``90s``, ``30m``, ``6h``, ``1d``, ``2w``, ``1h30m``."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str, when_used="json"),
]
"""A positive number of bytes written as ``512MiB``, ``40GiB``, ``2TiB`` or a bare integer."""


def _reject_blank_path(value: object) -> object:
    if isinstance(value, str) and not value.strip():
        raise ValueError("expected a path, got an empty string")
    return value


def _resolve_against_fleet_dir(value: Path, info: ValidationInfo) -> Path:
    context = info.context
    base = context.fleet_dir if isinstance(context, FleetValidationContext) else Path.cwd()
    # normpath, not resolve(): symlinks in the path are the operator's choice and stay visible.
    return Path(os.path.normpath(base / value.expanduser()))


_FleetRelativePath = Annotated[
    Path, BeforeValidator(_reject_blank_path), AfterValidator(_resolve_against_fleet_dir)
]
"""A path; a relative one is resolved against the fleet file's directory and stored absolute."""


# --- models -------------------------------------------------------------------------------------


class _FrozenSpec(BaseModel):
    # hide_input_in_errors: a rejected DSN may contain the very password we refuse to store.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


_SECRET_REF_FORMS = "{env: VAR}, {file: PATH} or {vault: PATH, key: FIELD}"


class SecretRef(_FrozenSpec):
    """Where a secret lives: exactly one of ``env``, ``file`` or ``vault`` (``key`` only with vault).

    Never holds the secret itself; resolving it is another module's job.
    """

    env: str | None = None
    file: _FleetRelativePath | None = None
    vault: str | None = None
    key: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _require_mapping(cls, data: object) -> object:
        if isinstance(data, str):
            raise ValueError(
                f"secrets must not be written in the fleet file; expected a reference like {_SECRET_REF_FORMS}"
            )
        return data

    @field_validator("env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"expected an environment variable name, got {value!r}")
        return value

    @field_validator("vault", "key")
    @classmethod
    def _check_not_blank(cls, value: str | None) -> str | None:
        return None if value is None else _check_not_blank(value)

    @model_validator(mode="after")
    def _exactly_one_source(self) -> SecretRef:
        given = [name for name in ("env", "file", "vault") if getattr(self, name) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            raise ValueError(f"expected exactly one of env, file or vault, got {got}")
        if self.key is not None and self.vault is None:
            raise ValueError("key only applies to a vault reference")
        return self

    @property
    def source(self) -> Literal["env", "file", "vault"]:
        """Which kind of reference this is."""
        if self.env is not None:
            return "env"
        if self.file is not None:
            return "file"
        return "vault"

    def describe(self) -> str:
        """A log-safe description such as ``env:ORDERS_PGPASSWORD`` or ``vault:secret/data/gcs#json``."""
        if self.env is not None:
            return f"env:{self.env}"
        if self.file is not None:
            return f"file:{self.file}"
        return f"vault:{self.vault}" + (f"#{self.key}" if self.key is not None else "")


class Cluster(_FrozenSpec):
    """A PostgreSQL cluster (server) hosting one or more databases."""

    name: Identifier
    cloud: Cloud
    region: _Text
    role: ClusterRole = "primary"
    physical: ClusterPhysical | None = None
    # A standby (role: standby) names the cluster it replicates and how it streams from it.
    replicates: Identifier | None = None
    standby: StandbySpec | None = None
    # The cluster's data on disk (what pg_database_size sums to over its databases): sizes the
    # pods that bring up a whole copy of it, its PITR drills and failover drills.
    expected_size: ByteSize | None = None

    @model_validator(mode="after")
    def _standby_fields_go_together(self) -> Cluster:
        _check_standby_fields(self)
        return self

    @property
    def replication_slot(self) -> str | None:
        """A standby's slot on its primary (``standby.slot``, or its name with ``_`` for ``-``)."""
        if self.standby is None:
            return None
        return self.standby.slot or self.name.replace("-", "_")

    @property
    def physical_server_name(self) -> str | None:
        """The cluster's name in its physical repository (``physical.server_name`` or its own)."""
        if self.physical is None:
            return None
        return self.physical.server_name or self.name


class _StoreSpec(_FrozenSpec):
    """Fields every backup store has. ``cloud`` defaults to the cloud the store kind belongs to."""

    # Subclasses narrow ``kind`` to a Literal and give ``cloud`` its per-kind default.
    name: Identifier
    kind: StoreKind
    cloud: Cloud
    credential_names: ClassVar[frozenset[str]] = frozenset()

    @property
    def cloud_declared(self) -> bool:
        """Whether the fleet file set ``cloud`` explicitly rather than taking the kind's default."""
        return "cloud" in self.model_fields_set

    # Only cloud stores declare a `credentials` field; the local store has none to check.
    @field_validator("credentials", check_fields=False)
    @classmethod
    def _check_credentials(
        cls, credentials: Mapping[str, SecretRef] | None
    ) -> Mapping[str, SecretRef] | None:
        if credentials is None:
            return None
        allowed = ", ".join(sorted(cls.credential_names))
        for name in credentials:
            if name not in cls.credential_names:
                raise ValueError(f"unknown credential {name!r} (allowed: {allowed})")
        cls._check_credential_combination(credentials)
        return credentials

    @classmethod
    def _check_credential_combination(cls, credentials: Mapping[str, SecretRef]) -> None:
        """Kinds whose credentials only work together override this."""


class LocalStoreSpec(_StoreSpec):
    """A directory on this machine; in the demo, each one stands in for a cloud's object store."""

    kind: Literal["local"] = "local"
    cloud: Cloud = "local"
    path: _FleetRelativePath


class ImmutabilitySpec(_FrozenSpec):
    """Write-once retention the cloud enforces on every object written: S3 Object Lock,
    Azure blob immutability policies, GCS object retention. Not even the account owner can
    delete a `compliance` object before `retain` has passed; `governance` can be lifted by
    a principal allowed to bypass it."""

    mode: Literal["compliance", "governance"] = "compliance"
    retain: Duration


class S3ServerSideEncryption(_FrozenSpec):
    """S3 server-side encryption of every object written to the store (by barman-cloud into a
    physical repository, and by us): ``AES256`` (SSE-S3) or ``aws:kms`` (SSE-KMS, with
    ``kms_key_id`` or the account's default ``aws/s3`` key)."""

    algorithm: Literal["AES256", "aws:kms"]
    kms_key_id: _Text | None = None

    @model_validator(mode="after")
    def _key_only_with_kms(self) -> S3ServerSideEncryption:
        if self.kms_key_id is not None and self.algorithm != "aws:kms":
            raise ValueError(f"kms_key_id is only allowed with algorithm aws:kms, not {self.algorithm}")
        return self

    def describe(self) -> str:
        return f"S3 SSE {self.algorithm}" + (f" key {self.kms_key_id}" if self.kms_key_id else "")


class CustomerManagedKey(_FrozenSpec):
    """A customer-managed key that the provider encrypts the container's or bucket's objects with
    (an Azure Key Vault key on the storage account or an encryption scope; a Cloud KMS key as the
    GCS bucket's default key). It is set on the container or bucket, not per write: the platform
    records it and reports it in ``backups_encrypted``."""

    customer_managed_key: _Text

    def describe(self) -> str:
        return f"customer-managed key {self.customer_managed_key}"


class S3StoreSpec(_StoreSpec):
    """An S3 bucket (or an S3-compatible store reached through ``endpoint_url``)."""

    kind: Literal["s3"] = "s3"
    cloud: Cloud = "aws"
    bucket: _S3BucketName
    prefix: _KeyPrefix = ""
    region: _Text | None = None
    endpoint_url: _HttpUrl | None = None
    credentials: Mapping[str, SecretRef] | None = None
    immutability: ImmutabilitySpec | None = None
    server_side_encryption: S3ServerSideEncryption | None = None
    credential_names: ClassVar[frozenset[str]] = frozenset(
        {"access_key_id", "secret_access_key", "session_token"}
    )

    @classmethod
    def _check_credential_combination(cls, credentials: Mapping[str, SecretRef]) -> None:
        if ("access_key_id" in credentials) != ("secret_access_key" in credentials):
            raise ValueError("access_key_id and secret_access_key must be given together")


class AzureStoreSpec(_StoreSpec):
    """An Azure Blob Storage container."""

    kind: Literal["azure"] = "azure"
    cloud: Cloud = "azure"
    account_url: _HttpUrl
    container: _AzureContainerName
    prefix: _KeyPrefix = ""
    credentials: Mapping[str, SecretRef] | None = None
    immutability: ImmutabilitySpec | None = None
    server_side_encryption: CustomerManagedKey | None = None
    credential_names: ClassVar[frozenset[str]] = frozenset(
        {"account_key", "sas_token", "connection_string"}
    )


class GcsStoreSpec(_StoreSpec):
    """A Google Cloud Storage bucket."""

    kind: Literal["gcs"] = "gcs"
    cloud: Cloud = "gcp"
    bucket: _GcsBucketName
    project: _Text | None = None
    prefix: _KeyPrefix = ""
    endpoint_url: _HttpUrl | None = None
    credentials: Mapping[str, SecretRef] | None = None
    immutability: ImmutabilitySpec | None = None
    server_side_encryption: CustomerManagedKey | None = None
    credential_names: ClassVar[frozenset[str]] = frozenset({"service_account_json"})


Store: TypeAlias = LocalStoreSpec | S3StoreSpec | AzureStoreSpec | GcsStoreSpec
"""Any backup store; ``isinstance(x, Store)`` works, ``store.kind`` tells which one."""


def _check_dsn(dsn: str) -> str:
    """Accept a libpq URI or key=value DSN that carries no password."""
    text = dsn.strip()
    if re.match(r"postgres(ql)?://", text):
        parts = urlsplit(text)
        if parts.password is not None or "password" in parse_qs(parts.query):
            raise ValueError(PASSWORD_IN_FLEET_FILE)
        return text
    # The DSN itself is never echoed: a malformed one may still contain a secret.
    shape_hint = "expected a libpq URI (postgresql://user@host:port/dbname) or a key=value DSN"
    if "://" in text:
        raise ValueError(shape_hint)
    keyword_value = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']+)\s*")
    position, keywords = 0, []
    while position < len(text):
        match = keyword_value.match(text, position)
        if match is None:
            raise ValueError(shape_hint)
        keywords.append(match.group(1).lower())
        position = match.end()
    if not keywords:
        raise ValueError(shape_hint)
    if "password" in keywords:
        raise ValueError(PASSWORD_IN_FLEET_FILE)
    return text


def _dsn_parts(dsn: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    return {key: str(value) for key, value in conninfo_to_dict(dsn).items()}


class ClusterPhysical(_FrozenSpec):
    """Where a cluster's physical repository (barman-cloud base backups and archived WAL) lives,
    and how the server and the backup reach it.

    The repository is barman-cloud's own layout, ``<store URL>/<path>/<server_name>/{base,wals}``,
    so a CloudNativePG cluster can bootstrap from it (``destinationPath`` = the store URL plus
    ``path``, ``serverName`` = ``server_name``)."""

    store: Identifier
    policy: Identifier
    # Field order matters: the password check reads dsn.
    dsn: Annotated[str, AfterValidator(_check_dsn)]
    password: SecretRef | None = None
    server_name: Identifier | None = None
    path: _KeyPrefix = "physical"
    endpoint_url: _HttpUrl | None = None
    server_credentials: Literal["store", "ambient"] = "store"
    wal_compression: WalCompression = "zstd"
    backup_compression: BackupCompression = "lz4"


SeedMethod: TypeAlias = Literal["auto", "basebackup", "repository"]


class StandbySpec(_FrozenSpec):
    """How a standby cluster (``role: standby``) streams from the cluster it ``replicates``, and
    how the platform reaches both sides. No password is ever written here: each DSN takes a
    secret reference beside it (see docs/fleet.md#standby)."""

    policy: Identifier
    # Field order matters: each password check reads the DSN above it.
    dsn: Annotated[str, AfterValidator(_check_dsn)]
    password: SecretRef | None = None
    primary_conninfo: Annotated[str, AfterValidator(_check_dsn)]
    replication_password: SecretRef | None = None
    primary_dsn: Annotated[str, AfterValidator(_check_dsn)] | None = None
    primary_password: SecretRef | None = None
    slot: Annotated[str, AfterValidator(_check_slot_name)] | None = None
    directory: _FleetRelativePath | None = None
    seed: SeedMethod = "auto"
    same_cloud_ok: bool = False


def _check_slot_name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9_]{1,63}", value):
        raise ValueError(f"expected a replication slot name of lowercase letters, digits and '_' "
                         f"(at most 63), got {value!r}")
    return value


def _check_standby_fields(cluster: Cluster) -> None:
    if cluster.role == "standby":
        missing = [name for name in ("replicates", "standby") if getattr(cluster, name) is None]
        if missing:
            raise ValueError(f"a cluster with role standby needs {' and '.join(missing)} "
                             "(the primary it replicates, and how it streams from it)")
    else:
        given = [name for name in ("replicates", "standby") if getattr(cluster, name) is not None]
        if given:
            raise ValueError(f"{' and '.join(given)} only apply to a cluster with role standby "
                             f"(this one is {cluster.role})")


Cluster.model_rebuild()  # its `physical` and `standby` fields refer to classes defined above


class Database(_FrozenSpec):
    """A database to protect. Connects with ``dsn`` plus a static ``password`` or dynamic
    ``credentials`` (a Vault database-engine login), or with ``connection`` (a secret
    holding the whole DSN)."""

    name: Identifier
    cluster: Identifier
    # Field order matters: the validators below read the fields above them.
    dsn: Annotated[str, AfterValidator(_check_dsn)] | None = None
    connection: SecretRef | None = None
    password: SecretRef | None = None
    credentials: SecretRef | None = None
    policy: Identifier
    # The raw (uncompressed) pg_dump output a backup of it is expected to produce, as the latest
    # manifest's raw_bytes reports it: sizes the pods of its backups, drills and restores.
    expected_dump_size: ByteSize | None = None

    @property
    def uses_dynamic_credentials(self) -> bool:
        return self.credentials is not None

    @field_validator("credentials")
    @classmethod
    def _credentials_are_a_vault_login(cls, value: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        if value is None:
            return None
        if value.vault is None or value.key is not None:
            raise ValueError("credentials must be a Vault database login: {vault: database/creds/ROLE}")
        if info.data.get("dsn") is None:
            raise ValueError("credentials need a dsn (host, port, dbname) to log in to")
        if info.data.get("password") is not None:
            raise ValueError("give either password or credentials, not both")
        if "user" in _dsn_parts(info.data["dsn"]):
            raise ValueError("the dsn must not name a user: credentials supply it")
        return value

    @field_validator("connection")
    @classmethod
    def _not_both_dsn_and_connection(cls, value: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        if value is not None and info.data.get("dsn") is not None:
            raise ValueError("give either dsn or connection, not both")
        return value

    @field_validator("password")
    @classmethod
    def _password_needs_dsn(cls, value: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        if value is not None and info.data.get("connection") is not None:
            raise ValueError("password only applies to dsn; a connection reference carries its own credentials")
        return value

    @model_validator(mode="after")
    def _dsn_or_connection(self) -> Database:
        if self.dsn is None and self.connection is None:
            raise ValueError("one of dsn or connection is required")
        return self


class DrillPolicy(_FrozenSpec):
    """How often a restore drill runs, how long the restore may take, and which drill records
    prune keeps: in each store the newest ``keep_last`` and every one younger than
    ``keep_cadences`` times ``every``; the newest passed drill is never deleted."""

    every: Duration
    rto: Duration
    keep_last: int = Field(default=10, ge=1)
    keep_cadences: int = Field(default=4, ge=1)


MIN_SWEEP_AGE = timedelta(hours=1)


class RetentionPolicy(_FrozenSpec):
    """How many backup generations to keep: the newest ``keep_last`` plus daily/weekly/monthly ones."""

    keep_last: int = Field(ge=1)
    daily: int = Field(default=0, ge=0)
    weekly: int = Field(default=0, ge=0)
    monthly: int = Field(default=0, ge=0)
    # How long an unfinished write (incomplete upload, dump without manifest, empty directory)
    # must have been idle before prune's sweeps remove it.
    sweep_older_than: Duration = MIN_SWEEP_AGE * 24

    @field_validator("sweep_older_than")
    @classmethod
    def _not_young_enough_to_hit_a_live_write(cls, value: timedelta) -> timedelta:
        if value < MIN_SWEEP_AGE:
            raise ValueError(f"expected at least {format_duration(MIN_SWEEP_AGE)}: a sweep must never "
                             f"touch a backup or copy still being written, got {format_duration(value)}")
        return value


DEFAULT_COPY_MAX_LAG = timedelta(hours=1)


class PhysicalPolicy(_FrozenSpec):
    """Physical protection of the clusters that name this policy: a base backup at least every
    ``base_backup``, WAL archived within ``wal_max_lag`` of being written, and point-in-time
    restores reaching back at least ``pitr_window``; the repository's copies in the policy's other
    object stores at most ``copy_max_lag`` behind it."""

    base_backup: Duration
    wal_max_lag: Duration
    pitr_window: Duration
    copy_max_lag: Duration | None = None

    @property
    def allowed_copy_lag(self) -> timedelta:
        """``copy_max_lag``, or by default 1h (at most ``pitr_window``)."""
        return self.copy_max_lag or min(DEFAULT_COPY_MAX_LAG, self.pitr_window)

    @model_validator(mode="after")
    def _window_holds_a_base_backup(self) -> PhysicalPolicy:
        if self.pitr_window < self.base_backup:
            raise ValueError(f"pitr_window ({format_duration(self.pitr_window)}) must be at least "
                             f"base_backup ({format_duration(self.base_backup)}): a window shorter than "
                             "the backup cadence has no base backup to restore from")
        if self.copy_max_lag is not None and self.copy_max_lag > self.pitr_window:
            raise ValueError(f"copy_max_lag ({format_duration(self.copy_max_lag)}) must be at most pitr_window "
                             f"({format_duration(self.pitr_window)}): a copy further behind holds none of the "
                             "window the policy asks for")
        return self


class ReplicationPolicy(_FrozenSpec):
    """What the standbys that name this policy must keep up with: replay within ``max_lag_bytes``
    and ``max_lag`` of their primary, a slot on the primary holding at most ``max_slot_wal`` of
    WAL (the primary's disk), and failover drills every ``drill_every`` (default: the policy's
    ``drill.every``) whose promotion accepts a write within ``failover_rto``."""

    max_lag_bytes: ByteSize
    max_lag: Duration
    failover_rto: Duration
    max_slot_wal: ByteSize
    drill_every: Duration | None = None

    @model_validator(mode="after")
    def _slot_holds_the_allowed_lag(self) -> ReplicationPolicy:
        if self.max_slot_wal < self.max_lag_bytes:
            raise ValueError(f"max_slot_wal ({format_size(self.max_slot_wal)}) must be at least max_lag_bytes "
                             f"({format_size(self.max_lag_bytes)}): a standby within its lag keeps that much "
                             "WAL in its slot")
        return self


class Policy(_FrozenSpec):
    """Recovery objectives shared by databases: RPO, where copies go, drills and retention;
    ``physical`` for the clusters that name it in their own ``physical`` section, ``replication``
    for the standbys that name it in their ``standby`` section."""

    name: Identifier
    rpo: Duration
    stores: tuple[Identifier, ...] = Field(min_length=1)
    drill: DrillPolicy
    retention: RetentionPolicy
    physical: PhysicalPolicy | None = None
    replication: ReplicationPolicy | None = None


# --- Kubernetes clusters ------------------------------------------------------------------------
# The clusters the platform's workloads run in (rolled out in waves, observed for drift): how
# each is reached, when it may be changed, and what it must run. docs/fleet.md "Kubernetes clusters".

_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# Credentials a kubeconfig user may carry inline; the fleet file names them to refuse them clearly.
INLINE_KUBE_CREDENTIALS = ("token", "bearer_token", "password", "username", "client_key_data",
                           "client-key-data", "client_certificate_data", "client-certificate-data",
                           "auth_provider", "exec")
INLINE_KUBE_CREDENTIALS_RULE = (
    "Kubernetes credentials must not be written in the fleet file; name a kubeconfig `context` (its "
    "user's credentials stay in the kubeconfig, given by reference: `kubeconfig: {file: PATH}`, "
    "`{env: VAR}` or `{vault: PATH, key: FIELD}`) or use `in_cluster: true` (the pod's service account)")


def _check_k8s_name(value: str) -> str:
    if not _K8S_NAME.fullmatch(value):
        raise ValueError(f"expected a Kubernetes name (lowercase letters, digits and '-', at most 63), got {value!r}")
    return value


_KubeName = Annotated[str, AfterValidator(_check_k8s_name)]


def _check_kube_version(value: str) -> str:
    if not re.fullmatch(r"1\.\d{1,3}", value):
        raise ValueError(f"expected a Kubernetes minor version like '1.31', got {value!r}")
    return value


_KubeVersion = Annotated[str, AfterValidator(_check_kube_version)]
Weekday: TypeAlias = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class KubernetesAccess(_FrozenSpec):
    """How the platform reaches a cluster's API server: a ``context`` of a kubeconfig (the
    kubeconfig itself by reference, default ``$KUBECONFIG`` or ``~/.kube/config``), or
    ``in_cluster`` (the pod's service account). Never a credential inline."""

    context: _Text | None = None
    kubeconfig: SecretRef | None = None
    in_cluster: bool = False

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_credentials(cls, data: object) -> object:
        if isinstance(data, Mapping):
            inline = [key for key in data if str(key).lower() in INLINE_KUBE_CREDENTIALS]
            if inline:
                raise ValueError(f"{inline[0]}: {INLINE_KUBE_CREDENTIALS_RULE}")
        return data

    @model_validator(mode="after")
    def _one_way_in(self) -> KubernetesAccess:
        if self.in_cluster == (self.context is not None):
            raise ValueError("expected exactly one of context (a kubeconfig context) or in_cluster: true")
        if self.in_cluster and self.kubeconfig is not None:
            raise ValueError("kubeconfig only applies to a context, not to in_cluster")
        return self


class MaintenanceWindow(_FrozenSpec):
    """When a rollout may change the cluster: on ``days``, from ``start`` (HH:MM in ``timezone``)
    for ``duration``. A cluster without windows may be changed at any time."""

    days: tuple[Weekday, ...] = WEEKDAYS
    start: str
    duration: Duration
    timezone: str = "UTC"

    @field_validator("start")
    @classmethod
    def _check_start(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"expected a time of day HH:MM (00:00-23:59), got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r} (expected an IANA name like UTC or Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _at_most_a_week(self) -> MaintenanceWindow:
        if self.duration > timedelta(days=7):
            raise ValueError(f"a maintenance window lasts at most 7d, got {format_duration(self.duration)}")
        return self


WorkloadKind: TypeAlias = Literal["Deployment", "StatefulSet", "Cluster"]


class KubernetesWorkload(_FrozenSpec):
    """A workload the cluster must run: a Deployment, a StatefulSet or a CloudNativePG ``Cluster``
    (``postgresql.cnpg.io/v1``; ``postgres`` names the fleet's PostgreSQL cluster it is).
    ``scalable: false`` marks a Deployment that must not be autoscaled (a singleton), which
    then needs no HorizontalPodAutoscaler."""

    kind: WorkloadKind
    name: _KubeName
    namespace: _KubeName
    postgres: Identifier | None = None
    scalable: bool = True

    @model_validator(mode="after")
    def _postgres_is_a_cnpg_cluster(self) -> KubernetesWorkload:
        if self.postgres is not None and self.kind != "Cluster":
            raise ValueError("postgres only applies to a CloudNativePG Cluster (kind: Cluster)")
        return self

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


class ArgoApplication(_FrozenSpec):
    """The cluster's Argo CD Application (reached through the cluster's own access)."""

    name: _KubeName
    namespace: _KubeName = "argocd"


class SupportedVersions(_FrozenSpec):
    """The Kubernetes minor versions the platform supports on a cluster, inclusive."""

    min: _KubeVersion = "1.30"
    max: _KubeVersion = "1.34"

    @model_validator(mode="after")
    def _ordered(self) -> SupportedVersions:
        if tuple(map(int, self.min.split("."))) > tuple(map(int, self.max.split("."))):
            raise ValueError(f"min ({self.min}) must not be above max ({self.max})")
        return self


class KubernetesCluster(_FrozenSpec):
    """A Kubernetes cluster: where it runs, how it is reached, when it may be changed and what it
    must run."""

    name: Identifier
    cloud: Cloud
    region: _Text
    access: KubernetesAccess
    maintenance: tuple[MaintenanceWindow, ...] = ()
    workloads: tuple[KubernetesWorkload, ...] = ()
    argocd: ArgoApplication | None = None
    versions: SupportedVersions = SupportedVersions()

    @property
    def postgres_clusters(self) -> tuple[str, ...]:
        """The fleet's PostgreSQL clusters this cluster runs (its CloudNativePG Clusters)."""
        return tuple(w.postgres for w in self.workloads if w.postgres is not None)


class UnknownNameError(PlatformError):
    """A lookup by name failed (a database, store, cluster or policy the fleet does not declare)."""


class _Named(Protocol):
    @property
    def name(self) -> str: ...


_NamedItem = TypeVar("_NamedItem", bound=_Named)


def _known_names(names: Sequence[str] | Mapping[str, Any]) -> str:
    return f"known: {', '.join(sorted(names))}" if names else "none defined"


def _by_name(items: Sequence[_NamedItem]) -> dict[str, _NamedItem]:
    """``{name: item}``; with a duplicate name (which validation reports) the first one wins,
    as a scan in order would find it."""
    index: dict[str, _NamedItem] = {}
    for item in items:
        index.setdefault(item.name, item)
    return index


class Fleet(_FrozenSpec):
    """The whole fleet file. Names are unique per section and every reference resolves."""

    clusters: tuple[Cluster, ...]
    stores: tuple[Annotated[Store, Field(discriminator="kind")], ...]
    databases: tuple[Database, ...]
    policies: tuple[Policy, ...]
    kubernetes: tuple[KubernetesCluster, ...] = ()
    """The Kubernetes clusters the platform's workloads run in (rollouts, drift checks)."""
    source: Path
    """The fleet file this was loaded from (absolute)."""
    # Lookups by name are dictionary lookups: {section: (the tuple indexed, {name: item})}. An
    # index is rebuilt when its section is no longer the tuple it was built from (model_copy
    # with an update), so it can never answer for another fleet.
    _indexes: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        # Built once, here, so that two equal fleets also have equal private state (pydantic
        # compares it in ==).
        for section in ("clusters", "stores", "databases", "policies", "kubernetes"):
            items = getattr(self, section)
            self._indexes[section] = (items, _by_name(items))

    @model_validator(mode="after")
    def _references_resolve(self, info: ValidationInfo) -> Fleet:
        context = info.context
        if isinstance(context, FleetValidationContext) and not context.check_references:
            return self
        problems = find_reference_problems(self.model_dump(exclude={"source"}))
        if problems:
            raise ValueError("; ".join(problem.describe() for problem in problems))
        return self

    def _lookup(self, section: str, name: str, noun: str) -> Any:
        items = getattr(self, section)
        indexed = self._indexes.get(section)
        if indexed is None or indexed[0] is not items:
            # A new mapping, not an update: model_copy shares the old one with the original.
            indexed = (items, _by_name(items))
            self._indexes = {**self._indexes, section: indexed}
        try:
            return indexed[1][name]
        except KeyError:
            raise UnknownNameError(f"unknown {noun} {name!r} ({_known_names(indexed[1])})") from None

    def cluster(self, name: str) -> Cluster:
        """The cluster called ``name``; :class:`UnknownNameError` (a KeyError) if there is none."""
        return self._lookup("clusters", name, "cluster")

    def store(self, name: str) -> Store:
        """The store called ``name``; :class:`UnknownNameError` (a KeyError) if there is none."""
        return self._lookup("stores", name, "store")

    def database(self, name: str) -> Database:
        """The database called ``name``; :class:`UnknownNameError` (a KeyError) if there is none."""
        return self._lookup("databases", name, "database")

    def policy(self, name: str) -> Policy:
        """The policy called ``name``; :class:`UnknownNameError` (a KeyError) if there is none."""
        return self._lookup("policies", name, "policy")

    def kubernetes_cluster(self, name: str) -> KubernetesCluster:
        """The Kubernetes cluster called ``name``; :class:`UnknownNameError` if there is none."""
        return self._lookup("kubernetes", name, "Kubernetes cluster")

    def policy_for(self, database_name: str) -> Policy:
        """The policy governing ``database_name``."""
        return self.policy(self.database(database_name).policy)

    def stores_for(self, database_name: str) -> tuple[Store, ...]:
        """The stores ``database_name`` is copied to, in the order its policy lists them."""
        return tuple(self.store(name) for name in self.policy_for(database_name).stores)

    def cluster_for(self, database_name: str) -> Cluster:
        """The cluster hosting ``database_name``."""
        return self.cluster(self.database(database_name).cluster)

    def serving(self, cluster_names: Sequence[str]) -> Fleet:
        """This fleet as one deployment protecting only ``cluster_names`` sees it: those
        clusters and their databases, every store and policy. :class:`UnknownNameError` names
        a cluster the fleet does not have."""
        wanted = [self.cluster(name).name for name in cluster_names]
        return self.model_copy(update={
            "clusters": tuple(c for c in self.clusters if c.name in wanted),
            "databases": tuple(d for d in self.databases if d.cluster in wanted)})

    def physical_clusters(self) -> tuple[Cluster, ...]:
        """The clusters with a physical repository (base backups, archived WAL), in file order."""
        return tuple(cluster for cluster in self.clusters if cluster.physical is not None)

    def standby_clusters(self) -> tuple[Cluster, ...]:
        """The standby clusters (``role: standby``), in file order."""
        return tuple(cluster for cluster in self.clusters if cluster.standby is not None)

    def expected_cluster_size(self, name: str) -> int | None:
        """The ``expected_size`` of cluster ``name``, for a standby without one its primary's
        (a standby holds the same data); None when neither says."""
        cluster = self.cluster(name)
        if cluster.expected_size is None and cluster.replicates is not None:
            return self.cluster(cluster.replicates).expected_size
        return cluster.expected_size


# --- cross references ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceProblem:
    """A duplicate name or a dangling reference at ``loc``; ``earlier`` points at the first occurrence."""

    loc: Loc
    message: str
    earlier: Loc | None = None
    earlier_label: str = "first defined"

    def describe(self) -> str:
        """The problem with field paths only (the loader substitutes line numbers)."""
        suffix = f" ({self.earlier_label} at {format_field_path(self.earlier)})" if self.earlier else ""
        return f"{format_field_path(self.loc)}: {self.message}{suffix}"


_SECTIONS: tuple[tuple[str, str], ...] = (
    ("clusters", "cluster"),
    ("stores", "store"),
    ("databases", "database"),
    ("policies", "policy"),
    ("kubernetes", "Kubernetes cluster"),
)


def _section_items(document: Mapping[str, Any], section: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    items = document.get(section)
    if isinstance(items, (list, tuple)):
        for index, item in enumerate(items):
            if isinstance(item, Mapping):
                yield index, item


def find_reference_problems(document: Mapping[str, Any]) -> list[ReferenceProblem]:
    """Duplicate names and references to undefined clusters, policies and stores.

    Works on plain data (the parsed YAML or ``Fleet.model_dump()``) and skips anything malformed,
    so it can run alongside schema validation and report every problem in one go.
    """
    problems: list[ReferenceProblem] = []
    defined: dict[str, dict[str, Loc]] = {}
    for section, noun in _SECTIONS:
        first_definition: dict[str, Loc] = {}
        for index, item in _section_items(document, section):
            name = item.get("name")
            if not isinstance(name, str):
                continue
            loc: Loc = (section, index, "name")
            if name in first_definition:
                problems.append(
                    ReferenceProblem(loc, f"duplicate {noun} name {name!r}", first_definition[name])
                )
            else:
                first_definition[name] = loc
        defined[section] = first_definition

    for index, database in _section_items(document, "databases"):
        for field, section, noun in (("cluster", "clusters", "cluster"), ("policy", "policies", "policy")):
            reference = database.get(field)
            if isinstance(reference, str) and reference not in defined[section]:
                problems.append(
                    ReferenceProblem(
                        ("databases", index, field),
                        f"unknown {noun} {reference!r} ({_known_names(defined[section])})",
                    )
                )

    for index, policy in _section_items(document, "policies"):
        store_names = policy.get("stores")
        if not isinstance(store_names, (list, tuple)):
            continue
        first_listing: dict[str, Loc] = {}
        for position, store_name in enumerate(store_names):
            if not isinstance(store_name, str):
                continue
            loc = ("policies", index, "stores", position)
            if store_name not in defined["stores"]:
                problems.append(
                    ReferenceProblem(loc, f"unknown store {store_name!r} ({_known_names(defined['stores'])})")
                )
            elif store_name in first_listing:
                problems.append(
                    ReferenceProblem(
                        loc, f"store {store_name!r} listed twice", first_listing[store_name], "first listed"
                    )
                )
            else:
                first_listing[store_name] = loc
    problems += _physical_reference_problems(document, defined)
    problems += _kubernetes_reference_problems(document, defined)
    problems += _standby_reference_problems(document, defined)
    return problems


def _physical_reference_problems(document: Mapping[str, Any], defined: Mapping[str, Mapping[str, Loc]]
                                 ) -> list[ReferenceProblem]:
    """A cluster's ``physical`` section: its store exists and is an object store, its policy exists
    and has a ``physical`` section, and no two clusters archive into the same repository."""
    problems: list[ReferenceProblem] = []
    stores = {item.get("name"): item for _, item in _section_items(document, "stores")}
    policies = {item.get("name"): item for _, item in _section_items(document, "policies")}
    repositories: dict[tuple[str, str, str], Loc] = {}
    for index, cluster in _section_items(document, "clusters"):
        physical = cluster.get("physical")
        if not isinstance(physical, Mapping):
            continue
        store_name, policy_name = physical.get("store"), physical.get("policy")
        if isinstance(store_name, str):
            loc: Loc = ("clusters", index, "physical", "store")
            store = stores.get(store_name)
            if store_name not in defined["stores"]:
                problems.append(ReferenceProblem(
                    loc, f"unknown store {store_name!r} ({_known_names(defined['stores'])})"))
            elif isinstance(store, Mapping) and store.get("kind") not in PHYSICAL_STORE_KINDS:
                problems.append(ReferenceProblem(
                    loc, f"expected an s3, azure or gcs store (barman-cloud writes to object stores only), "
                         f"got {store.get('kind')} store {store_name!r}"))
        if isinstance(policy_name, str):
            loc = ("clusters", index, "physical", "policy")
            policy = policies.get(policy_name)
            if policy_name not in defined["policies"]:
                problems.append(ReferenceProblem(
                    loc, f"unknown policy {policy_name!r} ({_known_names(defined['policies'])})"))
            elif isinstance(policy, Mapping) and not policy.get("physical"):
                problems.append(ReferenceProblem(
                    loc, f"policy {policy_name!r} has no physical section (base_backup, wal_max_lag, pitr_window)"))
        server_name = physical.get("server_name") or cluster.get("name")
        path = str(physical.get("path", "physical")).strip("/")
        if isinstance(store_name, str) and isinstance(server_name, str):
            loc = ("clusters", index, "physical")
            repository = (store_name, path, server_name)
            if repository in repositories:
                problems.append(ReferenceProblem(
                    loc, f"repository {store_name}:{path}/{server_name} is already another cluster's "
                         "(two servers archiving into one repository would corrupt it)",
                    repositories[repository], "first used"))
            else:
                repositories[repository] = loc
    return problems


def _kubernetes_reference_problems(document: Mapping[str, Any], defined: Mapping[str, Mapping[str, Loc]]
                                   ) -> list[ReferenceProblem]:
    """A Kubernetes cluster's CloudNativePG workloads name PostgreSQL clusters of the fleet, each
    run by one Kubernetes cluster only, and no workload is declared twice in one cluster."""
    problems: list[ReferenceProblem] = []
    run_by: dict[str, Loc] = {}
    for index, cluster in _section_items(document, "kubernetes"):
        workloads = cluster.get("workloads")
        if not isinstance(workloads, (list, tuple)):
            continue
        seen: dict[tuple[Any, Any, Any], Loc] = {}
        for position, workload in enumerate(workloads):
            if not isinstance(workload, Mapping):
                continue
            loc: Loc = ("kubernetes", index, "workloads", position)
            identity = (workload.get("kind"), workload.get("namespace"), workload.get("name"))
            if identity in seen:
                problems.append(ReferenceProblem(loc, f"workload {identity[0]} {identity[1]}/{identity[2]} "
                                                      "declared twice", seen[identity]))
            else:
                seen[identity] = loc
            postgres = workload.get("postgres")
            if not isinstance(postgres, str):
                continue
            if postgres not in defined["clusters"]:
                problems.append(ReferenceProblem((*loc, "postgres"), f"unknown cluster {postgres!r} "
                                                                     f"({_known_names(defined['clusters'])})"))
            elif postgres in run_by:
                problems.append(ReferenceProblem((*loc, "postgres"), f"cluster {postgres!r} is already run by "
                                                                     "another Kubernetes cluster", run_by[postgres],
                                                 "first declared"))
            else:
                run_by[postgres] = (*loc, "postgres")
    return problems


def _standby_reference_problems(document: Mapping[str, Any], defined: Mapping[str, Mapping[str, Loc]]
                                ) -> list[ReferenceProblem]:
    """A standby's ``replicates``: an existing cluster, not itself, not a standby, in another
    cloud unless ``standby.same_cloud_ok``; its policy has a ``replication`` section; the primary
    can be reached (``primary_dsn`` or the primary's ``physical.dsn``); a repository seed has a
    repository; no two standbys of one primary share a slot."""
    problems: list[ReferenceProblem] = []
    clusters = {item.get("name"): item for _, item in _section_items(document, "clusters")}
    policies = {item.get("name"): item for _, item in _section_items(document, "policies")}
    slots: dict[tuple[str, str], Loc] = {}
    for index, cluster in _section_items(document, "clusters"):
        primary_name, standby = cluster.get("replicates"), cluster.get("standby")
        if not isinstance(primary_name, str) or not isinstance(standby, Mapping):
            continue
        loc: Loc = ("clusters", index, "replicates")
        primary = clusters.get(primary_name)
        if primary_name == cluster.get("name"):
            problems.append(ReferenceProblem(loc, "a standby cannot replicate itself"))
        elif primary_name not in defined["clusters"] or not isinstance(primary, Mapping):
            problems.append(ReferenceProblem(
                loc, f"unknown cluster {primary_name!r} ({_known_names(defined['clusters'])})"))
        elif primary.get("role") == "standby":
            problems.append(ReferenceProblem(
                loc, f"cluster {primary_name!r} is itself a standby: a standby replicates a primary "
                     "(cascading replication is not supported)"))
        else:
            if primary.get("cloud") == cluster.get("cloud") and not standby.get("same_cloud_ok"):
                problems.append(ReferenceProblem(
                    loc, f"cluster {primary_name!r} is in the same cloud ({primary.get('cloud')}): a standby is "
                         "for another cloud's failure; set standby.same_cloud_ok: true if this is meant"))
            physical = primary.get("physical")
            if standby.get("primary_dsn") is None and not isinstance(physical, Mapping):
                problems.append(ReferenceProblem(
                    ("clusters", index, "standby"),
                    f"no primary_dsn, and cluster {primary_name!r} has no physical section whose dsn could serve: "
                    "say how the platform logs in to the primary (primary_dsn)"))
            if standby.get("seed") == "repository" and not isinstance(physical, Mapping):
                problems.append(ReferenceProblem(
                    ("clusters", index, "standby", "seed"),
                    f"cluster {primary_name!r} has no physical repository to seed from (use basebackup or auto)"))
        policy_name = standby.get("policy")
        if isinstance(policy_name, str):
            policy_loc: Loc = ("clusters", index, "standby", "policy")
            policy = policies.get(policy_name)
            if policy_name not in defined["policies"]:
                problems.append(ReferenceProblem(
                    policy_loc, f"unknown policy {policy_name!r} ({_known_names(defined['policies'])})"))
            elif isinstance(policy, Mapping) and not policy.get("replication"):
                problems.append(ReferenceProblem(
                    policy_loc, f"policy {policy_name!r} has no replication section "
                                "(max_lag_bytes, max_lag, failover_rto, max_slot_wal)"))
        name = cluster.get("name")
        slot = standby.get("slot") or (name.replace("-", "_") if isinstance(name, str) else None)
        if isinstance(slot, str):
            key = (primary_name, slot)
            slot_loc: Loc = ("clusters", index, "standby")
            if key in slots:
                problems.append(ReferenceProblem(
                    slot_loc, f"replication slot {slot!r} on {primary_name!r} is already another standby's",
                    slots[key], "first used"))
            else:
                slots[key] = slot_loc
    return problems
