"""Sensors that notice failures without a human watching."""

from datetime import datetime, timezone

import dagster as dg

from platform_orchestration.alerts import FailureAlert
from platform_orchestration.resources import AlertsResource


@dg.run_failure_sensor(
    name="report_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reports every failed run of this code location: job, partition, failed steps, errors.",
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
    alerts.sink().send(alert)
    summary = "; ".join(f"{s['step']}: {s['error']}" for s in steps) or alert.message
    context.log.error(f"run {run.run_id} of {run.job_name}"
                      + (f" [{alert.partition}]" if alert.partition else "") + f" failed: {summary}")
