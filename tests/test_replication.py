"""Standby clusters on real servers: a PostgreSQL 16 and an 18 primary (as nobody), each with a
standby seeded by pg_basebackup through a slot with a password-protected replication login, that
streams under a write load; lag, a stopped standby and slot bloat seen on both sides and failing
their checks; a failover drill that passes and one whose marker never reached the standby; the
Dagster jobs and checks, the CLI, and last the runbook's promotion with pg_rewind of the old
primary. Servers are shared per module; nothing waits a fixed time (polls with deadlines)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from datetime import datetime, timezone
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from replication_support import (
    PRIMARY,
    REPLICATION_PASSWORD,
    STANDBY,
    ReplicaPair,
    execute,
    replica_pair,
    wait_for,
)

from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions
from platform_orchestration.kube.pod_storage import EphemeralTarget
from platform_orchestration.replication.drill import failover_drills_prefix
from platform_orchestration.replication.server import ReplicationRefused
from platform_orchestration.specs import CLUSTER_RUN_TAG

pytestmark = pytest.mark.slow
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _pair(major: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    with replica_pair(major, tmp_path_factory.mktemp(f"replica{major}")) as pair:
        pair.protection.seed_standby(STANDBY)
        yield pair


@pytest.fixture(scope="module")
def pair16(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    yield from _pair(16, tmp_path_factory)


@pytest.fixture(scope="module")
def pair18(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaPair]:
    yield from _pair(18, tmp_path_factory)


def _caught_up(pair: ReplicaPair) -> bool:
    status = pair.protection.replication_status(STANDBY)
    return status.streaming and status.lag_bytes == 0


def _problems(pair: ReplicaPair) -> dict[str, list[str]]:
    return pair.protection.replication_status(STANDBY).problems(pair.protection.replication_objectives(STANDBY))


@pytest.mark.parametrize("major", [16, 18], ids=lambda m: f"pg{m}")
def test_a_seeded_standby_streams_through_its_slot_under_a_write_load(major: int, request: pytest.FixtureRequest) -> None:
    pair: ReplicaPair = request.getfixturevalue(f"pair{major}")
    primary_dsn, standby_dsn = pair.primary.connection().dsn, pair.standby.connection().dsn
    stop = threading.Event()

    def write() -> None:
        while not stop.is_set():
            execute(primary_dsn, "INSERT INTO probe (payload) SELECT repeat('x', 200) FROM generate_series(1, 200)")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # Seen streaming from both sides while the primary keeps writing.
        status = wait_for(lambda: (s := pair.protection.replication_status(STANDBY)).streaming and s.state == "streaming"
                          and s.slot_active and s.replay_lsn and s, what="streaming under load")
        assert status.in_recovery and status.standby_version.startswith(str(major))
    finally:
        stop.set()
        writer.join()
    wait_for(lambda: _caught_up(pair), what="the standby catching up")
    [(primary_rows,)] = execute(primary_dsn, "SELECT count(*) FROM probe")
    [(standby_rows,)] = execute(standby_dsn, "SELECT count(*) FROM probe")
    assert standby_rows == primary_rows > 0
    assert _problems(pair) == {"replication_within_lag": [], "standby_streaming": [], "slot_wal_within_limit": []}
    # The replication password authenticated the stream (the primary asks replicator for it), and
    # is only in a password file the server's user alone can read, never in a setting.
    [(conninfo, slot)] = execute(standby_dsn, "SELECT current_setting('primary_conninfo'), "
                                             "current_setting('primary_slot_name')")
    assert slot == "pg_standby" and "application_name=pg-standby" in conninfo and REPLICATION_PASSWORD not in conninfo
    passfile = Path(conninfo.split("passfile=")[1].split()[0])
    mode = passfile.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and REPLICATION_PASSWORD in passfile.read_text()
    if os.geteuid() == 0:
        assert mode.st_uid == pair.standby.data_dir.stat().st_uid != 0
    assert passfile.parent != pair.standby.data_dir and pair.standby.data_dir not in passfile.parents
    for path in pair.standby.data_dir.rglob("*.conf"):
        assert REPLICATION_PASSWORD not in path.read_text(errors="replace"), path
    [(auth,)] = execute(primary_dsn, "SELECT count(*) FROM pg_stat_replication WHERE usename = 'replicator'")
    assert auth == 1


def test_a_second_seed_never_writes_over_the_standby(pair16: ReplicaPair) -> None:
    with pytest.raises(ReplicationRefused, match="is not empty: a seed never writes over an existing data directory"):
        pair16.protection.seed_standby(STANDBY)
    assert pair16.protection.replication_status(STANDBY).streaming


def test_a_seed_onto_storage_deleted_with_the_pod_is_refused_before_it_starts(
        pair16: ReplicaPair, monkeypatch: pytest.MonkeyPatch) -> None:
    in_memory = Path("/dev/shm") / f"standby-{os.getpid()}"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    with pytest.raises(EphemeralTarget, match=f"seeding standby {STANDBY}: target directory {in_memory} is on a "
                                              "memory-backed tmpfs at /dev/shm, which Kubernetes deletes"):
        pair16.protection.seed_standby(STANDBY, directory=in_memory)
    assert not in_memory.exists()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert pair16.protection.replication_status(STANDBY).streaming


def test_a_stopped_standby_shows_lag_not_streaming_and_slot_bloat(pair16: ReplicaPair) -> None:
    pair16.standby.stop()
    try:
        # About 3 MiB of WAL the slot must keep for the standby (max_slot_wal 1MiB).
        execute(pair16.primary.connection().dsn,
                "INSERT INTO probe (payload) SELECT repeat('y', 300) FROM generate_series(1, 8000)")
        assessment = pair16.protection.assess_standby(STANDBY)
        by_check = {f.check: f for f in assessment.findings}
        assert not by_check["replication_within_lag"].passed
        assert "exceeds max_lag_bytes 512KiB" in by_check["replication_within_lag"].detail
        assert not by_check["standby_streaming"].passed
        assert "the standby could not be observed" in by_check["standby_streaming"].detail
        assert not by_check["slot_wal_within_limit"].passed
        assert "than max_slot_wal 1MiB" in by_check["slot_wal_within_limit"].detail
        status = pair16.protection.replication_status(STANDBY)
        assert status.slot_exists and not status.slot_active and status.slot_kept_bytes > 2**20
    finally:
        pair16.standby.start()
    wait_for(lambda: _caught_up(pair16), what="the restarted standby catching up")
    assert _problems(pair16) == {"replication_within_lag": [], "standby_streaming": [], "slot_wal_within_limit": []}


def test_a_failover_drill_fails_when_the_marker_never_reached_the_standby(pair16: ReplicaPair) -> None:
    standby_dsn = pair16.standby.connection().dsn
    [(conninfo,)] = execute(standby_dsn, "SELECT current_setting('primary_conninfo')")
    # A network partition: the standby's walreceiver can no longer reach the primary (and retries
    # every 100ms instead of 5s, so that the test need not wait for it to come back).
    execute(standby_dsn, "ALTER SYSTEM SET wal_retrieve_retry_interval = '100ms'",
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=replicator'", "SELECT pg_reload_conf()")
    try:
        wait_for(lambda: not pair16.protection.replication_status(STANDBY).streaming, what="streaming to stop")
        record = pair16.protection.failover_drill(STANDBY)
    finally:
        execute(standby_dsn, f"ALTER SYSTEM SET primary_conninfo = '{conninfo}'", "SELECT pg_reload_conf()")
    assert not record.passed and record.marker_on_copy is False and record.marker_replayed is False
    assert "is not on the promoted copy of pg-standby" in record.failure
    assert record.rto_seconds is not None and record.rpo_seconds >= 2
    wait_for(lambda: _caught_up(pair16), what="streaming again")
    [drill] = [f for f in pair16.protection.assess_standby(STANDBY).findings
               if f.check == "failover_drill_passed_within_cadence"]
    assert not drill.passed and "failed" in drill.detail


def test_a_failover_drill_run_by_dagster_passes_and_is_evidence_in_every_store(
        pair16: ReplicaPair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Dagster jobs per standby, their checks and lineage; the passing drill is the job's."""
    schedules_dir = tmp_path / "schedules"
    schedules_dir.mkdir()
    (schedules_dir / "replication.yaml").write_text((REPOSITORY_ROOT / "schedules" / "replication.yaml").read_text())
    monkeypatch.setenv("PLATFORM_SCHEDULES_DIR", str(schedules_dir))
    defs = build_definitions(pair16.fleet_file)
    with dg.instance_for_test() as instance:
        observe = defs.resolve_job_def("observe_replication")
        assert observe.partitions_def.get_partition_keys() == [STANDBY]
        result = observe.execute_in_process(partition_key=STANDBY, instance=instance, run_config=QUIET)
        assert result.success and result.dagster_run.tags[CLUSTER_RUN_TAG] == STANDBY
        [lag] = result.asset_materializations_for_node("replication_lag")
        assert lag.metadata["state"].value == "streaming" and lag.metadata["slot_active"].value is True
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"replication_within_lag": True, "standby_streaming": True, "slot_wal_within_limit": True}

        drills = defs.resolve_job_def("run_failover_drills").execute_in_process(
            partition_key=STANDBY, instance=instance, run_config=QUIET)
        assert drills.success
        [drill] = drills.asset_materializations_for_node("failover_drills")
        assert drill.metadata["passed"].value is True and drill.metadata["rto_seconds"].value > 0
        assert {e.check_name: e.passed for e in drills.get_asset_check_evaluations()} == {
            "failover_drill_passed_within_cadence": True}
        records, unreadable = pair16.protection.failover_drills(STANDBY)
        record = records[-1]
        assert record.drill_id == drill.metadata["drill_id"].value and not unreadable
        assert record.passed and record.marker_on_copy and record.marker_replayed and record.promoted_timeline == 2
        assert 0 < record.rto_seconds < record.rto_target_seconds == 60
        assert 0 <= record.rpo_seconds <= record.rpo_target_seconds == 2
        for name in ("aws", "azure"):
            keys = [info.key for info in pair16.protection.store(name).list(failover_drills_prefix(STANDBY))]
            assert record.key in keys
        # Production untouched: the standby still streams, in recovery.
        status = pair16.protection.replication_status(STANDBY)
        assert status.streaming and status.in_recovery

        compliance = defs.resolve_job_def("record_replication_compliance").execute_in_process(
            instance=instance, run_config=QUIET)
        [evidence] = compliance.asset_materializations_for_node("replication_compliance")
        key = evidence.metadata["evidence_key"].value
        document = json.loads(b"".join(pair16.protection.store("azure").read(key)))
        assert document["compliant"] == 1 and document["standbys"][0]["standby"] == STANDBY
        assert REPLICATION_PASSWORD not in str(result.all_events) + str(drills.all_events)

        repository = defs.get_repository_def()
        context = dg.build_schedule_context(repository_def=repository,
                                            scheduled_execution_time=datetime.now(timezone.utc))
        requests = repository.get_schedule_def("failover_drills_weekly").evaluate_tick(context).run_requests
        assert [r.partition_key for r in requests] == [STANDBY]

    # Lineage: primary cluster -> standby -> replication lag -> failover drill -> compliance.
    graph = defs.resolve_asset_graph()
    def parents(name: str) -> set[str]:
        return {key.to_user_string() for key in graph.get(dg.AssetKey(name)).parent_keys}
    assert parents("standby_clusters") == {"clusters"}
    assert parents("replication_lag") == {"standby_clusters"}
    assert parents("failover_drills") == {"replication_lag"}
    assert parents("replication_compliance") == {"failover_drills"}


def _cli(pair: ReplicaPair, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(pair.fleet_file), *args],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))


def test_the_cli_reports_status_and_refuses_an_unconfirmed_or_unsafe_promotion(pair16: ReplicaPair) -> None:
    status = _cli(pair16, "replication-status", "--json")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["state"] == "streaming" and row["problems"]["standby_streaming"] == []
    unconfirmed = _cli(pair16, "promote-standby", STANDBY, "--confirm", "pg-standy")
    assert unconfirmed.returncode == 2
    assert "not confirmed: type the standby's name (pg-standby) as the confirmation" in unconfirmed.stderr
    live = _cli(pair16, "promote-standby", STANDBY, "--confirm", STANDBY)
    assert live.returncode == 2 and "still accepts writes" in live.stderr and "stop (fence) it first" in live.stderr
    assert pair16.protection.replication_status(STANDBY).in_recovery  # nothing happened


def test_promotion_then_the_old_primary_is_rewound_into_a_standby_of_the_new_one(pair16: ReplicaPair) -> None:
    """Last in the module: it turns the pair around."""
    old_primary = pair16.primary
    execute(old_primary.connection().dsn, "INSERT INTO probe (payload) VALUES ('before the failover')")
    wait_for(lambda: _caught_up(pair16), what="the standby catching up")
    old_primary.stop()  # fenced
    promoted = _cli(pair16, "promote-standby", STANDBY, "--confirm", STANDBY,
                    "--repoint-old-primary", str(old_primary.base_dir))
    assert promoted.returncode == 0, promoted.stderr
    assert "promoted pg-standby: timeline 2" in promoted.stdout
    assert "re-pointed pg-primary as a standby of pg-standby by rewind (wal_log_hints is on)" in promoted.stdout
    new_primary = pair16.standby.connection().dsn
    [(in_recovery,)] = execute(new_primary, "SELECT pg_is_in_recovery()")
    assert in_recovery is False
    execute(new_primary, "INSERT INTO probe (payload) VALUES ('after the failover')")
    [(lsn,)] = execute(new_primary, "SELECT pg_current_wal_lsn()::text")
    old_dsn = old_primary.connection().dsn
    wait_for(lambda: execute(old_dsn, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", params=(lsn,))[0][0],
             what="the old primary replaying the new primary's write")
    [(rows,)] = execute(old_dsn, "SELECT count(*) FROM probe WHERE payload LIKE '% the failover'")
    assert rows == 2
    [(state,)] = execute(new_primary, "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                         params=(PRIMARY,))
    assert state == "streaming"
