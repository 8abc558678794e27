"""The protection flow for one fleet: the single API that the CLI and Dagster both call.

It turns fleet entries into open stores and database connections (secrets resolved
through the configured provider) and hands them to the backup, copy, drill, restore
and compliance functions, which know nothing of fleets, Dagster or secrets. With a key
provider (`keys`), every backup it takes is encrypted, and it decrypts what it verifies,
restores and drills.

Its `clock` (the worker's, :mod:`platform_orchestration.clock`) is the only "now" of the
core: every id, timestamp and age it makes comes from it. What cannot be read in a store
(a manifest, a drill record) is reported by every method that meets it, never skipped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

# What the commands that read stores share, and the light modules beside it, is imported here.
# What brings the PostgreSQL driver or much code of its own (taking, restoring, drilling, pruning,
# locks and probes, physical, standbys, recoverability, the report) is imported by the methods
# that use it, so that a command pays only for what it runs: a break-glass `verify` loads no
# PostgreSQL driver, a `restore` none of physical, replication or reporting
# (tests/test_startup.py proves what each keeps out; tests/test_architecture.py that no such
# import hides a cycle).
from platform_orchestration.backups.catalog import (
    BackupChoice,
    BackupListing,
    StoredBackup,
    describe_grouped,
    read_backups,
    read_backups_or_report,
    select_backup,
)
from platform_orchestration.backups.compliance import (
    ComplianceEvidence,
    DatabaseCompliance,
    assess_database,
    record_compliance,
)
from platform_orchestration.backups.copy import CopyReport, ensure_copies
from platform_orchestration.backups.leftovers import (
    CleanupReport,
    LeftoverSweep,
    prefixes_written_for,
    sweep_leftovers,
)
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.backups.rewrap import (
    RewrapEntry,
    RewrapFailed,
    RewrapReport,
    rewrap_backup,
)
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.errors import InvalidDeclaration, PlatformError, one_line
from platform_orchestration.fleet import Fleet
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import MIN_SWEEP_AGE, PHYSICAL_STORE_KINDS
from platform_orchestration.ownership import reap_abandoned
from platform_orchestration.postgres.connection import PgConnection, conninfo_to_dict, make_conninfo
from platform_orchestration.providers import providers_from_env
from platform_orchestration.replication.protection import ReplicationProtection
from platform_orchestration.secrets import LocalSecretProvider, SecretProvider, SecretUnavailable
from platform_orchestration.storage import ObjectStore, StoreError
from platform_orchestration.stores import open_store

if TYPE_CHECKING:
    from platform_orchestration.backups.manifest import DrillRecord
    from platform_orchestration.backups.restore import RestoreResult
    from platform_orchestration.backups.retention import PruneReport
    from platform_orchestration.backups.take import BackupOutcome, CompressionSettings
    from platform_orchestration.observability.recoverability import DatabaseRecoverability
    from platform_orchestration.physical.archiving import ArchiveStatus
    from platform_orchestration.physical.base_backup import BaseBackup, BaseBackupOutcome
    from platform_orchestration.physical.compliance import ClusterCompliance
    from platform_orchestration.physical.copy import CopyLag, CopyOutcome
    from platform_orchestration.physical.drill import PitrDrillRecord
    from platform_orchestration.physical.encryption import StoreEncryption
    from platform_orchestration.physical.pitr import PitrResult, RecoveryTarget
    from platform_orchestration.physical.repository import Repository
    from platform_orchestration.physical.retention import RetentionPlan
    from platform_orchestration.postgres.locks import DatabaseLock
    from platform_orchestration.postgres.probe import DatabaseObservation, ServerObservation
    from platform_orchestration.reporting import RecoverabilityReport


class TargetRefused(InvalidDeclaration):
    """A restore target given on the command line or in run config breaks a rule."""

# One rule for the CLI and the Launchpad: a password never travels in a target DSN, since
# command lines end up in shell history and `ps`, and run config is stored and displayed.
TARGET_PASSWORD_RULE = ("the target DSN must not contain a password (command lines and run config are "
                        "kept and shown); give it in the PGPASSWORD environment variable of the CLI, or "
                        "name an environment variable of the run worker in target_password_env")


def restore_target(dsn: str, password: str | None = None) -> PgConnection:
    """The restore target a DSN names, refusing one that carries a password or does not parse.
    `password` comes from the environment (PGPASSWORD, or the variable the run config names)."""
    import psycopg  # its parser's error type; the restore that follows connects with it

    if not dsn.strip():
        raise TargetRefused("a target DSN is required: the libpq DSN of the database to restore into")
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise TargetRefused(f"the target DSN is not a valid libpq DSN: {one_line(exc)}") from None
    if "password" in parts:
        raise TargetRefused(TARGET_PASSWORD_RULE)
    if not parts.get("dbname"):
        raise TargetRefused("the target DSN names no database (dbname=...): say which database to restore into")
    return PgConnection(dsn, password)


STORE_CONCURRENCY_ENV = "PLATFORM_STORE_CONCURRENCY"
DEFAULT_STORE_CONCURRENCY = 8


def store_concurrency_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """How many databases a fleet-wide assessment reads from the stores at once, as
    ``$PLATFORM_STORE_CONCURRENCY`` says (a whole number of at least 1); None when it is unset."""
    text = (os.environ if environ is None else environ).get(STORE_CONCURRENCY_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise InvalidDeclaration(f"{STORE_CONCURRENCY_ENV}: expected a whole number of at least 1, got {text!r}")
    return int(text)


@dataclass(frozen=True)
class ClusterObservation:
    """One fleet cluster as declared and as seen through one of its databases' logins."""
    name: str
    cloud: str
    region: str
    declared_role: str
    databases: tuple[str, ...]
    server: ServerObservation | None = None
    unreachable: str | None = None  # why, when it could not be observed

    @property
    def observed_role(self) -> str:
        return self.server.role if self.server else "-"

    @property
    def version(self) -> str:
        if self.server:
            return self.server.version
        return "unreachable" if self.unreachable else "-"


@dataclass
class FleetProtection(ReplicationProtection):  # standbys: seed, observe, drill, promote (replication/protection.py)
    fleet: Fleet
    secrets: SecretProvider = field(default_factory=LocalSecretProvider)
    compression: CompressionSettings | None = None  # None: take_backup's defaults (level 1, no threads)
    workdir: Path | None = None
    clock: Clock = utc_now
    # None: backups are taken unencrypted, and encrypted ones cannot be read.
    keys: DataKeyProvider | None = None
    _open_stores: dict[str, ObjectStore] = field(default_factory=dict, init=False, repr=False)
    _logins: dict[str, PgConnection] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_environment(cls, fleet: Fleet, **options: object) -> FleetProtection:
        """Secrets and data keys as this process's environment configures them (Vault when
        VAULT_ADDR is set, else the embedded default): what the CLI and Dagster both use."""
        secrets, keys = providers_from_env()
        return cls(fleet, secrets=secrets, keys=keys, **options)  # type: ignore[arg-type]

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

    def observe_clusters(self) -> list[ClusterObservation]:
        """Every cluster of the fleet, observed through the login of its first database (a
        cluster without databases is listed as declared). An unreachable one is reported in
        its observation, not raised: one cluster down must not hide the others."""
        from platform_orchestration.postgres.probe import observe_server

        observations = []
        for cluster in self.fleet.clusters:
            members = tuple(db.name for db in self.fleet.databases if db.cluster == cluster.name)
            declared = dict(name=cluster.name, cloud=cluster.cloud, region=cluster.region,
                            declared_role=cluster.role, databases=members)
            if not members:
                observations.append(ClusterObservation(**declared))
                continue
            try:
                server = observe_server(self.connection_for(members[0]))
            except PlatformError as exc:
                observations.append(ClusterObservation(**declared, unreachable=one_line(exc)))
                continue
            observations.append(ClusterObservation(**declared, server=server))
        return observations

    def observe_database(self, database: str) -> DatabaseObservation:
        """Size, tables and server version of one fleet database, through its own login."""
        from platform_orchestration.postgres.probe import observe_database

        return observe_database(self.connection_for(database))

    def database_lock(self, database: str, operation: str, *, wait: float = 0.0) -> DatabaseLock:
        """The lock that lets one backup, prune or rewrap of `database` run at a time, across
        processes and machines (postgres/locks.py), taken on the database's own connection.
        Entering it raises DatabaseBusy (errors.Busy, exit code 4) naming the holder once
        `wait` seconds have passed, or LockUnavailable if the database cannot be reached."""
        from platform_orchestration.postgres.locks import DatabaseLock

        return DatabaseLock(self.connection_for(database), database, operation, wait=wait)

    def _locked(self, database: str, operation: str, lock: bool, wait: float) -> AbstractContextManager[object]:
        return self.database_lock(database, operation, wait=wait) if lock else nullcontext()

    def backup(self, database: str, progress: ProgressListener = no_progress, *,
               lock_wait: float = 0.0) -> BackupOutcome:
        """Take a backup of `database` into every store of its policy, holding the database's
        lock (waiting up to `lock_wait` seconds for it; DatabaseBusy after that)."""
        from platform_orchestration.backups.take import CompressionSettings, take_backup

        spec = self.fleet.database(database)
        with self.database_lock(database, "backup", wait=lock_wait):
            return take_backup(
                database=database, cluster=spec.cluster, policy=spec.policy,
                connection=self.connection_for(database), stores=self.stores_for(database),
                compression=self.compression or CompressionSettings(), progress=progress, clock=self.clock, keys=self.keys,
                credentials="dynamic" if spec.credentials is not None else "static",
            )

    def ensure_copies(self, database: str, progress: ProgressListener = no_progress) -> CopyReport:
        return ensure_copies(database, self.stores_for(database), progress=progress, clock=self.clock)

    def drill(self, database: str, store_name: str | None = None,
              progress: ProgressListener = no_progress) -> DrillRecord:
        from platform_orchestration.backups.drill import run_restore_drill

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

    def select_backup(self, database: str, backup_id: str | None = None,
                      store_name: str | None = None) -> BackupChoice:
        """The backup asked for (the latest readable one by default), with the newer backups
        passed over and every manifest of the database that could not be read."""
        self.fleet.database(database)  # unknown names fail with the fleet's message
        return select_backup(self._search_order(database), database, backup_id, store_name)

    def find_backup(self, database: str, backup_id: str | None = None,
                    store_name: str | None = None) -> StoredBackup:
        return self.select_backup(database, backup_id, store_name).stored

    def list_backups(self, database: str | None = None) -> BackupListing:
        """Every readable backup in every store (policy stores first), and every manifest
        that could not be read."""
        if database is not None:
            self.fleet.database(database)
        stores = self._search_order(database) if database else self.all_stores()
        return sum((read_backups_or_report(store, database) for store in stores), BackupListing())

    def verify(self, database: str, backup_id: str | None = None, store_name: str | None = None,
               progress: ProgressListener = no_progress) -> BackupChoice:
        """Re-read the chosen backup end to end (checksum, decryption, archive); returns the
        choice, which names the database's unreadable manifests. A backup asked for by id
        whose manifest cannot be read raises BackupUnreadable."""
        from platform_orchestration.backups.integrity import verify_stored_backup

        choice = self.select_backup(database, backup_id, store_name)
        verify_stored_backup(choice.stored.store, choice.stored.manifest, progress, keys=self.keys)
        return choice

    def restore(self, database: str, target: PgConnection, *, backup_id: str | None = None,
                store_name: str | None = None, replace: bool = False, jobs: int = 2,
                progress: ProgressListener = no_progress, restore_as: str | None = None,
                with_globals: bool = False) -> RestoreResult:
        """Restore the chosen backup into `target` (its globals first with `with_globals`); the
        result names the newer backups passed over because their manifest could not be read."""
        from platform_orchestration.backups.restore import restore_backup

        choice = self.select_backup(database, backup_id, store_name)
        result = restore_backup(choice.stored, target, replace=replace, jobs=jobs, progress=progress,
                                workdir=self.workdir, keys=self.keys, restore_as=restore_as,
                                with_globals=with_globals)
        return dataclasses.replace(result, passed_over=tuple(describe_grouped(choice.passed_over)))

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
        from platform_orchestration.postgres.locks import DatabaseBusy, LockUnavailable

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
            backups, failed = self._rewrap_listing(store, None)
            entries += failed
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
            backups, failed = self._rewrap_listing(store, database)
            entries += failed + [self._rewrap_one(store, stored) for stored in backups]
        return entries

    @staticmethod
    def _rewrap_listing(store: ObjectStore, database: str | None
                        ) -> tuple[tuple[StoredBackup, ...], list[RewrapEntry]]:
        """The readable backups of `store` to rewrap, and a failed entry for what cannot be:
        the whole store when it cannot be listed, each manifest that cannot be read."""
        try:
            listing = read_backups(store, database)
        except StoreError as exc:
            return (), [RewrapEntry(database, None, store.name, "failed", error=str(exc))]
        return listing.backups, [RewrapEntry(broken.database, broken.backup_id, store.name, "failed",
                                             error=broken.reason) for broken in listing.unreadable]

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
        from platform_orchestration.backups.retention import DrillRetention, prune_database

        policy = self.fleet.policy_for(database)
        age = sweep_older_than if sweep_older_than is not None else policy.retention.sweep_older_than
        if age < MIN_SWEEP_AGE:
            raise InvalidDeclaration(
                f"prune of {database}: sweep age {format_duration(age)} is below "
                f"{format_duration(MIN_SWEEP_AGE)}: it could remove a backup or copy still being written")
        with self._locked(database, "prune", lock and not dry_run, lock_wait):
            report = prune_database(database, self.stores_for(database), policy.retention,
                                    now=self.clock(), dry_run=dry_run, orphan_grace=age, sweep_older_than=age,
                                    drills=DrillRetention.of(policy.drill))
        # What killed drills and restores left on this machine (servers, scratch directories).
        return dataclasses.replace(report, machine=reap_abandoned(dry_run=dry_run))

    def cleanup(self, *, dry_run: bool = False) -> CleanupReport:
        """Remove what killed commands left: on this machine, the throwaway servers and scratch
        directories of drills and restores whose process is gone (never a live one's); in
        every store of every database's policy, the leftovers of killed writes under the
        prefixes written for it (see :mod:`platform_orchestration.backups.leftovers`): those
        whose writer is known dead at once, the others once idle for longer than the policy's
        ``retention.sweep_older_than``. Deletes no backup and takes no lock (nothing it removes
        is committed, or in use)."""
        machine = reap_abandoned(dry_run=dry_run)
        now = self.clock()
        cutoffs: dict[str, tuple[datetime, list[str]]] = {}
        for spec in self.fleet.databases:
            policy = self.fleet.policy_for(spec.name)
            for store_spec in self.fleet.stores_for(spec.name):
                cutoff, prefixes = cutoffs.setdefault(store_spec.name, (now - policy.retention.sweep_older_than, []))
                # One cutoff per store: the most careful (longest) age any of its databases asks for.
                cutoffs[store_spec.name] = (min(cutoff, now - policy.retention.sweep_older_than), prefixes)
                prefixes += [p for p in prefixes_written_for(spec.name) if p not in prefixes]
        swept = []
        for name, (cutoff, prefixes) in cutoffs.items():
            try:
                store = self.store(name)
            except PlatformError as exc:
                swept.append((name, LeftoverSweep(failures=(f"cannot open the store: {one_line(exc)}",))))
                continue
            swept.append((name, sweep_leftovers(store, prefixes, older_than=cutoff, dry_run=dry_run)))
        return CleanupReport(machine, tuple(swept), dry_run)

    def rotate_key(self) -> tuple[str, int]:
        """Make a new version of the key-encryption key the one new data keys are wrapped under
        (older versions still unwrap what they wrapped): the local key file, or Vault transit
        if this token may rotate. Returns (the key service, the new version). Rewrap next."""
        if self.keys is None:
            raise InvalidDeclaration("no key service is configured: there is no key to rotate")
        rotate = getattr(self.keys, "rotate", None)
        if rotate is None:
            raise InvalidDeclaration(f"{self.keys.describe()} cannot be rotated from here")
        return self.keys.describe(), int(rotate())

    def assess(self, database: str, now: datetime | None = None) -> DatabaseCompliance:
        """The database's five findings at `now` (default: this object's clock); ages are
        `now` minus times on the worker's clock (see :mod:`platform_orchestration.clock`)."""
        policy = self.fleet.policy_for(database)
        return assess_database(
            database=database, policy=policy.name, stores=self.stores_for(database), rpo=policy.rpo,
            drill_every=policy.drill.every, rto=policy.drill.rto, now=now or self.clock(),
            requires_dynamic_credentials=self.fleet.database(database).uses_dynamic_credentials,
            stores_at_once=any(self.fleet.store(name).kind != "local" for name in policy.stores),
        )

    def assess_fleet(self, now: datetime | None = None, *, concurrency: int | None = None) -> list[DatabaseCompliance]:
        """Every database's assessment at one `now`, in fleet order; each database lists each
        of its stores once for backups and once for drill records, and reads its catalog index
        once (and only the manifests the index lacks).

        Up to `concurrency` databases are read at once (else ``$PLATFORM_STORE_CONCURRENCY``,
        else 8 when a cloud store is involved), each reading its cloud stores in parallel. The work on a cloud store is waiting on round
        trips, which threads overlap; on local stores it is parsing under the GIL, which threads
        only slow down (measured: benchmarks/README.md), so local-only fleets default to one."""
        now = now or self.clock()
        names = [db.name for db in self.fleet.databases]
        used = list(dict.fromkeys(name for db in names for name in self.fleet.policy_for(db).stores))
        workers = concurrency if concurrency is not None else store_concurrency_from_env()
        if workers is None:
            all_local = all(self.fleet.store(name).kind == "local" for name in used)
            workers = 1 if all_local else DEFAULT_STORE_CONCURRENCY
        if workers < 1:
            raise InvalidDeclaration(f"store concurrency must be at least 1, got {workers}")
        # Opened here, one thread, once: the workers then share them (stores are thread-safe).
        for store_name in used:
            self.store(store_name)
        if workers == 1 or len(names) < 2:
            return [self.assess(name, now) for name in names]
        with ThreadPoolExecutor(max_workers=min(workers, len(names)), thread_name_prefix="assess") as pool:
            return list(pool.map(lambda name: self.assess(name, now), names))

    def record_compliance(self, assessments: Sequence[DatabaseCompliance] | None = None) -> ComplianceEvidence:
        """Assess the fleet now (or take `assessments` made by the caller), build the compliance
        report document and write it into every store of the fleet; returns what it says,
        its key, and where it was written. Raises StoreError only if no store got it."""
        now = self.clock()
        if assessments is None:
            assessments = self.assess_fleet(now)
        return record_compliance(assessments, self.all_stores(), now=now, fleet_file=str(self.fleet.source))

    # --- physical: barman-cloud base backups, WAL archiving, point-in-time restores -------------

    def physical_repository(self, cluster: str) -> Repository:
        """The cluster's physical repository, its store's credentials resolved (never log them)."""
        from platform_orchestration.physical.repository import repository_for

        spec = self.fleet.cluster(cluster)
        if spec.physical is None:
            raise InvalidDeclaration(f"cluster {cluster} has no physical section in {self.fleet.source} "
                                     "(physical: {store, policy, dsn}): it has no physical repository")
        store = self.fleet.store(spec.physical.store)
        refs = getattr(store, "credentials", None) or {}
        credentials = {name: self.secrets.resolve(ref) for name, ref in refs.items()}
        return repository_for(spec, store, credentials, self.fleet.policy(spec.physical.policy).physical)

    def physical_connection(self, cluster: str) -> PgConnection:
        physical = self.fleet.cluster(cluster).physical
        if physical is None:
            raise InvalidDeclaration(f"cluster {cluster} has no physical section")
        password = self.secrets.resolve(physical.password) if physical.password else None
        return PgConnection.from_dsn(physical.dsn, password)

    def physical_settings(self, cluster: str, credentials_file: Path | None = None) -> dict[str, str]:
        """The server parameters that make ``cluster`` archive into its repository."""
        from platform_orchestration.physical.settings import server_settings
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_repository(cluster)
        if repository.server_credentials == "ambient":
            credentials_file = None
        return server_settings(barman_tools(), repository, credentials_file)

    def base_backup(self, cluster: str, *, jobs: int = 2) -> BaseBackupOutcome:
        """A base backup of ``cluster`` now (barman-cloud-backup on this host)."""
        from platform_orchestration.physical.base_backup import take_base_backup
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_repository(cluster)
        # The store's client (boto3 & co., about 0.3 s to import and build) is opened while
        # barman-cloud-backup runs: it is only needed afterwards, to read barman's record.
        # Only we run barman-cloud-backup: no need to prove the server's user can run it too.
        connection, tools = self.physical_connection(cluster), barman_tools(for_server_user=False)
        with ThreadPoolExecutor(max_workers=1) as pool:
            store = pool.submit(self.store, repository.store)
            return take_base_backup(tools, repository, connection, jobs=jobs, clock=self.clock, store=store)

    def list_base_backups(self, cluster: str | None = None) -> dict[str, list[BaseBackup]]:
        """{cluster: its base backups, oldest first} for one physical cluster or all of them."""
        from platform_orchestration.physical.base_backup import list_base_backups
        from platform_orchestration.physical.tools import barman_tools

        names = [cluster] if cluster else [c.name for c in self.fleet.physical_clusters()]
        listed = {}
        for name in names:
            repository = self.physical_repository(name)
            listed[name] = list_base_backups(barman_tools(), repository, self.store(repository.store))
        return listed

    def archive_status(self, cluster: str) -> ArchiveStatus:
        from platform_orchestration.physical.archiving import archive_status
        from platform_orchestration.physical.base_backup import list_base_backups
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_repository(cluster)
        backups = list_base_backups(barman_tools(), repository)
        return archive_status(self.physical_connection(cluster), self.store(repository.store), repository, backups)

    def physical_copy_targets(self, cluster: str) -> tuple[list[str], list[str]]:
        """(the policy's other object stores, which hold copies of ``cluster``'s repository; the
        policy's stores that cannot: local ones, barman-cloud reads object stores only)."""
        physical = self.fleet.cluster(cluster).physical
        if physical is None:
            raise InvalidDeclaration(f"cluster {cluster} has no physical section")
        others = [name for name in self.fleet.policy(physical.policy).stores if name != physical.store]
        targets = [name for name in others if self.fleet.store(name).kind in PHYSICAL_STORE_KINDS]
        return targets, [name for name in others if name not in targets]

    def physical_store_repository(self, cluster: str, store_name: str | None = None) -> Repository:
        """The repository (``store_name`` None or the repository's store) or its copy in ``store_name``
        (one of the policy's other object stores), credentials resolved; PitrRefused for another store."""
        from platform_orchestration.physical.pitr import PitrRefused
        from platform_orchestration.physical.repository import repository_for

        repository = self.physical_repository(cluster)
        if store_name is None or store_name == repository.store:
            return repository
        targets, _ = self.physical_copy_targets(cluster)
        if store_name not in targets:
            raise PitrRefused(f"store {store_name} holds no copy of cluster {cluster}'s physical repository "
                              f"(the repository is in {repository.store}; copies are in: "
                              f"{', '.join(targets) or 'none (its policy names no other object store)'})")
        spec = self.fleet.store(store_name)
        refs = getattr(spec, "credentials", None) or {}
        credentials = {name: self.secrets.resolve(ref) for name, ref in refs.items()}
        physical = self.fleet.cluster(cluster).physical
        return repository_for(self.fleet.cluster(cluster), spec, credentials,
                              self.fleet.policy(physical.policy).physical, copy=True)  # type: ignore[union-attr]

    def copy_physical(self, cluster: str, store_name: str | None = None, *,
                      verify: bool = False) -> tuple[list[CopyOutcome], dict[str, str]]:
        """Bring the copies of ``cluster``'s repository (in every copy store, or ``store_name``) up
        to date; (the outcomes, {store: why its copy failed})."""
        from platform_orchestration.physical.copy import PhysicalCopyFailed, copy_repository
        from platform_orchestration.physical.pitr import PitrRefused

        repository = self.physical_repository(cluster)
        targets, _ = self.physical_copy_targets(cluster)
        if store_name is not None:
            self.physical_store_repository(cluster, store_name)  # refuses a store that holds no copy
            if store_name == repository.store:
                raise PitrRefused(f"store {store_name} holds cluster {cluster}'s repository itself, not a copy")
            targets = [store_name]
        outcomes, failures = [], {}
        for name in targets:
            try:
                outcomes.append(copy_repository(self.store(repository.store), self.store(name), repository,
                                                clock=self.clock, verify=verify))
            except PhysicalCopyFailed as exc:
                failures[name] = one_line(exc)
        return outcomes, failures

    def copy_lags(self, cluster: str) -> dict[str, CopyLag | str]:
        """How far each copy of ``cluster``'s repository is behind it (or why that is unknown)."""
        from platform_orchestration.physical.copy import copy_lag

        repository = self.physical_repository(cluster)
        lags: dict[str, CopyLag | str] = {}
        for name in self.physical_copy_targets(cluster)[0]:
            try:
                lags[name] = copy_lag(self.store(repository.store), self.store(name), repository, clock=self.clock)
            except PlatformError as exc:
                lags[name] = one_line(exc)
        return lags

    def physical_encryption(self, cluster: str) -> list[StoreEncryption]:
        """How the repository's store and each copy's encrypt them at rest (provider-side)."""
        from platform_orchestration.physical.encryption import observe_encryption

        repository = self.physical_repository(cluster)
        found = [observe_encryption(self.store(repository.store), repository, "repository")]
        for name in self.physical_copy_targets(cluster)[0]:
            found.append(observe_encryption(self.store(name), self.physical_store_repository(cluster, name), "copy"))
        return found

    def prune_physical(self, cluster: str, *, dry_run: bool = False) -> list[RetentionPlan]:
        """Retention of base backups and WAL per the policy's pitr_window, in the repository and
        every copy (physical/retention.py); with ``dry_run``, only what would be deleted."""
        from platform_orchestration.physical.base_backup import list_base_backups
        from platform_orchestration.physical.drill import pitr_drill_history
        from platform_orchestration.physical.retention import apply_retention, plan_retention, wal_before
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_repository(cluster)
        window = repository.policy.pitr_window  # type: ignore[union-attr]
        drills, _ = pitr_drill_history(self._physical_record_stores(cluster), cluster)
        now = self.clock()
        plans = []
        for name in [repository.store, *self.physical_copy_targets(cluster)[0]]:
            store_repository = self.physical_store_repository(cluster, name)
            backups = list_base_backups(barman_tools(), store_repository)
            verified = [r.backup_id for r in drills if r.passed and r.source_store == name and r.backup_id]
            plan = plan_retention(backups, window=window, now=now, store=name,
                                  protected=verified[-1] if verified else None)
            wal = wal_before(self.store(name), store_repository, plan, backups)
            plan = dataclasses.replace(plan, wal_to_delete=wal)
            if not dry_run:
                plan = apply_retention(barman_tools(), store_repository, plan, window=window,
                                       is_repository=name == repository.store)
            plans.append(plan)
        return plans

    def restore_pitr(self, cluster: str, target: RecoveryTarget, target_dir: Path, *, port: int | None = None,
                     store_name: str | None = None) -> PitrResult:
        """A new cluster in ``target_dir`` at ``target``, from ``cluster``'s repository or its copy in
        ``store_name``; left running."""
        from platform_orchestration.kube.pod_storage import refuse_unless_kept
        from platform_orchestration.physical.pitr import restore_to_point
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_store_repository(cluster, store_name)
        refuse_unless_kept(target_dir, f"point-in-time restore of cluster {cluster}", "restore_to_point_in_time")
        return restore_to_point(barman_tools(), repository, target, target_dir, port=port,
                                store=self.store(repository.store))

    def _physical_record_stores(self, cluster: str) -> list[ObjectStore]:
        repository_store = self.fleet.cluster(cluster).physical.store  # type: ignore[union-attr]
        policy = self.fleet.policy(self.fleet.cluster(cluster).physical.policy)  # type: ignore[union-attr]
        return [self.store(name) for name in dict.fromkeys([repository_store, *policy.stores])]

    def pitr_drill(self, cluster: str, store_name: str | None = None) -> PitrDrillRecord:
        """One PITR drill of ``cluster``, from ``store_name`` or the next store in rotation (the
        repository's, then each copy's), recorded in its repository's store and its policy's stores."""
        from platform_orchestration.physical.drill import next_drill_store, pitr_drill_history, run_pitr_drill
        from platform_orchestration.physical.tools import barman_tools

        repository = self.physical_repository(cluster)
        policy = self.fleet.policy(self.fleet.cluster(cluster).physical.policy)  # type: ignore[union-attr]
        if store_name is None:
            history, _ = pitr_drill_history(self._physical_record_stores(cluster), cluster)
            store_name = next_drill_store([repository.store, *self.physical_copy_targets(cluster)[0]], history)
        source = self.physical_store_repository(cluster, store_name)
        restore_from = None if source.store == repository.store else (source, self.store(source.store))
        return run_pitr_drill(tools=barman_tools(), repository=repository, store=self.store(repository.store),
                              connection=self.physical_connection(cluster),
                              record_stores=self._physical_record_stores(cluster), rto_target=policy.drill.rto,
                              rpo_target=policy.physical.wal_max_lag,  # type: ignore[union-attr]
                              clock=self.clock, workdir=self.workdir, restore_from=restore_from)

    def assess_cluster(self, cluster: str, now: datetime | None = None) -> ClusterCompliance:
        """The cluster's physical findings (physical/compliance.py)."""
        from platform_orchestration.physical.archiving import archive_status
        from platform_orchestration.physical.base_backup import list_base_backups
        from platform_orchestration.physical.compliance import assess_cluster
        from platform_orchestration.physical.drill import pitr_drill_history
        from platform_orchestration.physical.tools import barman_tools

        spec = self.fleet.cluster(cluster)
        policy = self.fleet.policy(spec.physical.policy)  # type: ignore[union-attr]
        repository = self.physical_repository(cluster)
        backups = list_base_backups(barman_tools(), repository)
        try:
            archive: ArchiveStatus | str = archive_status(self.physical_connection(cluster),
                                                          self.store(repository.store), repository, backups)
        except PlatformError as exc:
            archive = one_line(exc)
        drills, unreadable = pitr_drill_history(self._physical_record_stores(cluster), cluster)
        return assess_cluster(cluster=cluster, policy=policy.name, physical=policy.physical,  # type: ignore[arg-type]
                              drill=policy.drill, backups=backups, archive=archive, drills=drills,
                              now=now or self.clock(), unreadable=unreadable, copies=self.copy_lags(cluster),
                              not_copied=self.physical_copy_targets(cluster)[1],
                              encryption=self.physical_encryption(cluster))
    def recoverability(self, database: str | None = None, now: datetime | None = None, *,
                       assessments: Sequence[DatabaseCompliance] | None = None) -> list[DatabaseRecoverability]:
        """Each database's recoverability (one, or the fleet's in fleet order) at one `now`: the
        assessment's findings with the figures per store and per cloud behind them (see
        :mod:`platform_orchestration.observability.recoverability`). `assessments` made by the
        caller at `now` are used instead of assessing again."""
        from platform_orchestration.observability.recoverability import StoreFacts, describe_immutability, observe_recoverability

        now = now or self.clock()
        if assessments is None:
            assessments = [self.assess(database, now)] if database else self.assess_fleet(now)
        facts = [StoreFacts(s.name, s.cloud, s.kind, describe_immutability(getattr(s, "immutability", None)))
                 for s in self.fleet.stores]
        return [observe_recoverability(
            database=a.database, cluster=self.fleet.database(a.database).cluster,
            policy=self.fleet.policy_for(a.database), stores=self.stores_for(a.database), facts=facts,
            assessment=a, now=now) for a in assessments]

    def record_report(self, evidence: ComplianceEvidence, *, run_id: str | None = None) -> RecoverabilityReport:
        """Write the recoverability report (HTML and JSON) of one compliance run beside its
        evidence in every store, from the assessments the evidence holds (same `now`)."""
        from platform_orchestration.reporting import record_report

        views = self.recoverability(now=evidence.generated_at, assessments=evidence.assessments)
        return record_report(views, self.all_stores(), evidence=evidence, fleet_file=str(self.fleet.source),
                             run_id=run_id)
