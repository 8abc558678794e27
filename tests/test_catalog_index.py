"""The catalog index (backups/index.py) is a cache the listing checks: it saves the GETs of
manifests and drill records and can never change an answer. Stores are real (a directory, and
the moto S3 and Azurite emulators for the racing writers); manifests are real encrypted ones
from benchmarks/fixtures with ids changed (benchmarks/synthetic.py)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from benchmarks.synthetic import seed_stores
from platform_orchestration.backups.catalog import read_backups
from platform_orchestration.backups.compliance import (
    BACKUP_WITHIN_RPO,
    COPIES_IN_REQUIRED_STORES,
    assess_database,
)
from platform_orchestration.backups.index import index_key, read_catalog, refresh_index
from platform_orchestration.backups.manifest import manifest_key
from platform_orchestration.backups.retention import prune_database
from platform_orchestration.fleet.model import RetentionPolicy
from platform_orchestration.storage import (
    CountingStore,
    LocalObjectStore,
    ObjectStore,
    read_bytes,
    write_bytes,
)

DB = "orders"


def _store(tmp_path: Path, name: str = "aws") -> LocalObjectStore:
    store = LocalObjectStore(name, tmp_path / name)
    seed_stores([store], [DB])  # three backups and a drill record, then the index, as writers leave it
    return store


def _ids(view) -> list[str]:
    return [b.backup_id for b in view.backups.backups]


def _index_keys(store: ObjectStore) -> set[str]:
    return set(json.loads(read_bytes(store, index_key(DB)))["objects"])


def _new_backup(store: ObjectStore, hours_ago: float = 0.5) -> str:
    """A newer manifest (and its dump), written the way a writer that never touched the index
    would: e.g. a backup by an older platform-dr, or one whose index update failed."""
    [latest] = read_backups(store, DB).backups[-1:]
    taken = datetime.now(timezone.utc) - timedelta(hours=hours_ago)
    backup_id = taken.strftime("%Y%m%dT%H%M%S") + f"{taken.microsecond // 1000:03d}Z-ffffff"
    manifest = latest.manifest.model_copy(update={"backup_id": backup_id, "started_at": taken,
                                                  "snapshot_at": taken, "snapshot_worker_at": taken,
                                                  "finished_at": taken + timedelta(seconds=1)})
    write_bytes(store, manifest.dump_key, b"dump")
    write_bytes(store, manifest.manifest_key, manifest.to_json())
    return backup_id


def _assess(store: ObjectStore):
    return assess_database(database=DB, policy="critical", stores=[store], rpo=timedelta(days=1),
                           drill_every=timedelta(days=7), rto=timedelta(minutes=10),
                           now=datetime.now(timezone.utc))


def test_a_current_index_answers_with_one_get_and_says_what_the_manifests_say(tmp_path: Path) -> None:
    store = CountingStore(_store(tmp_path))
    store.reset()
    view = read_catalog(store, DB)
    assert dict(store.calls) == {"list": 2, "read": 1}
    assert (view.index, view.read_directly) == ("current", 0)
    direct = read_backups(store.inner, DB)
    assert [b.manifest for b in view.backups.backups] == [b.manifest for b in direct.backups]
    assert len(view.drills.records) == 1 and not view.backups.unreadable


def test_a_manifest_written_without_updating_the_index_is_still_seen_and_the_next_writer_adds_it(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    newest = _new_backup(store)
    view = read_catalog(store, DB)
    assert _ids(view)[-1] == newest
    assert (view.index, view.read_directly) == ("stale", 1)
    assert _assess(store).latest_backup_id == newest
    refresh_index(store, DB)
    assert (read_catalog(store, DB).index, read_catalog(store, DB).read_directly) == ("current", 0)


def test_a_manifest_rewritten_in_place_is_read_again_not_taken_from_the_index(tmp_path: Path) -> None:
    """Same key, same size (a rewrap to the next key version): only the etag tells."""
    store = _store(tmp_path)
    [*_older, latest] = read_backups(store, DB).backups
    encryption = latest.manifest.encryption
    assert encryption is not None
    rewrapped = latest.manifest.model_copy(update={"encryption": encryption.model_copy(
        update={"key_version": encryption.key_version + 1})})
    assert len(rewrapped.to_json()) == len(latest.manifest.to_json())
    write_bytes(store, latest.manifest.manifest_key, rewrapped.to_json())
    view = read_catalog(store, DB)
    assert view.backups.backups[-1].manifest == rewrapped and view.read_directly == 1


@pytest.mark.parametrize("garbage", [b"{not json", b'{"format_version": 1, "database": "other", "objects": {}}',
                                     b'{"format_version": 1, "database": "orders", "objects": {'
                                     b'"backups/orders/x/manifest.json": {"document": 1}}}'],
                         ids=["not-json", "another-database", "bad-entries"])
def test_a_corrupt_index_is_ignored_and_rebuilt_by_the_next_writer(tmp_path: Path, garbage: bytes) -> None:
    store = _store(tmp_path)
    expected = _ids(read_catalog(store, DB))
    write_bytes(store, index_key(DB), garbage)
    view = read_catalog(store, DB)
    assert _ids(view) == expected and len(view.drills.records) == 1
    assert view.read_directly == 4 and view.index != "current"
    refresh_index(store, DB)
    rebuilt = read_catalog(store, DB)
    assert (rebuilt.index, rebuilt.read_directly, _ids(rebuilt)) == ("current", 0, expected)


def test_a_missing_index_is_no_index_and_is_rebuilt(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.delete(index_key(DB))
    view = read_catalog(store, DB)
    assert (view.index, view.read_directly, len(_ids(view))) == ("missing", 4, 3)
    refresh_index(store, DB)
    assert read_catalog(store, DB).index == "current"


def test_a_broken_manifest_is_still_named_though_the_index_holds_a_good_copy_of_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    [*_older, previous, latest] = read_backups(store, DB).backups
    write_bytes(store, latest.manifest.manifest_key, b'{"backup_id": "truncated')  # after the index
    for _round in ("as the index was", "after a writer refreshed it"):
        view = read_catalog(store, DB)
        assert _ids(view)[-1] == previous.backup_id
        [broken] = view.backups.unreadable
        assert broken.backup_id == latest.backup_id and "unreadable manifest" in broken.reason
        assessment = _assess(store)
        assert assessment.latest_backup_id == previous.backup_id
        assert not assessment.finding(COPIES_IN_REQUIRED_STORES).passed
        assert f"passed over newer backup {latest.backup_id}" in assessment.finding(BACKUP_WITHIN_RPO).detail
        refresh_index(store, DB)
    assert latest.manifest.manifest_key not in _index_keys(store)  # never entered


def test_the_index_never_keeps_a_deleted_or_pruned_backup_alive(tmp_path: Path) -> None:
    store = _store(tmp_path)
    [oldest, middle, latest] = read_backups(store, DB).backups
    # Deleted behind the index's back (a hand-run delete, a lifecycle rule): gone for readers.
    store.delete(latest.manifest.manifest_key)
    assert latest.manifest.manifest_key in _index_keys(store)
    view = read_catalog(store, DB)
    assert _ids(view) == [oldest.backup_id, middle.backup_id]
    assert _assess(store).latest_backup_id == middle.backup_id
    # A prune keeps the newest and drops the rest of the policy's excess; its refresh drops them.
    report = prune_database(DB, [store], RetentionPolicy(keep_last=1), now=datetime.now(timezone.utc))
    assert report.deleted_count == 1
    assert _ids(read_catalog(store, DB)) == [middle.backup_id]
    assert _index_keys(store) & {oldest.manifest.manifest_key, latest.manifest.manifest_key} == set()


# --- racing writers ------------------------------------------------------------------------------


class _Gate:
    """`inner`, where a thread's index write first runs the hook the test set for that thread
    (once): how a test makes one interleaving of two writers certain."""

    def __init__(self, inner: ObjectStore, conditional: bool = True) -> None:
        self.inner = inner
        self.name = inner.name
        self.hooks: dict[str, object] = {}
        if conditional:
            self.read_versioned = inner.read_versioned  # type: ignore[attr-defined]
            self.write_if = self._gated(inner.write_if)  # type: ignore[attr-defined]
        else:  # a store without compare-and-swap: the index is written as any object
            self.open_writer = self._gated_writer(inner.open_writer)

    def _before_write(self) -> None:
        hook = self.hooks.pop(threading.current_thread().name, None)
        if hook is not None:
            hook()  # type: ignore[operator]

    def _gated(self, write_if):
        def gated(key, data, version):
            self._before_write()
            write_if(key, data, version)
        return gated

    def _gated_writer(self, open_writer):
        def gated(key):
            if key.startswith("catalog/"):
                self._before_write()
            return open_writer(key)
        return gated

    def __getattr__(self, name: str):
        if name in ("read_versioned", "write_if"):  # only when set in __init__
            raise AttributeError(name)
        return getattr(self.inner, name)


def _race(gate: _Gate, order: str) -> tuple[str, str]:
    """Two writers, each adding its backup (a, then b, by id) and refreshing the index.

    ``stale-last``: A listed before b existed and writes its index after B wrote one (the
    write that would lose b). ``read-before-other-write``: B listed before a existed and
    writes first; A read the index before B's write and writes after it (A's write must be
    refused and retried, or a is lost). Returns (a, b)."""
    ids: dict[str, str] = {}
    waiting, release = threading.Event(), threading.Event()

    def hold() -> None:
        waiting.set()
        assert release.wait(30)

    hours_ago = {"a": 0.6, "b": 0.3}

    def other(label: str) -> None:
        ids[label] = _new_backup(gate.inner, hours_ago=hours_ago[label])
        refresh_index(gate, DB)  # type: ignore[arg-type]

    label, mine = ("a", "b") if order == "stale-last" else ("b", "a")
    gate.hooks[f"writer-{label}"] = hold
    thread = threading.Thread(target=other, args=(label,), name=f"writer-{label}")
    thread.start()
    assert waiting.wait(30)
    ids[mine] = _new_backup(gate.inner, hours_ago=hours_ago[mine])
    if order == "stale-last":
        refresh_index(gate, DB)  # type: ignore[arg-type]
        release.set()
    else:
        gate.hooks[threading.current_thread().name] = lambda: (release.set(), thread.join(30))
        refresh_index(gate, DB)  # type: ignore[arg-type]
    thread.join(30)
    assert not thread.is_alive()
    return ids["a"], ids["b"]


@pytest.fixture(params=["local", "s3", "azure"])
def enforcing_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A seeded store on a backend that enforces conditional writes (the GCS emulator does not)."""
    store = request.getfixturevalue(f"{request.param}_backend").new_store(name="race")
    seed_stores([store], [DB])
    return store


@pytest.mark.parametrize("order", ["stale-last", "read-before-other-write"])
def test_racing_writers_lose_no_entry(enforcing_store: ObjectStore, order: str) -> None:
    a, b = _race(_Gate(enforcing_store), order)
    keys = _index_keys(enforcing_store)
    assert {manifest_key(DB, a), manifest_key(DB, b)} <= keys
    view = read_catalog(enforcing_store, DB)
    assert (view.index, view.read_directly, _ids(view)[-2:]) == ("current", 0, [a, b])


def test_without_compare_and_swap_the_same_race_loses_an_entry_and_still_no_answer_changes(tmp_path: Path) -> None:
    """What the conditional write prevents (the race the test above must survive): the slower
    writer's index overwrites the faster one's. Readers still see b, read directly."""
    store = _store(tmp_path)
    a, b = _race(_Gate(store, conditional=False), "stale-last")
    keys = _index_keys(store)
    assert manifest_key(DB, a) in keys and manifest_key(DB, b) not in keys
    view = read_catalog(store, DB)
    assert (view.index, view.read_directly, _ids(view)[-1]) == ("stale", 1, b)


def test_retention_planning_reads_the_index_not_every_manifest(tmp_path: Path) -> None:
    store = CountingStore(_store(tmp_path))
    store.reset()
    report = prune_database(DB, [store], RetentionPolicy(keep_last=1), now=datetime.now(timezone.utc),
                            dry_run=True, drills=None)
    assert report.deleted_count == 2
    assert store.calls["read"] == 1  # the index; no manifest read


def test_an_index_that_cannot_be_fetched_leaves_the_reader_on_the_manifests(tmp_path: Path) -> None:
    """A store that fails the GET of the index (and only that): the answer comes from the manifests."""
    from platform_orchestration.storage import StoreError

    inner = _store(tmp_path)

    class IndexDown(CountingStore):
        def read(self, key, chunk_bytes=1024 * 1024):  # noqa: ANN001, ANN202
            if key == index_key(DB):
                raise StoreError(f"store {self.name}: reading {key} failed: HTTP 503")
            return super().read(key, chunk_bytes)

    view = read_catalog(IndexDown(inner), DB)
    assert view.index.startswith("unreadable: ") and view.read_directly == 4
    assert _ids(view) == _ids(read_catalog(inner, DB))


def test_reading_cloud_stores_at_once_answers_as_reading_them_in_turn(s3_backend) -> None:
    stores = [s3_backend.new_store(name=name) for name in ("aws", "aws-2")]
    seed_stores(stores, [DB])
    write_bytes(stores[1], manifest_key(DB, "20991231T000000000Z-broken"), b"{")  # named either way
    now = datetime.now(timezone.utc)

    def assess(at_once: bool):
        return assess_database(database=DB, policy="critical", stores=stores, rpo=timedelta(days=1),
                               drill_every=timedelta(days=7), rto=timedelta(minutes=10), now=now,
                               stores_at_once=at_once)

    together, in_turn = assess(True), assess(False)
    assert together == in_turn
    assert [u.store for u in together.unreadable] == ["aws-2"]
