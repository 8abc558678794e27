"""A throwaway copy of a standby: pg_basebackup from the standby itself (the primary is not read),
configured as a standby of nothing (no upstream, no archive, no slot: it must never consume its
source's slot nor write into its repository), started as a child of this process with a lease,
and deleted whatever happens, as the drills' throwaway clusters are
(:func:`~platform_orchestration.postgres.ephemeral_cluster`).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from platform_orchestration.ownership import Lease, reap_abandoned
from platform_orchestration.postgres.cluster import ClusterError, LocalCluster, free_port, local_cluster, start_owned_server
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.replication.server import (
    ReplicationFailed,
    hand_to_server_user,
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
    and the seconds the copy took; stopped and deleted on exit."""
    reap_abandoned()
    major, _version = server_major(source)
    parent = Path(parent_dir) if parent_dir is not None else Path(tempfile.gettempdir())
    base_dir = parent / f"pg-fdrill-{uuid.uuid4().hex[:12]}"  # short: socket paths stop at 107 bytes
    lease = Lease.take("cluster", [base_dir])
    server: subprocess.Popen | None = None
    cluster: LocalCluster | None = None
    started = time.monotonic()
    try:
        base_dir.mkdir(mode=0o700)
        cluster = local_cluster(base_dir, free_port(), major)
        lease.add_paths(cluster.base_dir)
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
        for attempt in range(3):
            try:
                server = start_owned_server(cluster)
                break
            except ClusterError as exc:
                if attempt == 2 or "Address already in use" not in str(exc):
                    raise ReplicationFailed(f"{what}: the copy did not start: {exc}") from None
                cluster.port = free_port()
        lease.record_server(server.pid, cluster.port, cluster.data_dir)
        yield cluster, copied
    finally:
        if cluster is not None:
            with contextlib.suppress(ClusterError, subprocess.SubprocessError):
                cluster.stop()
        if server is not None:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(base_dir, ignore_errors=True)
        if cluster is not None:
            shutil.rmtree(cluster.base_dir, ignore_errors=True)
        lease.release()
