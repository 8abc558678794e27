"""A store that counts the calls it passes on: what a listing or an assessment costs, in the
requests a cloud store would bill (one LIST per listing, one GET per read), measured on any
backend. Benchmarks and tests wrap real stores in it; it changes nothing they do."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

from platform_orchestration.storage.base import (
    READ_CHUNK_BYTES,
    IncompleteUpload,
    ObjectInfo,
    ObjectStore,
    ObjectWriter,
    reads_over_network,
)


class CountingStore:
    """`inner`, with ``calls`` counting list/read/write/delete calls (and ``prefixes`` every
    prefix listed), safe to share between threads."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.name = inner.name
        self.reads_over_network = reads_over_network(inner)
        self.calls: Counter[str] = Counter()
        self.prefixes: list[str] = []
        self._lock = threading.Lock()

    def _count(self, call: str) -> None:
        with self._lock:
            self.calls[call] += 1

    def describe(self) -> str:
        return self.inner.describe()

    def open_writer(self, key: str) -> ObjectWriter:
        self._count("write")
        return self.inner.open_writer(key)

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        self._count("read")
        return self.inner.read(key, chunk_bytes)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            self.calls["list"] += 1
            self.prefixes.append(prefix)
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._count("delete")
        self.inner.delete(key)

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        self._count("incomplete_uploads")
        return self.inner.incomplete_uploads(prefix, older_than=older_than)

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        self._count("discard_incomplete")
        return self.inner.discard_incomplete(prefix, older_than=older_than)

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        self._count("server_side_copy")
        return self.inner.server_side_copy(getattr(source, "inner", source), key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        self._count("read")
        return self.inner.read_versioned(key)  # type: ignore[attr-defined]

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        self._count("write")
        self.inner.write_if(key, data, version)  # type: ignore[attr-defined]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.prefixes.clear()
