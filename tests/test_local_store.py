"""The object-store contract, on the local backend."""

from __future__ import annotations

import pytest

from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectNotFound,
    read_bytes,
    write_bytes,
)


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
