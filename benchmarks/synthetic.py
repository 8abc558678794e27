"""Synthetic fleets for the scale benchmark and its tests: a fleet file of N databases on
local stores, and stores seeded with backups and drill records written directly.

Seeding copies one real encrypted backup's manifest (fixtures/encrypted_manifest.json) and one
real drill record with the ids, database and store changed, beside a tiny dump object: status
and compliance read manifests and drill records, never dumps, so the stores look to them
exactly like a fleet's real ones, made in seconds instead of hours of pg_dump.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from platform_orchestration.backups.index import refresh_index
from platform_orchestration.backups.manifest import backup_prefix, drill_key
from platform_orchestration.storage import CountingStore, LocalObjectStore, ObjectStore, write_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STORE_NAMES = ("aws", "azure", "gcp")


def database_names(count: int) -> list[str]:
    return [f"db{index:05d}" for index in range(count)]


def write_fleet_file(directory: Path, databases: int, *, store_names: Sequence[str] = STORE_NAMES) -> Path:
    """One cluster, `store_names` local stores under `directory`/stores, `databases` databases
    under one policy (`critical`) that requires every store."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["clusters:", "  - {name: pg-bench, cloud: local, region: loopback, role: primary}", "stores:"]
    lines += [f"  - {{name: {name}, kind: local, cloud: local, path: stores/{name}}}" for name in store_names]
    lines.append("databases:")
    for name in database_names(databases):
        lines += [f"  - name: {name}", "    cluster: pg-bench",
                  f"    dsn: postgresql://postgres@127.0.0.1:5999/{name}", "    policy: critical"]
    lines += ["policies:", "  - name: critical", "    rpo: 1d", f"    stores: [{', '.join(store_names)}]",
              "    drill: {every: 7d, rto: 10m}", "    retention: {keep_last: 3}",
              # Unused, but the repository's schedules select databases by these policy names.
              "  - name: standard", "    rpo: 1d", f"    stores: [{', '.join(store_names)}]",
              "    drill: {every: 7d, rto: 30m}", "    retention: {keep_last: 3}", ""]
    path = directory / "fleet.yaml"
    path.write_text("\n".join(lines))
    return path


def _put(store: ObjectStore, key: str, data: bytes) -> None:
    """A seed object: on a local store written as a plain file (no fsync: a benchmark's seed
    need not survive a crash, and 20,000 fsyncs would take minutes), else through the store."""
    local = store.inner if isinstance(store, CountingStore) else store
    if isinstance(local, LocalObjectStore):
        path = local.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    else:
        write_bytes(store, key, data)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seed_stores(stores: Sequence[ObjectStore], databases: Sequence[str], *, backups: int = 3,
                now: datetime | None = None, index: bool = True) -> None:
    """`backups` backups (an hour apart, the newest an hour old) and one passed drill record of
    the newest, for every database, in every store; with `index`, each database's catalog
    index brought up to date as the writers do (refresh_index after the last write)."""
    now = now or datetime.now(timezone.utc)
    manifest = json.loads((FIXTURES / "encrypted_manifest.json").read_text())
    drill = json.loads((FIXTURES / "drill_record.json").read_text())
    for number, database in enumerate(databases):
        suffix = f"{number:06x}"[-6:]
        ids = []
        for generation in range(backups):
            taken = now - timedelta(hours=backups - generation)
            backup_id = taken.strftime("%Y%m%dT%H%M%S") + f"{taken.microsecond // 1000:03d}Z-{suffix}"
            ids.append((backup_id, taken))
        for store in stores:
            for backup_id, taken in ids:
                document = {**manifest, "backup_id": backup_id, "database": database,
                            "started_at": _stamp(taken), "snapshot_at": _stamp(taken),
                            "snapshot_worker_at": _stamp(taken), "finished_at": _stamp(taken + timedelta(seconds=1)),
                            "copy": {"store": store.name, "verified_at": _stamp(taken + timedelta(seconds=1)),
                                     "copied_from": None}}
                prefix = backup_prefix(database, backup_id)
                _put(store, prefix + manifest["dump"]["object"], b"dump")
                _put(store, prefix + "manifest.json", json.dumps(document).encode())
            latest_id, latest_at = ids[-1]
            drill_at = latest_at + timedelta(minutes=10)
            drill_id = drill_at.strftime("%Y%m%dT%H%M%S") + f"{drill_at.microsecond // 1000:03d}Z-{suffix}"
            record = {**drill, "drill_id": drill_id, "database": database, "backup_id": latest_id,
                      "source_store": stores[0].name, "started_at": _stamp(drill_at),
                      "finished_at": _stamp(drill_at + timedelta(seconds=5))}
            _put(store, drill_key(database, drill_id), json.dumps(record).encode())
            if index:
                refresh_index(store, database)
