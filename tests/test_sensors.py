"""The acting sensors and the failure notifier, each evaluated with `dg.build_sensor_context`
against a real (temporary) Dagster instance, real local stores and the real PostgreSQL cluster;
the runs they request are executed for real, and alerts reach a real Alertmanager (Debian's,
on loopback) or a real HTTP server standing for a Slack-compatible webhook."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from monitoring import WebhookServer, alertmanager, alerts_in

from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.definitions import build_definitions
from platform_orchestration.errors import PlatformError
from platform_orchestration.resources import AlertsResource
from platform_orchestration.sensors import ALERT_PENDING_TAG, ALERT_SENT_TAG, report_failed_runs, retry_undelivered_alerts
from platform_orchestration.sensors.remedies import handled_keys

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as test_instance:
        yield test_instance


@pytest.fixture(scope="module")
def alertmanager_url(tmp_path_factory):
    with alertmanager(tmp_path_factory.mktemp("alertmanager")) as url:
        yield url


@pytest.fixture
def webhook(monkeypatch):
    server = WebhookServer()
    monkeypatch.setenv("TEST_ALERT_WEBHOOK_URL", server.url)
    yield server
    server.close()


def _defs(tmp_path: Path, cluster, monkeypatch, *, alertmanager_url: str = "", webhook: bool = False,
          **policy) -> dg.Definitions:
    monkeypatch.setenv("PLATFORM_ALERTMANAGER_URL", alertmanager_url)
    monkeypatch.setenv("PLATFORM_ALERT_WEBHOOK", "env:TEST_ALERT_WEBHOOK_URL" if webhook else "")
    monkeypatch.setenv("PLATFORM_ALERTS_FILE", str(tmp_path / "alerts.jsonl"))
    return build_definitions(write_fleet(tmp_path, cluster, SOURCE_DB, **policy))


def _tick(defs: dg.Definitions, name: str, instance, cursor: str | None = None):
    repository = defs.get_repository_def()
    with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=repository,
                                 resources=defs.resources) as context:
        return repository.get_sensor_def(name).evaluate_tick(context)


def _execute(defs: dg.Definitions, instance, request: dg.RunRequest):
    """Run what the sensor asked for, as the daemon would: its job, partition, config and tags."""
    return defs.resolve_job_def(request.job_name).execute_in_process(
        partition_key=request.partition_key, run_config={**QUIET, **request.run_config}, instance=instance,
        tags=request.tags, raise_on_error=False)


def _run(defs: dg.Definitions, instance, job: str, **kwargs):
    return defs.resolve_job_def(job).execute_in_process(partition_key=SOURCE_DB, instance=instance,
                                                         run_config={**QUIET, **kwargs}, raise_on_error=False)


def _manifests(tmp_path: Path, store: str) -> list[Path]:
    return list((tmp_path / "stores" / store / "backups" / SOURCE_DB).glob("*/manifest.json"))


def _corrupt_dump(tmp_path: Path, store: str) -> None:
    for dump in (tmp_path / "stores" / store / "backups" / SOURCE_DB).glob("*/dump.pgdump.zst"):
        data = bytearray(dump.read_bytes())
        data[len(data) // 2] ^= 0xFF
        dump.write_bytes(bytes(data))


def test_lost_copy_requests_one_copy_run_and_the_run_repairs_it(tmp_path, source_cluster, source_db, instance,
                                                               monkeypatch):
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    assert _run(defs, instance, "take_backups").success
    first = _tick(defs, "repair_missing_copies", instance)
    assert first.run_requests == [] and first.skip_message

    for manifest in _manifests(tmp_path, "azure"):
        manifest.unlink()
    tick = _tick(defs, "repair_missing_copies", instance, first.cursor)
    [request] = tick.run_requests
    assert (request.job_name, request.partition_key) == ("repair_copies", SOURCE_DB)
    assert request.run_key.startswith(f"copy:{SOURCE_DB}:") and request.run_key.endswith(":azure")
    # The next tick, before the copy ran, asks for nothing more: the key is in the cursor.
    again = _tick(defs, "repair_missing_copies", instance, tick.cursor)
    assert again.run_requests == []
    assert request.run_key in handled_keys(again.cursor)

    assert _execute(defs, instance, request).success
    assert _manifests(tmp_path, "azure")
    assert _tick(defs, "repair_missing_copies", instance, again.cursor).run_requests == []


def test_a_cursor_lost_or_reset_still_never_requests_a_run_twice(tmp_path, source_cluster, source_db, instance,
                                                                monkeypatch):
    """Without its cursor the sensor asks again, with the same run key, which Dagster's sensor
    daemon skips (instance-wide run keys per sensor): one run per piece of evidence."""
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    assert _run(defs, instance, "take_backups").success
    for manifest in _manifests(tmp_path, "gcp"):
        manifest.unlink()
    keys = {_tick(defs, "repair_missing_copies", instance, cursor).run_requests[0].run_key
            for cursor in (None, "not json", '{"handled": []}')}
    assert len(keys) == 1


@pytest.mark.slow
def test_failed_drill_is_drilled_from_another_store_then_rebacked_up_and_paged(
        tmp_path, source_cluster, source_db, instance, monkeypatch, alertmanager_url):
    defs = _defs(tmp_path, source_cluster, monkeypatch, alertmanager_url=alertmanager_url)
    assert _run(defs, instance, "take_backups").success
    _corrupt_dump(tmp_path, "aws")
    _corrupt_dump(tmp_path, "azure")
    assert not _run(defs, instance, "run_restore_drills").success  # rotation starts at aws

    first = _tick(defs, "escalate_failed_drills", instance)
    [retry] = first.run_requests
    assert (retry.job_name, retry.run_config["ops"]["restore_drills"]["config"]) == (
        "run_restore_drills", {"source_store": "azure"})
    assert _tick(defs, "escalate_failed_drills", instance, first.cursor).run_requests == []
    assert not _execute(defs, instance, retry).success  # azure's copy is broken too

    second = _tick(defs, "escalate_failed_drills", instance, first.cursor)
    [fresh] = second.run_requests
    assert (fresh.job_name, fresh.partition_key) == ("backup_and_drill", SOURCE_DB)
    [page] = [a for a in alerts_in(alertmanager_url) if a["labels"].get("database") == SOURCE_DB
              and a["labels"]["alertname"] == "PlatformDRDrillFailing"]
    assert page["labels"]["severity"] == "page"
    assert "2 drills of shop failed in a row" in page["annotations"]["summary"]

    third = _tick(defs, "escalate_failed_drills", instance, second.cursor)
    assert third.run_requests == []
    assert len([a for a in alerts_in(alertmanager_url) if a["labels"]["key"] == page["labels"]["key"]]) == 1

    assert _execute(defs, instance, fresh).success  # a new backup, drilled from gcp
    assert _tick(defs, "escalate_failed_drills", instance, third.cursor).run_requests == []


@pytest.mark.slow
def test_a_page_that_cannot_be_delivered_is_sent_on_a_later_tick(tmp_path, source_cluster, source_db, instance,
                                                                monkeypatch, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch, webhook=True)
    assert _run(defs, instance, "take_backups").success
    _corrupt_dump(tmp_path, "aws")
    _corrupt_dump(tmp_path, "azure")
    assert not _run(defs, instance, "run_restore_drills").success
    assert not _run(defs, instance, "run_restore_drills", ops={"restore_drills": {"config": {
        "source_store": "azure"}}}).success

    webhook.down = True  # for every retry of this tick
    down = _tick(defs, "escalate_failed_drills", instance)
    assert [r.job_name for r in down.run_requests] == ["backup_and_drill"]
    assert webhook.received == [] and webhook.attempts >= 2
    webhook.down = False
    up = _tick(defs, "escalate_failed_drills", instance, down.cursor)
    assert up.run_requests == []  # the run was requested once
    [message] = webhook.received
    assert "2 drills of shop failed in a row" in message["text"]
    assert _tick(defs, "escalate_failed_drills", instance, up.cursor).run_requests == []
    assert len(webhook.received) == 1


def _age_backups(tmp_path: Path, by: timedelta) -> None:
    for path in (tmp_path / "stores").rglob("manifest.json"):
        manifest = BackupManifest.from_json(path.read_bytes(), str(path))
        path.write_bytes(manifest.model_copy(update={
            "snapshot_at": manifest.snapshot_at - by,
            "snapshot_worker_at": manifest.snapshot_worker_time - by}).to_json())


@pytest.mark.slow
def test_staleness_is_noticed_without_a_failed_run_and_a_backup_requested(tmp_path, source_cluster, source_db,
                                                                         instance, monkeypatch, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch, webhook=True, rpo="1h")
    never = _tick(defs, "notice_stale_backups", instance)  # no backup was ever taken
    [request] = never.run_requests
    assert (request.job_name, request.run_key) == ("take_backups", f"backup:{SOURCE_DB}:none")
    assert _execute(defs, instance, request).success
    fresh = _tick(defs, "notice_stale_backups", instance, never.cursor)
    assert fresh.run_requests == []

    # Two hours pass for the backup, with no run at all (say, the schedule was turned off).
    _age_backups(tmp_path, timedelta(hours=2))
    stale = _tick(defs, "notice_stale_backups", instance, fresh.cursor)
    [request] = stale.run_requests
    assert request.job_name == "take_backups" and request.run_key != f"backup:{SOURCE_DB}:none"
    assert _tick(defs, "notice_stale_backups", instance, stale.cursor).run_requests == []
    texts = [m["text"] for m in webhook.received]
    assert len(texts) == 2 and "over its RPO of 3600s" in texts[1]
    assert webhook.url not in "".join(texts)


def _failed_run(defs: dg.Definitions, instance, source_db):
    failed = defs.resolve_job_def("disaster_restore").execute_in_process(
        run_config={**QUIET, "ops": {"restore_from_backup": {"config": {
            "database": SOURCE_DB, "backup_id": "latest", "source_store": "", "target_dsn": source_db.dsn,
            "replace": False}}}}, instance=instance, raise_on_error=False)
    assert not failed.success
    event = next(e for e in failed.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return failed.run_id, event


def _failure_context(instance, run_id, event):
    return dg.build_run_status_sensor_context(
        sensor_name="report_failed_runs", dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id),
        dagster_event=event).for_run_failure()


def test_run_failure_reaches_alertmanager_and_the_webhook_once(tmp_path, source_cluster, source_db, instance,
                                                               monkeypatch, alertmanager_url, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    run_id, event = _failed_run(defs, instance, source_db)
    alerts = AlertsResource(alerts_file=str(tmp_path / "alerts.jsonl"), alertmanager_url=alertmanager_url,
                            webhook_url_secret="env:TEST_ALERT_WEBHOOK_URL")

    for _tick_again in range(2):  # the second evaluation stands for a tick replayed after a crash
        report_failed_runs(_failure_context(instance, run_id, event), alerts=alerts)

    [alert] = [a for a in alerts_in(alertmanager_url) if a["labels"].get("run_id") == run_id]
    assert alert["labels"]["alertname"] == "PlatformDRRunFailed"
    assert alert["labels"]["job"] == "disaster_restore"
    assert "no readable backup of database shop" in alert["annotations"]["description"]
    [message] = webhook.received
    assert run_id in message["text"]
    assert "Alertmanager" in instance.get_run_by_id(run_id).tags[ALERT_SENT_TAG]


def test_run_failure_notifier_retries_a_webhook_that_is_down(tmp_path, source_cluster, source_db, instance,
                                                             monkeypatch, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    run_id, event = _failed_run(defs, instance, source_db)
    webhook.statuses = [503, 502]
    alerts = AlertsResource(alerts_file=str(tmp_path / "alerts.jsonl"),
                            webhook_url_secret="env:TEST_ALERT_WEBHOOK_URL", backoff_seconds=0.05)
    report_failed_runs(_failure_context(instance, run_id, event), alerts=alerts)
    assert webhook.attempts == 3 and len(webhook.received) == 1


def test_a_refused_alert_fails_the_tick_without_naming_the_webhook_url(tmp_path, source_cluster, source_db,
                                                                       instance, monkeypatch, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    run_id, event = _failed_run(defs, instance, source_db)
    webhook.statuses = [404]
    alerts = AlertsResource(alerts_file=str(tmp_path / "alerts.jsonl"),
                            webhook_url_secret="env:TEST_ALERT_WEBHOOK_URL")
    with pytest.raises(Exception) as failed:
        report_failed_runs(_failure_context(instance, run_id, event), alerts=alerts)
    assert "HTTP 404" in str(failed.value) and "env:TEST_ALERT_WEBHOOK_URL" in str(failed.value)
    assert webhook.url not in str(failed.value) and "secret-token" not in str(failed.value)
    assert webhook.attempts == 1  # a 4xx is not retried
    assert ALERT_SENT_TAG not in instance.get_run_by_id(run_id).tags


def test_a_webhook_reference_that_is_not_a_reference_is_refused():
    alerts = AlertsResource(alerts_file="/dev/null", webhook_url_secret="https://hooks.example/T0/B0/x")
    with pytest.raises(PlatformError, match="expected env:NAME"):
        alerts.receivers()


def _retry_tick(instance, alerts: AlertsResource):
    with dg.build_sensor_context(instance=instance, resources={"alerts": alerts}) as context:
        return retry_undelivered_alerts(context, alerts=alerts)


def test_an_alert_the_webhook_did_not_take_is_sent_on_a_later_tick_once(tmp_path, source_cluster, source_db,
                                                                        instance, monkeypatch, webhook):
    defs = _defs(tmp_path, source_cluster, monkeypatch)
    run_id, event = _failed_run(defs, instance, source_db)
    alerts = AlertsResource(alerts_file=str(tmp_path / "alerts.jsonl"),
                            webhook_url_secret="env:TEST_ALERT_WEBHOOK_URL", backoff_seconds=0.01)
    webhook.statuses = [503] * 4  # down for every attempt of the failure sensor's tick
    with pytest.raises(RuntimeError, match=f"alert for failed run {run_id} not delivered"):
        report_failed_runs(_failure_context(instance, run_id, event), alerts=alerts)
    tags = instance.get_run_by_id(run_id).tags
    assert tags[ALERT_PENDING_TAG] == "true" and ALERT_SENT_TAG not in tags
    assert webhook.received == []

    webhook.statuses = [503] * 4  # still down at the first retry: the tick fails, the run stays pending
    with pytest.raises(RuntimeError, match="1 of 1 pending alert"):
        _retry_tick(instance, alerts)
    assert instance.get_run_by_id(run_id).tags[ALERT_PENDING_TAG] == "true"

    result = _retry_tick(instance, alerts)  # back up
    assert "1 pending alert(s) delivered" in result.skip_message
    [message] = webhook.received
    assert run_id in message["text"] and "no readable backup of database shop" in message["text"]
    tags = instance.get_run_by_id(run_id).tags
    assert tags[ALERT_PENDING_TAG] == "false" and tags[ALERT_SENT_TAG] == "webhook (env:TEST_ALERT_WEBHOOK_URL)"

    assert _retry_tick(instance, alerts).skip_message == "no undelivered alert"
    report_failed_runs(_failure_context(instance, run_id, event), alerts=alerts)  # a replayed failure tick
    assert len(webhook.received) == 1  # sent once in all


def test_an_undelivered_alert_is_given_up_a_day_after_its_run_ended(tmp_path, source_cluster, source_db, instance,
                                                                   monkeypatch, webhook):
    from platform_orchestration.sensors import failures

    defs = _defs(tmp_path, source_cluster, monkeypatch)
    run_id, _event = _failed_run(defs, instance, source_db)
    instance.add_run_tags(run_id, {ALERT_PENDING_TAG: "true"})
    monkeypatch.setattr(failures, "ALERT_RETRY_WINDOW", timedelta(0))  # the run ended longer ago than that
    alerts = AlertsResource(alerts_file=str(tmp_path / "alerts.jsonl"),
                            webhook_url_secret="env:TEST_ALERT_WEBHOOK_URL", backoff_seconds=0.01)
    assert "1 past the retry window" in _retry_tick(instance, alerts).skip_message
    assert instance.get_run_by_id(run_id).tags[ALERT_PENDING_TAG] == "expired"
    assert webhook.received == [] and webhook.attempts == 0
