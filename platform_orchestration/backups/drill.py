"""Restore drills: prove a backup restores, measure how long it takes, keep the evidence.

A drill restores the latest backup held by one store into a throwaway cluster, checks
every table's row count against the manifest, records RTO (fetch + restore wall time)
and RPO (age of the backup's snapshot when the drill began, both on the worker's clock),
and writes the record into every store of the policy, so the evidence survives the loss
of any one cloud. Drills rotate across stores, so every cloud's copy gets proven in turn.
A newer backup of that store whose manifest cannot be read is not drilled, and the record
says so (``passed_over``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from platform_orchestration.backups.catalog import (
    BackupNotFound,
    describe_grouped,
    drill_history,
    record_everywhere,
    select_backup,
)
from platform_orchestration.backups.encryption import require_key_provider
from platform_orchestration.backups.integrity import BackupCorrupt
from platform_orchestration.backups.index import refresh_index_quietly
from platform_orchestration.backups.manifest import DrillRecord, new_drill_id
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.backups.restore import (
    RestoreFailed,
    RestoreRefused,
    restore_backup,
)
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.postgres.binaries import PostgresToolsMissing
from platform_orchestration.postgres.cluster import ClusterError, ephemeral_cluster
from platform_orchestration.storage import ObjectStore, StoreError

# Failures that mean "this backup could not be proven", recorded as a failed drill.
# Anything else is a bug or an outage of our own and propagates.
_DRILL_FAILURES = (BackupNotFound, BackupCorrupt, RestoreFailed, RestoreRefused, ClusterError,
                   PostgresToolsMissing, StoreError)


def next_drill_store(history: Sequence[DrillRecord], store_names: Sequence[str]) -> str:
    """The store after the one the last drill used, so drills rotate across clouds.

    >>> from types import SimpleNamespace as R
    >>> next_drill_store([], ["aws", "azure", "gcp"])
    'aws'
    >>> next_drill_store([R(source_store="aws")], ["aws", "azure", "gcp"])
    'azure'
    >>> next_drill_store([R(source_store="gcp")], ["aws", "azure", "gcp"])
    'aws'
    """
    if not history or history[-1].source_store not in store_names:
        return store_names[0]
    return store_names[(list(store_names).index(history[-1].source_store) + 1) % len(store_names)]


def run_restore_drill(
    *,
    database: str,
    stores: Sequence[ObjectStore],
    rto_target: timedelta,
    rpo_target: timedelta,
    store_name: str | None = None,
    progress: ProgressListener = no_progress,
    clock: Clock = utc_now,
    workdir: Path | None = None,
    keys: DataKeyProvider | None = None,
) -> DrillRecord:
    """Run one drill and record it; returns the record (passed or not). An encrypted backup
    is decrypted with its data key unwrapped by `keys`; one that cannot be (no provider,
    the key refused, failed authentication) is a failed drill, not an exception.

    Times and the drill id come from `clock` (the worker's); RPO is the drill's start minus
    the backup's snapshot time on the worker's clock."""
    names = [s.name for s in stores]
    chosen = store_name or next_drill_store(drill_history(stores, database).records, names)
    source = next((s for s in stores if s.name == chosen), None)
    if source is None:
        raise ValueError(f"drill of {database}: store {chosen!r} is not one of its policy's stores "
                         f"({', '.join(names)})")
    started_at = clock()
    fields: dict = {"backup_id": None, "passed": False}
    try:
        choice = select_backup([source], database)
        stored = choice.stored
        fields["backup_id"] = stored.backup_id
        fields["passed_over"] = describe_grouped(choice.passed_over)
        fields["rpo_seconds"] = stored.manifest.age_at(started_at).total_seconds()
        require_key_provider(source, stored.manifest, keys)  # before a cluster is started for nothing
        with ephemeral_cluster(min_major=stored.manifest.server.major, parent_dir=workdir) as cluster:
            result = restore_backup(stored, cluster.connection(f"drill_{database}"), jobs=2,
                                    progress=progress, workdir=workdir, keys=keys, throwaway_target=True)
            fields["restored_on"] = f"PostgreSQL {cluster.install.version}"
        fields.update(rto_seconds=result.recovery_seconds, tables_verified=result.tables_verified,
                      rows_verified=result.rows_verified)
        if result.recovery_seconds > rto_target.total_seconds():
            fields["failure"] = (f"RTO exceeded: restore took {result.recovery_seconds:.1f}s, "
                                 f"target {rto_target.total_seconds():.0f}s")
        else:
            fields["passed"] = True
    except _DRILL_FAILURES as exc:
        fields["failure"] = str(exc)
    record = DrillRecord(
        drill_id=new_drill_id(started_at), database=database, source_store=chosen,
        started_at=started_at, finished_at=clock(), rto_target_seconds=rto_target.total_seconds(),
        rpo_target_seconds=rpo_target.total_seconds(), **fields,
    )
    recorded = record_everywhere(stores, record.key, record.to_json(), f"drill {record.drill_id} of {database}")
    for store in stores:
        if store.name in recorded.stored_in:
            refresh_index_quietly(store, database)
    return record
