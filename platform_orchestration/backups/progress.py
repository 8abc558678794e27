"""Progress of long transfers, reported as (stage, bytes done) to whoever listens."""

from __future__ import annotations

from typing import Protocol


class ProgressListener(Protocol):
    def __call__(self, stage: str, done_bytes: int) -> None: ...


def no_progress(stage: str, done_bytes: int) -> None:
    """The listener used when nobody watches."""
