"""The recoverability report of a compliance run, opened in Debian's Chromium (Playwright):
what it shows is what the stores hold, every figure names its backup, drill or run, and the
page needs nothing from elsewhere. A screenshot is kept under var/artifacts/."""

from __future__ import annotations

import io
import json
from pathlib import Path

import dagster as dg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet

from platform_orchestration.cli import main
from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions
from platform_orchestration.fleet import load_fleet
from platform_orchestration.protection import FleetProtection

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPOSITORY_ROOT / "var" / "artifacts"
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


@pytest.fixture(scope="module")
def drilled_fleet(tmp_path_factory, source_cluster, source_db):
    """One backup in three stores, drills from aws and azure that pass and one from gcp that
    fails (its copy corrupted), then a compliance run through Dagster."""
    root = tmp_path_factory.mktemp("report")
    fleet_file = write_fleet(root, source_cluster, SOURCE_DB)
    with FleetProtection.from_environment(load_fleet(fleet_file)) as protection:
        manifest = protection.backup(SOURCE_DB).manifest
        drills = [protection.drill(SOURCE_DB, "aws"), protection.drill(SOURCE_DB, "azure")]
        for dump in (root / "stores" / "gcp" / "backups" / SOURCE_DB).glob("*/dump.pgdump.zst"):
            data = bytearray(dump.read_bytes())
            data[len(data) // 2] ^= 0xFF
            dump.write_bytes(bytes(data))
        drills.append(protection.drill(SOURCE_DB, "gcp"))
    assert [d.passed for d in drills] == [True, True, False]
    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as instance:
        result = build_definitions(fleet_file).resolve_job_def("refresh_compliance").execute_in_process(
            instance=instance, run_config=QUIET)
    [materialization] = result.asset_materializations_for_node("compliance_report")
    return root, fleet_file, manifest, drills, materialization.metadata, result.run_id


def test_compliance_asset_links_the_report_written_to_every_store(drilled_fleet):
    root, _fleet, _manifest, _drills, metadata, run_id = drilled_fleet
    html_key = metadata["report_html_key"].value
    assert html_key.startswith("evidence/reports/") and html_key.endswith("/report.html")
    assert metadata["report_stores"].value == "aws, azure, gcp"
    assert metadata["report"].value == (root / "stores" / "aws" / html_key).resolve().as_uri()
    for store in ("aws", "azure", "gcp"):
        document = json.loads((root / "stores" / store / metadata["report_json_key"].value).read_text())
        assert document["run_id"] == run_id
        assert document["evidence_key"] == metadata["evidence_key"].value


def test_the_report_in_a_browser_shows_copies_drills_verdict_and_charts_traceable_to_their_ids(drilled_fleet):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make test installs it as root)")
    from playwright.sync_api import sync_playwright

    root, _fleet, manifest, drills, metadata, run_id = drilled_fleet
    url = metadata["report"].value
    document = json.loads((root / "stores" / "aws" / metadata["report_json_key"].value).read_text())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url)

        assert page.locator(".summary").inner_text() == "0 of 1 databases compliant."
        assert page.locator(".run-id").inner_text() == run_id
        section = page.locator(f'section[data-database="{SOURCE_DB}"]')
        assert section.locator(".verdict").inner_text() == "NOT COMPLIANT"
        failed_check = section.locator('tr[data-check="drill_passed_within_cadence"]')
        assert "FAIL" in failed_check.inner_text() and drills[2].drill_id in failed_check.inner_text()

        copies = section.locator("table.copies tr[data-store]")
        assert copies.count() == 3
        for i, store in enumerate(("aws", "azure", "gcp")):
            row = copies.nth(i)
            assert row.get_attribute("data-store") == store
            assert row.get_attribute("data-backup-id") == manifest.backup_id
            assert "/ 1h 0m" in row.inner_text() and "yes" in row.inner_text()
            assert "tink-streaming-aead" in row.inner_text()

        drill_rows = section.locator("table.drills tr[data-store]")
        by_store = {drill_rows.nth(i).get_attribute("data-store"): drill_rows.nth(i) for i in range(3)}
        for drill in drills:
            row = by_store[drill.source_store]
            assert row.get_attribute("data-drill-id") == drill.drill_id
            assert ("passed" if drill.passed else "FAILED: ") in row.inner_text()
        assert "checksum mismatch" in by_store["gcp"].inner_text()

        points = section.locator("svg.drill-rto .point")
        assert sorted(points.nth(i).get_attribute("data-drill-id") for i in range(points.count())) == \
            sorted(d.drill_id for d in drills)
        assert f"drill {drills[0].drill_id} from aws" in section.locator(
            f'svg.drill-rto [data-drill-id="{drills[0].drill_id}"] title').text_content()
        bars = section.locator("svg.copy-age rect.bar")
        assert bars.count() == 3
        assert {bars.nth(i).get_attribute("data-backup-id") for i in range(3)} == {manifest.backup_id}
        assert section.locator("svg.copy-age").is_visible() and section.locator("svg.drill-rto").is_visible()

        # The figures shown are the JSON's, and the JSON's are the drill records'.
        [db] = document["databases"]
        assert [d["drill_id"] for d in db["drills"]] == [d.drill_id for d in drills]
        assert db["drills"][0]["rto_seconds"] == drills[0].rto_seconds
        assert requested == [url], "the page asked for something besides itself"

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "recoverability-report.png"), full_page=True)
        browser.close()


def test_platform_dr_report_writes_the_report_and_says_where(drilled_fleet, tmp_path):
    _root, fleet_file, manifest, _drills, _metadata, _run_id = drilled_fleet
    out = io.StringIO()
    code = main(["--fleet", str(fleet_file), "report", "--output", str(tmp_path / "out")], out=out)
    printed = out.getvalue()
    assert code == 1  # a drill failed: the fleet is not compliant, and the exit code says so
    assert "0 of 1 databases compliant" in printed and "evidence/reports/" in printed
    assert "file://" in printed
    html = (tmp_path / "out" / "report.html").read_text()
    assert manifest.backup_id in html and "<script" not in html
    assert json.loads((tmp_path / "out" / "report.json").read_text())["databases"][0]["database"] == SOURCE_DB
