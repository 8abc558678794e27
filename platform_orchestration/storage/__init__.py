"""Object stores: one protocol, a module per backend (local now; s3, azure, gcs beside it)."""

from __future__ import annotations

from platform_orchestration.storage.base import (
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StoreError,
    read_bytes,
    write_bytes,
)
from platform_orchestration.storage.local import LocalObjectStore

__all__ = [
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "StoreError",
    "open_store",
    "read_bytes",
    "write_bytes",
]


def open_store(spec) -> ObjectStore:  # noqa: ANN001 - a fleet StoreSpec
    """The store a fleet entry describes."""
    if spec.kind == "local":
        return LocalObjectStore(spec.name, spec.path)
    raise StoreError(
        f"store {spec.name}: kind {spec.kind!r} is declared in the fleet but its backend is not "
        "available in this build yet (local stores only)"
    )
