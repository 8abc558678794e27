"""The protection flow for one fleet: the single API that the CLI and Dagster both call.

It turns fleet entries into open stores and database connections (secrets resolved
through the configured provider) and hands them to the backup, copy, drill, restore
and compliance functions, which know nothing of fleets, Dagster or secrets. With a key
provider (`keys`), every backup it takes is encrypted, and it decrypts what it verifies,
restores and drills.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from psycopg.conninfo import make_conninfo

from platform_orchestration.backups.catalog import StoredBackup, find_backup, list_backups
from platform_orchestration.backups.compliance import DatabaseCompliance, assess_database
from platform_orchestration.backups.copy import CopyReport, ensure_copies
from platform_orchestration.backups.drill import run_restore_drill
from platform_orchestration.backups.integrity import verify_stored_backup
from platform_orchestration.backups.manifest import DrillRecord, new_backup_id
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.backups.restore import RestoreResult, restore_backup
from platform_orchestration.backups.retention import PruneReport, prune_database
from platform_orchestration.backups.take import BackupOutcome, CompressionSettings, take_backup
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.crypto.envelope import RewrapEntry, RewrapFailed, RewrapReport, rewrap_backup
from platform_orchestration.errors import InvalidDeclaration
from platform_orchestration.fleet import Fleet
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import MIN_SWEEP_AGE
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.locks import DatabaseBusy, DatabaseLock, LockUnavailable
from platform_orchestration.secrets import LocalSecretProvider, SecretProvider, SecretUnavailable
from platform_orchestration.storage import ObjectStore, StoreError, open_store, write_bytes


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class FleetProtection:
    fleet: Fleet
    secrets: SecretProvider = field(default_factory=LocalSecretProvider)
    compression: CompressionSettings = field(default_factory=CompressionSettings)
    workdir: Path | None = None
    clock: Callable[[], datetime] = _utcnow
    # None: backups are taken unencrypted, and encrypted ones cannot be read.
    keys: DataKeyProvider | None = None
    _open_stores: dict[str, ObjectStore] = field(default_factory=dict, init=False, repr=False)
    _logins: dict[str, PgConnection] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_environment(cls, fleet: Fleet, **options: object) -> FleetProtection:
        """Secrets and data keys as this process's environment configures them (Vault when
        VAULT_ADDR is set, else the embedded default): what the CLI and Dagster both use."""
        from platform_orchestration.secrets.configured import data_keys_from_env, secret_provider_from_env

        secrets = secret_provider_from_env()
        return cls(fleet, secrets=secrets, keys=data_keys_from_env(secrets), **options)  # type: ignore[arg-type]

    def close(self) -> None:
        """Revoke the dynamic database logins this object took (Vault drops those users).
        Call it when the step or command that used them ends."""
        revoke = getattr(self.secrets, "revoke_all", None)
        self._logins.clear()
        if revoke is not None:
            revoke()

    def __enter__(self) -> FleetProtection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(self, name: str) -> ObjectStore:
        """The named store, opened once (cloud clients are costly to build) and reused."""
        if name not in self._open_stores:
            self._open_stores[name] = open_store(self.fleet.store(name), self.secrets)
        return self._open_stores[name]

    def stores_for(self, database: str) -> list[ObjectStore]:
        """The stores the database's policy requires, in policy order."""
        return [self.store(spec.name) for spec in self.fleet.stores_for(database)]

    def all_stores(self) -> list[ObjectStore]:
        return [self.store(spec.name) for spec in self.fleet.stores]

    def connection_for(self, database: str) -> PgConnection:
        spec = self.fleet.database(database)
        if spec.credentials is not None:
            # One dynamic login per database for this object's life: each login is a new
            # PostgreSQL user, all revoked by close().
            if database not in self._logins:
                login = getattr(self.secrets, "database_login", None)
                if login is None:
                    raise SecretUnavailable(
                        f"database {database}: credentials {spec.credentials.describe()} are a Vault "
                        "database login, and Vault is not configured (set VAULT_ADDR)")
                username, password, _lease = login(spec.credentials.vault)
                self._logins[database] = PgConnection.from_dsn(make_conninfo(spec.dsn, user=username), password)
            return self._logins[database]
        password = self.secrets.resolve(spec.password) if spec.password else None
        if spec.connection is not None:
            return PgConnection.from_dsn(self.secrets.resolve(spec.connection), password)
        return PgConnection.from_dsn(spec.dsn, password)

    def database_lock(self, database: str, operation: str, *, wait: float = 0.0) -> DatabaseLock:
        """The lock that lets one backup, prune or rewrap of `database` run at a time, across
        processes and machines (postgres/locks.py), taken on the database's own connection.
        Entering it raises DatabaseBusy (errors.Busy, exit code 4) naming the holder once
        `wait` seconds have passed, or LockUnavailable if the database cannot be reached."""
        return DatabaseLock(self.connection_for(database), database, operation, wait=wait)

    def _locked(self, database: str, operation: str, lock: bool, wait: float) -> AbstractContextManager[object]:
        return self.database_lock(database, operation, wait=wait) if lock else nullcontext()

    def backup(self, database: str, progress: ProgressListener = no_progress, *,
               lock_wait: float = 0.0) -> BackupOutcome:
        """Take a backup of `database` into every store of its policy, holding the database's
        lock (waiting up to `lock_wait` seconds for it; DatabaseBusy after that)."""
        spec = self.fleet.database(database)
        with self.database_lock(database, "backup", wait=lock_wait):
            return take_backup(
                database=database, cluster=spec.cluster, policy=spec.policy,
                connection=self.connection_for(database), stores=self.stores_for(database),
                compression=self.compression, progress=progress, clock=self.clock, keys=self.keys,
                credentials="dynamic" if spec.credentials is not None else "static",
            )

    def ensure_copies(self, database: str, progress: ProgressListener = no_progress) -> CopyReport:
        return ensure_copies(database, self.stores_for(database), progress=progress)

    def drill(self, database: str, store_name: str | None = None,
              progress: ProgressListener = no_progress) -> DrillRecord:
        policy = self.fleet.policy_for(database)
        return run_restore_drill(
            database=database, stores=self.stores_for(database), store_name=store_name,
            rto_target=policy.drill.rto, rpo_target=policy.rpo, progress=progress,
            clock=self.clock, workdir=self.workdir, keys=self.keys,
        )

    def _search_order(self, database: str) -> list[ObjectStore]:
        """Policy stores first, then any other store (a backup may outlive a policy change)."""
        required = self.stores_for(database)
        names = {s.name for s in required}
        return required + [s for s in self.all_stores() if s.name not in names]

    def find_backup(self, database: str, backup_id: str | None = None,
                    store_name: str | None = None) -> StoredBackup:
        self.fleet.database(database)  # unknown names fail with the fleet's message
        return find_backup(self._search_order(database), database, backup_id, store_name)

    def list_backups(self, database: str | None = None) -> list[StoredBackup]:
        if database is not None:
            self.fleet.database(database)
        stores = self._search_order(database) if database else self.all_stores()
        return [b for store in stores for b in list_backups(store, database)]

    def verify(self, database: str, backup_id: str | None = None, store_name: str | None = None,
               progress: ProgressListener = no_progress) -> StoredBackup:
        stored = self.find_backup(database, backup_id, store_name)
        verify_stored_backup(stored.store, stored.manifest, progress, keys=self.keys)
        return stored

    def restore(self, database: str, target: PgConnection, *, backup_id: str | None = None,
                store_name: str | None = None, replace: bool = False, jobs: int = 2,
                progress: ProgressListener = no_progress, restore_as: str | None = None) -> RestoreResult:
        stored = self.find_backup(database, backup_id, store_name)
        return restore_backup(stored, target, replace=replace, jobs=jobs, progress=progress,
                              workdir=self.workdir, keys=self.keys, restore_as=restore_as)

    def rewrap_all(self, database: str | None = None, *, lock: bool = True,
                   lock_wait: float = 0.0) -> RewrapReport:
        """Move every encrypted backup's manifest, in every store that holds one (policy
        stores and any other), to the newest version of its key; dumps are not touched.
        One database, or the whole fleet's stores. Failures are reported per manifest, never
        raised; the report's `ok` says whether all went. Raises ValueError without `keys`.

        Each database of the fleet is rewrapped holding its lock (see `database_lock`): for one
        database, DatabaseBusy or LockUnavailable is raised; for the whole fleet, a database
        that is busy or unreachable gets failed entries and the others go on. Backups of
        databases no longer in the fleet have no source to lock and are rewrapped as they are.
        `lock=False` skips the lock: see `prune` for when that is right."""
        if self.keys is None:
            raise ValueError("rewrap needs a key provider: this FleetProtection has none")
        if database is not None:
            self.fleet.database(database)  # unknown names fail with the fleet's message
            with self._locked(database, "rewrap", lock, lock_wait):
                return RewrapReport(key_service=self.keys.describe(),
                                    entries=tuple(self._rewrap_backups(self._search_order(database), database)))
        in_fleet = {db.name for db in self.fleet.databases}
        entries: list[RewrapEntry] = []
        by_database: dict[str, list[tuple[ObjectStore, StoredBackup]]] = {}
        for store in self.all_stores():
            try:
                backups = list_backups(store, None)
            except StoreError as exc:
                entries.append(RewrapEntry(None, None, store.name, "failed", error=str(exc)))
                continue
            for stored in backups:
                by_database.setdefault(stored.manifest.database, []).append((store, stored))
        for name, copies in by_database.items():
            try:
                with self._locked(name, "rewrap", lock and name in in_fleet, lock_wait):
                    entries += [self._rewrap_one(store, stored) for store, stored in copies]
            except (DatabaseBusy, LockUnavailable) as exc:
                entries += [RewrapEntry(name, stored.backup_id, store.name, "failed", error=str(exc))
                            for store, stored in copies]
        return RewrapReport(key_service=self.keys.describe(), entries=tuple(entries))

    def _rewrap_backups(self, stores: list[ObjectStore], database: str) -> list[RewrapEntry]:
        entries: list[RewrapEntry] = []
        for store in stores:
            try:
                backups = list_backups(store, database)
            except StoreError as exc:
                entries.append(RewrapEntry(database, None, store.name, "failed", error=str(exc)))
                continue
            entries += [self._rewrap_one(store, stored) for stored in backups]
        return entries

    def _rewrap_one(self, store: ObjectStore, stored: StoredBackup) -> RewrapEntry:
        manifest = stored.manifest
        info = manifest.encryption
        what = (manifest.database, manifest.backup_id, store.name)
        if info is None:
            return RewrapEntry(*what, "unencrypted")
        assert self.keys is not None
        try:
            now = rewrap_backup(store, manifest, self.keys).encryption
        except RewrapFailed as exc:
            return RewrapEntry(*what, "failed", from_version=info.key_version, error=str(exc))
        assert now is not None
        return RewrapEntry(*what, "current" if now.key_version == info.key_version else "rewrapped",
                           from_version=info.key_version, to_version=now.key_version)

    def prune(self, database: str, dry_run: bool = False, *, sweep_older_than: timedelta | None = None,
              lock: bool = True, lock_wait: float = 0.0) -> PruneReport:
        """Apply the database's retention policy to the stores its policy requires (see
        :mod:`platform_orchestration.backups.retention` for the rules) and sweep the leftovers
        of killed writes idle for longer than `sweep_older_than` (default: the policy's
        ``retention.sweep_older_than``, 1 day; at least 1h), the same age as for orphan dumps.
        Stores outside the policy are never pruned.

        A prune holds the database's lock (waiting up to `lock_wait` seconds; DatabaseBusy
        after that), so it never races a backup (whose dump its orphan sweep could take) or a
        rewrap (which could write back a manifest it just deleted). If the database cannot be
        reached, LockUnavailable is raised: whether another backup, prune or rewrap is running
        cannot be known then. `lock=False` (``--no-lock``) is the break-glass override for
        an operator who knows none is, e.g. to free space while the database is down. A dry
        run changes nothing, so it takes no lock."""
        policy = self.fleet.policy_for(database)
        age = sweep_older_than if sweep_older_than is not None else policy.retention.sweep_older_than
        if age < MIN_SWEEP_AGE:
            raise InvalidDeclaration(
                f"prune of {database}: sweep age {format_duration(age)} is below "
                f"{format_duration(MIN_SWEEP_AGE)}: it could remove a backup or copy still being written")
        with self._locked(database, "prune", lock and not dry_run, lock_wait):
            return prune_database(database, self.stores_for(database), policy.retention,
                                  now=self.clock(), dry_run=dry_run, orphan_grace=age, sweep_older_than=age)

    def assess(self, database: str, now: datetime | None = None) -> DatabaseCompliance:
        policy = self.fleet.policy_for(database)
        return assess_database(
            database=database, policy=policy.name, stores=self.stores_for(database), rpo=policy.rpo,
            drill_every=policy.drill.every, rto=policy.drill.rto, now=now or self.clock(),
            requires_dynamic_credentials=self.fleet.database(database).uses_dynamic_credentials,
        )

    def assess_fleet(self, now: datetime | None = None) -> list[DatabaseCompliance]:
        now = now or self.clock()
        return [self.assess(db.name, now) for db in self.fleet.databases]

    def record_compliance(self, report: bytes, now: datetime | None = None) -> tuple[str, list[str]]:
        """Write a compliance report into every store of the fleet; returns (key, stores)."""
        key = f"evidence/compliance/{new_backup_id(now or self.clock())}.json"
        written = []
        for store in self.all_stores():
            try:
                write_bytes(store, key, report)
                written.append(store.name)
            except StoreError:
                continue
        return key, written
