"""The physical Dagster layer over a real PostgreSQL 16 archiving into moto: one partition per
physical cluster, the base-backup job with its metadata, the four checks, and the schedules
derived from the policy (a cron slower than the policy allows is refused)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest
from physical_support import archived_cluster
from test_cli_physical import SECRET, physical_fleet

from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions
from platform_orchestration.specs import CLUSTER_RUN_TAG, ScheduleSpec, SpecError, build_schedules

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _physical_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_S3_KEY_ID", "testing")
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    # The physical schedules only: the logical ones name the demo's policies.
    schedules_dir = tmp_path / "schedules"
    schedules_dir.mkdir()
    shutil.copy(REPOSITORY_ROOT / "schedules" / "physical.yaml", schedules_dir)
    monkeypatch.setenv("PLATFORM_SCHEDULES_DIR", str(schedules_dir))


def test_base_backup_job_runs_per_cluster_with_lsns_in_metadata_and_checks(s3_backend, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _physical_only(tmp_path, monkeypatch)
    with archived_cluster(s3_backend, 16) as archived, dg.instance_for_test() as instance:
        fleet = physical_fleet(tmp_path, archived.spec.bucket, s3_backend.endpoint, archived.cluster.port)
        defs = build_definitions(fleet)
        job = defs.resolve_job_def("take_base_backups")
        assert job.partitions_def.get_partition_keys() == ["pg-a"]
        result = job.execute_in_process(partition_key="pg-a", instance=instance, run_config=QUIET,
                                        raise_on_error=False)
        assert result.success
        assert result.dagster_run.tags[CLUSTER_RUN_TAG] == "pg-a"
        [backup] = [m for m in result.asset_materializations_for_node("physical_base_backups")]
        metadata = {k: v.value for k, v in backup.metadata.items()}
        assert metadata["begin_lsn"].startswith("0/") and metadata["end_wal"] >= metadata["begin_wal"]
        assert metadata["cluster_bytes"] > metadata["stored_bytes"] > 0 and metadata["throughput_mib_s"] > 0
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        # No drill yet and a repository minutes old: those two fail, honestly; so does encryption
        # at rest (the fleet asks its S3 store for no server-side encryption, and moto adds none).
        assert checks == {"wal_archive_within_lag": True, "base_backup_within_cadence": True,
                          "pitr_window_covered": False, "backups_encrypted": False}
        assert SECRET not in str(result.all_events)

        repository = defs.get_repository_def()
        context = dg.build_schedule_context(scheduled_execution_time=datetime.now(timezone.utc),
                                            repository_def=repository)
        requests = repository.get_schedule_def("base_backups_daily").evaluate_tick(context).run_requests
        assert [r.partition_key for r in requests] == ["pg-a"]
        requests = repository.get_schedule_def("physical_copies_every_15_minutes").evaluate_tick(context).run_requests
        assert [r.partition_key for r in requests] == ["pg-a"]

        # The copy job: this policy's only other store is a local one, which cannot hold a copy.
        copies = defs.resolve_job_def("copy_physical_repositories").execute_in_process(
            partition_key="pg-a", instance=instance, run_config=QUIET, raise_on_error=False)
        assert copies.success
        [evaluation] = copies.get_asset_check_evaluations()
        assert evaluation.check_name == "physical_copies_within_lag" and evaluation.passed
        assert "not a copy target (barman-cloud reads object stores only): evidence" in evaluation.description

        # A schedule slower than the clusters' policy asks for does not load.
        slow = ScheduleSpec(name="weekly", job="take_base_backups", cron="0 0 * * 0")
        with pytest.raises(SpecError, match="fires as seldom as every 1w, but cluster 'pg-a' has "
                                            "physical.base_backup 1d"):
            build_schedules([slow], list(defs.jobs), defs.resources["fleet"].load(), set(),
                            cluster_partitioned_jobs={"take_base_backups"},
                            cluster_job_cadences={"take_base_backups": "base_backup"})
        hourly = ScheduleSpec(name="two_hourly", job="copy_physical_repositories", cron="0 */2 * * *")
        with pytest.raises(SpecError, match="fires as seldom as every 2h, but cluster 'pg-a' has "
                                            "physical.copy_max_lag 1h"):
            build_schedules([hourly], list(defs.jobs), defs.resources["fleet"].load(), set(),
                            cluster_partitioned_jobs={"copy_physical_repositories"},
                            cluster_job_cadences={"copy_physical_repositories": "copy_max_lag"})


def _failure(result: dg.ExecuteInProcessResult) -> str:
    return " ".join(e.step_failure_data.user_failure_data.description or ""
                    for e in result.all_events if e.is_step_failure)


def test_the_restore_pitr_job_refuses_what_the_cli_refuses_and_restores_to_an_lsn(
        s3_backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Launchpad's point-in-time restore runs FleetProtection.restore_pitr as the CLI does:
    the same refusals in the same words, then a new cluster with exactly the rows at the LSN."""
    import psycopg

    from platform_orchestration.physical.archiving import switch_and_wait_archived
    from platform_orchestration.physical.base_backup import take_base_backup
    from platform_orchestration.physical.pitr import _server_install
    from platform_orchestration.postgres.cluster import LocalCluster

    _physical_only(tmp_path, monkeypatch)
    with archived_cluster(s3_backend, 16) as archived, dg.instance_for_test() as instance:
        connection = archived.cluster.connection()
        take_base_backup(archived.tools, archived.repository, connection)
        with psycopg.connect(connection.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE job_probe AS SELECT 1 AS id")
            (lsn,) = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            conn.execute("INSERT INTO job_probe VALUES (2)")
        switch_and_wait_archived(connection, archived.store, archived.repository)
        job = build_definitions(physical_fleet(tmp_path, archived.spec.bucket, s3_backend.endpoint,
                                               archived.cluster.port)).resolve_job_def("restore_pitr")

        def launch(**config: object) -> dg.ExecuteInProcessResult:
            config = {"cluster": "pg-a", "target_dir": str(tmp_path / "restored"), **config}
            return job.execute_in_process(run_config={**QUIET, "ops": {"restore_to_point_in_time": {
                "config": config}}}, instance=instance, raise_on_error=False)

        assert "expected latest, an LSN like 0/3000060, or an ISO time" in _failure(launch(to="yesterday"))
        occupied = tmp_path / "occupied"
        occupied.mkdir()
        (occupied / "PG_VERSION").write_text("16\n")
        assert "is not empty: a point-in-time restore never writes over" in _failure(
            launch(to="latest", target_dir=str(occupied)))
        assert f"port {archived.cluster.port} is in use" in _failure(launch(to="latest", port=archived.cluster.port))
        in_memory = Path("/dev/shm") / f"pitr-{tmp_path.name}"
        with monkeypatch.context() as pod:
            pod.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            assert "is on a memory-backed tmpfs at /dev/shm, which Kubernetes deletes with this pod" in _failure(
                launch(to="latest", target_dir=str(in_memory)))
        assert not in_memory.exists()
        assert not (tmp_path / "restored").exists()

        restored = launch(to=lsn)
        assert restored.success, _failure(restored)
        summary = restored.output_for_node("restore_to_point_in_time")
        [materialized] = [e for e in restored.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = {k: v.value for k, v in materialized.event_specific_data.metadata.items()}
        try:
            assert metadata["rto_seconds"] >= metadata["restore_seconds"] > 0 and metadata["target"] == f"LSN {lsn}"
            with psycopg.connect(f"host=127.0.0.1 port={summary['port']} user=postgres", autocommit=True) as conn:
                assert conn.execute("SELECT id FROM job_probe").fetchall() == [(1,)]
        finally:
            kept = LocalCluster(Path(summary["data_dir"]).parent, summary["port"], _server_install(16))
            kept.stop()
            shutil.rmtree(kept.base_dir)
        assert SECRET not in str(restored.all_events)
