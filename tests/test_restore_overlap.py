"""Restoring while fetching: into a database the restore creates, an encrypted backup is
restored as it arrives (schema once the archive's TOC is on disk, the first data block as it
is written), and any failure found later, at the end of the stored object included, drops
that database again. Into an existing database, the whole backup is verified first.

Real PostgreSQL and local stores. A store that pauses before handing out the last piece of
the stored object stands for a slow one: it waits (up to 30 s) until the target shows what
the restore did meanwhile, so "before the fetch ended" is observed, not assumed."""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from conftest import SOURCE_DB
from pg import both_majors, fingerprint, row_counts

from platform_orchestration.backups.archive_toc import BlockFinder, TocEntry, TocIncomplete, TocUnsupported, read_toc
from platform_orchestration.backups.catalog import find_backup
from platform_orchestration.backups.integrity import BackupCorrupt
from platform_orchestration.backups.restore import (
    _RLS_ENTRY,
    RestoreFailed,
    _phases,
    _RowCounter,
    restore_backup,
)
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.postgres import client_tools_for
from platform_orchestration.storage import LocalObjectStore, read_bytes, write_bytes

PIECE = 64 * 1024


@pytest.fixture
def keys(tmp_path) -> LocalDataKeyProvider:
    return LocalDataKeyProvider(tmp_path / "config" / "platform-orchestration" / "demo-kek")


@pytest.fixture
def bulky_db(scratch_source_db):
    """The seeded database plus a few MB of poorly compressible rows: several AEAD segments,
    so the TOC is authenticated and handed on long before the end of the stored object."""
    with psycopg.connect(scratch_source_db.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.zz_bulk AS SELECT i AS id, md5(i::text) || md5((i * 7)::text) AS v "
                     "FROM generate_series(1, 120000) i")
    return scratch_source_db


def _exists(target) -> bool:
    with psycopg.connect(target.for_database("postgres").dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target.dbname,)).fetchone() is not None


def _restored_meanwhile(target) -> tuple[bool, bool]:
    """(the schema is there, some table already has its rows) in the target, now."""
    if not _exists(target):
        return False, False
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        schema = conn.execute("SELECT to_regclass('public.zz_bulk') IS NOT NULL").fetchone()[0]
    return schema, schema and any(rows > 0 for rows in row_counts(target).values())


class PausingStore(LocalObjectStore):
    """A local store handing out the dump in small pieces, calling `before_last` (in the
    fetching thread) before the last one, or before the first piece that lies within
    `hold_back` bytes of the end."""

    before_last: Callable[[], None] = staticmethod(lambda: None)
    hold_back = 0

    def read(self, key: str, chunk_bytes: int = PIECE) -> Iterator[bytes]:
        data = b"".join(super().read(key))
        pieces = [data[i:i + PIECE] for i in range(0, len(data), PIECE)] or [b""]
        pause_at = max(0, min(len(pieces) - 1, (len(data) - self.hold_back) // PIECE))
        for i, piece in enumerate(pieces):
            if i == pause_at and key.endswith(".zst"):
                self.before_last()
            yield piece


def _watching(store: PausingStore, target, wanted: Callable[[tuple[bool, bool]], bool]) -> list[tuple[bool, bool]]:
    """Make `store` wait before its last piece until `wanted(_restored_meanwhile(target))`
    (30 s at most); what it saw is appended to the list returned."""
    seen: list[tuple[bool, bool]] = []

    def before_last() -> None:
        deadline = time.monotonic() + 30
        state = _restored_meanwhile(target)
        while not wanted(state) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = _restored_meanwhile(target)
        seen.append(state)

    store.before_last = before_last
    return seen


def _pausing(stores) -> PausingStore:
    return PausingStore(stores[0].name, stores[0].root)


def _rewrite(store, manifest, **dump):
    changed = manifest.model_copy(update={"dump": manifest.dump.model_copy(update=dump)} if dump else {})
    write_bytes(store, manifest.manifest_key, changed.to_json())
    return changed


@both_majors
def test_schema_and_first_data_are_restored_before_the_fetch_ends_and_content_is_exact(
        backup, stores, keys, bulky_db, target_db):
    backup(stores, connection=bulky_db, keys=keys)
    store = _pausing(stores)
    seen = _watching(store, target_db, lambda state: all(state))

    result = restore_backup(find_backup([store], SOURCE_DB), target_db, keys=keys)

    assert seen == [(True, True)], "schema and the first table's rows were there before the last stored bytes"
    assert result.target_action == "created"
    assert fingerprint(target_db) == fingerprint(bulky_db)
    assert result.rows_verified == sum(row_counts(bulky_db).values())


@pytest.mark.parametrize("broken", ["truncated", "checksum"])
def test_a_backup_found_broken_at_its_end_leaves_no_database_behind(backup, stores, keys, bulky_db, target_db,
                                                                    broken):
    manifest = backup(stores, connection=bulky_db, keys=keys).manifest
    store = _pausing(stores)
    if broken == "truncated":  # the last AEAD segment gone, size and SHA-256 fixed up to match
        data = read_bytes(store, manifest.dump_key)[:-5000]
        write_bytes(store, manifest.dump_key, data)
        _rewrite(store, manifest, sha256=hashlib.sha256(data).hexdigest(), stored_bytes=len(data))
        message = "encrypted dump failed authentication"
    else:  # every segment authentic; only the SHA-256 at the very end disagrees
        _rewrite(store, manifest, sha256="0" * 64)
        message = "checksum mismatch"
    seen = _watching(store, target_db, lambda state: all(state))

    with pytest.raises(BackupCorrupt, match=f"{manifest.backup_id}.*store aws: {message}"):
        restore_backup(find_backup([store], SOURCE_DB), target_db, keys=keys)

    assert seen == [(True, True)], "the restore was under way when the end of the object was read"
    assert not _exists(target_db), "the database this restore created was dropped"


def test_a_backup_broken_at_its_end_leaves_an_existing_empty_database_untouched(
        backup, stores, keys, bulky_db, empty_db):
    manifest = backup(stores, connection=bulky_db, keys=keys).manifest
    _rewrite(stores[0], manifest, sha256="0" * 64)
    store = _pausing(stores)
    seen = _watching(store, empty_db, lambda state: False)  # waits: nothing may happen meanwhile
    store.before_last = lambda: seen.append(_restored_meanwhile(empty_db))
    before = fingerprint(empty_db)

    with pytest.raises(BackupCorrupt, match="checksum mismatch"):
        restore_backup(find_backup([store], SOURCE_DB), empty_db, keys=keys)

    assert seen == [(False, False)] and fingerprint(empty_db) == before


def test_a_restore_failing_after_the_fetch_drops_the_database_it_created(backup, stores, keys, target_db):
    manifest = backup(stores, keys=keys).manifest
    counts = dict(manifest.row_counts)
    table = sorted(counts)[0]
    counts[table] += 1
    write_bytes(stores[0], manifest.manifest_key, manifest.model_copy(update={"row_counts": counts}).to_json())

    with pytest.raises(RestoreFailed, match=f"does not match the manifest: {re.escape(table)}: "):
        restore_backup(find_backup(stores, SOURCE_DB, store_name="aws"), target_db, keys=keys)

    assert not _exists(target_db)


def test_pg_restore_failing_in_an_overlapped_restore_drops_the_database_and_names_the_phase(
        backup, stores, keys, bulky_db, target_db):
    """While the fetch is held up, the schema is there: the table whose data comes last is
    dropped under the restore's feet, so loading its data after the fetch fails.

    The fetch is held 1.5 MiB before the end of the stored object, so the last AEAD segment
    (1 MiB, handed on only once whole) and with it that table's data block are not out yet: no
    COPY into it can have begun. (Dropping a table whose COPY is under way, waiting for the very
    bytes the fetch is held on, would wait on its lock for ever: that had hung this test.)"""
    with psycopg.connect(bulky_db.dsn, autocommit=True) as conn:
        # public.zzz_last: pg_dump writes table data by schema, then name; only large objects after it.
        conn.execute("CREATE TABLE public.zzz_last AS SELECT i FROM generate_series(1, 10) i")
    backup(stores, connection=bulky_db, keys=keys)
    store = _pausing(stores)
    store.hold_back = 3 * 512 * 1024

    def last_table_created() -> bool:
        if not _exists(target_db):
            return False
        with psycopg.connect(target_db.dsn, autocommit=True) as conn:
            return conn.execute("SELECT to_regclass('public.zzz_last') IS NOT NULL").fetchone()[0]

    seen: list[bool] = []

    def sabotage() -> None:
        deadline = time.monotonic() + 30
        while not last_table_created() and time.monotonic() < deadline:
            time.sleep(0.05)
        with psycopg.connect(target_db.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '20s'")  # a wait would be this test's bug: fail, do not hang
            conn.execute("DROP TABLE public.zzz_last")
        seen.append(True)

    store.before_last = sabotage

    with pytest.raises(RestoreFailed, match=r"pg_restore \d+\.\d+ \(data\) exited with 1 \(the database this "
                                            r"restore created is dropped again\): .*zzz_last"):
        restore_backup(find_backup([store], SOURCE_DB), target_db, keys=keys)

    assert seen == [True], "the table was dropped while the fetch was held up"
    assert not _exists(target_db)


@both_majors
def test_restore_as_into_a_created_database_holds_row_level_security_back(
        backup, stores, keys, source_db, target_cluster, fresh_name):
    """The seed forces RLS on a table with a foreign key; restoring as a role without
    BYPASSRLS must still restore it (RLS last), here while fetching."""
    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app_owner'").fetchone():
            conn.execute("CREATE ROLE app_owner NOLOGIN")
    backup(stores, keys=keys)
    target = target_cluster.connection(fresh_name("owned"))

    result = restore_backup(find_backup(stores, SOURCE_DB), target, keys=keys, restore_as="app_owner")

    assert result.target_action == "created"
    assert fingerprint(target) == fingerprint(source_db)


def test_phases_cover_every_listed_entry_once_in_order_with_rls_held_back(backup, stores, tmp_path):
    manifest = backup(stores).manifest
    archive = tmp_path / "dump.pgdump"
    import zstandard
    archive.write_bytes(zstandard.ZstdDecompressor().decompressobj().decompress(
        read_bytes(stores[0], manifest.dump_key)))
    listing = subprocess.run([client_tools_for(16).tool("pg_restore"), "--list", str(archive)],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    listed = [int(line.split(";")[0]) for line in listing if line and not line.startswith(";")]
    rls = {int(line.split(";")[0]) for line in listing if _RLS_ENTRY.match(line)}

    toc = read_toc(archive.read_bytes())
    phases = _phases(toc)

    assert phases is not None and rls
    groups = [phases.schema, phases.blocks, phases.data, phases.post, phases.last]
    ids = [e.dump_id for group in groups for e in group]
    assert sorted(ids) == sorted(listed), "every listed entry in exactly one phase"
    assert {e.dump_id for e in phases.last} == rls
    order = {dump_id: i for i, dump_id in enumerate(listed)}
    assert all([order[e.dump_id] for e in g] == sorted(order[e.dump_id] for e in g) for g in groups)
    assert phases.blocks and all(e.has_data for e in phases.blocks)
    assert all(e.section == 3 for e in (*phases.blocks, *phases.data))
    assert "SEQUENCE SET" in {e.desc for e in phases.schema}
    with pytest.raises(TocIncomplete):
        read_toc(archive.read_bytes()[:toc.end - 1])
    with pytest.raises(TocUnsupported):
        read_toc(b"PGDMP\x01\x0d\x00" + archive.read_bytes()[8:toc.end])
    head = bytearray(archive.read_bytes()[:toc.end])
    assert head[5:7] == b"\x01\x0f" and head[11] == 0  # format 1.15: compression algorithm, none
    head[11] = 1  # gzip inside pg_dump: block ends cannot be found by their marker
    with pytest.raises(TocUnsupported, match="compressed by pg_dump"):
        read_toc(bytes(head))


def _walked_block_starts(data: bytes, toc) -> list[tuple[int, int]]:
    """(offset, dump id) of every data block, by walking every chunk (slow, exact)."""
    pos, size, starts = toc.end, toc.int_size, []

    def integer(at: int) -> int:
        value = int.from_bytes(data[at + 1:at + 1 + size], "little")
        return -value if data[at] else value

    while pos < len(data):
        kind, dump_id = data[pos], integer(pos + 1)
        starts.append((pos, dump_id))
        if kind != 1:
            break  # BLOBS: laid out otherwise, and last here
        pos += 2 + size
        while (length := integer(pos)) != 0:
            pos += 1 + size + length
        pos += 1 + size
    return starts


@pytest.mark.parametrize("piece", [1, 7, 4096, None])
def test_block_finder_finds_every_table_data_block_where_it_starts_however_the_bytes_arrive(
        backup, stores, piece):
    import zstandard
    manifest = backup(stores).manifest
    data = zstandard.ZstdDecompressor().decompressobj().decompress(read_bytes(stores[0], manifest.dump_key))
    toc = read_toc(data)
    phases = _phases(toc)
    walked = _walked_block_starts(data, toc)
    table_data = [offset for (offset, _), e in zip(walked, phases.blocks) if e.desc == "TABLE DATA"]
    assert [dump_id for _, dump_id in walked] == [e.dump_id for e in phases.blocks][:len(walked)]

    finder = BlockFinder(toc, phases.blocks)
    pos = written = toc.end
    step = piece or len(data)
    while not finder.stopped and written < len(data):
        written = min(len(data), written + step)  # bytes arrive `step` at a time
        if written > pos:
            pos = finder.feed(data[pos:written], pos)  # from where the finder asked to read

    assert finder.starts[:len(table_data)] == table_data
    assert finder.starts == [offset for offset, _ in walked][:len(finder.starts)]


def test_post_data_of_a_table_is_ready_once_its_data_is_in_by_dependencies_and_locks():
    """The scheduling rules on a hand-made TOC (no server needed): a table's indexes and
    constraints wait for its data (a dependency on TABLE stands for its TABLE DATA, as
    pg_restore -j repoints it), a foreign key for the referenced key too, an entry taking an
    exclusive lock never runs beside another on the same table, a large table's entries go
    one per pass, and a table loaded through its partition root turns the early start off."""
    from platform_orchestration.backups.archive_toc import ArchiveToc, TocEntry
    from platform_orchestration.backups.restore import _GROUP_BYTES, _early_post, _ready_post

    def entry(dump_id, desc, section, deps=(), tag="t", copy=""):
        return TocEntry(dump_id, desc == "TABLE DATA", desc, tag, section, "public", deps, copy)

    big, small = entry(1, "TABLE", 2, tag="big"), entry(2, "TABLE", 2, tag="small")
    big_data = entry(11, "TABLE DATA", 3, (1,), "big", "COPY public.big (a) FROM stdin;\n")
    small_data = entry(12, "TABLE DATA", 3, (2,), "small", "COPY public.small (a) FROM stdin;\n")
    big_pk, big_index = entry(21, "CONSTRAINT", 4, (1,)), entry(22, "INDEX", 4, (1,))
    small_pk, small_fk = entry(23, "CONSTRAINT", 4, (2,)), entry(24, "FK CONSTRAINT", 4, (2, 1, 21))
    acl, index_comment = entry(25, "ACL", 1, (1,)), entry(26, "COMMENT", 4, (22,))
    entries = (big, small, big_data, small_data, big_pk, big_index, small_pk, small_fk, acl, index_comment)
    toc = ArchiveToc((1, 15, 0), entries, end=0)
    phases = _phases(toc)
    early = _early_post(toc, phases)

    assert set(early) == {21, 22, 23, 24}, "ACLs and comments wait for the pass after all data"
    assert early[24].needs_data == {11, 12} and early[24].needs_post == {21}
    left = list(phases.post)
    sizes = {11: _GROUP_BYTES, 12: 1}
    assert _ready_post(early, left, set(), set(), [], sizes) == ()
    assert _ready_post(early, left, {12}, set(), [], sizes) == (small_pk,), "the key waits for big's key"
    assert _ready_post(early, left, {11, 12}, set(), [], sizes) == (big_pk,), "a large table's entry alone"
    left.remove(big_pk)
    assert _ready_post(early, left, {11, 12}, set(), [early[21]], sizes) == (small_pk,), \
        "no index build beside its table's exclusive key; small tables' entries batched"
    left.remove(small_pk)
    assert _ready_post(early, left, {11, 12}, {21, 23}, [], sizes) == (big_index,)
    assert _ready_post(early, left[1:], {11, 12}, {21, 23}, [early[22]], sizes) == (), \
        "the foreign key, exclusive, locks the referenced table too"
    assert _ready_post(early, left[1:], {11, 12}, {21, 23}, [], sizes) == (small_fk,)

    via_root = entry(12, "TABLE DATA", 3, (2,), "small", "COPY public.big (a) FROM stdin;\n")
    rooted = ArchiveToc((1, 15, 0), tuple(via_root if e.dump_id == 12 else e for e in entries), end=0)
    assert _early_post(rooted, _phases(rooted)) == {}


def test_rows_counted_as_each_table_loads_are_still_held_against_the_manifest(backup, stores, keys, bulky_db,
                                                                               target_db):
    """Each table is counted as soon as its data is in (beside the other tables' loads), no
    longer all at the end: a manifest that says one row more for a table still fails the
    restore, naming the table, and the database it created is gone."""
    backup(stores, connection=bulky_db, keys=keys)
    manifest = find_backup([stores[0]], SOURCE_DB).manifest
    counts = dict(manifest.row_counts)
    counts["public.zz_bulk"] += 1
    write_bytes(stores[0], manifest.manifest_key, manifest.model_copy(update={"row_counts": counts}).to_json())

    with pytest.raises(RestoreFailed, match=r"public\.zz_bulk: 120000 rows, expected 120001"):
        restore_backup(find_backup([stores[0]], SOURCE_DB), target_db, keys=keys)
    assert not _exists(target_db)


def test_a_count_waiting_on_a_lock_is_cancelled_and_its_session_closed_when_the_restore_fails(target_db):
    """When a restore fails while a table is being counted, the count is cancelled and its
    connection closed at once: dropping the database the restore created then finds no
    session of ours in it (a count waiting on a lock would otherwise hold it up)."""
    with psycopg.connect(target_db.for_database("postgres").dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target_db.dbname}"')
    try:
        with psycopg.connect(target_db.dsn) as holder:
            holder.execute("CREATE TABLE public.locked (id int)")
            holder.commit()
            holder.execute("LOCK TABLE public.locked IN ACCESS EXCLUSIVE MODE")
            counter = _RowCounter(_StoredStub(), target_db)
            counter.count(TocEntry(dump_id=7, has_data=True, desc="TABLE DATA", tag="locked", section=3,
                                   namespace="public"))
            deadline = time.monotonic() + 10
            while not _sessions_waiting_on_a_lock(target_db) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert _sessions_waiting_on_a_lock(target_db) == 1, "the count should be waiting on the lock"
            stopping = threading.Thread(target=counter.stop, kwargs={"cancel": True})
            stopping.start()
            stopping.join(5)
            cancelled = not stopping.is_alive()
            holder.rollback()  # lets a count that was not cancelled finish, so the test ends
            stopping.join()
            assert cancelled, "stop(cancel=True) waited for the lock instead of cancelling the count"
            assert counter.finished() == set()
        assert _sessions_end(target_db) == 0
    finally:
        with psycopg.connect(target_db.for_database("postgres").dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target_db.dbname}"')


def test_a_count_that_fails_is_raised_naming_the_restore(target_db):
    """A table that cannot be counted (here: gone) fails the restore with the counting
    error, not later and not silently."""
    with psycopg.connect(target_db.for_database("postgres").dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{target_db.dbname}"')
    try:
        counter = _RowCounter(_StoredStub(), target_db)
        counter.count(TocEntry(dump_id=8, has_data=True, desc="TABLE DATA", tag="nowhere", section=3,
                               namespace="public"))
        counter.stop(cancel=False)
        with pytest.raises(RestoreFailed, match=r"counting the restored rows failed: .*nowhere"):
            counter.finished()
        assert _sessions_end(target_db) == 0
    finally:
        with psycopg.connect(target_db.for_database("postgres").dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target_db.dbname}"')


class _StoredStub:
    """What _RowCounter's error messages read of a stored backup."""
    backup_id = "b-1"

    class manifest:  # noqa: N801 - stands for the manifest attribute
        database = "orders"


def _sessions(target) -> int:
    with psycopg.connect(target.for_database("postgres").dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'", (target.dbname,)).fetchone()[0]


def _sessions_end(target, within: float = 5.0) -> int:
    """The client sessions left in the database once they had `within` seconds to end: a
    backend exits shortly after its client closed the connection, not at that instant (DROP
    DATABASE waits 5 s for them too)."""
    deadline = time.monotonic() + within
    while (left := _sessions(target)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def _sessions_waiting_on_a_lock(target) -> int:
    with psycopg.connect(target.for_database("postgres").dsn, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                            (target.dbname,)).fetchone()[0]
