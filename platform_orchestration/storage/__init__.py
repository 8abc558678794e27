"""Object stores: one protocol, a module per backend (local now; s3, azure, gcs beside it)."""

from __future__ import annotations

from platform_orchestration.storage.base import (
    HasDirectories,
    IncompleteUpload,
    ObjectInfo,
    ObjectLocked,
    ObjectNotFound,
    ObjectStore,
    ObjectWriter,
    StoreError,
    read_bytes,
    write_bytes,
)
from platform_orchestration.storage.local import LocalObjectStore

__all__ = [
    "HasDirectories",
    "IncompleteUpload",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectLocked",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectWriter",
    "StoreError",
    "open_store",
    "read_bytes",
    "write_bytes",
]


def open_store(spec, secrets=None) -> ObjectStore:  # noqa: ANN001 - a fleet StoreSpec, a SecretProvider
    """The store a fleet entry describes, its credentials resolved through `secrets`.

    Cloud backends are imported on first use: a fleet of local stores never pays for
    the cloud SDKs."""
    if spec.kind == "local":
        return LocalObjectStore(spec.name, spec.path)
    credentials: dict[str, str] = {}
    if spec.credentials:
        if secrets is None:
            raise StoreError(f"store {spec.name}: credentials are declared but no secret provider was given")
        credentials = {field: secrets.resolve(ref) for field, ref in spec.credentials.items()}
    if spec.kind == "s3":
        from platform_orchestration.storage.s3 import S3ObjectStore

        return S3ObjectStore.from_spec(spec, credentials)
    if spec.kind == "azure":
        from platform_orchestration.storage.azure import AzureObjectStore

        return AzureObjectStore.from_spec(spec, credentials)
    if spec.kind == "gcs":
        from platform_orchestration.storage.gcs import GcsObjectStore

        return GcsObjectStore.from_spec(spec, credentials)
    raise StoreError(f"store {spec.name}: unknown kind {spec.kind!r}")
