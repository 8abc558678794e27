"""What seeing costs: the recoverability view, a metrics scrape and the report, against the
fleet-wide assessment alone, on synthetic fleets (benchmarks/synthetic.py: three local stores,
three encrypted backups and one drill record per database per store).

    python -m benchmarks.observability [--sizes 100,1000] [--repeat 3]

Measured in-process, medians of --repeat, with the stores counted (CountingStore):
* ``assess_fleet``: the five findings per database (what `status` and compliance read);
* ``recoverability``: FleetProtection.recoverability() (the assessment, then per store the
  newest backup and every drill): what each acting sensor tick and each exporter read cost;
* ``scrape``: one exporter read rendered as Prometheus text (prometheus_client generate_latest);
* ``report``: the HTML and JSON of the report rendered (not written) from one recoverability view.
Results go to var/bench/observability.json and stdout, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.synthetic import database_names, seed_stores, write_fleet_file

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]


def _median(action, repeat: int) -> float:  # noqa: ANN001
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def measure(size: int, work: Path, repeat: int) -> dict:
    from prometheus_client import CollectorRegistry, generate_latest

    from platform_orchestration.backups.compliance import ComplianceEvidence
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.observability.metrics import RecoverabilityCollector
    from platform_orchestration.protection import FleetProtection
    from platform_orchestration.reporting.report import render_html, report_document
    from platform_orchestration.storage import CountingStore, LocalObjectStore

    fleet_file = write_fleet_file(work / str(size), size)
    fleet = load_fleet(fleet_file)
    seed_stores([LocalObjectStore(spec.name, spec.path) for spec in fleet.stores], database_names(size))
    protection = FleetProtection(fleet)
    counted = {spec.name: CountingStore(LocalObjectStore(spec.name, spec.path)) for spec in fleet.stores}
    protection._open_stores.update(counted)

    def calls() -> dict:
        total: dict[str, int] = {}
        for store in counted.values():
            for call, count in store.calls.items():
                total[call] = total.get(call, 0) + count
            store.reset()
        return {call: round(count / size / len(counted), 2) for call, count in total.items()}

    results: dict = {}
    for name, action in {"assess_fleet": lambda: protection.assess_fleet(concurrency=1),
                         "recoverability": lambda: protection.recoverability()}.items():
        calls()
        action()
        results[name] = {"calls_per_database_per_store": calls(), "seconds": _median(action, repeat)}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecoverabilityCollector(protection.recoverability, min_interval=0))
    text = generate_latest(registry)
    results["scrape"] = {"seconds": _median(lambda: generate_latest(registry), repeat), "bytes": len(text),
                         "series": sum(1 for line in text.decode().splitlines() if line and line[0] != "#")}
    views = protection.recoverability()
    evidence = ComplianceEvidence("bench", "evidence/compliance/bench.json", views[0].now,
                                  tuple(v.assessment for v in views), (), {})

    def render() -> int:
        document = report_document(views, evidence_id="bench", evidence_key=evidence.key,
                                   generated_at=evidence.generated_at, fleet_file=str(fleet_file), run_id=None)
        return len(render_html(views, document)) + len(json.dumps(document, default=str))

    results["report"] = {"seconds": _median(render, repeat), "bytes": render()}
    results["ratio_recoverability_to_assess"] = round(
        results["recoverability"]["seconds"] / results["assess_fleet"]["seconds"], 2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPOSITORY_ROOT / "var" / "bench" / "observability.json")
    args = parser.parse_args(argv)
    results: dict = {"load_average_at_start": os.getloadavg(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-observability-") as scratch:
        for size in [int(t) for t in args.sizes.split(",") if t]:
            results["sizes"][size] = measure(size, Path(scratch), args.repeat)
    results["load_average_at_end"] = os.getloadavg()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
