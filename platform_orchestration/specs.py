"""Jobs and schedules declared in YAML (`jobs/*.yaml`, `schedules/*.yaml`), turned into Dagster.

Reviewed files, not ClickOps: adding a schedule or a job is a YAML change in a pull
request. The files name assets and jobs; anything they name that does not exist is an
error naming the file and the entry, raised when the code location loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SpecError(ValueError):
    """A job or schedule file is invalid; one line per problem, naming file and entry."""


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AssetJobSpec(_Spec):
    name: str
    description: str = ""
    kind: Literal["assets"] = "assets"
    assets: list[str] = Field(min_length=1)


class DisasterRestoreJobSpec(_Spec):
    name: str
    description: str = ""
    kind: Literal["disaster_restore"]


class JobsFile(_Spec):
    jobs: list[AssetJobSpec | DisasterRestoreJobSpec] = Field(min_length=1)


class PolicySelection(_Spec):
    policy: str


class ScheduleSpec(_Spec):
    name: str
    job: str
    cron: str
    timezone: str = "UTC"
    description: str = ""
    # Which databases a partitioned job runs for: every one, a list, or a policy's.
    databases: Literal["all"] | list[str] | PolicySelection = "all"
    running_by_default: bool = True


class SchedulesFile(_Spec):
    schedules: list[ScheduleSpec] = Field(min_length=1)


def _load(path: Path, model: type[BaseModel]) -> BaseModel:
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{line}: YAML syntax error: {getattr(exc, 'problem', exc)}") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"] if not str(p).endswith("Spec"))
            lines.append(f"{path}: {where or '(document)'}: {error['msg']}")
        raise SpecError("\n".join(lines)) from None


def load_job_specs(directory: Path) -> list[AssetJobSpec | DisasterRestoreJobSpec]:
    specs: list[AssetJobSpec | DisasterRestoreJobSpec] = []
    for path in sorted(directory.glob("*.yaml")):
        specs += _load(path, JobsFile).jobs  # type: ignore[attr-defined]
    return specs


def load_schedule_specs(directory: Path) -> list[ScheduleSpec]:
    specs: list[ScheduleSpec] = []
    for path in sorted(directory.glob("*.yaml")):
        specs += _load(path, SchedulesFile).schedules  # type: ignore[attr-defined]
    return specs


def build_jobs(specs: Sequence[AssetJobSpec | DisasterRestoreJobSpec], asset_names: set[str],
               disaster_restore_job_factory) -> list:  # noqa: ANN001
    problems, jobs, seen = [], [], set()
    for spec in specs:
        if spec.name in seen:
            problems.append(f"jobs: duplicate job name {spec.name!r}")
        seen.add(spec.name)
        if isinstance(spec, AssetJobSpec):
            unknown = [a for a in spec.assets if a not in asset_names]
            if unknown:
                problems.append(f"jobs: {spec.name}: unknown asset(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(asset_names))})")
                continue
            jobs.append(dg.define_asset_job(spec.name, selection=dg.AssetSelection.assets(*spec.assets),
                                            description=spec.description or None))
        else:
            jobs.append(disaster_restore_job_factory(spec.name, spec.description))
    if problems:
        raise SpecError("\n".join(problems))
    return jobs


def _selected_databases(spec: ScheduleSpec, fleet) -> list[str]:  # noqa: ANN001
    if spec.databases == "all":
        return [db.name for db in fleet.databases]
    if isinstance(spec.databases, PolicySelection):
        return [db.name for db in fleet.databases if db.policy == spec.databases.policy]
    return list(spec.databases)


def build_schedules(specs: Sequence[ScheduleSpec], jobs: Sequence, fleet,  # noqa: ANN001
                    partitioned_jobs: set[str]) -> list[dg.ScheduleDefinition]:
    by_name = {job.name: job for job in jobs}
    problems, schedules = [], []
    known_databases = {db.name for db in fleet.databases}
    known_policies = {p.name for p in fleet.policies}
    for spec in specs:
        if spec.job not in by_name:
            problems.append(f"schedules: {spec.name}: unknown job {spec.job!r} (known: {', '.join(sorted(by_name))})")
            continue
        if isinstance(spec.databases, PolicySelection) and spec.databases.policy not in known_policies:
            problems.append(f"schedules: {spec.name}: unknown policy {spec.databases.policy!r}")
            continue
        if isinstance(spec.databases, list) and (unknown := set(spec.databases) - known_databases):
            problems.append(f"schedules: {spec.name}: unknown database(s) {', '.join(sorted(unknown))}")
            continue
        try:
            schedules.append(_schedule(spec, by_name[spec.job], _selected_databases(spec, fleet),
                                       spec.job in partitioned_jobs))
        except dg.DagsterInvalidDefinitionError as exc:
            # Dagster's own validation of cron strings and time zones.
            problems.append(f"schedules: {spec.name}: {exc}")
    if problems:
        raise SpecError("\n".join(problems))
    return schedules


def _schedule(spec: ScheduleSpec, job, databases: list[str], partitioned: bool) -> dg.ScheduleDefinition:  # noqa: ANN001
    status = dg.DefaultScheduleStatus.RUNNING if spec.running_by_default else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(name=spec.name, cron_schedule=spec.cron, execution_timezone=spec.timezone, job=job,
                 description=spec.description or None, default_status=status)
    def _evaluate(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat()
        if not partitioned:
            return [dg.RunRequest(run_key=f"{spec.name}:{tick}")]
        # One run per database: a slow or failing database never holds the others back.
        return [dg.RunRequest(run_key=f"{spec.name}:{db}:{tick}", partition_key=db) for db in databases]

    return _evaluate
