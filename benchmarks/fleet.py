"""Fleet scale: status, the fleet-wide assessment, fleet load and the Definitions build, at
100 to 10,000 databases, with the store calls they cost.

    python -m benchmarks.fleet [--sizes 100,1000] [--load-sizes 1000,10000] [--repeat 3]
                               [--before-src DIR] [--s3 100]

Synthetic fleets (benchmarks/synthetic.py): one cluster, three local stores, each database
with three backups (a real encrypted backup's manifest, ids and database changed, beside a
tiny dump object) and one drill record in every store. Measured:

* ``status``: ``python -m platform_orchestration.cli --fleet F status``, the whole process;
* ``assess_fleet``: ``FleetProtection.assess_fleet()`` in-process, with every store wrapped in
  a ``CountingStore``: list and read calls per database per store, and how they grow;
* fleet load: ``load_fleet`` with libyaml and with the pure-Python parser;
* Definitions build: ``build_definitions(fleet_file)`` (the fleet load included).

``--before-src DIR`` also times ``status`` with an older source tree (``git archive`` of an
earlier commit) at the smallest size. ``--s3 N`` repeats the assessment against three
buckets of a moto server at N databases (call counts are what a cloud would bill).
Medians of ``--repeat`` runs. Results go to var/bench/fleet.json and stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.synthetic import STORE_NAMES, database_names, seed_stores, write_fleet_file

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _median_seconds(action, repeat: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def time_status(fleet_file: Path, repeat: int, source: Path = REPOSITORY_ROOT) -> float:
    """The whole `platform-dr status` process, from `source` (this tree or an older one)."""
    env = {**os.environ, "PYTHONPATH": str(source)}

    def run() -> None:
        done = subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet_file),
                               "status"], cwd=source, env=env, capture_output=True, text=True)
        if done.returncode not in (0, 1) or "compliant" not in done.stdout:
            raise RuntimeError(f"status failed ({done.returncode}): {done.stderr[-2000:]}")

    return _median_seconds(run, repeat)


def measure_assessment(fleet_file: Path, repeat: int, *, concurrency: int | None = None,
                       open_store=None) -> dict:  # noqa: ANN001
    """assess_fleet in-process with counted stores: seconds and calls per database per store."""
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.protection import FleetProtection
    from platform_orchestration.storage import CountingStore, LocalObjectStore

    fleet = load_fleet(fleet_file)
    protection = FleetProtection(fleet)
    counted = {spec.name: CountingStore(open_store(spec) if open_store else LocalObjectStore(spec.name, spec.path))
               for spec in fleet.stores}
    protection._open_stores.update(counted)
    counted_once: dict[str, dict[str, int]] = {}

    def run() -> None:
        for store in counted.values():
            store.reset()
        assessments = protection.assess_fleet(concurrency=concurrency)
        if not all(a.passed for a in assessments):
            raise RuntimeError(f"assessment failed: {[a.findings for a in assessments if not a.passed][:1]}")
        counted_once.update({name: dict(store.calls) for name, store in counted.items()})

    seconds = _median_seconds(run, repeat)
    databases = len(fleet.databases)
    per_database = {name: {call: count / databases for call, count in calls.items()}
                    for name, calls in counted_once.items()}
    return {"seconds": seconds, "calls": counted_once, "calls_per_database_per_store": per_database}


def time_fleet_load(fleet_file: Path, repeat: int) -> dict:
    from platform_orchestration import declarations
    from platform_orchestration.fleet import load_fleet

    load_fleet(fleet_file)  # warm: imports, pydantic's first validation
    fast = _median_seconds(lambda: load_fleet(fleet_file), repeat)
    saved, declarations._FAST_LOADER = declarations._FAST_LOADER, None
    try:
        slow = _median_seconds(lambda: load_fleet(fleet_file), repeat)
    finally:
        declarations._FAST_LOADER = saved
    return {"libyaml_seconds": fast, "pure_python_seconds": slow}


def time_definitions(fleet_file: Path, repeat: int) -> float:
    """build_definitions with the fleet file read afresh, and the repository resolved (every
    job built and validated), as a code server does on load."""
    import platform_orchestration.definitions as definitions
    from platform_orchestration import resources

    def build() -> None:
        resources._fleets.clear()  # a fresh process's first build: the fleet file is read
        definitions.build_definitions(fleet_file).get_repository_def().get_all_jobs()

    return _median_seconds(build, repeat)


def time_schedule_tick(fleet_file: Path, repeat: int, schedule: str = "critical_backups_hourly") -> dict:
    """One tick of a repository schedule over the whole fleet: ``evaluate_tick`` with
    ``dg.build_schedule_context`` on the real Definitions (what the scheduler daemon runs)."""
    import dagster as dg

    import platform_orchestration.definitions as definitions

    repository = definitions.build_definitions(fleet_file).get_repository_def()
    definition = repository.get_schedule_def(schedule)
    tick = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    requests: list = []

    def evaluate() -> None:
        context = dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)
        requests[:] = definition.evaluate_tick(context).run_requests

    seconds = _median_seconds(evaluate, repeat)
    return {"seconds": seconds, "runs": len(requests), "job": definition.job_name,
            "largest_batch": max((len(r.run_config.get("ops", {}).get("batch", {}).get("config", {})
                                      .get("databases", [None])) for r in requests), default=0)}


def measure_partition_checks(fleet_file: Path, repeat: int) -> dict:
    """What the check step of one partition does (``database_protection_checks``: open the
    protection, assess the database once, one result per check), in a process that has the
    fleet already (a run's steps share it): seconds, and its store calls."""
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.protection import FleetProtection
    from platform_orchestration.storage import CountingStore, LocalObjectStore

    fleet = load_fleet(fleet_file)
    name = fleet.databases[len(fleet.databases) // 2].name
    calls: dict[str, dict[str, int]] = {}

    def check() -> None:
        protection = FleetProtection(fleet)
        counted = {spec.name: CountingStore(LocalObjectStore(spec.name, spec.path)) for spec in fleet.stores}
        protection._open_stores.update(counted)
        with protection:
            assessment = protection.assess(name)
        if not assessment.passed:
            raise RuntimeError(f"checks of {name} failed: {assessment.findings}")
        calls.update({store: dict(c.calls) for store, c in counted.items()})

    return {"seconds": _median_seconds(check, repeat), "database": name, "calls": calls}


def _s3_stores(databases: int, workdir: Path) -> dict:
    """A moto server with three buckets seeded for `databases` databases; returns the
    measurement of the assessment against them."""
    import socket

    from platform_orchestration import emulators
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.storage.s3 import S3ObjectStore

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = emulators.moto_server(port).start(workdir)
    try:
        credentials = {"access_key_id": "bench", "secret_access_key": "bench-secret"}

        def open_store(spec):  # noqa: ANN001, ANN202
            return S3ObjectStore(spec.name, f"bench-{spec.name}", region="eu-west-1",
                                 endpoint_url=server.endpoint, credentials=credentials)

        import boto3
        client = boto3.client("s3", endpoint_url=server.endpoint, region_name="eu-west-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        fleet_file = write_fleet_file(workdir / "s3", databases)
        fleet = load_fleet(fleet_file)
        stores = []
        for spec in fleet.stores:
            client.create_bucket(Bucket=f"bench-{spec.name}",
                                 CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
            stores.append(open_store(spec))
        seed_stores(stores, database_names(databases))
        result = {"sequential": measure_assessment(fleet_file, 1, concurrency=1, open_store=open_store),
                  "parallel": measure_assessment(fleet_file, 1, concurrency=8, open_store=open_store)}
        # Against a real cloud each call is a round trip: at 30 ms a call, the calls of one run
        # spread over what is in flight at once (8 databases, each reading its 3 stores at once).
        total = sum(sum(calls.values()) for calls in result["parallel"]["calls"].values())
        in_flight = 8 * len(fleet.stores)
        result["projection_30ms"] = {"calls": total, "sequential_seconds": total * 0.030,
                                     "in_flight": in_flight, "parallel_seconds": total * 0.030 / in_flight,
                                     "calls_per_database": total / databases}
        return result
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000", help="databases for status and the assessment")
    parser.add_argument("--load-sizes", default="1000,10000", help="databases for fleet load and Definitions")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before-src", type=Path, help="an older source tree to time status with")
    parser.add_argument("--s3", type=int, default=0, help="databases for the moto-server assessment (0: skip)")
    parser.add_argument("--status-only", default="", help="more sizes for status alone (once), e.g. 10000")
    parser.add_argument("--output", type=Path, default=REPOSITORY_ROOT / "var" / "bench" / "fleet.json")
    args = parser.parse_args(argv)

    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "load_average_at_start": os.getloadavg()},
                     "stores": list(STORE_NAMES), "status": {}, "assess_fleet": {}, "fleet_load": {},
                     "definitions_build": {}, "partition_checks": {}, "schedule_tick": {}}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        work = Path(scratch)
        for size in [int(text) for text in args.sizes.split(",") if text]:
            _log(f"seeding {size} databases x {len(STORE_NAMES)} stores")
            fleet_file = write_fleet_file(work / str(size), size)
            from platform_orchestration.fleet import load_fleet
            from platform_orchestration.storage import LocalObjectStore
            fleet = load_fleet(fleet_file)
            seed_stores([LocalObjectStore(spec.name, spec.path) for spec in fleet.stores], database_names(size))
            _log(f"status at {size}")
            results["status"][size] = {"seconds": time_status(fleet_file, args.repeat)}
            if args.before_src is not None and size == min(int(t) for t in args.sizes.split(",") if t):
                _log(f"status at {size}, before")
                results["status"][size]["before_seconds"] = time_status(fleet_file, 1, args.before_src)
            _log(f"checks of one partition at {size}")
            results["partition_checks"][size] = measure_partition_checks(fleet_file, args.repeat)
            _log(f"assess_fleet at {size}")
            results["assess_fleet"][size] = {
                "parallel": measure_assessment(fleet_file, args.repeat, concurrency=8),
                "sequential": measure_assessment(fleet_file, args.repeat, concurrency=1)}
        for size in [int(text) for text in args.load_sizes.split(",") if text]:
            fleet_file = write_fleet_file(work / f"load-{size}", size)
            _log(f"fleet load and Definitions at {size}")
            results["fleet_load"][size] = time_fleet_load(fleet_file, args.repeat)
            results["definitions_build"][size] = {"seconds": time_definitions(fleet_file, args.repeat)}
            results["schedule_tick"][size] = time_schedule_tick(fleet_file, args.repeat)
        for size in [int(text) for text in args.status_only.split(",") if text]:
            _log(f"seeding {size} databases x {len(STORE_NAMES)} stores")
            fleet_file = write_fleet_file(work / f"status-{size}", size)
            from platform_orchestration.fleet import load_fleet
            from platform_orchestration.storage import LocalObjectStore
            fleet = load_fleet(fleet_file)
            seed_stores([LocalObjectStore(spec.name, spec.path) for spec in fleet.stores], database_names(size))
            _log(f"status at {size}")
            results["status"][size] = {"seconds": time_status(fleet_file, 1)}
        if args.s3:
            _log(f"assessment against moto S3 at {args.s3}")
            results["s3"] = {args.s3: _s3_stores(args.s3, work)}
    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(summary(results))
    return 0


def summary(results: dict) -> str:
    """The figures as a markdown table (the JSON keeps every count)."""
    lines = [f"Measured {results['date']}, {results['machine']['cpus']} cores, load average "
             f"{results['machine']['load_average_at_start'][0]:.1f} at start, "
             f"{results['machine']['load_average_at_end'][0]:.1f} at end.", "",
             "| measurement | databases | seconds | calls per database per store |", "|---|---|---|---|"]

    def calls(entry: dict) -> str:
        per = next(iter(entry["calls_per_database_per_store"].values()))
        return ", ".join(f"{count:g} {call}" for call, count in sorted(per.items()))

    for size, entry in results["status"].items():
        before = f" (before: {entry['before_seconds']:.1f})" if "before_seconds" in entry else ""
        lines.append(f"| `platform-dr status` (whole process) | {size} | {entry['seconds']:.2f}{before} | |")
    for size, entry in results["assess_fleet"].items():
        for mode in ("parallel", "sequential"):
            lines.append(f"| `assess_fleet` {mode} ({8 if mode == 'parallel' else 1} threads), local stores | {size} | {entry[mode]['seconds']:.2f} | "
                         f"{calls(entry[mode])} |")
    for size, entry in results.get("partition_checks", {}).items():
        per = next(iter(entry["calls"].values()))
        lines.append(f"| checks of one partition (the check step's work) | {size} | {entry['seconds'] * 1000:.1f} ms | "
                     + ", ".join(f"{count} {call}" for call, count in sorted(per.items())) + " |")
    for size, entry in results.get("s3", {}).items():
        for mode in ("parallel", "sequential"):
            lines.append(f"| `assess_fleet` {mode} ({8 if mode == 'parallel' else 1} threads), moto S3 | {size} | {entry[mode]['seconds']:.2f} | "
                         f"{calls(entry[mode])} |")
        projection = entry["projection_30ms"]
        in_flight = projection.get("in_flight", 8)
        parallel = projection.get("parallel_seconds", projection.get("eight_threads_seconds"))
        lines.append(f"| projection at 30 ms a call: {projection['calls']} calls, 1 / {in_flight} in flight | {size} | "
                     f"{projection['sequential_seconds']:.1f} / {parallel:.1f} | |")
        per_database = projection.get("calls_per_database", projection["calls"] / int(size))
        for databases in (1000, 10000):
            calls_then = per_database * databases
            lines.append(f"| projection at 30 ms a call: {calls_then:.0f} calls, {in_flight} / {4 * in_flight} in flight "
                         f"(8 / 32 databases at once) | {databases} | "
                         f"{calls_then * 0.030 / in_flight:.0f} / {calls_then * 0.030 / (4 * in_flight):.0f} | (linear in databases) |")
    for size, entry in results["fleet_load"].items():
        lines.append(f"| fleet load, libyaml (pure Python) | {size} | {entry['libyaml_seconds']:.2f} "
                     f"({entry['pure_python_seconds']:.2f}) | |")
    for size, entry in results["definitions_build"].items():
        lines.append(f"| Definitions build (fleet load, repository resolved) | {size} | {entry['seconds']:.2f} | |")
    for size, entry in results.get("schedule_tick", {}).items():
        lines.append(f"| schedule tick, critical_backups_hourly: {entry['runs']} runs of {entry['job']} "
                     f"(largest {entry['largest_batch']} databases) | {size} | {entry['seconds']:.3f} | |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
