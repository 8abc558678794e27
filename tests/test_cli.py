"""platform-dr, the break-glass CLI, run as operators run it: a process, a fleet file, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from broken import newest_manifest_garbled
from conftest import SOURCE_DB, make_stores
from fleetfiles import write_fleet
from pg import fingerprint, flip_byte

from platform_orchestration.ownership import ProcessIdentity


def platform_dr(fleet: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def fleet(tmp_path, source_cluster, source_db) -> Path:
    return write_fleet(tmp_path, source_cluster, SOURCE_DB)


def test_validate_reports_a_good_fleet(fleet):
    result = platform_dr(fleet, "validate")
    assert result.returncode == 0
    assert "ok (1 clusters, 3 stores, 1 databases, 2 policies)" in result.stdout


def test_validate_names_file_line_and_field_of_a_bad_fleet(tmp_path, fleet):
    bad = tmp_path / "bad.yaml"
    bad.write_text(fleet.read_text().replace("rpo: 1h", "rpo: soon"))
    result = platform_dr(bad, "validate")
    assert result.returncode == 2
    assert "bad.yaml:" in result.stderr and "policies[0].rpo" in result.stderr and "soon" in result.stderr
    assert "Traceback" not in result.stderr


def test_backup_prints_its_id_and_list_shows_one_row_per_store(fleet):
    backup = platform_dr(fleet, "backup", SOURCE_DB)
    assert backup.returncode == 0, backup.stderr
    backup_id = backup.stdout.strip()

    listing = platform_dr(fleet, "list", SOURCE_DB, "--json")
    rows = json.loads(listing.stdout)
    assert {(r["id"], r["store"]) for r in rows} == {(backup_id, s) for s in ("aws", "azure", "gcp")}
    assert all(r["database"] == SOURCE_DB and r["size"] > 0 and r["created_at"] for r in rows)
    table = platform_dr(fleet, "list").stdout
    assert table.splitlines()[0].split()[:5] == ["ID", "DATABASE", "STORE", "CREATED_AT", "SIZE"]


def test_verify_fails_with_the_reason_when_a_byte_is_flipped(tmp_path, fleet):
    backup_id = platform_dr(fleet, "backup", SOURCE_DB).stdout.strip()
    assert platform_dr(fleet, "verify", SOURCE_DB, "--store", "azure").returncode == 0

    flip_byte(tmp_path / "stores" / "azure" / "backups" / SOURCE_DB / backup_id / "dump.pgdump.zst")

    result = platform_dr(fleet, "verify", SOURCE_DB, "--store", "azure")
    assert result.returncode == 1
    assert f"backup {backup_id}" in result.stderr and "store azure" in result.stderr
    assert "checksum mismatch" in result.stderr
    assert platform_dr(fleet, "verify", SOURCE_DB, "--store", "gcp").returncode == 0


def test_restore_refuses_a_non_empty_target_unless_replace(fleet, source_db, target_cluster):
    platform_dr(fleet, "backup", SOURCE_DB)
    target = target_cluster.connection("cli_restore")
    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE cli_restore")
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")

    refused = platform_dr(fleet, "restore", SOURCE_DB, "--target-dsn", target.dsn)
    assert refused.returncode == 1 and "not empty" in refused.stderr
    with psycopg.connect(target.dsn) as conn:
        assert conn.execute("SELECT count(*) FROM precious").fetchone()[0] == 1

    replaced = platform_dr(fleet, "restore", SOURCE_DB, "--target-dsn", target.dsn, "--replace")
    assert replaced.returncode == 0, replaced.stderr
    assert "verified" in replaced.stdout
    assert fingerprint(target) == fingerprint(source_db)


def test_status_drill_and_copies_work_without_dagster(tmp_path, fleet):
    platform_dr(fleet, "backup", SOURCE_DB)
    assert platform_dr(fleet, "status").returncode == 1  # never drilled yet

    drill = platform_dr(fleet, "drill", SOURCE_DB)
    assert drill.returncode == 0, drill.stderr
    assert "from aws" in drill.stdout and "passed" in drill.stdout

    for item in (tmp_path / "stores" / "gcp" / "backups").rglob("*"):
        if item.is_file():
            item.unlink()
    copies = platform_dr(fleet, "copies", SOURCE_DB)
    assert copies.returncode == 0 and "copied to gcp" in copies.stdout
    status = platform_dr(fleet, "status")
    assert status.returncode == 0 and "compliant" in status.stdout


def test_unknown_database_is_a_one_line_error(fleet):
    result = platform_dr(fleet, "backup", "nope")
    assert result.returncode == 1
    assert "unknown database 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_progress_shows_stage_bytes_and_rate_on_a_terminal_only(fleet):
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet), "backup", SOURCE_DB],
        stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    screen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process is done with it
            break
        if not chunk:
            break
        screen += chunk
    os.close(leader)
    process.wait(timeout=120)
    text = screen.decode(errors="replace")
    assert process.returncode == 0
    assert "dump" in text and "iB/s" in text and "\r" in text
    # stdout is a pipe, not a terminal: it carries the backup id alone, no progress noise.
    assert "\r" not in process.stdout.read()


def test_prune_dry_run_deletes_nothing_then_prune_deletes_beyond_keep_last(tmp_path, fleet, backup):
    from conftest import make_stores

    ids = [backup(make_stores(tmp_path / "stores")).manifest.backup_id for _ in range(5)]  # keep_last: 3

    def listed() -> set[tuple[str, str]]:
        return {(r["id"], r["store"]) for r in json.loads(platform_dr(fleet, "list", SOURCE_DB, "--json").stdout)}

    dry = platform_dr(fleet, "prune", SOURCE_DB, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "dry run, nothing deleted" in dry.stdout
    assert f"aws: would delete {ids[0]}" in dry.stdout and "would delete 6," in dry.stdout
    assert listed() == {(i, s) for i in ids for s in ("aws", "azure", "gcp")}

    pruned = platform_dr(fleet, "prune", SOURCE_DB)
    assert pruned.returncode == 0, pruned.stderr
    for store in ("aws", "azure", "gcp"):
        assert f"{store}: deleted {ids[0]}" in pruned.stdout and f"{store}: deleted {ids[1]}" in pruned.stdout
        assert f"{store}: kept {ids[2]} (last 3)" in pruned.stdout
    assert "deleted 6, kept 9, locked 0" in pruned.stdout
    assert listed() == {(i, s) for i in ids[2:] for s in ("aws", "azure", "gcp")}
    assert not list((tmp_path / "stores").glob(f"*/backups/{SOURCE_DB}/{ids[0]}*"))


def test_verify_names_unreadable_manifests_and_fails_for_the_backup_asked_for_if_it_is_one(tmp_path, fleet, backup):
    stores = make_stores(tmp_path / "stores")
    older, newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    latest = platform_dr(fleet, "verify", SOURCE_DB)
    assert latest.returncode == 0, latest.stderr
    assert f"ok: backup {older.backup_id} " in latest.stdout
    assert f"warning: backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest" in latest.stderr

    asked = platform_dr(fleet, "verify", SOURCE_DB, "--backup", newer.backup_id)
    assert asked.returncode == 1
    assert f"backup {newer.backup_id} of {SOURCE_DB} cannot be read: backup {newer.backup_id} in stores aws, " \
        "azure, gcp: unreadable manifest" in asked.stderr


def test_restore_and_status_name_a_newer_backup_whose_manifest_is_garbage(tmp_path, fleet, backup, target_db):
    stores = make_stores(tmp_path / "stores")
    older, newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    restored = platform_dr(fleet, "restore", SOURCE_DB, "--target-dsn", target_db.dsn)
    assert restored.returncode == 0, restored.stderr
    assert f"restored backup {older.backup_id} " in restored.stdout
    assert f"warning: passed over newer backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest" \
        in restored.stderr

    status = platform_dr(fleet, "status")
    assert status.returncode == 1
    assert f"[FAIL] copies_in_required_stores: backup {older.backup_id} verified" in status.stdout
    assert f"[unreadable] backup {newer.backup_id} in stores aws, azure, gcp: unreadable manifest" in status.stdout


def test_rotate_key_then_rewrap_is_the_whole_rotation_and_old_backups_still_restore(
        tmp_path, fleet, source_db, target_cluster, local_key_file):
    old_id = platform_dr(fleet, "backup", SOURCE_DB).stdout.strip()
    version_before = json.loads(local_key_file.read_text())["versions"][-1]["version"]

    rotated = platform_dr(fleet, "rotate-key")
    assert rotated.returncode == 0, rotated.stderr
    new_version = version_before + 1
    assert f"version {new_version}" in rotated.stdout and "platform-dr rewrap" in rotated.stdout
    new_id = platform_dr(fleet, "backup", SOURCE_DB).stdout.strip()
    manifests = tmp_path / "stores" / "aws" / "backups" / SOURCE_DB
    assert json.loads((manifests / new_id / "manifest.json").read_text())["encryption"]["key_version"] == new_version
    assert json.loads((manifests / old_id / "manifest.json").read_text())["encryption"]["key_version"] == version_before
    status = platform_dr(fleet, "status").stdout
    assert f"local v{version_before}: 3" in status and f"local v{new_version}: 3" in status

    rewrap = platform_dr(fleet, "rewrap")
    assert rewrap.returncode == 0, rewrap.stderr
    assert json.loads((manifests / old_id / "manifest.json").read_text())["encryption"]["key_version"] == new_version
    status = platform_dr(fleet, "status").stdout
    assert f"local v{version_before}" not in status and f"local v{new_version}: 6" in status

    target = target_cluster.connection("cli_rotated")
    restored = platform_dr(fleet, "restore", SOURCE_DB, "--backup", old_id, "--target-dsn", target.dsn)
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(source_db)


def test_cleanup_removes_a_dead_writers_partial_file_and_nothing_committed(tmp_path, fleet):
    backup_id = platform_dr(fleet, "backup", SOURCE_DB).stdout.strip()
    folder = tmp_path / "stores" / "gcp" / "backups" / SOURCE_DB / backup_id
    committed = sorted(p.name for p in folder.iterdir())
    # What a writer killed mid-write leaves: its pid (a finished process) in the partial's name.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    me = ProcessIdentity.current()
    owner = ProcessIdentity(me.boot, me.pid_namespace, int(gone.stdout), 1).token()
    partial = folder / f".partial-dump.pgdump.zst.{'0' * 32}-{owner}"
    partial.write_bytes(b"half a dump")

    dry = platform_dr(fleet, "cleanup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 1 incomplete upload(s)" in dry.stdout and partial.exists()
    done = platform_dr(fleet, "cleanup")
    assert done.returncode == 0 and "removed incomplete upload" in done.stdout and "its writer is gone" in done.stdout
    assert not partial.exists() and sorted(p.name for p in folder.iterdir()) == committed
    assert "Traceback" not in done.stderr
