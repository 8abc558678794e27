"""Throwaway clusters and work directories leave nothing behind, even when their owner is killed.

Real PostgreSQL servers (run as `nobody` when we are root) in a real child process that is
SIGKILLed: no `finally` runs, so only the parent-death signal and the reaper can clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from platform_orchestration.ownership import (
    Lease,
    ProcessIdentity,
    leased_work_directory,
    leases,
    reap_abandoned,
)
from platform_orchestration.postgres import ephemeral_cluster
from platform_orchestration.storage import LocalObjectStore


def test_an_ephemeral_cluster_leaves_no_directory_behind():
    with ephemeral_cluster(16) as cluster:
        data_dir = cluster.data_dir
        assert (data_dir / "PG_VERSION").is_file()
        [lease] = [lease for lease in leases() if str(cluster.base_dir) in lease.paths]
        assert lease.server and lease.server["port"] == cluster.port
    assert not cluster.base_dir.exists()
    assert not lease.file.exists()


_HOLDER = textwrap.dedent("""
    import json, sys, time
    from platform_orchestration.ownership import leased_work_directory
    from platform_orchestration.postgres import ephemeral_cluster
    with ephemeral_cluster(16) as cluster:
        work = leased_work_directory("restore-")
        (work / "dump.pgdump").write_bytes(b"x" * 1_000_000)
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        print(json.dumps({"base": str(cluster.base_dir), "work": str(work), "postmaster": postmaster}), flush=True)
        time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return state[state.rindex(")") + 2] != "Z"


@pytest.mark.slow
def test_a_killed_owner_takes_its_server_with_it_and_the_reaper_removes_its_directories():
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER], stdout=subprocess.PIPE, text=True)
    held = json.loads(holder.stdout.readline())
    assert _alive(held["postmaster"]) and Path(held["base"]).is_dir() and Path(held["work"]).is_dir()

    # A reap while the owner lives touches nothing of it.
    live = reap_abandoned()
    assert held["base"] not in live.paths_removed and Path(held["work"]).is_dir() and _alive(held["postmaster"])

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 10
    while _alive(held["postmaster"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(held["postmaster"]), "the server outlived its owner (no parent-death signal)"
    assert Path(held["base"]).is_dir() and Path(held["work"]).is_dir()  # no finally ran

    dry = reap_abandoned(dry_run=True)
    assert {held["base"], held["work"]} <= set(dry.paths_removed) and Path(held["work"]).is_dir()
    reaped = reap_abandoned()
    assert {held["base"], held["work"]} <= set(reaped.paths_removed)
    assert reaped.bytes_freed >= 1_000_000
    assert not Path(held["base"]).exists() and not Path(held["work"]).exists()
    assert not any(held["work"] in lease.paths or held["base"] in lease.paths for lease in leases())


def test_the_reaper_stops_a_server_that_outlived_its_owner(tmp_path: Path):
    """Where no parent-death signal reached it (a server started through pg_ctl, or on a
    system without one), the reaper stops the server itself before removing its directory."""
    with ephemeral_cluster(16) as cluster:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True)
        gone = ProcessIdentity(ProcessIdentity.current().boot, ProcessIdentity.current().pid_namespace,
                               int(dead.stdout), 1)
        lease = Lease(kind="cluster", owner=gone, paths=[str(cluster.base_dir)], created=True)
        lease._write()
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
        reaped = reap_abandoned()
        assert postmaster in reaped.servers_stopped and not _alive(postmaster)
        assert str(cluster.base_dir) in reaped.paths_removed and not cluster.base_dir.exists()


def test_a_live_owners_finished_work_directory_lease_goes_at_its_next_one(tmp_path: Path):
    first = leased_work_directory("restore-", tmp_path)
    first.rmdir()  # what restore_backup's finally does
    second = leased_work_directory("restore-", tmp_path)
    paths = [p for lease in leases() for p in lease.paths]
    assert str(first) not in paths and str(second) in paths
    second.rmdir()
    reap_abandoned()
    assert str(second) not in [p for lease in leases() for p in lease.paths]


def test_a_dead_writers_partial_file_is_swept_at_once_a_live_ones_never(tmp_path: Path):
    store = LocalObjectStore("local", tmp_path / "store")
    killed = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        from platform_orchestration.storage import LocalObjectStore
        writer = LocalObjectStore("local", {str(tmp_path / 'store')!r}).open_writer("backups/db/1/dump")
        writer.write(b"x" * 1000)
        writer._file.flush()
        print("written", flush=True)
        import time; time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "written"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    live = store.open_writer("backups/db/2/dump")
    live.write(b"y")
    a_day_ago = datetime.now(timezone.utc) - timedelta(days=1)
    [dead] = store.incomplete_uploads("backups/db/", older_than=a_day_ago)
    assert dead.key == "backups/db/1/dump" and dead.writer_gone
    assert [u.key for u in store.discard_incomplete("backups/db/", older_than=a_day_ago)] == ["backups/db/1/dump"]
    assert [u.key for u in store.incomplete_uploads("backups/db/")] == ["backups/db/2/dump"]
    live.commit()
    assert [o.key for o in store.list("backups/db/")] == ["backups/db/2/dump"]
