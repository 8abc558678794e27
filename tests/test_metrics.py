"""Metrics: the exporter read by the real Debian Prometheus, pushes from a run through the real
Pushgateway, the alert rules checked and unit-tested by promtool, the Grafana dashboard checked
against what is emitted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from monitoring import PROMTOOL, get_text, prometheus, pushgateway, query, require, wait_for_query, wait_until_up

from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions
from platform_orchestration.errors import PlatformError
from platform_orchestration.fleet import load_fleet
from platform_orchestration.observability.metrics import RecoverabilityCollector, metric_names
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.protection import FleetProtection

MONITORING = REPOSITORY_ROOT / "deploy" / "monitoring"
RULES = MONITORING / "platform-dr-rules.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PLATFORM_DR = str(Path(sys.executable).with_name("platform-dr"))
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return queries


def _rule_queries() -> list[str]:
    import yaml

    return [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def _metrics_in(promql: str) -> set[str]:
    return set(re.findall(r"\bplatform_dr_[a-z0-9_]+", promql))


def test_every_metric_the_dashboard_and_rules_query_is_one_that_is_emitted():
    queried = set().union(*map(_metrics_in, _dashboard_queries() + _rule_queries()))
    assert queried, "no platform_dr_ metric found in the dashboard or rules"
    assert queried - metric_names() == set()
    # And the dashboard shows the headline figures at least.
    for name in ("platform_dr_backup_last_success_timestamp_seconds", "platform_dr_copy_last_backup_timestamp_seconds",
                 "platform_dr_drill_last_rto_seconds", "platform_dr_rpo_target_seconds", "platform_dr_check_success"):
        assert any(name in q for q in _dashboard_queries()), name


def test_promtool_checks_the_rules_and_passes_their_unit_tests():
    require(PROMTOOL)
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([PROMTOOL, "test", "rules", "platform-dr-rules.test.yaml"], cwd=MONITORING,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_promtool_accepts_the_example_scrape_config():
    require(PROMTOOL)
    checked = subprocess.run([PROMTOOL, "check", "config", "prometheus.yml"], cwd=MONITORING,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def _value(result: list[dict], **labels: str) -> float:
    [series] = [r for r in result if all(r["metric"].get(k) == v for k, v in labels.items())]
    return float(series["value"][1])


@pytest.mark.slow
def test_exporter_scraped_by_prometheus_reports_what_the_stores_hold(tmp_path, source_cluster, source_db):
    """Backups and drills made outside Dagster (as the CLI makes them) are what the exporter
    reports; a copy removed from one store shows as missing and the rule starts pending."""
    fleet_file = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    with FleetProtection.from_environment(load_fleet(fleet_file)) as protection:
        manifest = protection.backup(SOURCE_DB).manifest
        drill = protection.drill(SOURCE_DB, "aws")
    for path in (tmp_path / "stores" / "gcp" / "backups" / SOURCE_DB).glob("*/manifest.json"):
        path.unlink()

    port = free_port()
    log = tmp_path / "exporter.log"
    with open(log, "w") as out:
        exporter = subprocess.Popen([PLATFORM_DR, "--fleet", str(fleet_file), "exporter", "--port", str(port),
                                     "--address", "127.0.0.1", "--interval", "1"], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/metrics", exporter, log)
        assert "serving http://127.0.0.1:" in log.read_text()
        with prometheus(tmp_path / "prometheus", {"platform-dr-exporter": f"127.0.0.1:{port}"},
                        rule_files=(RULES,)) as prom:
            backup = wait_for_query(prom, 'platform_dr_backup_last_success_timestamp_seconds{database="shop"}')
            assert _value(backup, cluster="test-pg") == pytest.approx(manifest.snapshot_worker_time.timestamp())
            copies = query(prom, 'platform_dr_copy_up_to_date{database="shop"}')
            assert {r["metric"]["store"]: float(r["value"][1]) for r in copies} == {"aws": 1, "azure": 1, "gcp": 0}
            assert {r["metric"]["store"]: r["metric"]["cloud"] for r in copies} == {
                "aws": "aws", "azure": "azure", "gcp": "gcp"}
            assert _value(query(prom, "platform_dr_drill_last_success"), store="aws") == 1
            assert _value(query(prom, "platform_dr_drill_last_rto_seconds"), store="aws") == \
                pytest.approx(drill.rto_seconds)
            assert _value(query(prom, "platform_dr_backup_last_stored_bytes"), database="shop") == \
                manifest.dump.stored_bytes
            assert _value(query(prom, "platform_dr_check_success"), check="copies_in_required_stores") == 0
            assert _value(query(prom, "platform_dr_check_success"), check="backup_within_rpo") == 1
            assert _value(query(prom, "platform_dr_rpo_target_seconds"), database="shop") == 3600
            # The rules run on these series: the missing copy is pending (for: 30m), nothing else.
            pending = wait_for_query(prom, 'ALERTS{alertname="PlatformDRCopyMissing"}')
            assert [(a["metric"]["store"], a["metric"]["alertstate"]) for a in pending] == [("gcp", "pending")]
            assert query(prom, 'ALERTS{alertname=~"PlatformDRBackupRPOExceeded|PlatformDRDrillFailed"}') == []
            # Every dashboard query is valid PromQL for this Prometheus, and the panels have data.
            for promql in _dashboard_queries():
                if promql.startswith("label_values"):
                    continue
                assert query(prom, promql.replace("$database", ".*")) is not None
            assert query(prom, 'time() - platform_dr_copy_last_backup_timestamp_seconds{store="aws"}')
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def test_the_exporter_keeps_its_last_figures_when_the_stores_cannot_be_read():
    calls = []

    def observe():
        calls.append(1)
        if len(calls) > 1:
            raise PlatformError("store aws could not be listed: connection refused")
        return []

    clock = iter([0.0, 0.1, 100.0, 100.2]).__next__
    collector = RecoverabilityCollector(observe, min_interval=30, clock=clock)
    first = {m.name: m.samples for m in collector.collect()}
    second = {m.name: m.samples for m in collector.collect()}
    assert first["platform_dr_exporter_refresh_success"][0].value == 1
    assert second["platform_dr_exporter_refresh_success"][0].value == 0
    assert second["platform_dr_exporter_refresh_timestamp_seconds"][0].value == pytest.approx(0.1)
    assert collector.last_error == "store aws could not be listed: connection refused"


@pytest.mark.slow
def test_a_backup_run_pushes_its_figures_through_the_pushgateway(tmp_path, source_cluster, source_db, monkeypatch):
    with pushgateway(tmp_path / "pushgateway") as gateway:
        monkeypatch.setenv("PLATFORM_PUSHGATEWAY_URL", gateway)
        defs = build_definitions(write_fleet(tmp_path, source_cluster, SOURCE_DB))
        with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as instance:
            result = defs.resolve_job_def("take_backups").execute_in_process(
                partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
        stored = result.asset_materializations_for_node("backups")[0].metadata["stored_bytes"].value
        pushed = get_text(f"{gateway}/metrics")
        assert 'platform_dr_run_bytes{database="shop",instance="",job="platform_dr_runs",step="backup"}' in pushed
        with prometheus(tmp_path / "prometheus", {"pushgateway": gateway.removeprefix("http://")},
                        honor_labels=frozenset({"pushgateway"})) as prom:
            sizes = wait_for_query(prom, 'platform_dr_run_bytes{database="shop",step="backup"}')
            assert _value(sizes, job="platform_dr_runs") == stored
            [when] = query(prom, 'platform_dr_run_last_success_timestamp_seconds{database="shop"}')
            assert abs(float(when["value"][1]) - time.time()) < 120


def test_a_pushgateway_that_is_down_is_a_warning_not_a_failed_backup(tmp_path, source_cluster, source_db,
                                                                     monkeypatch):
    monkeypatch.setenv("PLATFORM_PUSHGATEWAY_URL", f"http://127.0.0.1:{free_port()}")
    defs = build_definitions(write_fleet(tmp_path, source_cluster, SOURCE_DB))
    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as instance:
        result = defs.resolve_job_def("take_backups").execute_in_process(
            partition_key=SOURCE_DB, instance=instance, run_config=QUIET)
        assert result.success
        warnings = [e.user_message for e in instance.all_logs(result.run_id) if e.level == 30]
    assert any("push of backup metrics of shop to the Pushgateway" in w for w in warnings)
    assert os.environ["PLATFORM_PUSHGATEWAY_URL"] in " ".join(warnings)
