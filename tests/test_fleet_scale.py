"""The fleet at scale: lookups by name are dictionary lookups, the fleet file is composed by
libyaml with the same line marks as the pure-Python parser (which still reads it where libyaml
is absent), and a process reads an unchanged fleet file once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from benchmarks.synthetic import database_names, seed_stores, write_fleet_file
from platform_orchestration import declarations
from platform_orchestration.declarations import read_yaml_mapping
from platform_orchestration.errors import PlatformError
from platform_orchestration.fleet import FleetError, load_fleet
from platform_orchestration.fleet.model import UnknownNameError
from platform_orchestration.protection import FleetProtection, store_concurrency_from_env
from platform_orchestration.resources import load_fleet_once
from platform_orchestration.storage import CountingStore, LocalObjectStore

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

# Flow and block styles, anchors, merge keys, duplicate keys, multi-line scalars, comments.
TRICKY = textwrap.dedent("""\
    # a comment
    clusters: &clusters
      - {name: pg, cloud: aws,
         region: eu-west-1}
    defaults: &defaults
      cluster: pg
      policy: gold
    stores:
      - name: s3
        kind: s3
        bucket: "bk"   # quoted
        bucket: other
      - kind: nope
    databases:
      - <<: *defaults
        name: orders
        dsn: >-
          postgresql://backup@127.0.0.1/orders
      -
        name: BAD NAME
        cluster: pg-missing
        dsn: "postgresql://u:secret@h/db"
        policy: gold
    policies: [{name: gold, rpo: 1h, stores: [s3, s9], drill: {every: 1d, rto: 10m},
                retention: {keep_last: 0}}]
    """)


def _errors(path: Path) -> list[str]:
    with pytest.raises(FleetError) as raised:
        load_fleet(path)
    return raised.value.errors


def _without_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(declarations, "_FAST_LOADER", None)


@pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")
def test_libyaml_composes_the_fleet_file_with_the_pure_python_parsers_line_of_every_field(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert declarations._FAST_LOADER is yaml.CSafeLoader
    tricky = tmp_path / "fleet.yaml"
    tricky.write_text(TRICKY)
    for path in (REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml", tricky):
        fast = read_yaml_mapping(path, what="fleet file", expected="a mapping", environ={})
        with monkeypatch.context() as patched:
            _without_libyaml(patched)
            slow = read_yaml_mapping(path, what="fleet file", expected="a mapping", environ={})
        assert fast.data == slow.data
        assert fast._scan._lines == slow._scan._lines
        assert fast.findings == slow.findings


def test_every_error_of_a_fleet_file_is_the_same_with_and_without_libyaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(TRICKY)
    with_libyaml = _errors(path)
    _without_libyaml(monkeypatch)
    assert _errors(path) == with_libyaml
    assert len(with_libyaml) >= 6 and all(error.startswith(f"{path}:") for error in with_libyaml)


def test_a_yaml_syntax_error_reads_the_same_with_and_without_libyaml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("clusters:\n  - name: pg\nstores: [a, b\ndatabases: []\n")
    with_libyaml = _errors(path)
    _without_libyaml(monkeypatch)
    assert _errors(path) == with_libyaml == [f"{path}:4: YAML syntax error: expected ',' or ']', but got ':' "
                                             "(while parsing a flow sequence) at column 10"]


def test_lookups_by_name_find_every_database_store_policy_and_cluster(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet_file(tmp_path, 50))
    for name in database_names(50):
        assert fleet.database(name).name == name
        assert [store.name for store in fleet.stores_for(name)] == ["aws", "azure", "gcp"]
        assert fleet.cluster_for(name).name == "pg-bench"
    with pytest.raises(UnknownNameError, match="unknown store 'nowhere' \\(known: aws, azure, gcp\\)"):
        fleet.store("nowhere")


def test_lookups_of_a_copied_fleet_answer_for_the_copy_not_the_original(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet_file(tmp_path, 3))
    first, *others = fleet.databases
    smaller = fleet.model_copy(update={"databases": (first,)})
    assert smaller.database(first.name) is first
    with pytest.raises(UnknownNameError, match=f"unknown database '{others[0].name}'"):
        smaller.database(others[0].name)
    assert fleet.database(others[0].name) is others[0]
    assert fleet == load_fleet(fleet.source)


def test_an_unchanged_fleet_file_is_read_once_per_process(tmp_path: Path) -> None:
    path = write_fleet_file(tmp_path, 5)
    first = load_fleet_once(path, environ={})
    assert load_fleet_once(str(path), environ={}) is first
    assert load_fleet_once(tmp_path / "." / "fleet.yaml", environ={}) is first


def test_an_edited_fleet_file_or_another_environment_is_read_again(tmp_path: Path) -> None:
    path = write_fleet_file(tmp_path, 5)
    first = load_fleet_once(path, environ={})
    assert load_fleet_once(path, environ={"PLATFORM_X": "1"}) is not first
    write_fleet_file(tmp_path, 6)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert len(load_fleet_once(path, environ={}).databases) == 6


def test_a_missing_fleet_file_is_reported_not_cached(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match="fleet file not found"):
        load_fleet_once(tmp_path / "absent.yaml")


# --- what an assessment costs in store calls ------------------------------------------------------


def _protection(tmp_path: Path, databases: int, *, index: bool = True
                ) -> tuple[FleetProtection, dict[str, CountingStore]]:
    """A protection of a synthetic fleet whose stores are seeded (with the catalog index the
    writers keep, unless `index` is false) and wrapped in counters."""
    fleet = load_fleet(write_fleet_file(tmp_path, databases))
    protection = FleetProtection(fleet)
    counted = {spec.name: CountingStore(LocalObjectStore(spec.name, spec.path)) for spec in fleet.stores}
    seed_stores(list(counted.values()), database_names(databases), index=index)
    for store in counted.values():
        store.reset()
    protection._open_stores.update(counted)
    return protection, counted


@pytest.mark.parametrize("databases", [2, 6])
@pytest.mark.parametrize("index", [True, False], ids=["indexed", "no-index"])
def test_a_fleet_assessment_lists_each_store_once_for_backups_and_once_for_drills_per_database(
        tmp_path: Path, databases: int, index: bool) -> None:
    protection, counted = _protection(tmp_path, databases, index=index)
    assessments = protection.assess_fleet(concurrency=3)
    assert all(assessment.passed for assessment in assessments), [a.findings for a in assessments if not a.passed]
    for store in counted.values():
        # With the catalog index: its one GET per database. Without: the GET that finds no
        # index, then three manifests and one drill record per database, each read once.
        reads = 1 if index else 1 + 4
        assert dict(store.calls) == {"list": 2 * databases, "read": reads * databases}
        assert sorted(store.prefixes) == sorted(
            [f"backups/{name}/" for name in database_names(databases)]
            + [f"drills/{name}/" for name in database_names(databases)])


def test_a_parallel_fleet_assessment_answers_in_fleet_order_as_a_sequential_one_does(tmp_path: Path) -> None:
    protection, _counted = _protection(tmp_path, 12)
    now = protection.clock()
    parallel = protection.assess_fleet(now, concurrency=5)
    assert [a.database for a in parallel] == database_names(12)
    assert parallel == protection.assess_fleet(now, concurrency=1)


def test_store_concurrency_comes_from_the_environment_and_a_bad_value_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert store_concurrency_from_env({}) is None  # assess_fleet decides by the kinds of stores
    assert store_concurrency_from_env({"PLATFORM_STORE_CONCURRENCY": "3"}) == 3
    protection, _counted = _protection(tmp_path, 2)
    monkeypatch.setenv("PLATFORM_STORE_CONCURRENCY", "zero")
    with pytest.raises(PlatformError, match="^PLATFORM_STORE_CONCURRENCY: expected a whole number of at least 1, "
                                            "got 'zero'$"):
        protection.assess_fleet()


def test_ensure_copies_lists_each_store_once(tmp_path: Path) -> None:
    protection, counted = _protection(tmp_path, 1)
    report = protection.ensure_copies(database_names(1)[0])
    assert report.already_present == ("aws", "azure", "gcp") and not report.failed
    assert all(store.calls["list"] == 1 for store in counted.values())


# --- runs that scale with the fleet ---------------------------------------------------------------


def test_an_hourly_tick_over_a_large_fleet_asks_for_one_run_per_batch_not_per_database(tmp_path: Path) -> None:
    import dagster as dg
    from datetime import datetime, timezone

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.ops.batches import BATCH_RUN_TAG

    names = database_names(250)
    repository = build_definitions(write_fleet_file(tmp_path, 250)).get_repository_def()
    assert "take_backups_batched" in {job.name for job in repository.get_all_jobs()}  # validates op names
    tick = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    for schedule_name, job in (("critical_backups_hourly", "take_backups_batched"),
                               ("prune_backups_nightly", "prune_backups_batched"),
                               ("restore_drills_daily", "run_restore_drills_batched")):
        schedule = repository.get_schedule_def(schedule_name)
        assert schedule.job_name == job
        requests = schedule.evaluate_tick(
            dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)).run_requests
        batches = [r.run_config["ops"]["batch"]["config"]["databases"] for r in requests]
        assert [len(batch) for batch in batches] == [100, 100, 50]
        assert [name for batch in batches for name in batch] == names  # each once, in fleet order
        assert [r.tags[BATCH_RUN_TAG] for r in requests] == [
            f"{names[0]}..{names[99]}", f"{names[100]}..{names[199]}", f"{names[200]}..{names[249]}"]
        assert len({r.run_key for r in requests}) == 3


def test_batch_mapping_keys_are_the_names_where_dagster_allows_and_stay_unique() -> None:
    from platform_orchestration.ops.batches import mapping_keys

    assert mapping_keys(["orders", "orders-eu", "orders_eu", "a.b"]) == ["orders", "orders_eu_1", "orders_eu", "a_b_3"]
    keys = mapping_keys(["x-1", "x_1", "x.1"])
    assert len(set(keys)) == 3 and all(key.replace("_", "").isalnum() for key in keys)


def test_a_batched_run_carries_the_cloud_links_of_its_databases_and_its_steps_their_pod_resources(
        tmp_path: Path) -> None:
    """What a per-database run carries, a batched one carries too: the egress tags of every
    link its databases send over (the run queue limits each link), and each step's op tag
    with its pod's resources (dagster-k8s/config)."""
    import dagster as dg
    from datetime import datetime, timezone

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.kube import K8S_CONFIG_TAG, k8s_op_tags

    fleet_file = write_fleet_file(tmp_path, 150)
    # One store in another cloud than the cluster: every backup crosses local -> azure.
    fleet_file.write_text(fleet_file.read_text().replace(
        "{name: azure, kind: local, cloud: local", "{name: azure, kind: local, cloud: azure", 1))
    repository = build_definitions(fleet_file).get_repository_def()
    tick = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    context = dg.build_schedule_context(scheduled_execution_time=tick, repository_def=repository)
    backups = repository.get_schedule_def("critical_backups_hourly").evaluate_tick(context).run_requests
    drills = repository.get_schedule_def("restore_drills_daily").evaluate_tick(context).run_requests
    assert len(backups) == 2 and all(r.tags.get("platform/egress-local-azure") == "true" for r in backups)
    assert drills and not any(key.startswith("platform/egress-") for r in drills for key in r.tags)
    job = repository.get_job("take_backups_batched")
    ops = {op.name: op for op in job.graph.iterate_op_defs()}
    assert ops["batch_backups"].tags[K8S_CONFIG_TAG] == k8s_op_tags("backups")[K8S_CONFIG_TAG]
    assert ops["take_backups_batched_checks"].tags[K8S_CONFIG_TAG] == \
        k8s_op_tags("database_protection_checks")[K8S_CONFIG_TAG]
