"""One backup, prune or rewrap of a database at a time, across threads, processes and machines:
the PostgreSQL advisory lock of postgres/locks.py, as FleetProtection takes it, against the
tests' real PostgreSQL server."""

from __future__ import annotations

import doctest
import os
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from lock_holders import BackupHeldMidDump, lock_held_by_another_process

from platform_orchestration.backups.take import BackupFailed
from platform_orchestration.errors import EXIT_BUSY, Busy
from platform_orchestration.fleet import load_fleet
from platform_orchestration.postgres import locks as locks_module
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.postgres.locks import DatabaseBusy, DatabaseLock, LockUnavailable
from platform_orchestration.protection import FleetProtection


@pytest.fixture
def fleet_file(tmp_path: Path, source_cluster, source_db) -> Path:  # noqa: ANN001 - conftest fixtures
    return write_fleet(tmp_path / "fleet", source_cluster, SOURCE_DB)


def operator(fleet_file: Path) -> FleetProtection:
    """What one run or one CLI command works with: its own FleetProtection, its own connections."""
    return FleetProtection(load_fleet(fleet_file))


def lock_is_free(protection: FleetProtection, database: str = SOURCE_DB) -> bool:
    try:
        with protection.database_lock(database, "probe"):
            return True
    except DatabaseBusy:
        return False


def test_doctests_of_the_module_pass() -> None:
    result = doctest.testmod(locks_module)
    assert result.attempted > 0 and result.failed == 0


def test_of_two_backups_of_one_database_at_once_one_proceeds_and_the_other_is_refused_naming_it(fleet_file):
    with BackupHeldMidDump(operator(fleet_file), SOURCE_DB) as first:
        with pytest.raises(DatabaseBusy) as raised:
            operator(fleet_file).backup(SOURCE_DB)
        outcome = first.finish()

    message = str(raised.value)
    assert isinstance(raised.value, Busy) and raised.value.exit_code == EXIT_BUSY == 4
    assert message.startswith(f"backup of {SOURCE_DB} refused: another backup, prune or rewrap of "
                              f"{SOURCE_DB} holds its lock: 'backup lock ")
    assert f":{os.getpid()} platform-orchestration' (server pid " in message
    assert "client 127.0.0.1" in message and "connected 20" in message and "\n" not in message
    [holder] = raised.value.holders
    assert holder.application_name.startswith("backup lock ")
    assert [b.backup_id for b in operator(fleet_file).list_backups(SOURCE_DB).backups] == [outcome.manifest.backup_id] * 3


def test_the_lock_is_released_after_a_backup_succeeds_and_after_one_fails(fleet_file):
    protection = operator(fleet_file)
    protection.backup(SOURCE_DB)
    assert lock_is_free(operator(fleet_file))

    def fail_mid_dump(stage: str, done_bytes: int) -> None:
        raise OSError(28, "disk on fire")  # ENOSPC, as a full disk raises it

    with pytest.raises(BackupFailed, match="disk on fire"):
        protection.backup(SOURCE_DB, fail_mid_dump)
    assert lock_is_free(operator(fleet_file))


def test_a_prune_while_a_backup_runs_is_refused_and_one_that_waits_runs_once_the_backup_is_done(fleet_file):
    pruner = operator(fleet_file)
    with BackupHeldMidDump(operator(fleet_file), SOURCE_DB) as backup:
        with pytest.raises(DatabaseBusy, match=f"prune of {SOURCE_DB} refused: .*'backup lock "):
            pruner.prune(SOURCE_DB)
        assert pruner.prune(SOURCE_DB, dry_run=True).dry_run  # a dry run changes nothing: no lock

        threading.Timer(0.5, backup.finish).start()
        report = pruner.prune(SOURCE_DB, lock_wait=60)

        assert not backup.running  # the prune ran after the backup, not beside it
        assert report.failures == () and report.kept_count == 3


def test_backups_of_different_databases_do_not_block_each_other(tmp_path, fleet_file, source_cluster,
                                                                scratch_source_db):
    other = scratch_source_db.dbname
    other_fleet = write_fleet(tmp_path / "other", source_cluster, other)
    with BackupHeldMidDump(operator(fleet_file), SOURCE_DB) as first:
        outcome = operator(other_fleet).backup(other)
        assert first.running
    assert outcome.manifest.database == other


def test_a_lock_held_by_another_process_is_named_and_dies_with_it(fleet_file, source_db):
    protection = operator(fleet_file)
    with lock_held_by_another_process(source_db, SOURCE_DB, "prune") as holder:
        with pytest.raises(DatabaseBusy) as raised:
            protection.backup(SOURCE_DB, lock_wait=0.3)
        assert str(raised.value).startswith(f"backup of {SOURCE_DB} refused after waiting 0.3s: ")
        assert "'prune lock " in str(raised.value) and f":{holder.pid} " in str(raised.value)
    # SIGKILLed: its session ended, and PostgreSQL released the lock with it.
    assert protection.backup(SOURCE_DB, lock_wait=10).stored_in == ("aws", "azure", "gcp")


def test_the_cli_exits_4_with_one_line_naming_the_holder_when_the_database_is_busy(fleet_file, source_db):
    with lock_held_by_another_process(source_db, SOURCE_DB, "backup") as holder:
        result = subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet_file),
                                 "prune", SOURCE_DB], capture_output=True, text=True, timeout=120)
    assert result.returncode == 4
    [line] = result.stderr.splitlines()
    assert line.startswith(f"platform-dr prune {SOURCE_DB}: error: prune of {SOURCE_DB} refused: ")
    assert f":{holder.pid} platform-orchestration'" in line


def test_prune_and_rewrap_refuse_an_unreachable_database_unless_told_not_to_lock(tmp_path):
    gone = write_fleet(tmp_path / "fleet", SimpleNamespace(port=free_port()), "gone")
    protection = FleetProtection.from_environment(load_fleet(gone))

    with pytest.raises(LockUnavailable, match="prune of gone: cannot take the database's lock, the "
                                              "database is unreachable at .*port="):
        protection.prune("gone")
    with pytest.raises(LockUnavailable, match="rewrap of gone: "):
        protection.rewrap_all("gone")

    assert protection.prune("gone", lock=False).failures == ()
    assert protection.rewrap_all("gone", lock=False).ok


def test_the_cli_prunes_an_unreachable_database_only_with_no_lock(tmp_path):
    gone = write_fleet(tmp_path / "fleet", SimpleNamespace(port=free_port()), "gone")

    def platform_dr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(gone), *args],
                              capture_output=True, text=True, timeout=120)

    refused = platform_dr("prune", "gone")
    assert refused.returncode == 1 and "cannot take the database's lock" in refused.stderr
    assert platform_dr("prune", "gone", "--no-lock").returncode == 0
    too_young = platform_dr("prune", "gone", "--no-lock", "--sweep-older-than", "10m")
    assert too_young.returncode == 2 and "is below 1h" in too_young.stderr


def test_a_fleet_wide_rewrap_reports_a_busy_database_and_changes_nothing_of_it(fleet_file, source_db):
    protection = FleetProtection.from_environment(load_fleet(fleet_file))
    backup_id = protection.backup(SOURCE_DB).manifest.backup_id
    with lock_held_by_another_process(source_db, SOURCE_DB, "backup"):
        report = protection.rewrap_all()
    assert not report.ok
    assert {(e.backup_id, e.outcome) for e in report.entries} == {(backup_id, "failed")}
    assert all(e.error and e.error.startswith(f"rewrap of {SOURCE_DB} refused: ") for e in report.entries)


def test_the_lock_is_not_reentrant_and_waiting_must_be_a_positive_time(source_db):
    lock = DatabaseLock(source_db, SOURCE_DB, "backup")
    with pytest.raises(ValueError, match="wait must be zero or more"):
        DatabaseLock(source_db, SOURCE_DB, "backup", wait=-1)
    with lock:
        assert lock.held
        with pytest.raises(RuntimeError, match="already held"):
            lock.acquire()
    assert not lock.held
