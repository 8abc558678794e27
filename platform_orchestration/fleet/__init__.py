"""The fleet file: one YAML file declaring clusters, backup stores, databases and policies.

``load_fleet(path)`` returns a frozen :class:`Fleet` or raises :class:`FleetError` whose lines
read ``FILE:LINE: field.path: what was expected``. See ``docs/fleet.md`` for the file format.
"""

from __future__ import annotations

from platform_orchestration.fleet.durations import format_duration, parse_duration
from platform_orchestration.fleet.loader import (
    FLEET_PATH_ENV,
    FleetError,
    fleet_path_from_env,
    load_fleet,
)
from platform_orchestration.fleet.model import (
    STORE_KINDS,
    AzureStoreSpec,
    Cloud,
    Cluster,
    ClusterRole,
    Database,
    DrillPolicy,
    Duration,
    Fleet,
    GcsStoreSpec,
    Identifier,
    ImmutabilitySpec,
    KubernetesCluster,
    KubernetesWorkload,
    LocalStoreSpec,
    Policy,
    RetentionPolicy,
    S3StoreSpec,
    SecretRef,
    Store,
    StoreKind,
    UnknownNameError,
)

__all__ = [
    "FLEET_PATH_ENV",
    "STORE_KINDS",
    "AzureStoreSpec",
    "Cloud",
    "Cluster",
    "ClusterRole",
    "Database",
    "DrillPolicy",
    "Duration",
    "Fleet",
    "FleetError",
    "GcsStoreSpec",
    "Identifier",
    "ImmutabilitySpec",
    "KubernetesCluster",
    "KubernetesWorkload",
    "LocalStoreSpec",
    "Policy",
    "RetentionPolicy",
    "S3StoreSpec",
    "SecretRef",
    "Store",
    "StoreKind",
    "UnknownNameError",
    "fleet_path_from_env",
    "format_duration",
    "load_fleet",
    "parse_duration",
]
