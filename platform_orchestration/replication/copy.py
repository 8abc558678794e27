"""A throwaway copy of a standby: pg_basebackup from the standby itself (the primary is not read),
configured as a standby of nothing (no upstream, no archive, no slot: it must never consume its
source's slot nor write into its repository), started as a child of this process with a lease,
and deleted whatever happens, as the drills' throwaway clusters are
(:func:`~platform_orchestration.postgres.ephemeral_cluster`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from platform_orchestration.postgres.cluster import ClusterError, LocalCluster, leased_server
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.server_user import hand_to_server_user
from platform_orchestration.replication.server import (
    ReplicationFailed,
    run_tool,
    server_major,
    write_standby_settings,
)

COPY_TIMEOUT_SECONDS = 6 * 3600
_COPY_SETTINGS = {"primary_conninfo": "", "primary_slot_name": "", "restore_command": "", "archive_mode": "off",
                  "hot_standby": "on"}


@contextlib.contextmanager
def throwaway_copy(source: PgConnection, *, what: str, parent_dir: Path | None = None) -> Iterator[tuple[LocalCluster, float]]:
    """A running copy of the standby behind ``source`` (still in recovery, ready to be promoted),
    and the seconds the copy took; stopped and deleted on exit (:func:`leased_server`)."""
    major, _version = server_major(source)
    started = time.monotonic()
    with leased_server("pg-fdrill-", major, parent_dir) as leased:
        cluster = leased.cluster
        if cluster.install.major != major:
            raise ReplicationFailed(f"{what}: no PostgreSQL {major} server is installed here")
        cluster.base_dir.mkdir(parents=True, exist_ok=True)
        cluster.data_dir.mkdir(mode=0o700, exist_ok=True)
        cluster.socket_dir.mkdir(exist_ok=True)
        cluster.log_file.touch()
        run_tool([cluster.install.tool("pg_basebackup"), "-d", source.dsn, "-D", str(cluster.data_dir),
                  "-X", "stream", "-c", "fast", "--no-sync"],
                 what=f"{what}: copying the standby", timeout=COPY_TIMEOUT_SECONDS, env=source.tool_env(),
                 secrets=[source.password])
        write_standby_settings(cluster.data_dir, _COPY_SETTINGS)
        for path in (cluster.socket_dir, cluster.log_file):
            hand_to_server_user(path)
        copied = time.monotonic() - started
        try:
            leased.start(retry=lambda exc: "Address already in use" in str(exc))
        except ClusterError as exc:
            raise ReplicationFailed(f"{what}: the copy did not start: {exc}") from None
        yield cluster, copied
