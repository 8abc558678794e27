"""Alerts about failed protection work, as JSON lines an alert shipper can follow.

A file sink is the embedded default; it is also what a log shipper (Vector, Fluent
Bit, Promtail) tails in a cluster. Alerts carry job, step and error text only:
error texts from this code never contain secret values.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class FailureAlert:
    run_id: str
    job: str
    partition: str | None
    failed_steps: list[dict[str, str]]
    message: str
    at: str


class FileAlertSink:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def send(self, alert: FailureAlert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(asdict(alert), sort_keys=True) + "\n"
        # One write of one line in append mode: concurrent senders never interleave lines.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read(self) -> list[FailureAlert]:
        if not self.path.exists():
            return []
        return [FailureAlert(**json.loads(line)) for line in self.path.read_text().splitlines() if line]
