"""Run failures, told: every failed run of this code location goes to the alerts file and to
the configured receivers (Alertmanager, a webhook), once."""

from datetime import datetime, timezone

import dagster as dg

from platform_orchestration.alerts import FailureAlert
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.observability.notify import Notification
from platform_orchestration.resources import AlertsResource

ALERT_SENT_TAG = "platform/alert_sent"
"""Set on a failed run once its alert reached the receivers: a tick evaluated again (the daemon
restarted after sending, before its cursor was saved) sees it and does not send again."""


def failure_notification(alert: FailureAlert) -> Notification:
    summary = f"run of {alert.job}" + (f" for {alert.partition}" if alert.partition else "") + " failed"
    steps = "; ".join(f"{s['step']}: {s['error']}" for s in alert.failed_steps) or alert.message
    labels = {"job": alert.job, "run_id": alert.run_id}
    if alert.partition:
        labels["database"] = alert.partition
    return Notification(key=f"run-failed:{alert.run_id}", alertname="PlatformDRRunFailed", summary=summary,
                        description=steps, severity="warning", labels=labels)


@dg.run_failure_sensor(
    name="report_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports every failed run of this code location (job, partition, failed steps, errors) "
                "to the alerts file and to Alertmanager / the webhook, with retries, once per run.",
)
def report_failed_runs(context: dg.RunFailureSensorContext, alerts: AlertsResource) -> None:
    run = context.dagster_run
    steps = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        error = data.user_failure_data.description if data.user_failure_data and \
            data.user_failure_data.description else (data.error.message.strip() if data.error else "")
        steps.append({"step": event.step_key or "?", "error": error})
    alert = FailureAlert(
        run_id=run.run_id,
        job=run.job_name,
        partition=run.tags.get("dagster/partition"),
        failed_steps=steps,
        message=context.failure_event.message or "",
        at=datetime.now(timezone.utc).isoformat(),
    )
    summary = "; ".join(f"{s['step']}: {s['error']}" for s in steps) or alert.message
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
    try:
        reached = alerts.notify(failure_notification(alert))
    except PlatformError as exc:
        # Raised, the tick shows the error in the UI; the run stays untagged (not sent).
        raise RuntimeError(f"alert for failed run {run.run_id} not delivered: {one_line(exc)}") from None
    instance.add_run_tags(run.run_id, {ALERT_SENT_TAG: ", ".join(reached)})
