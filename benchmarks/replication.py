"""Standby clusters, measured in one run on one PostgreSQL 16 primary filled by `pgbench -i`:

    python -m benchmarks.replication [--scale 70] [--repeat 3] [--lag-seconds 20] [--quick]

* seeding: the whole `platform-dr seed-standby` process (pg_basebackup through a new slot with the
  replication login's password file, settings, start, wait until streaming) against plain
  `pg_basebackup -X stream -c fast` of the same cluster with the same login into an empty
  directory, interleaved --repeat times (medians, ratio);
* lag: replication observed from both sides every 0.25 s while `pgbench -N -c 2 -j 2` writes
  for --lag-seconds (median, p95 and max of lag in seconds and bytes);
* failover drills: the whole `platform-dr drill-failover` process, its RTO (promote to first
  accepted write) and the copy's time, against plain `pg_basebackup` of the standby.

Scale 70 is about 1 GiB of database; --quick is scale 10, one repeat, 8 s of load. Results are
printed, written to var/bench/replication.json, with the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

from platform_orchestration.fleet import load_fleet
from platform_orchestration.postgres import ephemeral_cluster
from platform_orchestration.postgres.cluster import LocalCluster, free_port, local_cluster
from platform_orchestration.protection import FleetProtection
from platform_orchestration.postgres.server_user import hand_to_server_user
from platform_orchestration.secrets import LocalSecretProvider

PASSWORD = "bench-replication-pw"
ROOT = Path(__file__).resolve().parents[1]


def _sql(dsn: str, *statements: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows: list[tuple] = []
        for statement in statements:
            cursor = conn.execute(statement)
            rows = cursor.fetchall() if cursor.description else []
        return rows


def _fleet(directory: Path, primary_port: int, standby_port: int) -> Path:
    path = directory / "fleet.yaml"
    path.write_text(f"""\
clusters:
  - {{name: pg-primary, cloud: aws, region: eu-west-1}}
  - name: pg-standby
    cloud: azure
    region: westeurope
    role: standby
    replicates: pg-primary
    standby:
      policy: gold
      dsn: host=127.0.0.1 port={standby_port} user=postgres dbname=postgres
      primary_conninfo: host=127.0.0.1 port={primary_port} user=replicator
      replication_password: {{env: BENCH_REPLICATION_PASSWORD}}
      primary_dsn: host=127.0.0.1 port={primary_port} user=postgres dbname=postgres
      directory: standby
      seed: basebackup
stores:
  - {{name: aws, kind: local, cloud: aws, path: stores/aws}}
databases: []
policies:
  - name: gold
    rpo: 1h
    stores: [aws]
    drill: {{every: 1d, rto: 10m}}
    retention: {{keep_last: 3}}
    replication: {{max_lag_bytes: 64MiB, max_lag: 30s, failover_rto: 5m, max_slot_wal: 8GiB}}
""")
    return path


def _timed(command: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(list(command), capture_output=True, text=True, env=env)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])}... failed: {result.stderr.strip()[-500:]}")
    return seconds, result.stdout


def _remove_standby(standby: LocalCluster, primary_dsn: str) -> None:
    standby.stop()
    shutil.rmtree(standby.base_dir, ignore_errors=True)
    _sql(primary_dsn, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.replication")
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale of the primary (70: about 1 GiB)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--quick", action="store_true", help="scale 10, one repeat, 8 s of load")
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.repeat, args.lag_seconds = 10, 1, 8.0
    load_start = os.getloadavg()
    os.environ["BENCH_REPLICATION_PASSWORD"] = PASSWORD
    work = Path(tempfile.mkdtemp(prefix="bench-replication-"))
    results: dict = {"scale": args.scale, "repeat": args.repeat}
    try:
        with ephemeral_cluster(16) as primary:
            dsn = primary.connection().dsn
            _sql(dsn, f"CREATE ROLE replicator REPLICATION LOGIN PASSWORD '{PASSWORD}'")
            hba = primary.data_dir / "pg_hba.conf"
            hba.write_text("host replication replicator 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            _sql(dsn, "SELECT pg_reload_conf()")
            pgbench = primary.install.tool("pgbench")
            init, _ = _timed([pgbench, "-i", "-q", "-s", str(args.scale), "-h", "127.0.0.1", "-p", str(primary.port),
                              "-U", "postgres", "postgres"])
            [(size,)] = _sql(dsn, "SELECT pg_database_size('postgres')")
            results.update(database_bytes=size, pgbench_init_seconds=init)
            print(f"primary: PostgreSQL 16, pgbench scale {args.scale}: {size / 2**30:.2f} GiB ({init:.0f}s to load)")
            standby_port = free_port()
            fleet_file = _fleet(work, primary.port, standby_port)
            cli = [sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet_file)]
            standby = local_cluster(work / "standby", standby_port, 16)
            standby = LocalCluster(standby.base_dir, standby_port, standby.install)
            baseline_dir = local_cluster(work / "baseline", 0, 16).base_dir

            # The load's dirty pages written now, not by the first contender's checkpoint.
            _sql(dsn, "CHECKPOINT")
            ours, plain, durable, breakdowns = [], [], [], []

            def seed_ours() -> None:
                seconds, out = _timed([*cli, "seed-standby", "pg-standby"])
                ours.append(seconds)
                line = next((l for l in out.splitlines() if l.startswith("time: ")), "")
                phases = {name.rsplit(" ", 1)[0]: float(name.rsplit(" ", 1)[1].rstrip("s"))
                          for name in line[len("time: "):].split(", ") if name}
                phases["process start-up, fleet and exit"] = seconds - sum(phases.values())
                breakdowns.append(phases)
                _remove_standby(standby, dsn)

            def seed_plain(no_sync: bool = True) -> None:
                baseline_dir.mkdir(parents=True, exist_ok=True)
                passfile = baseline_dir / "pgpass"
                passfile.write_text(f"127.0.0.1:{primary.port}:*:replicator:{PASSWORD}\n")
                passfile.chmod(0o600)
                seconds, _ = _timed([primary.install.tool("pg_basebackup"), "-d",
                                     f"host=127.0.0.1 port={primary.port} user=replicator passfile={passfile}",
                                     "-D", str(baseline_dir / "data"), "-X", "stream", "-c", "fast",
                                     *(["--no-sync"] if no_sync else [])])
                (plain if no_sync else durable).append(seconds)
                shutil.rmtree(baseline_dir, ignore_errors=True)

            def seed_durable() -> None:
                seed_plain(no_sync=False)

            for round_ in range(args.repeat):  # rotating who goes first
                contenders = [seed_ours, seed_plain, seed_durable]
                for contender in contenders[round_ % 3:] + contenders[:round_ % 3]:
                    contender()
            median_phases = {name: statistics.median(b[name] for b in breakdowns) for name in breakdowns[0]}
            results["seed"] = {"ours_seconds": ours, "ours_phases_median": median_phases,
                               "pg_basebackup_no_sync_seconds": plain, "pg_basebackup_seconds": durable,
                               "ratio_vs_no_sync": statistics.median(ours) / statistics.median(plain),
                               "ratio": statistics.median(ours) / statistics.median(durable)}
            print(f"seed-standby (whole command) {statistics.median(ours):.2f}s vs pg_basebackup -X stream -c fast "
                  f"{statistics.median(durable):.2f}s: {results['seed']['ratio']:.2f}x (vs the same with --no-sync "
                  f"{statistics.median(plain):.2f}s: {results['seed']['ratio_vs_no_sync']:.2f}x)")
            print("  seed-standby time: " + ", ".join(f"{k} {v:.2f}s" for k, v in median_phases.items()))

            _timed([*cli, "seed-standby", "pg-standby"])
            protection = FleetProtection(load_fleet(fleet_file), secrets=LocalSecretProvider())
            samples: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    status = protection.replication_status("pg-standby")
                    if status.lag_seconds is not None and status.lag_bytes is not None:
                        samples.append((status.lag_seconds, status.lag_bytes))
                    time.sleep(0.25)

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                _, out = _timed([pgbench, "-N", "-c", "2", "-j", "2", "-T", str(int(args.lag_seconds)), "-h", "127.0.0.1",
                                 "-p", str(primary.port), "-U", "postgres", "postgres"])
            finally:
                stop.set()
                sampler.join()
            tps = next((line.split("=")[1].split()[0] for line in out.splitlines() if line.startswith("tps")), "?")
            seconds_lag = [s for s, _ in samples]
            bytes_lag = [b for _, b in samples]
            results["lag"] = {"samples": len(samples), "pgbench_tps": tps,
                              "seconds": {"median": statistics.median(seconds_lag), "p95": _percentile(seconds_lag, 0.95),
                                          "max": max(seconds_lag)},
                              "bytes": {"median": statistics.median(bytes_lag), "p95": _percentile(bytes_lag, 0.95),
                                        "max": max(bytes_lag)}}
            lag = results["lag"]
            print(f"lag under pgbench -N -c 2 ({tps} tps, {len(samples)} samples): seconds median "
                  f"{lag['seconds']['median']:.3f} p95 {lag['seconds']['p95']:.3f} max {lag['seconds']['max']:.3f}; "
                  f"bytes median {lag['bytes']['median']:.0f} p95 {lag['bytes']['p95']:.0f} max {lag['bytes']['max']:.0f}")

            drills, rtos, copies, plain_copies = [], [], [], []
            for _ in range(args.repeat):
                seconds, _ = _timed([*cli, "drill-failover", "pg-standby"])
                drills.append(seconds)
                record, _unreadable = protection.failover_drills("pg-standby")
                rtos.append(record[-1].rto_seconds)
                copies.append(record[-1].copy_seconds)
                copy_dir = local_cluster(work / "copy", 0, 16).base_dir
                copy_dir.mkdir(parents=True, exist_ok=True)
                hand_to_server_user(copy_dir)
                seconds, _ = _timed([primary.install.tool("pg_basebackup"), "-d",
                                     f"host=127.0.0.1 port={standby_port} user=postgres", "-D", str(copy_dir / "data"),
                                     "-X", "stream", "-c", "fast", "--no-sync"])
                plain_copies.append(seconds)
                shutil.rmtree(copy_dir, ignore_errors=True)
            results["drill"] = {"ours_seconds": drills, "rto_seconds": rtos, "copy_seconds": copies,
                                "pg_basebackup_of_standby_seconds": plain_copies,
                                "ratio": statistics.median(drills) / statistics.median(plain_copies)}
            print(f"drill-failover (whole command) {statistics.median(drills):.2f}s (copy {statistics.median(copies):.2f}s, "
                  f"RTO promote->first write {statistics.median(rtos):.3f}s) vs pg_basebackup of the standby "
                  f"{statistics.median(plain_copies):.2f}s: {results['drill']['ratio']:.2f}x")
            _remove_standby(standby, dsn)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_average"] = {"start": load_start, "end": os.getloadavg()}
    print(f"load average (1, 5, 15 min) at start {load_start}, at end {results['load_average']['end']}")
    out = ROOT / "var" / "bench" / "replication.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
