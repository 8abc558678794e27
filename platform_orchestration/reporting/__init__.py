"""The recoverability report people read: HTML with inline SVG charts, and its JSON."""

from platform_orchestration.reporting.report import RecoverabilityReport, record_report, report_keys

__all__ = ["RecoverabilityReport", "record_report", "report_keys"]
