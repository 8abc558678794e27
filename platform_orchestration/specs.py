"""Jobs and schedules declared in YAML (`jobs/*.yaml`, `schedules/*.yaml`), turned into Dagster.

Reviewed files, not ClickOps: adding a schedule or a job is a YAML change in a pull request.
Every problem is one line ``FILE:LINE: field.path: what was expected`` in a :class:`SpecError`,
all problems of a step together, raised when the code location loads:

* loading (:func:`load_job_specs`, :func:`load_schedule_specs`) checks each file on its own: YAML
  syntax, unknown or missing fields, job kinds, names, cron expressions and time zones;
* building (:func:`build_jobs`, :func:`build_schedules`) checks what the files name: assets, jobs,
  policies and databases, and that job and schedule names are unique across files.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import dagster as dg
from dagster._utils.schedules import cron_string_iterator  # Dagster's own cron arithmetic
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
)

from platform_orchestration.declarations import (
    DeclarationError,
    Finding,
    Loc,
    Origin,
    describe_value,
    known_names,
    read_yaml_mapping,
    render_findings,
)
from platform_orchestration.fleet import Fleet
from platform_orchestration.fleet.durations import format_duration

__all__ = [
    "DATABASE_RUN_TAG",
    "AssetJobSpec",
    "OperatorJobSpec",
    "JobSpec",
    "JobsFile",
    "PolicySelection",
    "ScheduleSpec",
    "SchedulesFile",
    "SpecError",
    "build_jobs",
    "build_schedules",
    "load_job_specs",
    "load_schedule_specs",
]

DagsterJob: TypeAlias = Any
"""A ``dg.JobDefinition`` or what ``dg.define_asset_job`` returns (Dagster exports no name for it)."""

_DAGSTER_NAME = re.compile(r"[A-Za-z0-9_]+")

DATABASE_RUN_TAG = "platform/database"
"""Run tag naming the database a per-database run works on. deploy/dagster.yaml limits runs
to one in progress per value of it, so two runs never back up, prune or drill one database
at once (the database's advisory lock is the backstop for the CLI and other instances)."""


CLUSTER_RUN_TAG = "platform/cluster"
"""Run tag naming the cluster a per-cluster (physical) run works on; one in progress per value."""


def cluster_run_tags(partition_key: str) -> dict[str, str]:
    """The tags of a run of one physical cluster's partition."""
    return {CLUSTER_RUN_TAG: partition_key}


def database_run_tags(partition_key: str) -> dict[str, str]:
    """The tags of a run of one database's partition (every partition key is a database name)."""
    return {DATABASE_RUN_TAG: partition_key}


class SpecError(DeclarationError):
    """A job or schedule file is invalid. ``errors`` holds one ``FILE:LINE: PATH: message`` per problem."""


# --- field checks -------------------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not _DAGSTER_NAME.fullmatch(value):
        raise ValueError(f"expected a name of letters, digits and '_' (as Dagster requires), got {value!r}")
    return value


def _check_cron(value: str) -> str:
    # Dagster's own check, so that what loads here is exactly what Dagster will schedule.
    try:
        dg.ScheduleDefinition(name="cron_check", cron_schedule=value, job_name="cron_check")
    except dg.DagsterInvalidDefinitionError:
        raise ValueError(
            "expected a cron expression of 5 fields like '30 3 * * *' (minute 0-59, hour 0-23, "
            f"day of month 1-31, month 1-12, day of week 0-6), got {value!r}"
        ) from None
    return value


@cache
def _time_zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a tzdata directory such as 'Europe'
        close = difflib.get_close_matches(value, _time_zone_names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown time zone {value!r} (expected an IANA name like UTC or Europe/Paris{hint})"
        ) from None
    return value


_Name = Annotated[str, AfterValidator(_check_name)]


# --- models -------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _NamedSpec(_Strict):
    """An entry of a spec file. ``_origin`` is where it was written (``None`` when built in code)."""

    _noun: ClassVar[str] = "spec"
    _origin: Origin | None = PrivateAttr(default=None)

    name: _Name

    def _finding(self, loc: Loc, message: str) -> Finding:
        if self._origin is None:
            return Finding(f"{self._noun} {self.name!r}", None, loc, message)
        return self._origin.finding(loc, message)

    def _position(self, *, seen_from: _NamedSpec) -> str:
        """Where this entry's name is written, as seen from ``seen_from``'s file."""
        if self._origin is None:
            return "earlier"
        source = seen_from._origin.document.source if seen_from._origin is not None else None
        return "at " + self._origin.position(("name",), seen_from=source)


class AssetJobSpec(_NamedSpec):
    """A job materializing ``assets`` (the default ``kind``)."""

    _noun: ClassVar[str] = "job"

    description: str = ""
    kind: Literal["assets"] = "assets"
    assets: list[str] = Field(min_length=1)


class OperatorJobSpec(_NamedSpec):
    """An operator job built in code: the disaster restore and the point-in-time restore
    (configured from the Launchpad), or the rewrap of backup data keys after a key rotation."""

    _noun: ClassVar[str] = "job"

    description: str = ""
    kind: Literal["disaster_restore", "rewrap_keys", "restore_pitr", "promote_standby"]


def _job_kind(value: object) -> str:
    # A missing kind means `assets`; so does a non-mapping, which the assets model then reports.
    kind = value.get("kind", "assets") if isinstance(value, Mapping) else getattr(value, "kind", "assets")
    return kind if isinstance(kind, str) else str(kind)


JobSpec: TypeAlias = Annotated[
    Annotated[AssetJobSpec, Tag("assets")] | Annotated[OperatorJobSpec, Tag("disaster_restore")]
    | Annotated[OperatorJobSpec, Tag("rewrap_keys")] | Annotated[OperatorJobSpec, Tag("restore_pitr")]
    | Annotated[OperatorJobSpec, Tag("promote_standby")],
    Discriminator(_job_kind),
]


class JobsFile(_Strict):
    jobs: list[JobSpec] = Field(min_length=1)


class PolicySelection(_Strict):
    policy: str


def _selection_kind(value: object) -> str:
    if isinstance(value, (Mapping, PolicySelection)):
        return "policy"
    return "list" if isinstance(value, (list, tuple)) else "all"


def _check_selection_shape(value: object) -> object:
    if value == "all" or isinstance(value, (list, tuple, Mapping, PolicySelection)):
        return value
    raise ValueError(f"expected all, a list of database names or {{policy: NAME}}, got {describe_value(value)}")


DatabaseSelection: TypeAlias = Annotated[
    Annotated[Literal["all"], Tag("all")]
    | Annotated[list[str], Tag("list"), Field(min_length=1)]
    | Annotated[PolicySelection, Tag("policy")],
    Discriminator(_selection_kind),
    BeforeValidator(_check_selection_shape),
]
"""Which databases a partitioned job runs for: ``all``, a list of names, or ``{policy: NAME}``."""


DEFAULT_BATCH_SIZE = 100


class ScheduleSpec(_NamedSpec):
    """When a job runs, and for a per-database job, for which databases."""

    _noun: ClassVar[str] = "schedule"

    job: str
    cron: Annotated[str, AfterValidator(_check_cron)]
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"
    description: str = ""
    databases: DatabaseSelection = "all"
    # For per-cluster (physical) jobs: all physical clusters, a list, or those whose physical.policy is NAME.
    clusters: DatabaseSelection = "all"
    running_by_default: bool = True
    # A per-database job's tick selecting more databases than this runs them in batches of this
    # many (ops/batches.py: each database still its own steps, partition and failure) instead of
    # one run per database; 0: one run per database however many.
    batch_size: Annotated[int, Field(ge=0)] = DEFAULT_BATCH_SIZE


class SchedulesFile(_Strict):
    schedules: list[ScheduleSpec] = Field(min_length=1)


# --- loading ------------------------------------------------------------------------------------

_SpecT = TypeVar("_SpecT", bound=_NamedSpec)


def load_job_specs(directory: Path) -> list[AssetJobSpec | OperatorJobSpec]:
    """The jobs of every ``*.yaml``/``*.yml`` file in ``directory``, in file-name then entry order.

    Raises :class:`SpecError` listing every problem in every file. What the jobs name (assets,
    each other) is checked by :func:`build_jobs`.
    """
    return _load_entries(directory, JobsFile, "jobs")


def load_schedule_specs(directory: Path) -> list[ScheduleSpec]:
    """The schedules of every ``*.yaml``/``*.yml`` file in ``directory``, in file-name then entry order.

    Raises :class:`SpecError` listing every problem in every file, including cron expressions and
    time zones. What the schedules name is checked by :func:`build_schedules`.
    """
    return _load_entries(directory, SchedulesFile, "schedules")


def _load_entries(directory: Path, file_model: type[BaseModel], section: str) -> list[Any]:
    """The entries under ``section`` of each file validated as ``file_model``, each knowing its origin."""
    errors: list[str] = []
    entries: list[_NamedSpec] = []
    for path in _spec_files(directory, section):
        try:
            document = read_yaml_mapping(path, what=f"{section} file", expected=f"a mapping with a {section} list")
        except DeclarationError as exc:
            errors += exc.errors
            continue
        parsed = document.validate(file_model)
        if parsed is None or document.findings:
            errors += render_findings(document.findings)
            continue
        for index, entry in enumerate(getattr(parsed, section)):
            entry._origin = Origin(document, (section, index))
            entries.append(entry)
    if errors:
        raise SpecError(errors)
    return entries


def _spec_files(directory: Path, section: str) -> list[Path]:
    if not directory.exists():
        raise SpecError([f"{section} directory not found: {directory}"])
    if not directory.is_dir():
        raise SpecError([f"{section} directory is a file, expected a directory: {directory}"])
    # `.yml` too: a file silently skipped for its extension would be a job or schedule silently lost.
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


# --- building -----------------------------------------------------------------------------------


def _unique(spec: _SpecT, first_by_name: dict[str, _SpecT], noun: str) -> Finding | None:
    """A duplicate-name finding if ``spec``'s name was seen before; records it otherwise."""
    first = first_by_name.setdefault(spec.name, spec)
    if first is spec:
        return None
    where = first._position(seen_from=spec)
    return spec._finding(("name",), f"duplicate {noun} name {spec.name!r} (first defined {where})")


def build_jobs(
    specs: Sequence[AssetJobSpec | OperatorJobSpec],
    asset_names: Collection[str],
    disaster_restore_job_factory: Callable[[str, str], dg.JobDefinition],
    *,
    database_partitions: dg.PartitionsDefinition | None = None,
    partitioned_assets: Collection[str] = (),
    run_tags_for: Callable[[Sequence[str], str], Mapping[str, str]] | None = None,
    run_config_for: Callable[[str], Mapping[str, Any]] | None = None,
    cluster_partitions: dg.PartitionsDefinition | None = None,
    cluster_partitioned_assets: Collection[str] = (),
    standby_partitions: dg.PartitionsDefinition | None = None,
    standby_partitioned_assets: Collection[str] = (),
    cluster_run_config_for: Callable[[str], Mapping[str, Any]] | None = None,
) -> list[DagsterJob]:
    """One Dagster job per spec: an asset job, or ``disaster_restore_job_factory(name, description)``.

    An asset job selecting any of ``partitioned_assets`` (partitioned by ``database_partitions``)
    tags each run with its database (:data:`DATABASE_RUN_TAG`), however it is launched: by a
    schedule, from the Launchpad, by a backfill or a retry; ``run_tags_for(assets, database)``
    adds tags to such a run (the cross-cloud links it uses) and ``run_config_for(database)``
    gives its run config (the executor's per-step pod sizes); ``cluster_run_config_for(cluster)``
    does the same for a run of one cluster or standby.

    Raises :class:`SpecError` listing every duplicate job name and every asset not in ``asset_names``.
    """
    findings: list[Finding] = []
    jobs: list[DagsterJob] = []
    first_by_name: dict[str, AssetJobSpec | OperatorJobSpec] = {}
    for spec in specs:
        problems = [] if isinstance(spec, OperatorJobSpec) else [
            spec._finding(("assets", index), f"unknown asset {asset!r} ({known_names(asset_names)})")
            for index, asset in enumerate(spec.assets)
            if asset not in asset_names
        ]
        if (duplicate := _unique(spec, first_by_name, "job")) is not None:
            problems.insert(0, duplicate)
        if isinstance(spec, AssetJobSpec) and any(a in cluster_partitioned_assets for a in spec.assets) and any(
                a in partitioned_assets for a in spec.assets):
            problems.append(spec._finding(("assets",), "mixes per-database and per-cluster (physical) assets; "
                                                       "a run is either one database's or one cluster's"))
        findings += problems
        if problems:
            continue
        if isinstance(spec, OperatorJobSpec):
            if spec.kind == "rewrap_keys":
                from platform_orchestration.ops import build_rewrap_keys_job

                jobs.append(build_rewrap_keys_job(spec.name, spec.description))
            elif spec.kind == "restore_pitr":
                from platform_orchestration.ops.physical import build_restore_pitr_job

                jobs.append(build_restore_pitr_job(spec.name, spec.description))
            elif spec.kind == "promote_standby":
                from platform_orchestration.ops.replication import build_promote_standby_job

                jobs.append(build_promote_standby_job(spec.name, spec.description))
            else:
                jobs.append(disaster_restore_job_factory(spec.name, spec.description))
        else:
            per_database = database_partitions is not None and any(a in partitioned_assets for a in spec.assets)
            per_cluster = cluster_partitions is not None and any(a in cluster_partitioned_assets for a in spec.assets)
            per_standby = standby_partitions is not None and any(a in standby_partitioned_assets for a in spec.assets)
            config = None
            if per_database:
                config = dg.PartitionedConfig(
                    database_partitions,
                    run_config_for_partition_key_fn=lambda key: dict(run_config_for(key)) if run_config_for else {},
                    tags_for_partition_key_fn=_run_tags(spec.assets, run_tags_for))
            elif per_cluster or per_standby:  # a standby's runs share the per-cluster limit under its own name
                config = dg.PartitionedConfig(
                    cluster_partitions if per_cluster else standby_partitions,
                    run_config_for_partition_key_fn=lambda key: (
                        dict(cluster_run_config_for(key)) if cluster_run_config_for else {}),
                    tags_for_partition_key_fn=cluster_run_tags)
            jobs.append(
                dg.define_asset_job(
                    spec.name,
                    selection=dg.AssetSelection.assets(*spec.assets),
                    description=spec.description or None,
                    config=config,
                )
            )
    if findings:
        raise SpecError(render_findings(findings))
    return jobs


def _run_tags(assets: Sequence[str], extra: Callable[[Sequence[str], str], Mapping[str, str]] | None
              ) -> Callable[[str], dict[str, str]]:
    def tags(partition_key: str) -> dict[str, str]:
        return {**(extra(assets, partition_key) if extra else {}), **database_run_tags(partition_key)}

    return tags


def build_schedules(
    specs: Sequence[ScheduleSpec],
    jobs: Sequence[DagsterJob],
    fleet: Fleet,
    partitioned_jobs: Collection[str],
    *,
    batch_job_for: Callable[[str], DagsterJob] | None = None,
    batch_run_tags_for: Callable[[str, Sequence[str]], Mapping[str, str]] | None = None,
    batch_run_config_for: Callable[[Sequence[str]], Mapping[str, Any]] | None = None,
    cluster_partitioned_jobs: Collection[str] = (),
    cluster_job_cadences: Mapping[str, str] = {},
    standby_partitioned_jobs: Collection[str] = (),
) -> list[dg.ScheduleDefinition]:
    """One Dagster schedule per spec; a job in ``partitioned_jobs`` gets one run per selected
    database, or, when more are selected than the spec's ``batch_size`` and ``batch_job_for``
    is given, one run of ``batch_job_for(job name)`` per batch (see :func:`fleet_batches`), its
    tags from ``batch_run_tags_for`` and its run config from ``batch_run_config_for`` (the batch's
    databases, and on Kubernetes its pods' sizes).

    Raises :class:`SpecError` listing every duplicate schedule name, every unknown job, policy or
    database, and every database selection on a job that does not run per database.
    """
    jobs_by_name = {job.name: job for job in jobs}
    findings: list[Finding] = []
    schedules: list[dg.ScheduleDefinition] = []
    first_by_name: dict[str, ScheduleSpec] = {}
    for spec in specs:
        per_standby = spec.job in standby_partitioned_jobs
        per_cluster = spec.job in cluster_partitioned_jobs or per_standby
        problems = (_standby_schedule_problems(spec, fleet) if per_standby
                    else _cluster_schedule_problems(spec, jobs_by_name, fleet, cluster_job_cadences.get(spec.job))
                    if per_cluster
                    else _schedule_problems(spec, jobs_by_name, fleet, partitioned_jobs))
        if "clusters" in spec.model_fields_set and not per_cluster and not problems:
            problems.append(spec._finding(("clusters",), f"job {spec.job!r} does not run per physical cluster; "
                                                         "remove clusters"))
        if (duplicate := _unique(spec, first_by_name, "schedule")) is not None:
            problems.insert(0, duplicate)
        findings += problems
        if problems:
            continue
        try:
            if per_cluster:
                selected = _selected_standbys(spec, fleet) if per_standby else _selected_clusters(spec, fleet)
                schedules.append(_schedule(spec, jobs_by_name[spec.job], selected, True))
                continue
            databases = _selected_databases(spec, fleet)
            partitioned = spec.job in partitioned_jobs
            if partitioned and batch_job_for is not None and 0 < spec.batch_size < len(databases):
                schedules.append(_batched_schedule(
                    spec, batch_job_for(spec.job), fleet_batches(fleet, databases, spec.batch_size),
                    (lambda members, job=spec.job: batch_run_tags_for(job, members)) if batch_run_tags_for else None,
                    batch_run_config_for))
            else:
                schedules.append(_schedule(spec, jobs_by_name[spec.job], databases, partitioned))
        except dg.DagsterInvalidDefinitionError as exc:  # anything Dagster refuses that the model let through
            findings.append(spec._finding((), str(exc)))
    if findings:
        raise SpecError(render_findings(findings))
    return schedules


def _schedule_problems(
    spec: ScheduleSpec, jobs_by_name: Mapping[str, DagsterJob], fleet: Fleet, partitioned_jobs: Collection[str]
) -> list[Finding]:
    if spec.job not in jobs_by_name:
        return [spec._finding(("job",), f"unknown job {spec.job!r} ({known_names(jobs_by_name)})")]
    databases = spec.databases
    if "databases" in spec.model_fields_set and spec.job not in partitioned_jobs:
        # Otherwise the selection would be silently ignored.
        return [
            spec._finding(
                ("databases",),
                f"job {spec.job!r} runs once for the whole fleet, not per database; remove databases",
            )
        ]
    if "batch_size" in spec.model_fields_set and spec.job not in partitioned_jobs:
        return [spec._finding(("batch_size",), f"job {spec.job!r} runs once for the whole fleet, "
                                               "not per database; remove batch_size")]
    if isinstance(databases, PolicySelection):
        known_policies = [policy.name for policy in fleet.policies]
        if databases.policy not in known_policies:
            return [
                spec._finding(
                    ("databases", "policy"), f"unknown policy {databases.policy!r} ({known_names(known_policies)})"
                )
            ]
    elif isinstance(databases, list):
        known_databases = [database.name for database in fleet.databases]
        return [
            spec._finding(("databases", index), f"unknown database {name!r} ({known_names(known_databases)})")
            for index, name in enumerate(databases)
            if name not in known_databases
        ]
    return []


def _longest_interval(cron: str, timezone: str, ticks: int = 400) -> float:
    """The longest gap, in seconds, between consecutive ticks of ``cron`` over its next ``ticks``."""
    times = list(itertools.islice(cron_string_iterator(0, cron, timezone), ticks))
    return max((b - a).total_seconds() for a, b in itertools.pairwise(times)) if len(times) > 1 else 0.0


def _cadence_problems(spec: ScheduleSpec, fleet: Fleet, objective: str) -> list[Finding]:
    """A per-cluster schedule must fire at least as often as each selected cluster's policy asks
    (``objective``: the PhysicalPolicy field, base_backup or wal_max_lag)."""
    longest = _longest_interval(spec.cron, spec.timezone)
    problems = []
    for name in _selected_clusters(spec, fleet):
        policy = fleet.policy(fleet.cluster(name).physical.policy).physical  # type: ignore[union-attr]
        allowed = policy.allowed_copy_lag if objective == "copy_max_lag" else getattr(policy, objective)
        if longest > allowed.total_seconds():
            problems.append(spec._finding(("cron",), (
                f"fires as seldom as every {format_duration(timedelta(seconds=longest))}, but cluster {name!r} "
                f"has physical.{objective} {format_duration(allowed)} in its policy")))
    return problems


def _cluster_schedule_problems(spec: ScheduleSpec, jobs_by_name: Mapping[str, DagsterJob], fleet: Fleet,
                               objective: str | None = None) -> list[Finding]:
    if "databases" in spec.model_fields_set:
        return [spec._finding(("databases",), f"job {spec.job!r} runs per physical cluster, not per database; "
                                              "use clusters")]
    clusters = spec.clusters
    if isinstance(clusters, PolicySelection):
        physical_policies = [policy.name for policy in fleet.policies if policy.physical is not None]
        if clusters.policy not in physical_policies:
            return [spec._finding(("clusters", "policy"), f"unknown policy {clusters.policy!r} or one without "
                                                          f"physical objectives ({known_names(physical_policies)})")]
    elif isinstance(clusters, list):
        known = [cluster.name for cluster in fleet.physical_clusters()]
        unknown = [spec._finding(("clusters", index), f"unknown physical cluster {name!r} ({known_names(known)})")
                   for index, name in enumerate(clusters) if name not in known]
        if unknown:
            return unknown
    return _cadence_problems(spec, fleet, objective) if objective else []


def _selected_clusters(spec: ScheduleSpec, fleet: Fleet) -> list[str]:
    physical = fleet.physical_clusters()
    if spec.clusters == "all":
        return [cluster.name for cluster in physical]
    if isinstance(spec.clusters, PolicySelection):
        return [c.name for c in physical if c.physical is not None and c.physical.policy == spec.clusters.policy]
    return list(spec.clusters)


def _standby_schedule_problems(spec: ScheduleSpec, fleet: Fleet) -> list[Finding]:
    """A per-standby schedule's ``clusters``: all standbys, a list of them, or {policy: NAME}
    (the standbys whose standby.policy is NAME)."""
    if "databases" in spec.model_fields_set:
        return [spec._finding(("databases",), f"job {spec.job!r} runs per standby cluster, not per database; "
                                              "use clusters")]
    if isinstance(spec.clusters, PolicySelection):
        policies = [policy.name for policy in fleet.policies if policy.replication is not None]
        if spec.clusters.policy not in policies:
            return [spec._finding(("clusters", "policy"), f"unknown policy {spec.clusters.policy!r} or one without "
                                                          f"replication objectives ({known_names(policies)})")]
    elif isinstance(spec.clusters, list):
        known = [cluster.name for cluster in fleet.standby_clusters()]
        return [spec._finding(("clusters", index), f"unknown standby cluster {name!r} ({known_names(known)})")
                for index, name in enumerate(spec.clusters) if name not in known]
    return []


def _selected_standbys(spec: ScheduleSpec, fleet: Fleet) -> list[str]:
    standbys = fleet.standby_clusters()
    if spec.clusters == "all":
        return [cluster.name for cluster in standbys]
    if isinstance(spec.clusters, PolicySelection):
        return [c.name for c in standbys if c.standby is not None and c.standby.policy == spec.clusters.policy]
    return list(spec.clusters)


def _selected_databases(spec: ScheduleSpec, fleet: Fleet) -> list[str]:
    if spec.databases == "all":
        return [database.name for database in fleet.databases]
    if isinstance(spec.databases, PolicySelection):
        return [database.name for database in fleet.databases if database.policy == spec.databases.policy]
    return list(spec.databases)


def _schedule(spec: ScheduleSpec, job: DagsterJob, databases: list[str], partitioned: bool) -> dg.ScheduleDefinition:
    status = dg.DefaultScheduleStatus.RUNNING if spec.running_by_default else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(name=spec.name, cron_schedule=spec.cron, execution_timezone=spec.timezone, job=job,
                 description=spec.description or None, default_status=status)
    def _evaluate(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat()
        if not partitioned:
            return [dg.RunRequest(run_key=f"{spec.name}:{tick}")]
        # One run per database (or cluster): a slow or failing one never holds the others back.
        return [dg.RunRequest(run_key=f"{spec.name}:{db}:{tick}", partition_key=db) for db in databases]

    return _evaluate


def fleet_batches(fleet: Fleet, selected: Sequence[str], batch_size: int) -> list[tuple[str, list[str]]]:
    """The selected databases in batches: the fleet's databases cut in fleet order into groups
    of `batch_size`, each group keeping only the selected ones (empty ones dropped). Groups are
    cut from the whole fleet, not the selection, so one database is in the same batch, under the
    same tag (``<first>..<last>`` of the group), on every tick of every schedule with that
    batch size: the one-run-per-batch limit (deploy/dagster.yaml) keeps two of them apart."""
    chosen = set(selected)
    names = [database.name for database in fleet.databases]
    batches = []
    for start in range(0, len(names), batch_size):
        group = names[start:start + batch_size]
        members = [name for name in group if name in chosen]
        if members:
            batches.append((f"{group[0]}..{group[-1]}", members))
    return batches


def _batched_schedule(spec: ScheduleSpec, job: DagsterJob, batches: list[tuple[str, list[str]]],
                      tags_for: Callable[[Sequence[str]], Mapping[str, str]] | None = None,
                      run_config_for: Callable[[Sequence[str]], Mapping[str, Any]] | None = None,
                      ) -> dg.ScheduleDefinition:
    from platform_orchestration.ops.batches import BATCH_RUN_TAG, batch_run_config

    status = dg.DefaultScheduleStatus.RUNNING if spec.running_by_default else dg.DefaultScheduleStatus.STOPPED

    @dg.schedule(name=spec.name, cron_schedule=spec.cron, execution_timezone=spec.timezone, job=job,
                 description=spec.description or None, default_status=status)
    def _evaluate(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        tick = context.scheduled_execution_time.isoformat()
        return [dg.RunRequest(run_key=f"{spec.name}:{tag}:{tick}",
                              run_config=dict(run_config_for(members)) if run_config_for else batch_run_config(members),
                              tags={**(tags_for(members) if tags_for else {}), BATCH_RUN_TAG: tag})
                for tag, members in batches]

    return _evaluate
