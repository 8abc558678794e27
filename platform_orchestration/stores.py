"""The one place a fleet's store entries become open stores.

Store backends (storage/) take plain values and know nothing of fleet files; this factory
translates a validated `StoreSpec` and the secrets its credentials reference into the
backend's constructor. Cloud backends are imported on first use: a fleet of local stores
never pays for the cloud SDKs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from platform_orchestration.fleet.model import Store as StoreSpec
from platform_orchestration.secrets import SecretProvider
from platform_orchestration.storage import (
    Immutability,
    LocalObjectStore,
    ObjectStore,
    StoreError,
)


def open_store(spec: StoreSpec, secrets: SecretProvider | None = None, **options: Any) -> ObjectStore:
    """The store `spec` describes, its credentials resolved through `secrets`. `options` are
    the backend constructor's tuning keywords (page sizes, retries, timeouts)."""
    credentials: dict[str, str] = {}
    if getattr(spec, "credentials", None):
        if secrets is None:
            raise StoreError(f"store {spec.name}: credentials are declared but no secret provider was given")
        credentials = {field: secrets.resolve(ref) for field, ref in spec.credentials.items()}
    return store_from_spec(spec, credentials, **options)


def store_from_spec(spec: StoreSpec, credentials: Mapping[str, str], **options: Any) -> ObjectStore:
    """The store `spec` describes, with its already resolved `credentials` (field -> value)."""
    unknown = sorted(set(credentials) - set(spec.credential_names))
    if unknown:
        raise StoreError(f"store {spec.name}: unknown credential(s) {', '.join(unknown)} "
                         f"(accepted: {', '.join(sorted(spec.credential_names)) or 'none'})")
    if spec.kind == "local":
        return LocalObjectStore(spec.name, spec.path)
    immutability = (Immutability(spec.immutability.mode, spec.immutability.retain)
                    if spec.immutability is not None else None)
    if spec.kind == "s3":
        from platform_orchestration.storage.s3 import S3ObjectStore

        sse = spec.server_side_encryption
        return S3ObjectStore(spec.name, spec.bucket, prefix=spec.prefix, region=spec.region,
                             endpoint_url=spec.endpoint_url, credentials=credentials,
                             immutability=immutability,
                             server_side_encryption=(sse.algorithm, sse.kms_key_id) if sse else None, **options)
    if spec.kind == "azure":
        from platform_orchestration.storage.azure import AzureObjectStore

        return AzureObjectStore(spec.name, spec.account_url, spec.container, prefix=spec.prefix,
                                immutability=immutability, account_key=credentials.get("account_key"),
                                sas_token=credentials.get("sas_token"),
                                connection_string=credentials.get("connection_string"), **options)
    if spec.kind == "gcs":
        from platform_orchestration.storage.gcs import (
            GcsObjectStore,
            google_credentials,
        )

        google, project_of_key = google_credentials(spec.name, credentials, spec.endpoint_url)
        return GcsObjectStore(spec.name, spec.bucket, project=spec.project or project_of_key,
                              prefix=spec.prefix, endpoint_url=spec.endpoint_url, credentials=google,
                              immutability=immutability, **options)
    raise StoreError(f"store {spec.name}: unknown kind {spec.kind!r}")
