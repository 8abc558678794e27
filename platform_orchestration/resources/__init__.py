"""Dagster resources: the fleet, and through it the protection API shared with the CLI."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from platform_orchestration.alerts import FileAlertSink

from platform_orchestration.fleet import Fleet, load_fleet
from platform_orchestration.protection import FleetProtection


class FleetResource(dg.ConfigurableResource):
    """The fleet file this code location protects (PLATFORM_FLEET in production)."""

    fleet_file: str

    def load(self) -> Fleet:
        return load_fleet(self.fleet_file)

    def protection(self) -> FleetProtection:
        return FleetProtection(self.load())


class AlertsResource(dg.ConfigurableResource):
    """Where failure alerts go (a JSON-lines file that an alert shipper follows)."""

    alerts_file: str

    def sink(self) -> FileAlertSink:
        return FileAlertSink(Path(self.alerts_file))
