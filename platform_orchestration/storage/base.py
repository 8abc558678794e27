"""The object-store contract every backend (local, s3, azure, gcs) implements.

The contract is deliberately small: streamed writes that become visible atomically on
`commit()` (or never, on `abort()`), streamed reads, listing by prefix, deletion. Every
higher-level guarantee (a backup without a manifest does not exist, a copy is verified
before its manifest is written) is built on exactly these operations, so a new backend
only has to pass the conformance tests to inherit them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Literal, Protocol, runtime_checkable

from platform_orchestration.errors import PlatformError

READ_CHUNK_BYTES = 1024 * 1024


class StoreError(PlatformError):
    """An object-store operation failed; the message names the store and the key."""


class ObjectNotFound(StoreError):
    """The key does not exist in the store."""


class PreconditionFailed(StoreError):
    """A conditional write lost a race: the object changed, appeared or vanished since the
    version the writer read (see :class:`ConditionalWrites`)."""


class ObjectLocked(StoreError):
    """The store's immutability (e.g. S3 Object Lock) forbids deleting the object yet."""

    def __init__(self, message: str, retain_until: datetime | None = None) -> None:
        super().__init__(message)
        self.retain_until = retain_until


@dataclass(frozen=True)
class Immutability:
    """Write-once retention the provider enforces on every object a store writes (S3 Object
    Lock, Azure immutability policies, GCS object retention): `compliance` binds everyone,
    `governance` can be lifted by a principal allowed to bypass it."""

    mode: Literal["compliance", "governance"]
    retain: timedelta


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified_at: datetime
    # What the store says changes whenever the object is rewritten (S3/Azure ETag, GCS
    # generation, the local file's inode and nanosecond mtime); None where it says nothing.
    etag: str | None = None


@dataclass(frozen=True)
class IncompleteUpload:
    """An upload started and neither committed nor aborted (a partial file, an open multipart
    upload, uncommitted blocks, a resumable session): what a killed writer leaves behind.

    ``last_active_at`` is the latest moment the store saw it written to: its newest part, block
    or byte where the store records that, else its start. A sweep goes by it, not by the start,
    so a long upload that is still sending is never taken for an abandoned one. None when the
    store cannot tell: such an upload is never removed by age. ``size`` is the bytes the store
    holds for it, None when unknown; ``started_at`` when the store records the start.
    ``writer_gone``: the store knows the process writing it has died (a local partial file
    whose writer ran on this machine and no longer runs): a sweep removes it whatever its age."""

    key: str
    last_active_at: datetime | None
    size: int | None = None
    started_at: datetime | None = None
    writer_gone: bool = False

    def idle_since_before(self, cutoff: datetime | None) -> bool:
        """Whether a sweep with `cutoff` removes it: always without a cutoff or when its
        writer is known gone; else only if it is known to have been idle since before it."""
        if cutoff is None or self.writer_gone:
            return True
        return self.last_active_at is not None and self.last_active_at < cutoff


class ObjectWriter(Protocol):
    def write(self, chunk: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def __enter__(self) -> ObjectWriter: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


@runtime_checkable
class ObjectStore(Protocol):
    """A named place that holds objects under `/`-separated keys."""

    name: str

    def describe(self) -> str:
        """Where the store is, for messages (never credentials)."""
        ...

    def open_writer(self, key: str) -> ObjectWriter:
        """A writer whose object appears at `key` only on commit(), all at once."""
        ...

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Stream an object; raises ObjectNotFound if it does not exist."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every committed object whose key starts with `prefix`, in key order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing object is not an error. Raises ObjectLocked
        while the store's retention protects the object."""
        ...

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Uploads under `prefix` started but neither committed nor aborted (partial files,
        open multipart uploads, uncommitted blocks): what a crash can leave behind, in key
        order. With `older_than`, only those idle since before it (see IncompleteUpload)."""
        ...

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Abort the incomplete uploads under `prefix` (all of them, or with `older_than` only
        those idle since before it): the janitor's job after a crash or an outage that
        stopped an upload from aborting itself. Each is discarded by its own identity, so
        another upload of the same key started meanwhile is not touched, and committed
        objects never are. Returns what was discarded."""
        ...

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        """Copy `key` from `source` inside the provider, without the bytes passing through
        us, when both stores live where that is possible; False means "stream it"."""
        ...


def reads_over_network(store: object) -> bool:
    """Whether reading `store` waits on a network (the cloud stores set `reads_over_network`),
    not on a local disk: what decides whether a read is worth a thread of its own."""
    return bool(getattr(store, "reads_over_network", False))


@runtime_checkable
class ConditionalWrites(Protocol):
    """Compare-and-swap of small objects (the catalog index): every backend has it (S3
    If-Match / If-None-Match, Azure ETag conditions, GCS generation preconditions, a
    directory lock on the local filesystem). Versions are opaque strings, the same ones
    :attr:`ObjectInfo.etag` gives in a listing."""

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and its version; ObjectNotFound if it does not exist."""
        ...

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """Write a small object at once, only if its current version is `version` (None:
        only if there is no object at `key`); PreconditionFailed if not."""
        ...


@runtime_checkable
class ReportsEncryptionAtRest(Protocol):
    """A store whose provider says, per object, how it encrypts it at rest (S3's
    ServerSideEncryption and SSEKMSKeyId on HeadObject)."""

    def object_encryption(self, key: str) -> tuple[str | None, str | None]:
        """(the algorithm, the key id) the provider reports for `key`; None for what it does not."""
        ...


@runtime_checkable
class HasDirectories(Protocol):
    """A store on a filesystem, where directories outlive their objects: a killed prune (or a
    discarded partial file) can leave empty ones. Object stores have no directories."""

    def empty_directories(self, prefix: str = "", *, older_than: datetime) -> list[str]:
        """Directories under `prefix` (as ``key/`` strings) that hold nothing but what a sweep
        with `older_than` removes, and were last changed before `older_than`."""
        ...

    def remove_empty_directories(self, prefix: str = "", *, older_than: datetime) -> list[str]:
        """Remove what empty_directories() reports, deepest first; returns what was removed."""
        ...


class WriterLifecycle:
    """Context-manager behaviour shared by writers: abort unless committed."""

    committed = False
    aborted = False

    def commit(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self):  # noqa: ANN204 - returns the concrete writer
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if not self.committed and not self.aborted:
            self.abort()


def write_bytes(store: ObjectStore, key: str, data: bytes) -> None:
    with store.open_writer(key) as writer:
        writer.write(data)
        writer.commit()


def read_bytes(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.read(key))


def check_key(key: str) -> str:
    """Keys are relative, `/`-separated and free of `.`/`..` segments on every backend."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key
