"""A store on a local (or mounted) filesystem, with atomic, durable writes.

An object is written to a hidden `.partial-*` file beside its final name, fsynced, then
renamed into place and the directory fsynced: a crash leaves either the whole object or
no object, and partial files are invisible to listing. What a killed writer or prune leaves
(partial files, empty directories) is aged by mtime and removed by the retention sweep.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from platform_orchestration.storage.base import (
    READ_CHUNK_BYTES,
    IncompleteUpload,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    WriterLifecycle,
    check_key,
)

_PARTIAL_MARK = ".partial-"


def _version_of(stat: os.stat_result) -> str:
    """A local object's version: a commit renames a new file into place, so the inode and
    the nanosecond mtime change with every write (the size rides along)."""
    return f"{stat.st_ino:x}-{stat.st_mtime_ns:x}-{stat.st_size:x}"


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
        """Committed objects whose key starts with `prefix`, in key order. Only the directory
        the prefix names is read (``backups/orders/``), or of it only the entries whose name
        starts with the rest (``backups/ord``): a listing costs what it returns, not the store."""
        head, _, name_start = prefix.rpartition("/")
        if head and any(part in ("", ".", "..") for part in head.split("/")):
            return  # no valid key lies under such a prefix, and it must not leave the root
        top = self.root / head if head else self.root
        found: list[ObjectInfo] = []
        self._collect(top, head + "/" if head else "", name_start, found)
        yield from sorted(found, key=lambda info: info.key)

    def _collect(self, directory: Path, key_prefix: str, name_start: str, found: list[ObjectInfo]) -> None:
        """Every committed object under `directory` (whose key starts with `key_prefix`), of
        its entries only those whose name starts with `name_start`."""
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):  # never written, or removed meanwhile
            return
        for entry in entries:
            name = entry.name
            if not name.startswith(name_start) or name.startswith(_PARTIAL_MARK):
                continue
            try:
                if entry.is_dir():
                    if not entry.is_symlink():  # as os.walk: a linked directory is not descended
                        self._collect(Path(entry.path), f"{key_prefix}{name}/", "", found)
                    continue
                stat = entry.stat()
            except FileNotFoundError:  # deleted while we looked
                continue
            found.append(ObjectInfo(f"{key_prefix}{name}", stat.st_size,
                                    datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc), _version_of(stat)))

    def _top(self, prefix: str) -> Path:
        """The deepest directory holding every key that starts with `prefix`."""
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        return self.root / head if head else self.root

    def _partials(self, prefix: str) -> Iterator[tuple[Path, IncompleteUpload]]:
        # os.walk, not rglob: it skips directories that vanish meanwhile (a writer's abort,
        # another sweep) instead of failing.
        paths = [Path(dirpath) / name for dirpath, _dirs, names in os.walk(self._top(prefix))
                 for name in names if name.startswith(_PARTIAL_MARK)]
        for path in paths:
            final_name = path.name[len(_PARTIAL_MARK):].rsplit(".", 1)[0]
            key = path.with_name(final_name).relative_to(self.root).as_posix()
            if not key.startswith(prefix):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # committed or aborted while we looked
                continue
            # A file's mtime is its last write: a partial file still being written stays young.
            yield path, IncompleteUpload(key, datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc),
                                         size=stat.st_size)

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Partial files under `prefix` (idle since before `older_than`, when given)."""
        found = [upload for _path, upload in self._partials(prefix) if upload.idle_since_before(older_than)]
        return sorted(found, key=lambda upload: upload.key)

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Remove partial files under `prefix` (idle since before `older_than`, when given),
        and the directories that leaves empty, as delete() does."""
        discarded = []
        for path, upload in self._partials(prefix):
            if not upload.idle_since_before(older_than):
                continue
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"store {self.name}: discarding the partial file of {upload.key} "
                                 f"failed: {exc}") from exc
            discarded.append(upload)
            self._remove_empty_parents(path.parent)
        return sorted(discarded, key=lambda upload: upload.key)

    def empty_directories(self, prefix: str = "", *, older_than: datetime) -> list[str]:
        """Directories under `prefix` holding no file at any depth, unchanged since before
        `older_than` (a young empty one may be a writer's, between mkdir and its first file),
        deepest first, as ``key/``."""
        return [self._key_of_directory(path) for path in self._empty_directories(prefix, older_than)]

    def remove_empty_directories(self, prefix: str = "", *, older_than: datetime) -> list[str]:
        removed = []
        for path in self._empty_directories(prefix, older_than):
            try:
                path.rmdir()  # refuses, and so spares, a directory a writer just filled
            except OSError:
                continue
            removed.append(self._key_of_directory(path))
        return removed

    def _key_of_directory(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() + "/"

    def _empty_directories(self, prefix: str, older_than: datetime) -> list[Path]:
        top = self._top(prefix)
        if not top.is_dir():
            return []
        cutoff = older_than.timestamp()
        empty: set[str] = set()
        found: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(top, topdown=False):
            path = Path(dirpath)
            if path == self.root or not self._key_of_directory(path).startswith(prefix):
                continue
            if filenames or any(str(path / name) not in empty for name in dirnames):
                continue
            try:
                if path.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue
            empty.add(dirpath)
            found.append(path)
        return found  # bottom-up: children before their parents

    def _remove_empty_parents(self, parent: Path) -> None:
        # Empty directories left behind would be harmless but clutter a browsed store.
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            try:
                parent.rmdir()
            except OSError:  # filled meanwhile
                return
            parent = parent.parent

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        return False  # a local copy through us is as fast as the disk

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self.path_for(key), "rb") as handle:
                return handle.read(), _version_of(os.fstat(handle.fileno()))
        except FileNotFoundError:
            raise ObjectNotFound(f"store {self.name}: no object {key}") from None
        except OSError as exc:
            raise StoreError(f"store {self.name}: reading {key} failed: {exc}") from exc

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """Compare and swap under an exclusive lock on the object's directory (flock: held by
        this process only while it compares and renames; readers never wait, as a commit is
        a rename). Every writer of the same store through this method takes the same lock,
        on any machine that mounts it with working flock (local disks, NFSv4)."""
        path = self.path_for(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StoreError(f"store {self.name}: cannot write {key} under {self.root}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current: str | None = _version_of(path.stat())
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(
                    f"store {self.name}: {key} changed since it was read (expected "
                    f"{'no object' if version is None else 'version ' + version})")
            with self.open_writer(key) as writer:
                writer.write(data)
                writer.commit()
        finally:
            os.close(fd)  # releases the lock

    def delete(self, key: str) -> None:
        path = self.path_for(key)
        path.unlink(missing_ok=True)
        self._remove_empty_parents(path.parent)
