"""One stream written to the same key in several stores at once.

Each store gets its own thread and a short queue, so a slow cloud slows the stream
only when its queue is full (bounded memory: `queue_depth` chunks per store), and
the stores upload in parallel. A store that fails is dropped and reported; the
others carry on, so one cloud's outage never costs the backup its other copies.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from platform_orchestration.storage.base import ObjectStore, ObjectWriter, StoreError

_COMMIT = object()
_ABORT = object()


class FanOutFailed(StoreError):
    """Every store failed; the message names each store and what failed."""


@dataclass
class _Lane:
    store: ObjectStore
    writer: ObjectWriter
    queue: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=4))
    thread: threading.Thread | None = None
    error: str | None = None
    committed: bool = False


class FanOutWriter:
    def __init__(self, stores: Sequence[ObjectStore], key: str, queue_depth: int = 4) -> None:
        self.failed: dict[str, str] = {}
        self._lanes: list[_Lane] = []
        for store in stores:
            try:
                lane = _Lane(store, store.open_writer(key), queue.Queue(maxsize=queue_depth))
            except Exception as exc:  # noqa: BLE001 - any failure of one store is that store's
                self.failed[store.name] = f"open: {exc}"
                continue
            lane.thread = threading.Thread(target=self._drive, args=(lane,), daemon=True,
                                           name=f"fan-out-{store.name}")
            lane.thread.start()
            self._lanes.append(lane)
        self._raise_if_all_failed()

    @staticmethod
    def _drive(lane: _Lane) -> None:
        while True:
            item = lane.queue.get()
            if lane.error is not None:
                # Failed already: keep draining so the producer never blocks on this lane.
                if item is _COMMIT or item is _ABORT:
                    return
                continue
            try:
                if item is _COMMIT:
                    lane.writer.commit()
                    lane.committed = True
                    return
                if item is _ABORT:
                    lane.writer.abort()
                    return
                lane.writer.write(item)
            except Exception as exc:  # noqa: BLE001 - recorded, reported by the producer
                stage = "commit" if item is _COMMIT else "abort" if item is _ABORT else "write"
                lane.error = f"{stage}: {exc}"
                try:
                    lane.writer.abort()
                except Exception:  # noqa: BLE001, S110 - the first error is the one to report
                    pass
                if item is _COMMIT or item is _ABORT:
                    return

    def _live(self) -> list[_Lane]:
        return [lane for lane in self._lanes if lane.error is None]

    def _raise_if_all_failed(self) -> None:
        for lane in self._lanes:
            if lane.error is not None:
                self.failed.setdefault(lane.store.name, lane.error)
        if not self._live():
            raise FanOutFailed("every store failed: " + "; ".join(f"{k}: {v}" for k, v in self.failed.items()))

    def write(self, chunk: bytes) -> None:
        for lane in self._live():
            lane.queue.put(chunk)
        self._raise_if_all_failed()

    def _finish(self, sentinel: object) -> None:
        for lane in self._lanes:
            if lane.thread is not None and lane.thread.is_alive():
                lane.queue.put(sentinel)
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join()

    def commit(self) -> list[ObjectStore]:
        """Commit every healthy store's object, in parallel; returns the stores that did."""
        self._finish(_COMMIT)
        for lane in self._lanes:
            if lane.error is not None:
                self.failed.setdefault(lane.store.name, lane.error)
        return [lane.store for lane in self._lanes if lane.committed]

    def abort(self) -> None:
        self._finish(_ABORT)
