"""One conformance suite, the same tests for every object-store backend.

`local` runs on a directory; `s3`, `azure` and `gcs` run against real emulator
processes (moto server, Azurite, the GCS emulator) started by their fixtures. Fault
tests put a TCP fault proxy between the SDK and the emulator.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest
from conftest import SOURCE_DB, STORE_BACKENDS
from store_backends import upload_keys

from platform_orchestration.backups.catalog import latest_backup, list_backups
from platform_orchestration.backups.copy import copy_backup
from platform_orchestration.backups.index import read_catalog
from platform_orchestration.backups.integrity import BackupCorrupt, verify_stored_backup
from platform_orchestration.backups.take import BackupFailed
from platform_orchestration.storage import (
    ConditionalWrites,
    ObjectNotFound,
    PreconditionFailed,
    StoreError,
    read_bytes,
    reads_over_network,
    write_bytes,
)

MiB = 1024 * 1024


@pytest.fixture(params=STORE_BACKENDS)
def backend(request):
    return request.getfixturevalue(f"{request.param}_backend")


def _payload(size: int) -> bytes:
    return os.urandom(size)


def _chunks(data: bytes, size: int = MiB):
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


def _keys(store, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def test_round_trip_of_a_small_object(backend):
    store = backend.new_store()
    write_bytes(store, "a/b/c.bin", b"hello")
    assert read_bytes(store, "a/b/c.bin") == b"hello"
    [info] = store.list("a/")
    assert (info.key, info.size) == ("a/b/c.bin", 5)


def test_large_object_streams_in_parts_and_round_trips(backend):
    store = backend.new_store()
    data = _payload(21 * MiB + 123)
    with store.open_writer("big/object.bin") as writer:
        for chunk in _chunks(data):
            writer.write(chunk)
        writer.commit()
    assert b"".join(store.read("big/object.bin")) == data
    assert upload_keys(store.incomplete_uploads()) == []


def test_object_is_invisible_until_commit_and_abort_leaves_nothing(backend):
    store = backend.new_store()
    writer = store.open_writer("pending/object.bin")
    for chunk in _chunks(_payload(7 * MiB)):
        writer.write(chunk)
    assert _keys(store) == []
    writer.abort()
    assert _keys(store) == []
    assert upload_keys(store.incomplete_uploads()) == []


def test_reading_a_missing_object_names_store_and_key(backend):
    store = backend.new_store()
    with pytest.raises(ObjectNotFound) as raised:
        b"".join(store.read("no/such/key"))
    assert store.name in str(raised.value) and "no/such/key" in str(raised.value)


def test_listing_more_objects_than_a_page_returns_them_all_in_order(backend):
    store = backend.new_store(page_size=5)
    keys = [f"many/{index:03d}.json" for index in range(23)]
    for key in reversed(keys):
        write_bytes(store, key, b"{}")
    write_bytes(store, "other/x.json", b"{}")
    assert _keys(store, "many/") == keys


def test_listing_a_prefix_returns_exactly_the_keys_under_it_in_key_order(backend):
    store = backend.new_store()
    keys = ["backups/orders/1/dump", "backups/orders/1/manifest.json", "backups/orders/2/manifest.json",
            "backups/ordersx/1/manifest.json", "backups/other/1/manifest.json", "backups/z",
            "backupsx/a", "drills/orders/1.json"]
    for key in reversed(keys):
        write_bytes(store, key, b"{}")
    assert _keys(store, "backups/orders/") == keys[:3]
    assert _keys(store, "backups/orders/1/") == keys[:2]
    assert _keys(store, "backups/orders/1/manifest.json") == [keys[1]]
    assert _keys(store, "backups/") == keys[:6]
    assert _keys(store, "backups") == keys[:7]
    assert _keys(store, "") == keys
    assert _keys(store, "backups/nothing/") == []
    assert _keys(store, "nowhere/at/all/") == []


def test_listing_a_prefix_that_is_not_a_whole_directory_name_matches_names_starting_with_it(backend):
    store = backend.new_store()
    for key in ["backups/orders/1/manifest.json", "backups/ordinal/2/manifest.json",
                "backups/other/3/manifest.json", "backups/ord"]:
        write_bytes(store, key, b"{}")
    assert _keys(store, "backups/ord") == ["backups/ord", "backups/orders/1/manifest.json",
                                          "backups/ordinal/2/manifest.json"]
    assert _keys(store, "backups/orders/1/man") == ["backups/orders/1/manifest.json"]


def test_a_listing_etag_changes_when_an_object_is_rewritten_and_matches_the_version_read(backend):
    store = backend.new_store()
    write_bytes(store, "catalog/a.json", b"one")
    [first] = store.list("catalog/")
    assert first.etag
    assert store.read_versioned("catalog/a.json") == (b"one", first.etag)
    write_bytes(store, "catalog/a.json", b"two")  # same size, maybe the same second
    [second] = store.list("catalog/")
    assert second.etag and second.etag != first.etag


def test_conditional_writes_create_only_if_absent_and_replace_only_the_version_read(backend):
    """The compare-and-swap the catalog index relies on. The GCS emulator does not enforce
    generation preconditions (RECIPES.md): there only the successful paths are checked."""
    store = backend.new_store()
    assert isinstance(store, ConditionalWrites)
    enforced = backend.kind != "gcs"
    store.write_if("catalog/db.json", b"v1", None)
    _data, v1 = store.read_versioned("catalog/db.json")
    if enforced:
        with pytest.raises(PreconditionFailed):
            store.write_if("catalog/db.json", b"lost", None)  # another writer created it first
    store.write_if("catalog/db.json", b"v2", v1)
    data, v2 = store.read_versioned("catalog/db.json")
    assert data == b"v2" and v2 != v1
    if enforced:
        with pytest.raises(PreconditionFailed):
            store.write_if("catalog/db.json", b"stale", v1)  # written on an outdated read
        assert read_bytes(store, "catalog/db.json") == b"v2"
    with pytest.raises(ObjectNotFound):
        store.read_versioned("catalog/missing.json")


def test_delete_removes_and_deleting_a_missing_object_is_fine(backend):
    store = backend.new_store()
    write_bytes(store, "d/x", b"1")
    store.delete("d/x")
    store.delete("d/x")
    assert _keys(store) == []


def test_a_backup_lands_verifies_and_copies_across_backends(backend, backup, local_backend):
    store = backend.new_store()
    local = local_backend.new_store()
    outcome = backup([store])
    assert outcome.stored_in == (store.name,)
    [stored] = list_backups(store, SOURCE_DB)
    verify_stored_backup(store, stored.manifest)

    copied = copy_backup(stored, local)
    verify_stored_backup(local, copied.manifest)
    other = backend.new_store()
    copy_backup(latest_backup(local, SOURCE_DB), other)
    assert [b.backup_id for b in list_backups(other, SOURCE_DB)] == [outcome.manifest.backup_id]
    # The backup and each copy left the catalog index current: readers need none of the manifests.
    for written in (store, local, other):
        view = read_catalog(written, SOURCE_DB)
        assert (view.index, view.read_directly) == ("current", 0), written.name
        assert [b.backup_id for b in view.backups.backups] == [outcome.manifest.backup_id]


def test_a_damaged_backup_fails_verify_on_every_backend_read_ahead_or_not(backend, backup):
    """From a cloud store the read runs in a thread ahead of decompression; from a local one
    in the same thread. Either way one changed byte is found, named, and verify fails."""
    store = backend.new_store()
    backup([store])
    [stored] = list_backups(store, SOURCE_DB)
    assert reads_over_network(store) == backend.networked
    data = bytearray(read_bytes(store, stored.manifest.dump_key))
    data[len(data) // 2] ^= 0x01
    write_bytes(store, stored.manifest.dump_key, bytes(data))
    with pytest.raises(BackupCorrupt, match=f"backup {stored.backup_id} .* in store {store.name}: checksum mismatch"):
        verify_stored_backup(store, stored.manifest)


# --- leftovers of killed writers -------------------------------------------------------------
# "Old" is made by the cutoff, not by waiting: a sweep at `now + 1 day` sees a live upload as a
# day idle, exactly as tomorrow's sweep would.


def _abandoned_upload(store, key: str):
    """A writer that sent more than a part/block/chunk and was then "killed": never
    committed nor aborted, so the store holds an incomplete upload."""
    writer = store.open_writer(key)
    for chunk in _chunks(_payload(9 * MiB)):
        writer.write(chunk)
    return writer


def test_an_incomplete_upload_younger_than_the_cutoff_survives_a_sweep(backend):
    store = backend.new_store()
    writer = _abandoned_upload(store, "backups/db/1/dump.pgdump.zst")
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)

    assert store.incomplete_uploads("backups/", older_than=an_hour_ago) == []
    assert store.discard_incomplete("backups/", older_than=an_hour_ago) == []

    [upload] = store.incomplete_uploads("backups/")
    assert upload.key == "backups/db/1/dump.pgdump.zst"
    assert upload.last_active_at > an_hour_ago
    writer.abort()


def test_an_incomplete_upload_idle_past_the_cutoff_is_discarded_and_no_committed_object_is(backend):
    store = backend.new_store()
    write_bytes(store, "backups/db/1/dump.pgdump.zst", b"dump")
    write_bytes(store, "backups/db/1/manifest.json", b"{}")
    write_bytes(store, "evidence/compliance/1.json", b"{}")
    _abandoned_upload(store, "backups/db/2/dump.pgdump.zst")
    a_day_from_now = datetime.now(timezone.utc) + timedelta(days=1)

    [old] = store.incomplete_uploads(older_than=a_day_from_now)
    assert old.key == "backups/db/2/dump.pgdump.zst"
    assert old.size is None or 0 < old.size <= 9 * MiB
    assert store.discard_incomplete("backups/", older_than=a_day_from_now) == [old]

    assert store.incomplete_uploads() == []
    assert _keys(store) == ["backups/db/1/dump.pgdump.zst", "backups/db/1/manifest.json",
                            "evidence/compliance/1.json"]
    assert read_bytes(store, "backups/db/1/manifest.json") == b"{}"


# --- faults ----------------------------------------------------------------------------------


def _networked(backend):
    if not backend.networked:
        pytest.skip(f"{backend.kind}: no network between us and the store to fault")


def test_injected_503s_are_retried(backend):
    _networked(backend)
    proxy = backend.proxy()
    store = backend.new_store(via=proxy, fast_retries=True)
    proxy.fail_next(2, status=503)
    write_bytes(store, "retry/x.bin", b"payload")
    assert proxy.failures_served == 2
    assert read_bytes(store, "retry/x.bin") == b"payload"


def test_a_connection_cut_mid_upload_is_retried_transparently(backend):
    _networked(backend)
    proxy = backend.proxy()
    store = backend.new_store(via=proxy, fast_retries=True)
    data = _payload(12 * MiB)
    proxy.cut_next_upload_after(3 * MiB)
    with store.open_writer("cut/object.bin") as writer:
        for chunk in _chunks(data):
            writer.write(chunk)
        writer.commit()
    assert proxy.connections_cut == 1
    assert b"".join(store.read("cut/object.bin")) == data


def test_server_gone_mid_upload_fails_cleanly_and_a_retry_succeeds(backend):
    _networked(backend)
    proxy = backend.proxy()
    store = backend.new_store(via=proxy, fast_retries=True)
    data = _payload(12 * MiB)
    with pytest.raises(StoreError) as raised:
        with store.open_writer("gone/object.bin") as writer:
            for index, chunk in enumerate(_chunks(data)):
                if index == 6:
                    proxy.down()
                writer.write(chunk)
            writer.commit()
    assert store.name in str(raised.value)
    proxy.up()
    assert _keys(store) == []
    store.discard_incomplete()
    assert upload_keys(store.incomplete_uploads()) == []

    with store.open_writer("gone/object.bin") as writer:
        for chunk in _chunks(data):
            writer.write(chunk)
        writer.commit()
    assert b"".join(store.read("gone/object.bin")) == data


def test_a_backup_cut_off_from_its_only_store_leaves_no_manifest(backend, backup):
    _networked(backend)
    proxy = backend.proxy()
    store = backend.new_store(via=proxy, fast_retries=True)
    first = backup([store]).manifest

    def cut_after_first_chunk(stage: str, done: int) -> None:
        if stage == "dump" and done > 0:
            proxy.down()

    with pytest.raises(BackupFailed):
        backup([store], progress=cut_after_first_chunk)
    proxy.up()
    assert [b.backup_id for b in list_backups(store, SOURCE_DB)] == [first.backup_id]
