"""Run failures, told: every failed run of this code location goes to the alerts file and to
the configured receivers (Alertmanager, a webhook), once; an alert the receivers could not take
is sent again on later ticks until delivered (or for a day)."""

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta, timezone

import dagster as dg

from platform_orchestration.alerts import FailureAlert
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.observability.notify import Notification
from platform_orchestration.resources import AlertsResource

ALERT_SENT_TAG = "platform/alert_sent"
"""Set on a failed run once its alert reached the receivers: a tick evaluated again (the daemon
restarted after sending, before its cursor was saved) sees it and does not send again."""
ALERT_PENDING_TAG = "platform/alert_pending"
"""``true`` on a failed run whose alert the receivers did not take (down past every attempt, or
refusing it): ``retry_undelivered_alerts`` finds it by this tag, sends it again, and sets it to
``false`` once delivered, or ``expired`` once ``ALERT_RETRY_WINDOW`` has passed since the run ended."""
ALERT_RETRY_WINDOW = timedelta(hours=24)
"""How long after its run ended an undelivered alert is still sent: a page about a day-old
failure is noise, and the alerts file and the run's own page keep it."""
RETRIES_PER_TICK = 50


def failure_notification(alert: FailureAlert) -> Notification:
    summary = f"run of {alert.job}" + (f" for {alert.partition}" if alert.partition else "") + " failed"
    steps = "; ".join(f"{s['step']}: {s['error']}" for s in alert.failed_steps) or alert.message
    labels = {"job": alert.job, "run_id": alert.run_id}
    if alert.partition:
        labels["database"] = alert.partition
    return Notification(key=f"run-failed:{alert.run_id}", alertname="PlatformDRRunFailed", summary=summary,
                        description=steps, severity="warning", labels=labels)


def _failure_alert(run: dg.DagsterRun, step_failures: Iterable[dg.DagsterEvent], message: str,
                   at: datetime) -> FailureAlert:
    steps = []
    for event in step_failures:
        data = event.step_failure_data
        error = data.user_failure_data.description if data.user_failure_data and \
            data.user_failure_data.description else (data.error.message.strip() if data.error else "")
        steps.append({"step": event.step_key or "?", "error": error})
    return FailureAlert(run_id=run.run_id, job=run.job_name, partition=run.tags.get("dagster/partition"),
                        failed_steps=steps, message=message, at=at.isoformat())


def _deliver(instance: dg.DagsterInstance, run: dg.DagsterRun, alert: FailureAlert, alerts: AlertsResource) -> None:
    """Send ``alert`` to the receivers and tag the run with the outcome; raises RuntimeError
    naming the run when they did not take it (the run is then tagged pending)."""
    try:
        reached = alerts.notify(failure_notification(alert))
    except PlatformError as exc:
        instance.add_run_tags(run.run_id, {ALERT_PENDING_TAG: "true"})
        raise RuntimeError(f"alert for failed run {run.run_id} not delivered: {one_line(exc)}") from None
    tags = {ALERT_SENT_TAG: ", ".join(reached)}
    if ALERT_PENDING_TAG in run.tags:  # `run` as the instance has it now
        tags[ALERT_PENDING_TAG] = "false"
    instance.add_run_tags(run.run_id, tags)


@dg.run_failure_sensor(
    name="report_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports every failed run of this code location (job, partition, failed steps, errors) "
                "to the alerts file and to Alertmanager / the webhook, with retries, once per run.",
)
def report_failed_runs(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    alert = _failure_alert(run, context.get_step_failure_events(), context.failure_event.message or "",
                           datetime.now(timezone.utc))
    summary = "; ".join(f"{s['step']}: {s['error']}" for s in alert.failed_steps) or alert.message
    context.log.error(f"run {run.run_id} of {run.job_name}"
                      + (f" [{alert.partition}]" if alert.partition else "") + f" failed: {summary}")
    instance = context.instance
    current = instance.get_run_by_id(run.run_id) or run
    if ALERT_SENT_TAG in current.tags:
        context.log.info(f"run {run.run_id}: alert already sent ({current.tags[ALERT_SENT_TAG]})")
        return
    alerts.sink().send(alert)
    if not alerts.receivers():
        instance.add_run_tags(run.run_id, {ALERT_SENT_TAG: "alerts file"})
        return
    # Raised, the tick shows the error in the UI; the run is tagged pending, for the retries.
    _deliver(instance, current, alert, alerts)


@dg.sensor(
    name="retry_undelivered_alerts",
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends again, every 5 minutes, each failed run's alert that Alertmanager / the webhook did "
                "not take (tagged platform/alert_pending), until delivered or a day after the run ended.",
)
def retry_undelivered_alerts(context: dg.SensorEvaluationContext, alerts: AlertsResource) -> dg.SkipReason:
    instance = context.instance
    pending: Sequence[dg.DagsterRun] = instance.get_runs(
        filters=dg.RunsFilter(tags={ALERT_PENDING_TAG: "true"}), limit=RETRIES_PER_TICK)
    now = datetime.now(timezone.utc)
    delivered, expired, failed = 0, 0, []
    for run in pending:
        if ALERT_SENT_TAG in run.tags:  # delivered by a tick that stopped before untagging
            instance.add_run_tags(run.run_id, {ALERT_PENDING_TAG: "false"})
            continue
        record = instance.get_run_record_by_id(run.run_id)
        ended = datetime.fromtimestamp(record.end_time, timezone.utc) if record and record.end_time else now
        if now - ended > ALERT_RETRY_WINDOW:
            instance.add_run_tags(run.run_id, {ALERT_PENDING_TAG: "expired"})
            context.log.error(f"alert for failed run {run.run_id} of {run.job_name} never delivered; it ended "
                              f"{ended.isoformat()}, over {ALERT_RETRY_WINDOW} ago: no more retries (it is in the "
                              "alerts file)")
            expired += 1
            continue
        records = instance.all_logs(run.run_id, of_type={dg.DagsterEventType.STEP_FAILURE,
                                                          dg.DagsterEventType.RUN_FAILURE})
        events = [r.dagster_event for r in records if r.dagster_event is not None]
        message = next((e.message or "" for e in events if e.event_type == dg.DagsterEventType.RUN_FAILURE), "")
        step_failures = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        try:
            _deliver(instance, run, _failure_alert(run, step_failures, message, ended), alerts)
            delivered += 1
        except RuntimeError as exc:
            failed.append(str(exc))
    if failed:  # the tick shows it; the runs stay pending for the next one
        raise RuntimeError(f"{len(failed)} of {len(pending)} pending alert(s) still not delivered: "
                           + "; ".join(failed[:3]) + (" ..." if len(failed) > 3 else ""))
    if not pending:
        return dg.SkipReason("no undelivered alert")
    return dg.SkipReason(f"{delivered} pending alert(s) delivered, {expired} past the retry window")
