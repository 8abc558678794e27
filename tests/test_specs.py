"""Job and schedule specs: the repository's load, and each kind of mistake gives one clear, located line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import pytest

from platform_orchestration.assets import build_assets, database_partitions
from platform_orchestration.assets.physical import build_physical_assets, cluster_partitions
from platform_orchestration.assets.replication import build_replication_assets, standby_partitions
from platform_orchestration.fleet import Fleet, load_fleet
from platform_orchestration.ops import build_disaster_restore_job
from platform_orchestration.specs import (
    AssetJobSpec,
    OperatorJobSpec,
    SpecError,
    build_jobs,
    build_schedules,
    load_job_specs,
    load_schedule_specs,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
ASSETS = {"databases", "backups", "restore_drills"}
PARTITIONED_JOBS = {"take_backups"}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    """The demo fleet: databases orders, inventory, customers; policies critical, standard."""
    return load_fleet(REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml", environ={})


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def job_errors(directory: Path) -> list[str]:
    with pytest.raises(SpecError) as raised:
        build_jobs(load_job_specs(directory), ASSETS, build_disaster_restore_job)
    return raised.value.errors


def schedule_errors(directory: Path, fleet: Fleet) -> list[str]:
    jobs = [dg.define_asset_job("take_backups", selection="backups"),
            dg.define_asset_job("refresh_compliance", selection="databases")]
    with pytest.raises(SpecError) as raised:
        build_schedules(load_schedule_specs(directory), jobs, fleet, PARTITIONED_JOBS)
    return raised.value.errors


def schedule(cron: str = "0 * * * *", **fields: str) -> str:
    """A schedules file with one entry; ``fields`` (YAML text) are added from line 5 on."""
    extra = "".join(f"    {name}: {value}\n" for name, value in fields.items())
    return f"schedules:\n  - name: hourly\n    job: take_backups\n    cron: \"{cron}\"\n{extra}"


# --- the repository's specs ---------------------------------------------------------------------


def test_repository_specs_load_and_build_against_the_demo_fleet(fleet: Fleet) -> None:
    job_specs = load_job_specs(REPOSITORY_ROOT / "jobs")
    schedule_specs = load_schedule_specs(REPOSITORY_ROOT / "schedules")
    asset_names = {a.key.to_user_string() for a in build_assets(database_partitions(["orders"]))}
    asset_names |= {a.key.to_user_string() for a in build_physical_assets(cluster_partitions([]))}
    asset_names |= {a.key.to_user_string() for a in build_replication_assets(standby_partitions([]))}

    jobs = build_jobs(job_specs, asset_names, build_disaster_restore_job)
    schedules = build_schedules(schedule_specs, jobs, fleet, {"take_backups", "run_restore_drills"},
                                cluster_partitioned_jobs={"take_base_backups", "observe_wal_archiving",
                                                          "run_pitr_drills"},
                                standby_partitioned_jobs={"observe_replication", "run_failover_drills"})

    assert isinstance(job_specs[0], AssetJobSpec)
    assert isinstance(job_specs[-1], OperatorJobSpec)
    assert [job.name for job in jobs] == [spec.name for spec in job_specs]
    assert [s.name for s in schedules] == [spec.name for spec in schedule_specs]


# --- jobs: one clear error per mistake ----------------------------------------------------------


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", """\
        jobs:
          - name: backup
            assets: [backups
          - name: drill
        """)
    [error] = job_errors(tmp_path)
    assert error.startswith(f"{path}:4: YAML syntax error: expected ',' or ']'")


def test_unknown_field_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", """\
        jobs:
          - name: backup
            assets: [backups]
            retries: 3
        """)
    assert job_errors(tmp_path) == [
        f"{path}:4: jobs[0].retries: unknown field 'retries' (allowed: name, description, kind, assets)"
    ]


def test_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", """\
        jobs:
          - name: backup
            description: no assets
        """)
    assert job_errors(tmp_path) == [f"{path}:2: jobs[0].assets: required field missing"]


def test_unknown_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", """\
        jobs:
          - name: restore
            kind: restore
        """)
    assert job_errors(tmp_path) == [
        f"{path}:3: jobs[0].kind: expected one of assets, disaster_restore, rewrap_keys, restore_pitr, "
        "promote_standby, got 'restore'"
    ]


def test_unknown_asset(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs.yaml", """\
        jobs:
          - {name: backup, assets: [backups]}
          - name: drill
            assets:
              - backupz
        """)
    assert job_errors(tmp_path) == [
        f"{path}:5: jobs[1].assets[0]: unknown asset 'backupz' (known: backups, databases, restore_drills)"
    ]


def test_duplicate_job_name_across_files_points_at_the_first(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "jobs:\n  - {name: backup, assets: [backups]}\n")
    second = write(tmp_path, "b.yaml", "jobs:\n  - name: drill\n    assets: [restore_drills]\n"
                                       "  - name: backup\n    assets: [databases]\n")
    assert job_errors(tmp_path) == [
        f"{second}:4: jobs[1].name: duplicate job name 'backup' (first defined at {first}:2)"
    ]


def test_problems_in_every_file_are_reported_together(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "jobs: []\n")
    second = write(tmp_path, "b.yaml", "jobs:\n  - {name: 'bad name', assets: [backups]}\n")
    assert job_errors(tmp_path) == [
        f"{first}:1: jobs: expected at least one entry, got none",
        f"{second}:2: jobs[0].name: expected a name of letters, digits and '_' (as Dagster requires), got 'bad name'",
    ]


# --- schedules: one clear error per mistake -----------------------------------------------------


def test_schedule_naming_an_unknown_job(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule().replace("job: take_backups", "job: take_backup"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:3: schedules[0].job: unknown job 'take_backup' (known: refresh_compliance, take_backups)"
    ]


def test_unknown_policy(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(databases="{policy: gold}"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].databases.policy: unknown policy 'gold' (known: critical, standard)"
    ]


def test_unknown_database(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(databases="[orders, payments]"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].databases[1]: unknown database 'payments' (known: customers, inventory, orders)"
    ]


def test_database_selection_for_a_job_that_does_not_run_per_database(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(databases="all").replace("take_backups", "refresh_compliance"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].databases: job 'refresh_compliance' runs once for the whole fleet, "
        "not per database; remove databases"
    ]


def test_bad_cron(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule("61 * * * *"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:4: schedules[0].cron: expected a cron expression of 5 fields like '30 3 * * *' (minute 0-59, "
        "hour 0-23, day of month 1-31, month 1-12, day of week 0-6), got '61 * * * *'"
    ]


def test_bad_timezone_suggests_the_closest_name(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(timezone="Europe/Pariss"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].timezone: unknown time zone 'Europe/Pariss' "
        "(expected an IANA name like UTC or Europe/Paris; did you mean 'Europe/Paris'?)"
    ]


def test_duplicate_schedule_name_in_one_file_points_at_the_line(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule() + "  - {name: hourly, job: take_backups, cron: '30 * * * *'}\n")
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[1].name: duplicate schedule name 'hourly' (first defined at line 2)"
    ]


def test_batch_size_on_a_job_that_runs_once_for_the_fleet(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(batch_size="10").replace("take_backups", "refresh_compliance"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].batch_size: job 'refresh_compliance' runs once for the whole fleet, "
        "not per database; remove batch_size"]


def test_a_negative_batch_size(tmp_path: Path, fleet: Fleet) -> None:
    path = write(tmp_path, "s.yaml", schedule(batch_size="-1"))
    assert schedule_errors(tmp_path, fleet) == [
        f"{path}:5: schedules[0].batch_size: expected a number of at least 0, got -1"]
