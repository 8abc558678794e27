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

from platform_orchestration.definitions import REPOSITORY_ROOT
from platform_orchestration.postgres.cluster import free_port

DAGSTER = str(Path(sys.executable).with_name("dagster"))


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql",
                                     data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home),
           "PLATFORM_FLEET": str(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml")}
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
    assert [s["name"] for s in repository["sensors"]] == ["report_failed_runs"]
    upstream = {n["assetKey"]["path"][0]: {d["path"][0] for d in n["dependencyKeys"]}
                for n in repository["assetNodes"]}
    assert upstream["restore_drills"] == {"backup_copies"}
    assert upstream["compliance_report"] == {"restore_drills"}
