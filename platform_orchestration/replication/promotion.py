"""The runbook's real failover: promote a standby, then re-point the old primary as its standby.

``promote`` refuses unless the confirmation is the standby's own name, and refuses while the old
primary still accepts writes (fence it first: two primaries taking writes is the one outcome worse
than an outage). ``repoint`` turns the stopped old primary into a standby of the new one:
``pg_rewind`` when the old primary's data directory allows it (data checksums or
``wal_log_hints``, read from ``pg_controldata``), else a fresh pg_basebackup seed, keeping the old
data directory aside (never deleted by us).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import psycopg

from platform_orchestration.clock import utc_now
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.postgres.binaries import PgInstall
from platform_orchestration.postgres.cluster import local_cluster
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.replication.conninfo import passfile_for, primary_conninfo, write_passfile
from platform_orchestration.replication.drill import promote_and_write
from platform_orchestration.replication.seed import create_slot, release_stale_slot, standby_settings
from platform_orchestration.replication.seed import seed_by_basebackup, start_standby
from platform_orchestration.postgres.server_user import as_server_user, hand_to_server_user
from platform_orchestration.replication.server import (
    ReplicationFailed,
    ReplicationRefused,
    run_tool,
    server_major,
    write_standby_settings,
)
from platform_orchestration.replication.target import StandbyTarget

REWIND_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True)
class PromotionResult:
    standby: str
    promoted_at: datetime
    rto_seconds: float
    timeline: int
    replayed_lsn: str
    old_primary_reachable: bool


def _answers_as_primary(connection: PgConnection) -> bool | None:
    """True if the server accepts writes, False if it is in recovery, None if it cannot be reached."""
    try:
        with connection.connect(autocommit=True, connect_timeout=3) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except (psycopg.Error, PlatformError):
        return None


def promote(target: StandbyTarget, *, confirm: str) -> PromotionResult:
    """Promote ``target``'s standby; ``confirm`` must be its name. ReplicationRefused (nothing done)
    when it is not, when the standby is not in recovery, or while the old primary accepts writes."""
    if confirm != target.name:
        raise ReplicationRefused(f"promotion of {target.name} not confirmed: type the standby's name "
                                 f"({target.name}) as the confirmation, got {confirm!r}")
    standby_role = _answers_as_primary(target.standby)
    if standby_role is None:
        raise ReplicationFailed(f"promotion of {target.name}: the standby cannot be reached "
                                f"({target.standby.display()})")
    if standby_role:
        raise ReplicationRefused(f"promotion of {target.name}: it is not in recovery (already promoted?)")
    old = _answers_as_primary(target.primary)
    if old:
        raise ReplicationRefused(f"promotion of {target.name}: the primary {target.primary_name} still accepts writes "
                                 f"({target.primary.display()}): stop (fence) it first, or two primaries would "
                                 "take writes")
    promoted_at = utc_now()
    rto, timeline, replayed = promote_and_write(target.standby)
    return PromotionResult(standby=target.name, promoted_at=promoted_at, rto_seconds=rto, timeline=timeline,
                           replayed_lsn=replayed, old_primary_reachable=old is not None)


@dataclass(frozen=True)
class RepointResult:
    cluster: str
    method: Literal["rewind", "reseed"]
    data_dir: Path
    port: int
    seconds: float
    kept_aside: Path | None = None
    reason: str = ""


def rewind_possible(install: PgInstall, data_dir: Path) -> tuple[bool, str]:
    """Whether pg_rewind can work on ``data_dir`` (data checksums or wal_log_hints), and why (not)."""
    result = subprocess.run([install.tool("pg_controldata"), "-D", str(data_dir)], capture_output=True, text=True,
                            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        return False, f"pg_controldata failed: {one_line(result.stderr)}"
    text = result.stdout
    checksums = re.search(r"Data page checksum version:\s+(\d+)", text)
    hints = re.search(r"wal_log_hints setting:\s+(\w+)", text)
    if checksums and checksums.group(1) != "0":
        return True, "data checksums are on"
    if hints and hints.group(1) == "on":
        return True, "wal_log_hints is on"
    return False, "neither data checksums nor wal_log_hints are on (pg_rewind needs one of them)"


def repoint(*, old_primary_dir: Path, old_primary_name: str, new_primary_name: str, new_primary: PgConnection,
            stream_dsn: str, stream_password: str | None, port: int,
            method: Literal["auto", "rewind", "reseed"] = "auto", timeout: float = 300.0) -> RepointResult:
    """Make the stopped old primary in ``old_primary_dir`` a standby of ``new_primary`` (streaming
    with ``stream_dsn`` through a slot named after it)."""
    what = f"re-pointing {old_primary_name} at {new_primary_name}"
    started = time.monotonic()
    major, _version = server_major(new_primary)
    cluster = local_cluster(Path(old_primary_dir).absolute(), port, major)
    install = cluster.install
    if install.major != major:
        raise ReplicationFailed(f"{what}: no PostgreSQL {major} server is installed here")
    if not cluster.is_initialised():
        raise ReplicationRefused(f"{what}: {cluster.data_dir} holds no data directory")
    if (cluster.data_dir / "postmaster.pid").exists():
        raise ReplicationRefused(f"{what}: its server is running ({cluster.data_dir}/postmaster.pid): stop it first")
    possible, reason = rewind_possible(install, cluster.data_dir)
    if method == "rewind" and not possible:
        raise ReplicationRefused(f"{what}: pg_rewind cannot work here: {reason}; re-seed instead (method reseed)")
    slot = old_primary_name.replace("-", "_")
    target = StandbyTarget(name=old_primary_name, primary_name=new_primary_name, slot=slot, standby=cluster.connection(),
                           primary=new_primary, stream_dsn=stream_dsn, stream_password=stream_password)
    if method == "reseed" or not possible:
        kept = cluster.data_dir.with_name(f"data.before-reseed-{time.strftime('%Y%m%dT%H%M%S')}")
        cluster.data_dir.rename(kept)
        seeded = seed_by_basebackup(target, cluster.base_dir, timeout=timeout)
        return RepointResult(cluster=old_primary_name, method="reseed", data_dir=seeded.data_dir, port=seeded.port,
                             seconds=time.monotonic() - started, kept_aside=kept, reason=reason)
    passfile = write_passfile(passfile_for(cluster.base_dir), stream_dsn, stream_password) if stream_password else None
    # pg_rewind reads the new primary as a normal (not replication) client: the platform's own login.
    source = new_primary.dsn
    if new_primary.password:
        source = primary_conninfo(new_primary.dsn, "pg_rewind", write_passfile(
            cluster.base_dir / "replication" / "pgpass-rewind", new_primary.dsn, new_primary.password))
        source += f" dbname={new_primary.dbname or 'postgres'}"
    release_stale_slot(new_primary, slot, old_primary_name)
    create_slot(new_primary, slot)
    try:
        run_tool(as_server_user([install.tool("pg_rewind"), "-D", str(cluster.data_dir), "--source-server", source,
                                 "--no-sync"]),
                 what=f"{what}: pg_rewind", timeout=REWIND_TIMEOUT_SECONDS, secrets=[new_primary.password])
    finally:
        (cluster.base_dir / "replication" / "pgpass-rewind").unlink(missing_ok=True)
    write_standby_settings(cluster.data_dir, standby_settings(target, passfile, None))
    hand_to_server_user(cluster.data_dir)
    start_standby(cluster, what=what, timeout=timeout)
    return RepointResult(cluster=old_primary_name, method="rewind", data_dir=cluster.data_dir, port=port,
                         seconds=time.monotonic() - started, reason=reason)
