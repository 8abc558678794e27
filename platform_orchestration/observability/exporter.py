"""The exporter: ``platform-dr exporter --port N`` serves ``/metrics`` for Prometheus to scrape.

It reads the stores (through ``FleetProtection.recoverability``), not Dagster, so a backup
or drill made by the break-glass CLI counts as much as one made by a run, and it keeps
answering while Dagster is down. Reads are cached for ``min_interval`` seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TextIO

from prometheus_client import CollectorRegistry, start_http_server

from platform_orchestration.observability.metrics import RecoverabilityCollector
from platform_orchestration.observability.recoverability import DatabaseRecoverability


class _LockedCollector(RecoverabilityCollector):
    """Scrapes are served on threads of their own: one reads the stores at a time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._lock = threading.Lock()

    def collect(self):  # noqa: ANN201
        with self._lock:
            return list(super().collect())


def serve_exporter(observe: Callable[[], list[DatabaseRecoverability]], *, port: int, address: str,
                   min_interval: float, out: TextIO, stop: threading.Event | None = None) -> None:
    """Serve until `stop` is set (or forever). The stores are read once before the port opens,
    so a fleet whose stores cannot be read says so at start, on `out`."""
    registry = CollectorRegistry(auto_describe=False)
    collector = _LockedCollector(observe, min_interval=min_interval)
    collector.refresh()
    registry.register(collector)
    server, thread = start_http_server(port, addr=address, registry=registry)
    views = len(collector._views)
    state = "ok" if collector.last_error is None else f"reading the stores failed: {collector.last_error}"
    print(f"platform-dr exporter: serving http://{address}:{server.server_port}/metrics "
          f"({views} databases; stores read at most every {min_interval:g}s; {state})", file=out, flush=True)
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        thread.join(timeout=5)
