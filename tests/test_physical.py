"""Physical backups end to end on real servers: PostgreSQL 16 and 18 running as nobody archive
their WAL with barman-cloud-wal-archive into a moto S3 server; base backups with
barman-cloud-backup; point-in-time restores bring up new clusters with exactly the content at
the chosen point; a deleted segment is reported and a restore past it fails."""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pg
import pytest
from pg import execute
from physical_support import archived_cluster

from platform_orchestration.physical.archiving import Segment, archive_status, switch_and_wait_archived
from platform_orchestration.physical.base_backup import list_base_backups, take_base_backup
from platform_orchestration.physical.pitr import (
    PitrFailed,
    PitrRefused,
    RecoveryTarget,
    restore_to_point,
    stop_restored,
)
from platform_orchestration.postgres.cluster import STAND_IN_DIR_ENV, free_port

pytestmark = pytest.mark.slow


def _rows(dsn: str) -> list[int]:
    return [row[0] for row in execute(dsn, "SELECT id FROM pitr_probe ORDER BY id")]


@pg.both_majors
def test_archive_backup_and_restore_to_a_time_and_to_an_lsn(s3_backend, pg_major: int, tmp_path: Path) -> None:
    with archived_cluster(s3_backend, pg_major) as archived:
        dsn = archived.cluster.connection().dsn
        execute(dsn, "CREATE TABLE pitr_probe (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())",
                 "INSERT INTO pitr_probe (id) SELECT generate_series(1, 1000)")
        outcome = take_base_backup(archived.tools, archived.repository, archived.cluster.connection(),
                                   store=archived.store)
        backup = outcome.backup
        assert backup.done and backup.server_major == pg_major
        assert backup.begin_wal <= backup.end_wal and backup.begin_lsn and backup.end_lsn
        assert backup.cluster_bytes > 1_000_000 and 0 < backup.stored_bytes < backup.cluster_bytes
        assert outcome.seconds > 0

        # Two points after the backup: one by time (between commits), one by LSN.
        execute(dsn, "INSERT INTO pitr_probe (id) VALUES (1001)")
        time.sleep(1.1)
        (point_in_time,), = execute(dsn, "SELECT now()")
        time.sleep(1.1)
        (lsn_point,), = execute(dsn, "INSERT INTO pitr_probe (id) VALUES (1002)", "SELECT pg_current_wal_lsn()::text")
        execute(dsn, "INSERT INTO pitr_probe (id) VALUES (1003)")
        switch_and_wait_archived(archived.cluster.connection(), archived.store, archived.repository)

        status = archive_status(archived.cluster.connection(), archived.store, archived.repository,
                                list_base_backups(archived.tools, archived.repository))
        assert status.problems(timedelta(minutes=5)) == []
        assert status.missing == () and status.failed_count == 0 and status.segments_in_store >= 3
        assert status.newest_in_store >= backup.end_wal

        by_time = restore_to_point(archived.tools, archived.repository, RecoveryTarget(time=point_in_time),
                                   tmp_path / "by-time")
        try:
            restored = f"host=127.0.0.1 port={by_time.port} user=postgres dbname=postgres"
            assert _rows(restored) == list(range(1, 1002))
            assert by_time.backup_id == backup.backup_id and by_time.stopped_at.startswith("recovery stopping")
            assert by_time.last_replayed_commit <= point_in_time
            # The restored server archives nowhere: its source's repository stays the source's.
            assert execute(restored, "SHOW archive_mode") == [("off",)]
        finally:
            stop_restored(by_time, remove=True)

        by_lsn = restore_to_point(archived.tools, archived.repository, RecoveryTarget.parse(lsn_point),
                                  tmp_path / "by-lsn", port=free_port())
        try:
            restored = f"host=127.0.0.1 port={by_lsn.port} user=postgres dbname=postgres"
            assert _rows(restored) == list(range(1, 1003))
            assert by_lsn.rto_seconds >= by_lsn.restore_seconds > 0
        finally:
            stop_restored(by_lsn, remove=True)


def test_a_deleted_segment_is_reported_and_a_restore_past_it_fails(s3_backend, tmp_path: Path) -> None:
    with archived_cluster(s3_backend, 16) as archived:
        connection = archived.cluster.connection()
        take_base_backup(archived.tools, archived.repository, connection)
        execute(connection.dsn, "CREATE TABLE pitr_probe (id int)")
        lost = switch_and_wait_archived(connection, archived.store, archived.repository)
        execute(connection.dsn, "INSERT INTO pitr_probe VALUES (1)")
        switch_and_wait_archived(connection, archived.store, archived.repository)
        segment = Segment.parse(lost)
        key = next(info.key for info in archived.store.list(archived.repository.wals_prefix)
                   if Segment.parse(info.key.rsplit("/", 1)[-1]) == segment)
        archived.store.delete(key)

        backups = list_base_backups(archived.tools, archived.repository)
        status = archive_status(connection, archived.store, archived.repository, backups)
        assert status.missing == (lost,)
        assert status.problems(timedelta(minutes=5)) == [
            f"1 segment(s) missing from the repository: {lost}"]

        # Found before anything is restored, when the store is at hand...
        with pytest.raises(PitrFailed, match=f"1 WAL segment\\(s\\) missing from the repository .*: {lost}"):
            restore_to_point(archived.tools, archived.repository, RecoveryTarget(), tmp_path / "checked",
                             backups=backups, store=archived.store)
        assert not (tmp_path / "checked").exists()
        # ...and by the server itself otherwise: a time past the gap is never reached.
        (point,), = execute(connection.dsn, "SELECT now()")
        execute(connection.dsn, "INSERT INTO pitr_probe VALUES (2)")
        switch_and_wait_archived(connection, archived.store, archived.repository)
        with pytest.raises(PitrFailed, match="recovery stopped before it could promote: .*recovery target"):
            restore_to_point(archived.tools, archived.repository, RecoveryTarget(time=point), tmp_path / "unchecked",
                             backups=backups)
        # A restore that failed keeps its cluster for inspection (its server stopped by itself at
        # the end of recovery); a private tmp_path puts it in a stand-in, which the test removes.
        for kept in Path(os.environ.get(STAND_IN_DIR_ENV) or "/nonexistent").glob("unchecked-*"):
            shutil.rmtree(kept)


def test_a_restore_never_writes_over_a_directory_in_use_or_a_listening_port(s3_backend, tmp_path: Path) -> None:
    with archived_cluster(s3_backend, 16) as archived:
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        (occupied / "PG_VERSION").write_text("16\n")
        with pytest.raises(PitrRefused, match="is not empty: a point-in-time restore never writes over"):
            restore_to_point(archived.tools, archived.repository, RecoveryTarget(), occupied)
        with pytest.raises(PitrRefused, match=f"port {archived.cluster.port} is in use"):
            restore_to_point(archived.tools, archived.repository, RecoveryTarget(), tmp_path / "new",
                             port=archived.cluster.port)
        assert (occupied / "PG_VERSION").read_text() == "16\n" and not (tmp_path / "new").exists()


@pytest.mark.parametrize("text, message", [
    ("yesterday", "expected latest, an LSN like 0/3000060, or an ISO time"),
    ("2026-12-01T19:36:56", "give the time's zone"),
])
def test_a_bad_target_is_refused_with_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(PitrRefused, match=message):
        RecoveryTarget.parse(text)


def test_a_pitr_drill_brings_back_the_marker_and_nothing_after_it(s3_backend, tmp_path: Path) -> None:
    import json
    import signal
    import subprocess
    import sys

    from platform_orchestration.ownership import leases, reap_abandoned
    from platform_orchestration.physical.drill import pitr_drill_history, run_pitr_drill
    from platform_orchestration.storage import LocalObjectStore

    with archived_cluster(s3_backend, 16) as archived:
        connection = archived.cluster.connection()
        take_base_backup(archived.tools, archived.repository, connection)
        evidence = LocalObjectStore("evidence", tmp_path / "evidence")
        record = run_pitr_drill(tools=archived.tools, repository=archived.repository, store=archived.store,
                                connection=connection, record_stores=[archived.store, evidence],
                                rto_target=timedelta(minutes=10), rpo_target=timedelta(minutes=5))
        assert record.passed, record.failure
        assert record.rto_seconds > 0 and record.rpo_seconds is not None and record.reached_lsn
        assert record.last_replayed_commit <= record.target_time
        # The source still has both rows: the drill proved the point, not the present.
        assert [p for (p,) in execute(connection.dsn, "SELECT phase FROM platform_pitr.drill_markers "
                                                       "ORDER BY written_at")] == ["marker", "after"]
        history, unreadable = pitr_drill_history([evidence, archived.store], "pg-a")
        assert [r.drill_id for r in history] == [record.drill_id] and unreadable == []

        # A drill SIGKILLed while its restored server runs: the server dies with it (a parent-death
        # signal) and the reaper (what `platform-dr cleanup` runs) removes its directories (as
        # root, the stand-in under /var/tmp too), as for the logical drills' throwaway servers.
        script = _DRILL_HOLDER.format(tests=str(Path(__file__).parent), spec=archived.spec.model_dump(mode="json"),
                                      dsn=connection.dsn)
        holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        try:
            held = json.loads(holder.stdout.readline())
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        paths = [Path(p) for p in held["paths"]]  # the drill's scratch directory and its restored cluster's
        assert len(paths) == 2 and all(p.name.startswith("pg-ephemeral-") and p.is_dir() for p in paths)
        deadline = time.monotonic() + 10
        while _alive(held["postmaster"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(held["postmaster"]), "the restored server outlived its drill"

        reaped = reap_abandoned()
        assert set(held["paths"]) <= set(reaped.paths_removed) and not any(p.exists() for p in paths)
        assert not any(set(held["paths"]) & set(lease.paths) for lease in leases())

        # A segment lost from the repository: the next drill fails, and says why.
        newest = sorted(i.key for i in archived.store.list(archived.repository.wals_prefix)
                        if Segment.parse(i.key.rsplit("/", 1)[-1]))[-1]
        archived.store.delete(newest)
        failed = run_pitr_drill(tools=archived.tools, repository=archived.repository, store=archived.store,
                                connection=connection, record_stores=[evidence],
                                rto_target=timedelta(minutes=10), rpo_target=timedelta(minutes=5))
        assert not failed.passed and "missing from the repository" in failed.failure



_DRILL_HOLDER = """
import json, sys, time
sys.path.insert(0, {tests!r})
from datetime import timedelta
from physical_support import repository_on
from stores_s3 import DUMMY_CREDENTIALS
import platform_orchestration.physical.drill as drill
from platform_orchestration.fleet.model import S3StoreSpec
from platform_orchestration.ownership import ProcessIdentity, leases
from platform_orchestration.physical.tools import barman_tools
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.stores import store_from_spec

spec = S3StoreSpec.model_validate({spec!r})
store = store_from_spec(spec, DUMMY_CREDENTIALS)
repository = repository_on(spec, DUMMY_CREDENTIALS, "pg-a", {dsn!r})

def hold(port, dbname, drill_id):  # the restored server is up: report it, and wait to be killed
    [lease] = [l for l in leases() if l.owner == ProcessIdentity.current() and l.kind == "pitr-drill"]
    print(json.dumps({{"paths": lease.paths, "postmaster": lease.server["pid"], "port": port}}), flush=True)
    time.sleep(600)

drill._phases_restored = hold
drill.run_pitr_drill(tools=barman_tools(), repository=repository, store=store, connection=PgConnection({dsn!r}),
                     record_stores=[store], rto_target=timedelta(minutes=10), rpo_target=timedelta(minutes=5))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def test_the_server_users_mirror_of_a_rebuilt_barman_venv_is_a_new_copy(tmp_path: Path, monkeypatch) -> None:
    """A mirror made once per venv path would keep running the barman a venv held before `make
    barman` rebuilt it from a new lock; each installation gets its own."""
    import tempfile

    from platform_orchestration.physical import tools

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    (site / "barman-3.19.1.dist-info").mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").write_text("")
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    first = tools._mirror_for_server_user(venv)
    assert (first / "lib" / "python3.11" / "site-packages" / "barman-3.19.1.dist-info").is_dir()
    assert tools._mirror_for_server_user(venv) == first  # the same installation: the same copy

    (site / "barman-3.19.1.dist-info").rmdir()
    (site / "barman-3.20.0.dist-info").mkdir()
    second = tools._mirror_for_server_user(venv)
    assert second != first
    assert (second / "lib" / "python3.11" / "site-packages" / "barman-3.20.0.dist-info").is_dir()
    assert not (second / "lib" / "python3.11" / "site-packages" / "barman-3.19.1.dist-info").exists()
