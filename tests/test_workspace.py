"""`dagster dev -w workspace.yaml` loads the whole code location: a real webserver, queried over GraphQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from pg import fingerprint

from platform_orchestration.definitions import REPOSITORY_ROOT
from platform_orchestration.postgres.cluster import free_port

DAGSTER = str(Path(sys.executable).with_name("dagster"))

# A dagster dev, Chromium and runs launched from the UI: about a minute for the file.
pytestmark = pytest.mark.slow


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                     data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.fixture(scope="module")
def ui_fleet(tmp_path_factory, source_cluster, source_db) -> Path:
    """A fleet over the tests' own PostgreSQL, so runs launched from the UI do real work."""
    return write_fleet(tmp_path_factory.mktemp("ui_fleet"), source_cluster, SOURCE_DB)


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, ui_fleet):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home),
           "PLATFORM_FLEET": str(ui_fleet), "PLATFORM_ALERTS_FILE": str(home / "alerts.jsonl")}
    log = open(home / "dagster-dev.log", "w")  # noqa: SIM115 - closed below
    # Its own session, default signals: `dagster dev` then stops cleanly on SIGINT to the group.
    process = subprocess.Popen([DAGSTER, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
                               cwd=REPOSITORY_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("dagster dev did not start:\n" + (home / "dagster-dev.log").read_text()[-3000:])
                time.sleep(0.5)
        # The webserver answers before the code location has finished loading.
        while time.monotonic() < deadline:
            data = _graphql(port, "{ workspaceOrError { ... on Workspace { locationEntries { name "
                                  "loadStatus locationOrLoadError { __typename } } } } }")
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                break
            time.sleep(0.5)
        yield port, entries
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def test_workspace_loads_the_code_location_without_error(dagster_dev):
    _port, entries = dagster_dev
    assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == \
        [("platform_orchestration", "RepositoryLocation")]


def test_webserver_serves_jobs_schedules_sensor_and_asset_graph(dagster_dev):
    port, _entries = dagster_dev
    data = _graphql(port, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        jobs { name } schedules { name cronSchedule } sensors { name }
        assetNodes { assetKey { path } dependencyKeys { path } } } } } }""")
    [repository] = data["repositoriesOrError"]["nodes"]
    assert {"protection_flow", "take_backups", "run_restore_drills", "refresh_compliance",
            "disaster_restore"} <= {j["name"] for j in repository["jobs"]}
    assert {"critical_backups_hourly", "restore_drills_daily"} <= {s["name"] for s in repository["schedules"]}
    assert sorted(s["name"] for s in repository["sensors"]) == ["escalate_failed_drills", "notice_stale_backups",
                                                                "repair_missing_copies", "report_failed_runs",
                                                                "retry_undelivered_alerts"]
    upstream = {n["assetKey"]["path"][0]: {d["path"][0] for d in n["dependencyKeys"]}
                for n in repository["assetNodes"]}
    assert upstream == LINEAGE


# Each asset's upstream assets: cluster -> database -> backup -> copies -> drill -> compliance,
# with retention a side branch off the copies; per physical cluster, archiving -> base
# backups -> PITR drills, and base backups -> copies in other clouds -> retention; per standby,
# cluster -> standby -> lag -> failover drill -> compliance. The graph the UI draws, as its GraphQL serves it.
LINEAGE = {"clusters": set(), "databases": {"clusters"}, "backups": {"databases"},
           "backup_copies": {"backups"}, "restore_drills": {"backup_copies"},
           "compliance_report": {"restore_drills"}, "retention": {"backup_copies"},
           "wal_archiving": set(), "physical_base_backups": {"wal_archiving"},
           "pitr_drills": {"physical_base_backups"}, "physical_copies": {"physical_base_backups"},
           "physical_retention": {"physical_copies"},
           "standby_clusters": {"clusters"}, "replication_lag": {"standby_clusters"},
           "failover_drills": {"replication_lag"}, "replication_compliance": {"failover_drills"}}
PHYSICAL_CHAIN = {"wal_archiving", "physical_base_backups", "pitr_drills", "physical_copies", "physical_retention",
                  # and the per-standby chain (cluster -> standby -> lag -> failover drill -> compliance)
                  "standby_clusters", "replication_lag", "failover_drills", "replication_compliance"}


def test_the_ui_graph_has_exactly_the_protection_lineage_edges(dagster_dev):
    """The asset graph endpoint the lineage view renders from: every edge, both directions."""
    port, _entries = dagster_dev
    data = _graphql(port, """{ assetNodes(group: {groupName: "fleet_protection", repositoryName: "__repository__",
        repositoryLocationName: "platform_orchestration"}) { assetKey { path } isPartitioned
        dependencyKeys { path } dependedByKeys { path } } }""")
    nodes = {n["assetKey"]["path"][0]: n for n in data["assetNodes"]}
    assert {name: {d["path"][0] for d in n["dependencyKeys"]} for name, n in nodes.items()} == LINEAGE
    downstream = {name: {d["path"][0] for d in n["dependedByKeys"]} for name, n in nodes.items()}
    assert downstream == {name: {child for child, parents in LINEAGE.items() if name in parents} for name in LINEAGE}
    assert {name for name, n in nodes.items() if n["isPartitioned"]} == {
        "databases", "backups", "backup_copies", "restore_drills", "retention",
        "wal_archiving", "physical_base_backups", "pitr_drills", "physical_copies", "physical_retention",
        "standby_clusters", "replication_lag", "failover_drills"}


ARTIFACTS = REPOSITORY_ROOT / "var" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser_page(dagster_dev):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    port, _entries = dagster_dev
    # The "Join the Dagster community" modal would cover the page on localhost.
    _graphql(port, "mutation { setNuxSeen }")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        yield port, page
        browser.close()


def _wait_for_run(port: int, run_id: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _graphql(port, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')
        state = status["runOrError"]["status"]
        if state in ("SUCCESS", "FAILURE", "CANCELED"):
            return state
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def _launch_run(page) -> str:
    """Click the Launchpad's Launch Run and return the id of the run whose page it opens; when it
    opens none, fail with what the page shows instead (an error dialog, a config warning) and
    keep a screenshot of it."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.get_by_role("button", name="Launch Run").click()
    try:
        page.wait_for_url("**/runs/**", timeout=60_000)
    except PlaywrightTimeout:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "launch-run-failed.png"))
        shown = page.get_by_role("dialog").all_inner_texts() or [page.inner_text("body")[-3000:]]
        raise AssertionError(f"Launch Run opened no run page; the page shows: {shown}") from None
    return page.url.rstrip("/").split("/runs/")[1].split("?")[0].split("/")[0]


def test_asset_graph_shows_the_protection_lineage(browser_page):
    """The rendered graph: every asset is a node on the canvas, and the layout (left to right)
    puts each asset to the right of the ones it depends on."""
    port, page = browser_page
    page.goto(f"http://127.0.0.1:{port}/asset-groups/fleet_protection@platform_orchestration"
              ":platform_orchestration/lineage")
    canvas = page.locator("[data-svg-viewport]")
    boxes = {}
    # The per-database chain; the physical chain is checked edge by edge through GraphQL above
    # (on the canvas its long names are drawn shortened).
    drawn = {asset: parents for asset, parents in LINEAGE.items() if asset not in PHYSICAL_CHAIN}
    for asset in drawn:
        node = canvas.get_by_text(asset, exact=True).first
        node.wait_for(timeout=30_000)
        boxes[asset] = node.bounding_box()
    for asset, parents in drawn.items():
        for parent in parents:
            assert boxes[asset]["x"] > boxes[parent]["x"] + boxes[parent]["width"] / 2, (parent, asset, boxes)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))


def test_a_backup_of_one_partition_launched_from_the_ui_succeeds(browser_page, ui_fleet):
    """The take_backups Launchpad with the partition picked in the UI: the run backs up that one
    database, its backups asset materializes for that partition, and the stores hold it."""
    port, page = browser_page
    page.goto(f"http://127.0.0.1:{port}/locations/platform_orchestration/jobs/take_backups/playground")
    page.locator(".CodeMirror").first.wait_for(timeout=30_000)
    partition = page.get_by_placeholder("Partition")
    partition.click()
    # Typed key by key (the suggestion list filters on key events); the list of partitions is
    # fetched after the page loads, which can take a while on a loaded machine.
    partition.press_sequentially(SOURCE_DB, delay=50)
    page.get_by_role("menuitem", name=SOURCE_DB, exact=True).click(timeout=90_000)
    # Picking the partition starts a query for its config and tags; a Launch Run clicked before
    # it answers (a loaded machine) meets the "no partition selected" warning instead of a run.
    # The partition's own tags in the session's tag bar say it has answered.
    page.get_by_text(f"platform/database: {SOURCE_DB}", exact=True).wait_for(timeout=90_000)
    run_id = _launch_run(page)

    assert _wait_for_run(port, run_id) == "SUCCESS"
    run = _graphql(port, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ jobName tags {{ key value }} }} }} }}')
    tags = {t["key"]: t["value"] for t in run["runOrError"]["tags"]}
    assert run["runOrError"]["jobName"] == "take_backups"
    assert tags["dagster/partition"] == SOURCE_DB and tags["platform/database"] == SOURCE_DB
    events = _graphql(port, """{ assetOrError(assetKey: {path: ["backups"]}) { ... on Asset {
        assetMaterializations(limit: 5) { runId partition metadataEntries { label
        ... on TextMetadataEntry { text } } } } } }""")["assetOrError"]["assetMaterializations"]
    [mine] = [e for e in events if e["runId"] == run_id]
    assert mine["partition"] == SOURCE_DB
    backup_id = next(e["text"] for e in mine["metadataEntries"] if e["label"] == "backup_id")
    for store in ("aws", "azure", "gcp"):
        assert (ui_fleet.parent / "stores" / store / "backups" / SOURCE_DB / backup_id / "manifest.json").exists()


def test_disaster_restore_launched_from_the_launchpad_restores_the_database(
        browser_page, ui_fleet, source_db, target_cluster):
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.protection import FleetProtection

    port, page = browser_page
    backup_id = FleetProtection(load_fleet(ui_fleet)).backup(SOURCE_DB).manifest.backup_id
    target = target_cluster.connection("restored_from_ui")
    config = (f"ops:\n  restore_from_backup:\n    config:\n      database: {SOURCE_DB}\n"
              f"      backup_id: {backup_id}\n      source_store: azure\n"
              f"      target_dsn: \"{target.dsn}\"\n      replace: false\n")

    page.goto(f"http://127.0.0.1:{port}/locations/platform_orchestration/jobs/disaster_restore/playground")
    editor = page.locator(".CodeMirror").first
    editor.wait_for(timeout=30_000)
    # The Launchpad's editor is CodeMirror; typing would fight its auto-indent, so the config
    # goes in through the editor's own API, as a paste would.
    editor.evaluate("(element, text) => element.CodeMirror.setValue(text)", config)
    run_id = _launch_run(page)

    assert _wait_for_run(port, run_id) == "SUCCESS"
    assert fingerprint(target) == fingerprint(source_db)
