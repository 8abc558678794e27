"""The Dagster layer over real PostgreSQL and local stores: assets, checks, jobs, sensor."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from broken import newest_manifest_garbled
from conftest import SOURCE_DB, make_stores
from fleetfiles import write_fleet
from kube import as_in_a_pod
from pg import fingerprint

from platform_orchestration.alerts import FileAlertSink
from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.protection import TARGET_PASSWORD_RULE, FleetProtection
from platform_orchestration.resources import AlertsResource
from platform_orchestration.sensors import report_failed_runs
from platform_orchestration.ops.batches import BATCH_RUN_TAG
from platform_orchestration.ownership import Lease, ProcessIdentity
from platform_orchestration.specs import CLUSTER_RUN_TAG, DATABASE_RUN_TAG
from platform_orchestration.ops.rollout import ROLLOUT_TAG

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as test_instance:
        yield test_instance


def _defs(tmp_path: Path, cluster, **policy) -> dg.Definitions:
    return build_definitions(write_fleet(tmp_path, cluster, SOURCE_DB, **policy))


def _check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def _run_checks_job(defs: dg.Definitions, instance, partition: str):
    """Run the asset checks for one database without backing it up again. (The cheap
    `databases` asset rides along: a checks-only selection gives Dagster no partitions.)"""
    checks_job = dg.define_asset_job(
        "only_checks", selection=dg.AssetSelection.assets("databases") | dg.AssetSelection.all_asset_checks())
    merged = dg.Definitions.merge(defs, dg.Definitions(jobs=[checks_job]))
    return merged.resolve_job_def("only_checks").execute_in_process(
        partition_key=partition, instance=instance, run_config=QUIET, raise_on_error=False)


def _run_checks(defs: dg.Definitions, instance, partition: str) -> dict[str, bool]:
    return _check_results(_run_checks_job(defs, instance, partition))


def test_demo_definitions_load_with_jobs_schedules_sensor_and_lineage():
    defs = build_definitions(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml")
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {"protection_flow", "take_backups", "run_restore_drills", "refresh_compliance",
            "prune_backups", "disaster_restore"} <= {job.name for job in repo.get_all_jobs()}
    assert {s.name for s in repo.schedule_defs} == {"critical_backups_hourly", "standard_backups_daily",
                                                    "restore_drills_daily", "compliance_hourly",
                                                    "prune_backups_nightly", "base_backups_daily",
                                                    "wal_archiving_every_5_minutes", "pitr_drills_daily",
                                                    "kubernetes_drift_every_15_minutes", "physical_copies_every_15_minutes",
                                                    "physical_retention_daily",
                                                    "replication_every_minute", "failover_drills_weekly",
                                                    "replication_compliance_daily"}
    assert sorted(s.name for s in repo.sensor_defs) == ["escalate_failed_drills", "notice_stale_backups",
                                                        "repair_missing_copies", "report_failed_runs",
                                                        "retry_undelivered_alerts"]
    graph = repo.asset_graph
    lineage = [("clusters", "databases"), ("databases", "backups"), ("backups", "backup_copies"),
               ("backup_copies", "restore_drills"), ("restore_drills", "compliance_report")]
    for upstream, downstream in lineage:
        assert dg.AssetKey(upstream) in graph.get(dg.AssetKey(downstream)).parent_keys
    # Retention is a side branch off the copies: nothing downstream waits for pruning.
    assert graph.get(dg.AssetKey("retention")).parent_keys == {dg.AssetKey("backup_copies")}
    assert graph.get(dg.AssetKey("retention")).child_keys == set()
    partitions = graph.get(dg.AssetKey("backups")).partitions_def
    assert partitions.get_partition_keys() == ["orders", "inventory", "customers"]


def test_partitioned_schedule_requests_one_run_per_selected_database():
    defs = build_definitions(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml")
    repository = defs.get_repository_def()
    schedule = repository.get_schedule_def("critical_backups_hourly")
    assert schedule.cron_schedule == "0 * * * *"
    tick = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    requests = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)).run_requests
    assert sorted(r.partition_key for r in requests) == ["customers", "orders"]
    assert len({r.run_key for r in requests}) == 2
    assert all(r.tags[DATABASE_RUN_TAG] == r.partition_key for r in requests)


def test_executor_is_kubernetes_when_configured(monkeypatch):
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    defs = build_definitions(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml")
    job = defs.resolve_job_def("take_backups")
    assert job.executor_def.name == "k8s"


def test_protection_flow_backs_up_copies_drills_and_passes_checks(tmp_path, source_cluster, source_db,
                                                                  instance):
    defs = _defs(tmp_path, source_cluster)
    result = defs.resolve_job_def("protection_flow").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)

    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"clusters", "databases", "backups", "backup_copies", "restore_drills",
                            "compliance_report"}
    assert _check_results(result) == {"backup_within_rpo": True, "copies_in_required_stores": True,
                                      "drill_passed_within_cadence": True, "backups_encrypted": True,
                                      "dynamic_credentials_used": True}
    backup_meta = result.asset_materializations_for_node("backups")[0].metadata
    assert backup_meta["stored_in"].value == "aws, azure, gcp"
    for store in ("aws", "azure", "gcp"):
        assert list((tmp_path / "stores" / store / "backups" / SOURCE_DB).glob("*/manifest.json"))


def test_copy_check_fails_when_a_required_store_lost_its_copy(tmp_path, source_cluster, source_db,
                                                              instance):
    defs = _defs(tmp_path, source_cluster)
    defs.resolve_job_def("protection_flow").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    for manifest in (tmp_path / "stores" / "azure" / "backups" / SOURCE_DB).glob("*/manifest.json"):
        manifest.unlink()

    results = _run_checks(defs, instance, SOURCE_DB)

    assert results["copies_in_required_stores"] is False
    assert results["backup_within_rpo"] is True


def test_rpo_check_fails_once_the_latest_backup_is_older_than_the_rpo(tmp_path, source_cluster,
                                                                     source_db, instance):
    defs = _defs(tmp_path, source_cluster, rpo="1h")
    defs.resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    assert _run_checks(defs, instance, SOURCE_DB)["backup_within_rpo"] is True

    # Two hours pass for the backup (its snapshot times moved back in every store), not for the
    # test: a short RPO and a sleep failed whenever the machine was slow.
    for path in (tmp_path / "stores").rglob("manifest.json"):
        manifest = BackupManifest.from_json(path.read_bytes(), str(path))
        path.write_bytes(manifest.model_copy(update={
            "snapshot_at": manifest.snapshot_at - timedelta(hours=2),
            "snapshot_worker_at": manifest.snapshot_worker_time - timedelta(hours=2)}).to_json())

    assert _run_checks(defs, instance, SOURCE_DB)["backup_within_rpo"] is False


def test_one_check_run_assesses_the_database_once_and_reports_each_finding_on_its_asset(
        tmp_path, source_cluster, source_db, backup, instance, monkeypatch):
    defs = _defs(tmp_path, source_cluster)
    backup(make_stores(tmp_path / "stores"))
    assessed = []
    real_assess = FleetProtection.assess

    def counting_assess(self, database, now=None):
        assessed.append(database)
        return real_assess(self, database, now)

    monkeypatch.setattr(FleetProtection, "assess", counting_assess)

    result = _run_checks_job(defs, instance, SOURCE_DB)

    assert assessed == [SOURCE_DB]
    assert {(e.asset_key.to_user_string(), e.check_name, e.partition)
            for e in result.get_asset_check_evaluations()} == {
        ("backups", "backup_within_rpo", SOURCE_DB), ("backup_copies", "copies_in_required_stores", SOURCE_DB),
        ("restore_drills", "drill_passed_within_cadence", SOURCE_DB), ("backups", "backups_encrypted", SOURCE_DB),
        ("backups", "dynamic_credentials_used", SOURCE_DB)}


def test_drill_and_copies_check_name_a_newer_backup_whose_manifest_is_garbage(tmp_path, source_cluster, source_db,
                                                                             backup, instance):
    defs = _defs(tmp_path, source_cluster)
    stores = make_stores(tmp_path / "stores")
    older, newer = newest_manifest_garbled(lambda: backup(stores).manifest, stores)

    drilled = defs.resolve_job_def("run_restore_drills").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    checks = _run_checks_job(defs, instance, SOURCE_DB)

    drill_meta = drilled.asset_materializations_for_node("restore_drills")[0].metadata
    assert drill_meta["backup_id"].value == older.backup_id
    assert drill_meta["passed_over"].value.startswith(f"backup {newer.backup_id} in store aws: unreadable manifest")
    [copies] = [e for e in checks.get_asset_check_evaluations() if e.check_name == "copies_in_required_stores"]
    assert not copies.passed
    assert copies.metadata["unreadable"].value.startswith(f"backup {newer.backup_id} in stores aws, azure, gcp")


def _restore_config(target_dsn: str, replace: bool = False) -> dict:
    return {**QUIET, "ops": {"restore_from_backup": {"config": {
        "database": SOURCE_DB, "backup_id": "latest", "source_store": "gcp",
        "target_dsn": target_dsn, "replace": replace}}}}


def _failure_text(result) -> str:
    return " ".join(e.step_failure_data.user_failure_data.description or ""
                    for e in result.all_events if e.is_step_failure)


def test_disaster_restore_job_refuses_a_non_empty_target_and_restores_into_an_empty_one(
        tmp_path, source_cluster, source_db, target_cluster, instance):
    defs = _defs(tmp_path, source_cluster)
    defs.resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    job = defs.resolve_job_def("disaster_restore")

    refused = job.execute_in_process(run_config=_restore_config(source_db.dsn), instance=instance,
                                     raise_on_error=False)
    assert not refused.success
    assert "not empty" in _failure_text(refused)

    target = target_cluster.connection("dr_target")
    restored = job.execute_in_process(run_config=_restore_config(target.dsn), instance=instance)
    assert restored.success
    assert fingerprint(target) == fingerprint(source_db)


def test_disaster_restore_job_rejects_a_password_in_run_config(tmp_path, source_cluster, source_db,
                                                               instance):
    defs = _defs(tmp_path, source_cluster)
    secret = "hunter2-not-for-run-config"
    result = defs.resolve_job_def("disaster_restore").execute_in_process(
        run_config=_restore_config(f"host=127.0.0.1 dbname=x user=postgres password={secret}"),
        instance=instance, raise_on_error=False)
    assert not result.success
    assert TARGET_PASSWORD_RULE in _failure_text(result)  # the CLI's rule and words (test_errors.py)
    assert secret not in _failure_text(result)


def test_a_step_meeting_an_operator_error_fails_with_its_one_line(tmp_path, source_cluster, instance):
    """The source server is down: the backup step fails with the same one line the CLI prints,
    as the step's failure description (what the UI and the failure sensor show)."""
    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    fleet.write_text(fleet.read_text().replace(f":{source_cluster.port}/", f":{free_port()}/"))
    result = build_definitions(fleet).resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET, raise_on_error=False)
    assert not result.success
    description = _failure_text(result)
    assert "cannot connect to" in description and "\n" not in description.strip()


def test_failure_sensor_reports_job_step_and_error(tmp_path, source_cluster, source_db, instance):
    defs = _defs(tmp_path, source_cluster)
    defs.resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    failed = defs.resolve_job_def("disaster_restore").execute_in_process(
        run_config=_restore_config(source_db.dsn), instance=instance, raise_on_error=False)
    run = instance.get_run_by_id(failed.run_id)
    failure_event = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="report_failed_runs", dagster_instance=instance, dagster_run=run,
        dagster_event=failure_event).for_run_failure()

    alerts_file = tmp_path / "alerts.jsonl"
    report_failed_runs(context, alerts=AlertsResource(alerts_file=str(alerts_file)))

    [alert] = FileAlertSink(alerts_file).read()
    assert alert.job == "disaster_restore" and alert.run_id == failed.run_id
    assert alert.failed_steps[0]["step"] == "restore_from_backup"
    assert "not empty" in alert.failed_steps[0]["error"]


def test_failed_drill_fails_the_run_and_is_recorded(tmp_path, source_cluster, source_db, instance):
    defs = _defs(tmp_path, source_cluster)
    defs.resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    for dump in (tmp_path / "stores").glob(f"*/backups/{SOURCE_DB}/*/dump.pgdump.zst"):
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))

    result = defs.resolve_job_def("run_restore_drills").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET, raise_on_error=False)

    assert not result.success
    assert "checksum mismatch" in _failure_text(result)
    assert list((tmp_path / "stores" / "aws" / "drills" / SOURCE_DB).glob("*.json"))
    with psycopg.connect(source_db.dsn) as conn:  # the source was never touched
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone()[0] > 0


def test_production_instance_config_keeps_runs_in_postgresql(tmp_path, target_cluster, monkeypatch):
    """deploy/dagster.yaml, as production mounts it, against a real PostgreSQL server."""
    import shutil

    from psycopg import sql

    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("dagster_storage")))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPOSITORY_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    as_in_a_pod(monkeypatch, tmp_path)  # its run launcher loads the in-cluster config
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(target_cluster.port),
                        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
                        "DAGSTER_PG_DB": "dagster_storage"}.items():
        monkeypatch.setenv(name, value)

    with dg.DagsterInstance.from_config(str(home)) as production_instance:
        limits = production_instance.get_concurrency_config().run_queue_config.tag_concurrency_limits
        assert limits[:4] == [
            {"key": DATABASE_RUN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            {"key": BATCH_RUN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            {"key": CLUSTER_RUN_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
            {"key": ROLLOUT_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]
        assert limits[4:] and all(limit["key"].startswith("platform/egress-") for limit in limits[4:])  # one per cloud link

        @dg.op
        def noop() -> None: ...

        @dg.job
        def smoke() -> None:
            noop()

        result = smoke.execute_in_process(instance=production_instance)
        assert production_instance.get_run_by_id(result.run_id).is_success
    with psycopg.connect(target_cluster.connection("dagster_storage").dsn) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_database_password_never_reaches_events_metadata_or_logs(tmp_path, source_cluster, source_db,
                                                                 instance, monkeypatch, capfd):
    """The tests' servers trust local connections, so the password is sent but not needed:
    what matters here is every place it could leak to."""
    secret = "s3cr3t-Pa55-7f1d2c"
    monkeypatch.setenv("SHOP_PGPASSWORD", secret)
    defs = build_definitions(write_fleet(tmp_path, source_cluster, SOURCE_DB, password_env="SHOP_PGPASSWORD"))

    result = defs.resolve_job_def("protection_flow").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)

    assert result.success
    recorded = [dg.serialize_value(entry) for entry in instance.all_logs(result.run_id)]
    recorded.append(dg.serialize_value(instance.get_run_by_id(result.run_id)))
    captured = capfd.readouterr()
    evidence = "".join(path.read_text(errors="replace")
                       for path in (tmp_path / "stores").rglob("*.json"))
    for where, text in {"event log": "".join(recorded), "stdout": captured.out,
                        "stderr": captured.err, "stored manifests and evidence": evidence}.items():
        assert secret not in text, f"the database password leaked into the {where}"


def test_prune_schedule_requests_one_nightly_run_per_database():
    defs = build_definitions(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml")
    repository = defs.get_repository_def()
    schedule = repository.get_schedule_def("prune_backups_nightly")
    assert schedule.job_name == "prune_backups"
    tick = datetime(2026, 11, 25, 2, 45, tzinfo=timezone.utc)
    requests = schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)).run_requests
    assert sorted(r.partition_key for r in requests) == ["customers", "inventory", "orders"]
    assert all(r.tags[DATABASE_RUN_TAG] == r.partition_key for r in requests)


def test_the_production_run_queue_runs_one_run_per_database_at_a_time():
    """deploy/dagster.yaml's run queue, asked by Dagster's own queued-run daemon which runs it
    may launch (its private `_get_runs_to_dequeue`: the decision without a launcher), over
    runs tagged exactly as the schedules tag them."""
    import yaml
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._core.test_utils import create_run_for_test
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    production = yaml.safe_load((REPOSITORY_ROOT / "deploy" / "dagster.yaml").read_text())
    repository = build_definitions(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml").get_repository_def()
    tick = datetime(2026, 11, 25, 2, 45, tzinfo=timezone.utc)

    def requests(schedule: str) -> list[dg.RunRequest]:
        context = dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)
        return repository.get_schedule_def(schedule).evaluate_tick(context).run_requests

    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("platform_orchestration"), "__repository__")
    with dg.instance_for_test(overrides={"concurrency": production["concurrency"],
                                         "telemetry": {"enabled": False}}) as instance:
        def run(job: str, request: dg.RunRequest, status: dg.DagsterRunStatus) -> None:
            create_run_for_test(instance, job_name=job, status=status, tags=request.tags,
                                remote_job_origin=origin.get_job_origin(job))

        for request in requests("critical_backups_hourly"):  # orders and customers: in progress
            run("take_backups", request, dg.DagsterRunStatus.STARTED)
        for request in requests("prune_backups_nightly"):  # every database: queued
            run("prune_backups", request, dg.DagsterRunStatus.QUEUED)
        launchable = QueuedRunCoordinatorDaemon(interval_seconds=1)._get_runs_to_dequeue(
            instance, instance.get_concurrency_config(), None)

    assert [r.tags[DATABASE_RUN_TAG] for r in launchable] == ["inventory"]


def test_prune_backups_job_materializes_retention_for_a_partition(tmp_path, source_cluster, source_db,
                                                                  backup, instance):
    from conftest import make_stores

    defs = _defs(tmp_path, source_cluster)  # retention keep_last: 3
    ids = [backup(make_stores(tmp_path / "stores")).manifest.backup_id for _ in range(4)]
    # What a restore killed on this worker left: its work directory, leased by a finished process.
    me = ProcessIdentity.current()
    work = tmp_path / "restore-killed"
    Lease(kind="work-directory", owner=ProcessIdentity(me.boot, me.pid_namespace, me.pid, me.started + 1),
          paths=[str(work)], created=True)._write()
    work.mkdir()
    (work / "dump.pgdump").write_bytes(b"x" * 4096)

    result = defs.resolve_job_def("prune_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)

    assert result.success
    [materialization] = result.asset_materializations_for_node("retention")
    assert materialization.partition == SOURCE_DB
    metadata = materialization.metadata
    assert (metadata["deleted_count"].value, metadata["kept_count"].value,
            metadata["locked_count"].value, metadata["leftovers_removed"].value) == (3, 9, 0, 0)
    assert metadata["abandoned_bytes_removed"].value == 4096 and not work.exists()
    assert instance.get_run_by_id(result.run_id).tags[DATABASE_RUN_TAG] == SOURCE_DB
    for store in ("aws", "azure", "gcp"):
        remaining = {p.parent.name for p in (tmp_path / "stores" / store / "backups" / SOURCE_DB).glob("*/manifest.json")}
        assert remaining == set(ids[1:])


def test_rewrap_job_moves_every_manifest_to_the_newest_key_version(tmp_path, source_cluster, source_db,
                                                                   instance, local_key_file):
    from platform_orchestration.crypto.local_keys import LocalDataKeyProvider

    defs = _defs(tmp_path, source_cluster)
    defs.resolve_job_def("take_backups").execute_in_process(
        partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
    dumps_before = {p: p.read_bytes() for p in (tmp_path / "stores").rglob("dump.pgdump.zst")}
    newest = LocalDataKeyProvider(local_key_file).rotate()

    result = defs.resolve_job_def("rewrap_backup_keys").execute_in_process(instance=instance, run_config=QUIET)

    assert result.success
    manifests = list((tmp_path / "stores").rglob("manifest.json"))
    assert len(manifests) == 3
    for manifest in manifests:
        assert f'"key_version": {newest}' in manifest.read_text()
    assert {p: p.read_bytes() for p in dumps_before} == dumps_before


def test_a_batched_run_backs_up_each_database_as_its_own_steps_partition_and_failure(
        tmp_path, source_cluster, source_db, instance, monkeypatch):
    """A schedule selecting more databases than its batch_size: one run per batch, in which the
    reachable database is backed up, copied and checked on its own partition while the
    unreachable one fails only its own steps."""
    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    ghost = f"    dsn: postgresql://postgres@127.0.0.1:{free_port()}/ghost\n"
    extra = "".join(f"  - name: {name}\n    cluster: test-pg\n{ghost}    policy: critical\n"
                    for name in ("ghost_a", "ghost_b"))
    fleet.write_text(fleet.read_text().replace("policies:", extra + "policies:", 1))
    schedules = tmp_path / "schedules"
    schedules.mkdir()
    (schedules / "s.yaml").write_text("schedules:\n  - name: hourly\n    job: take_backups\n"
                                      "    cron: \"0 * * * *\"\n    batch_size: 2\n")
    monkeypatch.setenv("PLATFORM_SCHEDULES_DIR", str(schedules))
    defs = build_definitions(fleet)
    repository = defs.get_repository_def()
    schedule = repository.get_schedule_def("hourly")
    assert schedule.job_name == "take_backups_batched"
    tick = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    requests = schedule.evaluate_tick(
        dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)).run_requests
    assert [r.tags[BATCH_RUN_TAG] for r in requests] == [f"{SOURCE_DB}..ghost_a", "ghost_b..ghost_b"]
    first = requests[0]
    assert first.run_config["ops"]["batch"]["config"]["databases"] == [SOURCE_DB, "ghost_a"]

    result = repository.get_job("take_backups_batched").execute_in_process(
        run_config={**first.run_config, **QUIET}, instance=instance, tags=first.tags, raise_on_error=False)
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE}
    assert failed == {"batch_databases[ghost_a]"}
    succeeded = {e.step_key for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_SUCCESS}
    assert {f"batch_databases[{SOURCE_DB}]", f"batch_backups[{SOURCE_DB}]", f"batch_backup_copies[{SOURCE_DB}]",
            f"take_backups_batched_checks[{SOURCE_DB}]"} <= succeeded
    assert not any("ghost_a" in key for key in succeeded)
    # Recorded on the real assets' partitions, as a per-database run would record them.
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}
    assert materialized == {("databases", SOURCE_DB), ("backups", SOURCE_DB), ("backup_copies", SOURCE_DB)}
    assert instance.get_materialized_partitions(dg.AssetKey("backups")) == {SOURCE_DB}
    checks = {(e.check_name, e.partition, e.passed) for e in result.get_asset_check_evaluations()}
    assert checks == {("backup_within_rpo", SOURCE_DB, True), ("backups_encrypted", SOURCE_DB, True),
                      ("dynamic_credentials_used", SOURCE_DB, True),
                      ("copies_in_required_stores", SOURCE_DB, True)}
