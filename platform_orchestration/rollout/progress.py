"""A rollout's progress in a JSON file: for the CLI, the demo and tests. The Dagster layer keeps
the same records in the instance's event log instead (ops/rollout.py), where they outlive pods.

Layout: ``{plan: {"waves": {"REVISION DIRECTION": {wave: record}}, "completed": [REVISION...]}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FileProgress"]


class FileProgress:
    """:class:`~platform_orchestration.rollout.engine.ProgressStore` in one JSON file, written
    atomically (a temporary file renamed over it)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def finished_waves(self, plan: str, revision: str, direction: str) -> dict[str, Mapping[str, Any]]:
        return dict(self._read().get(plan, {}).get("waves", {}).get(f"{revision} {direction}", {}))

    def record_wave(self, plan: str, revision: str, direction: str, wave: str, record: Mapping[str, Any]) -> None:
        state = self._read()
        entry = state.setdefault(plan, {"waves": {}, "completed": []})
        entry["waves"].setdefault(f"{revision} {direction}", {})[wave] = dict(record)
        if record.get("last_wave") and direction == "forward":
            entry["completed"] = [r for r in entry["completed"] if r != revision] + [revision]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(temporary, self.path)

    def completed_revisions(self, plan: str) -> list[str]:
        return list(self._read().get(plan, {}).get("completed", []))
