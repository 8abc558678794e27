"""Physical backups (barman-cloud), measured against the stock tools on the same cluster in one run.

    python -m benchmarks.physical [--gib 1.0] [--repeat 2] [--pgbench-seconds 60] [--output FILE]

One throwaway PostgreSQL 16 server (as nobody when we are root) holding a mixed database of
--gib GiB (benchmarks.backup_restore's generator), archiving its WAL with
barman-cloud-wal-archive into a moto S3 server started for the run (zstd WAL, lz4 base
backups: the fleet's defaults). Then, each reported as a ratio to a baseline measured in this run:

* base backup: the whole ``platform-dr base-backup CLUSTER`` process with its defaults (fleet
  file, credentials, barman-cloud-backup, then barman's record read back from the store: what
  the Dagster asset runs too) against ``barman-cloud-backup`` run by hand with the same options,
  environment and store, in --repeat interleaved rounds;
* the same base backup against ``pg_basebackup -Ft -X fetch`` to a local directory;
* PITR restore to ``latest`` (``restore_to_point``: restore, WAL prefetch, replay, promotion,
  verification) against a logical restore of the same database: ``CREATE DATABASE`` +
  ``pg_restore -j2`` of its ``pg_dump -Fc`` file, on a second server;
* WAL archiving under ``pgbench`` at full speed (2 clients, no think time): segments written
  and segments archived per second, the segments waiting to be archived sampled every second
  (bounded, or growing?), and how long the archiver takes to catch up once pgbench stops; then
  the archiver's ceiling: a burst of 30 finished segments, timed until all are archived.

The peak RSS of the ``platform-dr base-backup`` process itself (VmHWM; barman-cloud-backup is
its child, not counted) is recorded, with the load average (the machine is shared). Progress on stderr; a
markdown table for the README on stdout; everything in var/bench/physical.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import psycopg

from benchmarks.backup_restore import (
    _cli_env,
    _cli_with_peaks,
    _create_database,
    _drop_database,
    _run,
    generate_database,
    log,
)
from platform_orchestration import emulators
from platform_orchestration.fleet.model import Cluster, PhysicalPolicy, S3StoreSpec
from platform_orchestration.physical.archiving import Segment, switch_and_wait_archived
from platform_orchestration.physical.base_backup import backup_name_for
from platform_orchestration.physical.pitr import RecoveryTarget, restore_to_point, stop_restored
from platform_orchestration.physical.repository import repository_for
from platform_orchestration.physical.settings import apply_archiving, tool_environment
from platform_orchestration.physical.tools import barman_tools
from platform_orchestration.postgres import client_tools_for, ephemeral_cluster
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.stores import store_from_spec

ROOT = Path(__file__).resolve().parent.parent
CREDENTIALS = {"access_key_id": "bench-access-key", "secret_access_key": "bench-secret-key"}
REGION = "us-east-1"
BURST = 30
GOALS = {"base_backup_vs_barman": 1.10, "pitr_vs_logical": 0.50}


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _delete_backup(store, repository, backup_id: str) -> None:  # noqa: ANN001
    for info in list(store.list(f"{repository.base_prefix}{backup_id}/")):
        store.delete(info.key)


def _backup_ids(store, repository) -> set[str]:  # noqa: ANN001
    return {info.key[len(repository.base_prefix):].split("/")[0] for info in store.list(repository.base_prefix)}


def _write_fleet(path: Path, spec: S3StoreSpec, dsn: str) -> Path:
    path.write_text(f"""\
clusters:
  - name: bench-pg
    cloud: aws
    region: {REGION}
    physical: {{store: {spec.name}, policy: bench, dsn: "{dsn}"}}
stores:
  - name: {spec.name}
    kind: s3
    bucket: {spec.bucket}
    region: {REGION}
    endpoint_url: {spec.endpoint_url}
    credentials: {{access_key_id: {{env: BENCH_S3_KEY_ID}}, secret_access_key: {{env: BENCH_S3_SECRET}}}}
databases: []
policies:
  - name: bench
    rpo: 1h
    stores: [{spec.name}]
    drill: {{every: 1d, rto: 1h}}
    retention: {{keep_last: 3}}
    physical: {{base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d}}
""")
    return path


def bench_base_backups(tools, repository, store, connection, fleet: Path, workdir: Path,  # noqa: ANN001
                       repeat: int) -> dict:
    """`platform-dr base-backup` (a whole process, with its defaults: lz4, -J 2) against the
    same barman-cloud-backup command by hand, interleaved; every backup but the first of ours
    is deleted again (moto keeps them in memory)."""
    ours: list[float] = []
    peaks: list[int] = []
    hand: list[float] = []
    kept: str | None = None
    env = _cli_env(BENCH_S3_KEY_ID=CREDENTIALS["access_key_id"], BENCH_S3_SECRET=CREDENTIALS["secret_access_key"])
    for round_number in range(repeat):
        order = ("ours", "hand") if round_number % 2 == 0 else ("hand", "ours")
        for who in order:
            before = _backup_ids(store, repository)
            os.sync()
            if who == "ours":
                sample = _cli_with_peaks(["--fleet", str(fleet), "base-backup", "bench-pg"], env,
                                         workdir / "peak")
                ours.append(sample.seconds)
                peaks.append(sample.peak_rss_bytes)
            else:
                name = backup_name_for(datetime.now(timezone.utc)) + "-hand"
                command = [*tools.command("backup"), *repository.connection_options(), "--lz4", "-J", "2",
                           "--immediate-checkpoint", "-d", connection.dsn, "-n", name, repository.url,
                           repository.server_name]
                with tool_environment(repository) as tool_env:
                    hand.append(_run(command, tool_env))
            for backup_id in sorted(_backup_ids(store, repository) - before):
                if who == "ours" and kept is None:
                    kept = backup_id
                else:
                    _delete_backup(store, repository, backup_id)
            log(f"base backup round {round_number + 1} {who}: {(ours if who == 'ours' else hand)[-1]:.1f}s")
    return {"ours_seconds": ours, "ours_peak_rss_bytes": peaks, "barman_by_hand_seconds": hand, "kept_backup": kept}


def bench_pg_basebackup(cluster, workdir: Path) -> float:  # noqa: ANN001
    tools = client_tools_for(cluster.install.major)
    target = workdir / "pg_basebackup"
    seconds = _run([tools.tool("pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
                    "-Ft", "-X", "fetch", "-c", "fast", "-D", str(target)], dict(os.environ))
    shutil.rmtree(target)
    return seconds


def bench_restores(tools, repository, store, source, target, database: str, workdir: Path) -> dict:  # noqa: ANN001
    os.sync()
    result = restore_to_point(tools, repository, RecoveryTarget(), workdir / "pitr", store=store)
    try:
        with psycopg.connect(f"host=127.0.0.1 port={result.port} user=postgres dbname={database}") as conn:
            restored_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    finally:
        stop_restored(result, remove=True)
    log(f"PITR restore to latest: RTO {result.rto_seconds:.1f}s (restore {result.restore_seconds:.1f}s, "
        f"recovery {result.recovery_seconds:.1f}s, {result.prefetched_segments} segment(s) prefetched)")
    tools_pg = client_tools_for(source.install.major)
    dump = workdir / "logical.dump"
    env = dict(os.environ)
    dump_seconds = _run([tools_pg.tool("pg_dump"), "-Fc", "-h", "127.0.0.1", "-p", str(source.port), "-U",
                         "postgres", "-f", str(dump), database], env)
    os.sync()
    started = time.perf_counter()
    _drop_database(target, database)
    _create_database(target, database)
    _run([tools_pg.tool("pg_restore"), "-j", "2", "--no-owner", "--no-privileges", "-h", "127.0.0.1", "-p",
          str(target.port), "-U", "postgres", "-d", database, str(dump)], env)
    logical = time.perf_counter() - started
    log(f"logical restore (CREATE DATABASE + pg_restore -j2): {logical:.1f}s (pg_dump took {dump_seconds:.1f}s)")
    dump.unlink()
    return {"pitr_rto_seconds": result.rto_seconds, "pitr_restore_seconds": result.restore_seconds,
            "pitr_recovery_seconds": result.recovery_seconds, "prefetched_segments": result.prefetched_segments,
            "restored_database_bytes": restored_bytes, "logical_restore_seconds": logical,
            "pg_dump_seconds": dump_seconds}


def _archiver_sample(dsn: str) -> tuple[float, int, int, str | None]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        current, archived, last = conn.execute(
            "SELECT pg_walfile_name(pg_current_wal_lsn()), archived_count, last_archived_wal "
            "FROM pg_stat_archiver").fetchone()
    written = Segment.parse(current).number  # type: ignore[union-attr]
    done = Segment.parse(last).number if last else 0  # type: ignore[union-attr]
    return time.monotonic(), written, archived, max(0, written - done - 1)


def bench_archiving(cluster, seconds: int) -> dict:  # noqa: ANN001
    """pgbench at full speed on a scale-10 database; the archiver sampled every second."""
    dsn = cluster.connection("postgres").dsn
    tools = client_tools_for(cluster.install.major)
    env = dict(os.environ)
    _run([tools.tool("pgbench"), "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", str(cluster.port),
          "-U", "postgres", "postgres"], env)
    _wait_drained(dsn, timeout=600)
    samples: list[tuple[float, int, int, int]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(_archiver_sample(dsn))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    bench = subprocess.run([tools.tool("pgbench"), "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-h",
                            "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "postgres"],
                           capture_output=True, text=True, env=env)
    load_end = time.monotonic()
    stop.set()
    sampler.join()
    tps = next((round(float(line.split("=")[1].split()[0])) for line in bench.stdout.splitlines()
                if line.startswith("tps")), None)
    drain = _wait_drained(dsn, timeout=600)
    # The archiver's own ceiling: a burst of BURST finished segments (a row and a switch each),
    # timed until all are archived.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_burst (at timestamptz)")
        burst_started = time.monotonic()
        for _ in range(BURST):
            conn.execute("INSERT INTO bench_burst VALUES (now())")
            conn.execute("SELECT pg_switch_wal()")
    burst_drained = _wait_drained(dsn, timeout=600)
    first, last = samples[0], samples[-1]
    span = last[0] - first[0]
    half = len(samples) // 2
    pending = [s[3] for s in samples]
    return {"pgbench_seconds": seconds, "pgbench_tps": tps,
            "segments_written_per_s": (last[1] - first[1]) / span,
            "segments_archived_per_s": (last[2] - first[2]) / span,
            "pending_max": max(pending), "pending_first_half_max": max(pending[:half] or [0]),
            "pending_second_half_max": max(pending[half:] or [0]), "pending_at_end": pending[-1],
            "drain_seconds_after_load": drain - load_end if drain else None,
            "burst_segments": BURST,
            "burst_segments_per_s": BURST / (burst_drained - burst_started) if burst_drained else None,
            "samples": [{"t": round(s[0] - first[0], 1), "written": s[1], "archived": s[2], "pending": s[3]}
                        for s in samples]}


def _wait_drained(dsn: str, timeout: float) -> float | None:
    """Wait until no finished segment waits to be archived; when that was (monotonic), or None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now, _written, _archived, pending = _archiver_sample(dsn)
        if pending == 0:
            return now
        time.sleep(0.5)
    return None


def _seconds(value: float | None) -> str:
    return "never (timeout)" if value is None else f"{value:.1f} s"


def _ratio(ours: float, baseline: float) -> float:
    return round(ours / baseline, 2) if baseline else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.physical")
    parser.add_argument("--gib", type=float, default=1.0, help="size of the mixed database (default 1.0)")
    parser.add_argument("--repeat", type=int, default=2, help="interleaved base-backup rounds (default 2)")
    parser.add_argument("--pgbench-seconds", type=int, default=60, help="pgbench duration (default 60)")
    parser.add_argument("--output", type=Path, default=ROOT / "var" / "bench" / "physical.json")
    args = parser.parse_args(argv)

    report: dict = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "loadavg_start": _loadavg(), "machine": platform.platform(), "cores": os.cpu_count()}
    tools = barman_tools()
    report["barman"] = tools.version
    workdir = Path(tempfile.mkdtemp(prefix="bench-physical-"))
    s3 = emulators.moto_server(free_port()).start(workdir / "logs")
    try:
        bucket = "bench-physical"
        boto3.client("s3", endpoint_url=s3.endpoint, region_name=REGION, aws_access_key_id=CREDENTIALS[
            "access_key_id"], aws_secret_access_key=CREDENTIALS["secret_access_key"]).create_bucket(Bucket=bucket)
        spec = S3StoreSpec(name="bench-s3", bucket=bucket, region=REGION, endpoint_url=s3.endpoint)
        store = store_from_spec(spec, CREDENTIALS)
        with ephemeral_cluster(16) as source, ephemeral_cluster(16) as target:
            log(f"generating a {args.gib} GiB mixed database")
            dataset = generate_database(source, "bench", args.gib)
            report["database_bytes"] = dataset.database_bytes
            cluster = Cluster(name="bench-pg", cloud="aws", region=REGION,
                              physical={"store": spec.name, "policy": "p", "dsn": source.connection().dsn})
            repository = repository_for(cluster, spec, CREDENTIALS,
                                        PhysicalPolicy(base_backup="1d", wal_max_lag="5m", pitr_window="7d"))
            apply_archiving(source, tools, repository)
            connection = source.connection()
            switch_and_wait_archived(connection, store, repository)
            log("base backups: ours (take_base_backup) and barman-cloud-backup by hand, interleaved")
            fleet = _write_fleet(workdir / "fleet.yaml", spec, connection.dsn)
            report["base_backup"] = bench_base_backups(tools, repository, store, connection, fleet, workdir,
                                                       args.repeat)
            report["pg_basebackup_seconds"] = bench_pg_basebackup(source, workdir)
            log(f"pg_basebackup -Ft: {report['pg_basebackup_seconds']:.1f}s")
            switch_and_wait_archived(connection, store, repository)
            report["restore"] = bench_restores(tools, repository, store, source, target, "bench", workdir)
            log(f"WAL archiving under pgbench for {args.pgbench_seconds}s")
            report["archiving"] = bench_archiving(source, args.pgbench_seconds)
    finally:
        s3.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report["loadavg_end"] = _loadavg()

    base = report["base_backup"]
    ours, hand = statistics.median(base["ours_seconds"]), statistics.median(base["barman_by_hand_seconds"])
    restore, archiving = report["restore"], report["archiving"]
    report["ratios"] = {
        "base_backup_vs_barman": _ratio(ours, hand),
        "base_backup_vs_pg_basebackup": _ratio(ours, report["pg_basebackup_seconds"]),
        "pitr_vs_logical": _ratio(restore["pitr_rto_seconds"], restore["logical_restore_seconds"]),
        "archived_vs_written": _ratio(archiving["segments_archived_per_s"], archiving["segments_written_per_s"]),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))

    r = report["ratios"]
    size = report["database_bytes"] / 2**30
    print(f"Physical benchmark, {report['started_at']}: a {size:.2f} GiB mixed database on PostgreSQL 16, "
          f"moto S3, barman-cloud {report['barman']}; load average {report['loadavg_start']} at the start, "
          f"{report['loadavg_end']} at the end, {report['cores']} cores\n")
    print("| what | ours | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| base backup (`platform-dr base-backup` path, median of {len(base['ours_seconds'])}) | "
          f"{ours:.1f} s | `barman-cloud-backup` by hand, same options and store: {hand:.1f} s | "
          f"**{r['base_backup_vs_barman']}x** (goal 1.1x) |")
    print(f"| base backup | {ours:.1f} s | `pg_basebackup -Ft -X fetch` to a local directory: "
          f"{report['pg_basebackup_seconds']:.1f} s | {r['base_backup_vs_pg_basebackup']}x |")
    print(f"| PITR restore to `latest` (RTO) | {restore['pitr_rto_seconds']:.1f} s (restore "
          f"{restore['pitr_restore_seconds']:.1f} s, replay {restore['pitr_recovery_seconds']:.1f} s) | "
          f"`CREATE DATABASE` + `pg_restore -j2` of its dump: {restore['logical_restore_seconds']:.1f} s | "
          f"**{r['pitr_vs_logical']}x** (goal 0.5x) |")
    print(f"| WAL archiving under `pgbench -c4 -j2` ({archiving['pgbench_seconds']} s, {archiving['pgbench_tps']} tps) | "
          f"{archiving['segments_archived_per_s']:.2f} segments/s archived; waiting: max "
          f"{archiving['pending_first_half_max']} in the first half, {archiving['pending_second_half_max']} in the "
          f"second, {archiving['pending_at_end']} at the end, drained {_seconds(archiving['drain_seconds_after_load'])} "
          f"after the load | {archiving['segments_written_per_s']:.2f} segments/s written | {r['archived_vs_written']}x |")
    print(f"| WAL archiving, a burst of {archiving['burst_segments']} finished segments | "
          f"{archiving['burst_segments_per_s']:.2f} segments/s archived (one barman-cloud-wal-archive process "
          f"each) | {archiving['segments_written_per_s']:.2f} segments/s written by pgbench at full speed | "
          f"{_ratio(archiving['burst_segments_per_s'], archiving['segments_written_per_s'])}x headroom |")
    print(f"| peak RSS of `platform-dr base-backup` (its own process) | "
          f"{max(base['ours_peak_rss_bytes']) / 2**20:.0f} MiB | | goal < 200 MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
