"""Object stores: one protocol, a module per backend (local, s3, azure, gcs). Backends take
plain values; platform_orchestration/stores.py opens them from fleet entries."""

from __future__ import annotations

from platform_orchestration.storage.base import (
    ConditionalWrites,
    Immutability,
    HasDirectories,
    IncompleteUpload,
    ObjectInfo,
    ObjectLocked,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    PreconditionFailed,
    ReportsEncryptionAtRest,
    StoreError,
    read_bytes,
    reads_over_network,
    write_bytes,
)
from platform_orchestration.storage.counting import CountingStore
from platform_orchestration.storage.local import LocalObjectStore

__all__ = [
    "ConditionalWrites",
    "CountingStore",
    "HasDirectories",
    "IncompleteUpload",
    "LocalObjectStore",
    "Immutability",
    "ObjectInfo",
    "ObjectLocked",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "PreconditionFailed",
    "ReportsEncryptionAtRest",
    "StoreError",
    "read_bytes",
    "reads_over_network",
    "write_bytes",
]

