"""Taking backups and copying them between stores, against real PostgreSQL 16 (and 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
import zstandard
from broken import garble
from conftest import SOURCE_DB
from pg import both_majors, flip_byte, kill_children_named, row_counts, table_fingerprints

from platform_orchestration.backups.index import index_key
from platform_orchestration.backups.catalog import (
    find_backup,
    latest_backup,
    list_backups,
    read_backups,
)
from platform_orchestration.backups.copy import CopyFailed, copy_backup, ensure_copies
from platform_orchestration.backups.integrity import (
    DECOMPRESSED_STEP_BYTES,
    BackupCorrupt,
    decompressed,
    read_ahead,
    verify_stored_backup,
)
from platform_orchestration.backups.restore import restore_backup
from platform_orchestration.backups.take import BackupFailed
from platform_orchestration.postgres import client_tools_for
from platform_orchestration.storage import read_bytes


def _objects(store) -> list[str]:
    return [info.key for info in store.list()]


def test_client_tools_for_16_is_at_least_16():
    assert client_tools_for(16).major >= 16


@both_majors
def test_manifest_describes_the_backup(backup, stores, source_db, pg_major):
    manifest = backup(stores).manifest

    assert manifest.backup_id and manifest.database == SOURCE_DB
    assert manifest.server.major == pg_major and manifest.server.version.startswith(f"{pg_major}.")
    assert manifest.dump.tool_major == pg_major and manifest.dump.tool.startswith(f"pg_dump {pg_major}.")
    assert manifest.globals.tool == f"pg_dumpall {manifest.dump.tool.split()[1]}"  # the same install
    assert manifest.lsn.count("/") == 1
    assert manifest.dump.compression == "zstd"
    assert manifest.dump.raw_bytes > 0 and manifest.dump.stored_bytes > 0
    assert len(manifest.dump.sha256) == 64
    assert manifest.snapshot_at <= manifest.finished_at


def test_manifest_row_counts_equal_the_source(backup, stores, source_db):
    manifest = backup(stores).manifest

    assert manifest.row_counts == row_counts(source_db)
    assert {'public.Order Items', "audit.events"} <= set(manifest.row_counts)
    assert sum(manifest.row_counts.values()) > 20_000


def test_row_counts_come_from_the_dumps_snapshot(backup, stores, scratch_source_db, target_db):
    before = table_fingerprints(scratch_source_db)
    inserted = []

    def insert_after_snapshot(stage: str, done: int) -> None:
        if stage == "dump" and not inserted:  # pg_dump is streaming: its snapshot is taken
            with psycopg.connect(scratch_source_db.dsn, autocommit=True) as conn:
                conn.execute("INSERT INTO audit.events (kind) SELECT 'late' FROM generate_series(1, 500)")
                conn.execute('DELETE FROM public."Order Items" WHERE line_no = 2 AND order_id <= 300')
            inserted.append(done)

    outcome = backup(stores, connection=scratch_source_db, database="scratch",
                     progress=insert_after_snapshot)

    assert inserted, "the source was never changed during the dump"
    now = row_counts(scratch_source_db)
    assert now["audit.events"] == before["audit.events"][0] + 500
    assert outcome.manifest.row_counts == {t: c for t, (c, _) in before.items()}
    result = restore_backup(find_backup(stores, "scratch"), target_db)  # verifies counts
    assert result.rows_verified == sum(c for c, _ in before.values())
    assert table_fingerprints(target_db) == before


def test_backup_lands_in_every_store(backup, stores):
    outcome = backup(stores)

    assert outcome.stored_in == tuple(s.name for s in stores) and not outcome.failed_stores
    for store in stores:
        [listed] = list_backups(store, SOURCE_DB)
        assert listed.backup_id == outcome.manifest.backup_id
        assert listed.manifest.copy_info.store == store.name
        assert _objects(store) == [outcome.manifest.dump_key, outcome.manifest.globals_key,
                                   outcome.manifest.manifest_key, index_key(SOURCE_DB)]


def test_stored_dump_is_compressed(backup, stores):
    manifest = backup(stores).manifest

    for store in stores:
        size = store.path_for(manifest.dump_key).stat().st_size
        assert size == manifest.dump.stored_bytes < manifest.dump.raw_bytes / 2


_SLOW_BACKUP = """
import json, sys, time
from platform_orchestration.backups.take import take_backup
from platform_orchestration.postgres import PgConnection
from platform_orchestration.storage import LocalObjectStore
args = json.loads(sys.argv[1])
take_backup(database=args["database"], cluster="test-cluster", policy="gold",
            connection=PgConnection(args["dsn"]),
            stores=[LocalObjectStore(name, root) for name, root in args["stores"]],
            progress=lambda stage, done: time.sleep(60))
"""


def test_killed_backup_leaves_nothing_visible(backup, stores, source_db):
    first = backup(stores).manifest
    args = {"database": SOURCE_DB, "dsn": source_db.dsn,
            "stores": [[s.name, str(s.root)] for s in stores]}
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BACKUP, json.dumps(args)],
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not all(list(Path(s.root).rglob(".partial-*")) for s in stores):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the second backup never started writing"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()

    for store in stores:
        assert list(Path(store.root).rglob(".partial-*")), "killed after the stream finished"
        assert [b.backup_id for b in list_backups(store, SOURCE_DB)] == [first.backup_id]
        assert latest_backup(store, SOURCE_DB).backup_id == first.backup_id
        assert _objects(store) == [first.dump_key, first.globals_key, first.manifest_key, index_key(SOURCE_DB)]
    assert find_backup(stores, SOURCE_DB).backup_id == first.backup_id


def test_backup_of_missing_database_fails_and_leaves_nothing(backup, stores, source_cluster):
    with pytest.raises(BackupFailed, match="no_such_db") as failure:
        backup(stores, connection=source_cluster.connection("no_such_db"), database="no_such_db")

    assert "does not exist" in str(failure.value)
    assert all(_objects(store) == [] for store in stores)


def test_backup_whose_pg_dump_dies_fails_and_leaves_nothing(backup, stores):
    killed = []

    def kill_pg_dump(stage: str, done: int) -> None:
        if not killed:
            killed.extend(kill_children_named("pg_dump"))

    with pytest.raises(BackupFailed, match=f"backup of {SOURCE_DB}: pg_dump .* exited with -9"):
        backup(stores, progress=kill_pg_dump)

    assert killed
    assert all(_objects(store) == [] and not list_backups(store) for store in stores)


# --- copies -------------------------------------------------------------------------------


def _remove_copy(store, manifest) -> None:
    store.delete(manifest.dump_key)
    store.delete(manifest.manifest_key)


def _copy_info(store, manifest) -> dict:
    return json.loads(read_bytes(store, manifest.manifest_key))["copy"]


def test_ensure_copies_restores_a_missing_copy(backup, stores):
    aws, azure, gcp = stores
    manifest = backup(stores).manifest
    _remove_copy(azure, manifest)
    assert list_backups(azure, SOURCE_DB) == []

    report = ensure_copies(SOURCE_DB, stores)

    assert report.copied == ("azure",) and report.already_present == ("aws", "gcp")
    assert not report.failed
    [copied] = list_backups(azure, SOURCE_DB)
    assert verify_stored_backup(azure, copied.manifest) == manifest.dump.raw_bytes
    assert _copy_info(azure, manifest)["copied_from"] == "aws"


def test_ensure_copies_replaces_a_copy_whose_manifest_is_garbage(backup, stores):
    azure = stores[1]
    manifest = backup(stores).manifest
    garble(azure, manifest.manifest_key)

    report = ensure_copies(SOURCE_DB, stores)

    assert report.copied == ("azure",) and not report.failed
    assert read_backups(azure, SOURCE_DB).unreadable == ()
    assert _copy_info(azure, manifest)["copied_from"] == "aws"


def test_ensure_copies_skips_a_corrupt_source(backup, stores):
    aws, azure, gcp = stores
    manifest = backup(stores).manifest
    flip_byte(aws.path_for(manifest.dump_key))
    _remove_copy(gcp, manifest)

    report = ensure_copies(SOURCE_DB, stores)

    assert report.copied == ("gcp",) and not report.failed
    verify_stored_backup(gcp, manifest)
    assert _copy_info(gcp, manifest)["copied_from"] == "azure"


def test_copy_from_the_only_corrupt_source_fails_cleanly(backup, stores):
    aws, azure, _ = stores
    manifest = backup([aws]).manifest
    flip_byte(aws.path_for(manifest.dump_key))

    with pytest.raises(CopyFailed, match=f"backup {manifest.backup_id}.*aws.*checksum mismatch"):
        copy_backup(find_backup([aws], SOURCE_DB), azure)

    assert _objects(azure) == [] and list_backups(azure, SOURCE_DB) == []
    report = ensure_copies(SOURCE_DB, [aws, azure])
    assert report.copied == () and "checksum mismatch" in report.failed["azure"]
    assert _objects(azure) == []


# --- Decompression, unit by unit: a plain zstd stream standing for an unencrypted stored dump ---

_STORE = SimpleNamespace(name="aws")
_MANIFEST = SimpleNamespace(backup_id="b1", database="shop", encryption=None)


def _stream(raw: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_checksum=True).compress(raw)


def _chunks(data: bytes, size: int = 1 << 20) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_one_stored_chunk_standing_for_hundreds_of_mib_comes_out_in_fixed_steps():
    raw = b"PGDMP" + b"x" * (200 << 20)
    stored = _stream(raw)
    assert len(stored) < 1 << 20  # the whole dump is one stored chunk

    steps = [len(out) for out in decompressed(_STORE, _MANIFEST, iter([stored]))]

    assert sum(steps) == len(raw) and max(steps) <= DECOMPRESSED_STEP_BYTES


@pytest.mark.parametrize("cut", [1, 4, 5, 200])
def test_a_stream_cut_short_is_truncated_even_when_every_byte_of_content_came_out(cut):
    """Cut 1 or 4 bytes: the content is whole, only the frame's checksum is missing."""
    stored = _stream(b"PGDMP" + os.urandom(300_000))[:-cut]
    with pytest.raises(BackupCorrupt, match="backup b1 of shop in store aws: compressed stream is truncated"):
        for _ in decompressed(_STORE, _MANIFEST, iter(_chunks(stored, 4096))):
            pass


def test_bytes_after_the_frame_are_damage():
    stored = _stream(b"PGDMP" + b"rows" * 1000) + b"trailing"
    with pytest.raises(BackupCorrupt, match="compressed stream is damaged: data after the end"):
        for _ in decompressed(_STORE, _MANIFEST, iter([stored])):
            pass


def test_read_ahead_keeps_order_and_raises_the_producers_error_after_its_chunks():
    def produce():
        yield from (b"a", b"b", b"c")
        raise BackupCorrupt("checksum mismatch at the end")

    seen = []
    with pytest.raises(BackupCorrupt, match="checksum mismatch at the end"):
        for chunk in read_ahead(produce(), depth=2):
            seen.append(chunk)
    assert seen == [b"a", b"b", b"c"]


def test_read_ahead_stops_and_closes_the_producer_when_the_consumer_stops():
    closed = []

    def produce():
        try:
            for i in range(1000):
                yield bytes([i % 256])
        finally:
            closed.append(True)

    ahead = read_ahead(produce(), depth=2)
    assert next(ahead) == b"\x00"
    ahead.close()
    assert closed == [True]


def test_read_ahead_of_depth_zero_is_the_chunks_themselves_in_this_thread():
    chunks = iter([b"a", b"b"])
    assert read_ahead(chunks, depth=0) is chunks


def test_read_ahead_runs_at_most_depth_chunks_ahead_of_the_consumer():
    produced = []

    def produce():
        for i in range(100):
            produced.append(i)
            yield bytes([i])

    ahead = read_ahead(produce(), depth=3)
    next(ahead)
    time.sleep(0.3)  # ample time for the producer to run ahead if it could
    assert len(produced) <= 1 + 3 + 1  # the one consumed, the queue, the one waiting to be put
    ahead.close()
