"""PostgreSQL tools: finding binaries, ephemeral clusters, snapshots, pg_dump and pg_restore.

Plain Python that knows nothing of Dagster, so the break-glass CLI and the Dagster
layer share it.
"""

from platform_orchestration.postgres.binaries import (
    PgInstall,
    PostgresToolsMissing,
    client_tools_for,
    find_installs,
    server_install,
)
from platform_orchestration.postgres.cluster import (
    LocalCluster,
    ephemeral_cluster,
    local_cluster,
)
from platform_orchestration.postgres.connection import PgConnection

__all__ = [
    "LocalCluster",
    "PgConnection",
    "PgInstall",
    "PostgresToolsMissing",
    "client_tools_for",
    "ephemeral_cluster",
    "local_cluster",
    "find_installs",
    "server_install",
]
