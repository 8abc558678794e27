"""Sensors: failures told (failures.py) and problems repaired (remedies.py)."""

from platform_orchestration.sensors.failures import (
    ALERT_PENDING_TAG,
    ALERT_SENT_TAG,
    report_failed_runs,
    retry_undelivered_alerts,
)
from platform_orchestration.sensors.remedies import build_remedy_sensors

__all__ = ["ALERT_PENDING_TAG", "ALERT_SENT_TAG", "build_remedy_sensors", "report_failed_runs",
           "retry_undelivered_alerts"]
