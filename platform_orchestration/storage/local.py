"""A store on a local (or mounted) filesystem, with atomic, durable writes.

An object is written to a hidden `.partial-*` file beside its final name, fsynced, then
renamed into place and the directory fsynced: a crash leaves either the whole object or
no object, and partial files are invisible to listing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from platform_orchestration.storage.base import (
    READ_CHUNK_BYTES,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    WriterLifecycle,
    check_key,
)

_PARTIAL_MARK = ".partial-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalObjectWriter(WriterLifecycle):
    def __init__(self, store: LocalObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._final = store.path_for(key)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self._final.with_name(f"{_PARTIAL_MARK}{self._final.name}.{uuid.uuid4().hex}")
        self._file = open(self._partial, "wb")  # noqa: SIM115 - closed in commit/abort

    def write(self, chunk: bytes) -> None:
        try:
            self._file.write(chunk)
        except OSError as exc:
            raise StoreError(f"store {self._store.name}: writing {self._key} failed: {exc}") from exc

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._partial, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise StoreError(f"store {self._store.name}: committing {self._key} failed: {exc}") from exc
        self.committed = True

    def abort(self) -> None:
        self.aborted = True
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalObjectStore:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = Path(root)

    def describe(self) -> str:
        return f"{self.name} (local {self.root})"

    def path_for(self, key: str) -> Path:
        return self.root / check_key(key)

    def open_writer(self, key: str) -> LocalObjectWriter:
        try:
            return LocalObjectWriter(self, key)
        except OSError as exc:
            raise StoreError(f"store {self.name}: cannot write {key} under {self.root}: {exc}") from exc

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        path = self.path_for(key)
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            raise ObjectNotFound(f"store {self.name}: no object {key}") from None
        return self._chunks(handle, chunk_bytes)

    @staticmethod
    def _chunks(handle, chunk_bytes: int) -> Iterator[bytes]:  # noqa: ANN001
        with handle:
            while chunk := handle.read(chunk_bytes):
                yield chunk

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for filename in filenames:
                if filename.startswith(_PARTIAL_MARK):
                    continue
                path = Path(dirpath) / filename
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while we walked
                    continue
                found.append(ObjectInfo(key, stat.st_size,
                                        datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)))
        yield from sorted(found, key=lambda info: info.key)

    def incomplete_uploads(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.rglob(f"{_PARTIAL_MARK}*"):
            final_name = path.name[len(_PARTIAL_MARK):].rsplit(".", 1)[0]
            key = path.with_name(final_name).relative_to(self.root).as_posix()
            if key.startswith(prefix):
                found.append(key)
        return sorted(found)

    def discard_incomplete(self, prefix: str = "") -> int:
        if not self.root.is_dir():
            return 0
        discarded = 0
        for path in self.root.rglob(f"{_PARTIAL_MARK}*"):
            final_name = path.name[len(_PARTIAL_MARK):].rsplit(".", 1)[0]
            if path.with_name(final_name).relative_to(self.root).as_posix().startswith(prefix):
                path.unlink(missing_ok=True)
                discarded += 1
        return discarded

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        return False  # a local copy through us is as fast as the disk

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        # Empty directories left behind would be harmless but clutter a browsed store.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
