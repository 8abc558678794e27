"""The object-store contract, on the local backend."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectNotFound,
    read_bytes,
    write_bytes,
)

NOW = datetime.now(timezone.utc)


@pytest.fixture
def store(tmp_path):
    return LocalObjectStore("local", tmp_path / "store")


def _keys(store, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def test_write_is_invisible_until_commit(store):
    writer = store.open_writer("a/b/object")
    writer.write(b"hello ")
    writer.write(b"world")
    assert _keys(store) == []
    with pytest.raises(ObjectNotFound):
        read_bytes(store, "a/b/object")

    writer.commit()

    assert _keys(store) == ["a/b/object"]
    assert read_bytes(store, "a/b/object") == b"hello world"
    [info] = store.list()
    assert info.size == 11


def test_abort_leaves_nothing(store):
    writer = store.open_writer("a/object")
    writer.write(b"partial")
    writer.abort()

    assert _keys(store) == []
    assert not [p for p in store.root.rglob("*") if p.is_file()]


def test_writer_left_by_an_exception_is_aborted(store):
    with pytest.raises(RuntimeError), store.open_writer("a/object") as writer:
        writer.write(b"partial")
        raise RuntimeError("boom")

    assert _keys(store) == [] and not [p for p in store.root.rglob("*") if p.is_file()]


def test_commit_replaces_an_existing_object_whole(store):
    write_bytes(store, "k", b"old")
    writer = store.open_writer("k")
    writer.write(b"new content")
    assert read_bytes(store, "k") == b"old"

    writer.commit()

    assert read_bytes(store, "k") == b"new content"


def test_read_of_missing_key_raises_object_not_found(store):
    with pytest.raises(ObjectNotFound, match="store local: no object nothing/here"):
        read_bytes(store, "nothing/here")


def test_list_by_prefix_is_sorted(store):
    for key in ["b/2", "a/3", "b/10", "a/1", "ab/1", "c"]:
        write_bytes(store, key, key.encode())

    assert _keys(store) == ["a/1", "a/3", "ab/1", "b/10", "b/2", "c"]
    assert _keys(store, "a/") == ["a/1", "a/3"]
    assert _keys(store, "b") == ["b/10", "b/2"]
    assert _keys(store, "zzz") == []


def test_list_of_a_store_never_written_is_empty(tmp_path):
    assert _keys(LocalObjectStore("new", tmp_path / "does-not-exist")) == []


def test_delete_removes_and_deleting_missing_is_fine(store):
    write_bytes(store, "x/y/z", b"data")
    store.delete("x/y/z")
    store.delete("x/y/z")
    store.delete("never/existed")

    assert _keys(store) == []
    assert not (store.root / "x").exists()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/../b", "./a", "", "a/"])
def test_invalid_keys_are_rejected(store, key):
    with pytest.raises(ValueError, match="invalid object key"):
        store.open_writer(key)
    with pytest.raises(ValueError, match="invalid object key"):
        store.read(key)
    with pytest.raises(ValueError, match="invalid object key"):
        store.delete(key)


# --- leftovers: partial files and empty directories ------------------------------------------


def _age(path, days: float) -> None:
    then = (NOW - timedelta(days=days)).timestamp()
    os.utime(path, (then, then))


def test_a_partial_file_is_aged_by_its_last_write_and_its_directory_goes_with_it(store):
    writer = store.open_writer("backups/db/1/dump")
    writer.write(b"d" * 100_000)  # past the file buffer: on disk, as a killed writer leaves it
    [partial] = store.root.rglob(".partial-*")
    _age(partial, days=2)

    [upload] = store.incomplete_uploads(older_than=NOW - timedelta(days=1))
    assert (upload.key, upload.size) == ("backups/db/1/dump", 100_000)
    assert [u.key for u in store.discard_incomplete(older_than=NOW - timedelta(days=1))] == ["backups/db/1/dump"]

    assert not (store.root / "backups").exists()


def test_empty_directories_left_by_a_killed_prune_are_removed_once_old(store):
    write_bytes(store, "backups/db/kept/manifest.json", b"{}")
    for name, days in (("old-1", 3), ("old-2", 2), ("young", 0)):
        (store.root / "backups" / "db" / name / "nested").mkdir(parents=True)
        _age(store.root / "backups" / "db" / name / "nested", days)
        _age(store.root / "backups" / "db" / name, days)
    cutoff = NOW - timedelta(days=1)

    assert store.empty_directories("backups/", older_than=cutoff) == [
        "backups/db/old-1/nested/", "backups/db/old-1/", "backups/db/old-2/nested/", "backups/db/old-2/"]
    assert store.remove_empty_directories("drills/", older_than=cutoff) == []
    assert len(store.remove_empty_directories("backups/", older_than=cutoff)) == 4

    assert sorted(p.name for p in (store.root / "backups" / "db").iterdir()) == ["kept", "young"]
    assert read_bytes(store, "backups/db/kept/manifest.json") == b"{}"


def test_a_directory_holding_a_young_partial_file_is_never_removed(store):
    writer = store.open_writer("backups/db/1/dump")
    writer.write(b"still being written")
    _age(store.root / "backups" / "db" / "1", days=5)
    cutoff = NOW - timedelta(days=1)

    assert store.discard_incomplete(older_than=cutoff) == []
    assert store.remove_empty_directories(older_than=cutoff) == []

    writer.commit()
    assert read_bytes(store, "backups/db/1/dump") == b"still being written"


def test_listing_a_prefix_reads_only_the_directories_under_it(store, monkeypatch):
    for database in ("orders", "ordinal", "billing", "users"):
        for backup in ("1", "2"):
            write_bytes(store, f"backups/{database}/{backup}/manifest.json", b"{}")
    read: list[str] = []
    real_scandir = os.scandir

    def recording_scandir(path):
        read.append(Path(path).relative_to(store.root).as_posix())
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", recording_scandir)
    assert _keys(store, "backups/ord") == ["backups/orders/1/manifest.json", "backups/orders/2/manifest.json",
                                           "backups/ordinal/1/manifest.json", "backups/ordinal/2/manifest.json"]
    assert sorted(read) == sorted(["backups", "backups/ordinal", "backups/ordinal/1", "backups/ordinal/2",
                                   "backups/orders", "backups/orders/1", "backups/orders/2"])
