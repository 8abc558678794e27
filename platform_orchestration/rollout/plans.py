"""Rollout plans, declared in a reviewed file (deploy/rollout/plans.yaml) and checked against the
fleet as strictly as the fleet itself: every problem is one line ``FILE:LINE: field.path: what``.

A plan is an ordered list of waves over the fleet's Kubernetes clusters (``kubernetes:`` in the
fleet file). A wave names its clusters (``clusters: [...]``), or takes every cluster of a cloud
(``cloud: aws``) or every cluster no earlier wave took (``rest: true``). A plan holds each wave
for ``bake`` once it is healthy, gives up waiting for health after ``health_timeout``, and
changes at most ``max_clusters_at_once`` clusters at a time.

Rules checked against the fleet:

* a wave's clusters exist, and a cluster is in one wave only; no wave is empty;
* **a database's primary and its standby are never changed in the same wave**: two
  Kubernetes clusters of one wave must not run (CloudNativePG ``Cluster`` workloads with
  ``postgres:``) two PostgreSQL clusters of one replication pair. The pairs come from
  :func:`replication_pairs`: a PostgreSQL cluster that names the primary it replicates
  (``replicates:``) pairs with it; until the fleet declares ``replicates:``, a ``standby`` or
  ``dr`` cluster pairs with every ``primary`` of the fleet (the conservative reading: without
  knowing which primary a standby follows, no standby is changed with any primary).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from platform_orchestration.declarations import (
    DeclarationError,
    Finding,
    Loc,
    known_names,
    read_yaml_mapping,
    render_findings,
)
from platform_orchestration.fleet import Fleet
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import Cloud, Duration, KubernetesCluster

__all__ = [
    "PLANS_PATH_ENV",
    "PlanError",
    "ResolvedPlan",
    "ResolvedWave",
    "RolloutPlan",
    "Wave",
    "load_plans",
    "plan_problems",
    "plans_path_from_env",
    "replication_pairs",
]

PLANS_PATH_ENV = "PLATFORM_ROLLOUT_PLANS"
_EXPECTED = "a mapping with a plans list"
_STEP_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")


class PlanError(DeclarationError):
    """The plans file cannot be used. ``errors`` holds one ``FILE:LINE: PATH: message`` per problem."""


def _check_step_name(value: str) -> str:
    if not _STEP_NAME.fullmatch(value):
        raise ValueError("expected a name of lowercase letters, digits and '_' starting with a letter "
                         f"(at most 41 characters; it names a Dagster job or op), got {value!r}")
    return value


_StepName = Annotated[str, AfterValidator(_check_step_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Wave(_Strict):
    """Exactly one of ``clusters``, ``cloud`` or ``rest: true`` says which clusters the wave changes."""

    name: _StepName
    clusters: tuple[str, ...] | None = Field(default=None, min_length=1)
    cloud: Cloud | None = None
    rest: bool = False
    bake: Duration | None = None
    """Overrides the plan's bake time for this wave."""

    @model_validator(mode="after")
    def _one_selection(self) -> Wave:
        given = [name for name, set_ in (("clusters", self.clusters is not None), ("cloud", self.cloud is not None),
                                         ("rest", self.rest)) if set_]
        if len(given) != 1:
            raise ValueError("expected exactly one of clusters, cloud or rest: true, got "
                             + (" and ".join(given) if given else "none"))
        return self


class RolloutPlan(_Strict):
    name: _StepName
    description: str = ""
    bake: Duration
    health_timeout: Duration
    max_clusters_at_once: int = Field(default=1, ge=1)
    waves: tuple[Wave, ...] = Field(min_length=1)


class PlansFile(_Strict):
    plans: tuple[RolloutPlan, ...] = Field(min_length=1)


@dataclass(frozen=True)
class ResolvedWave:
    """A wave with its clusters (fleet order for ``cloud``/``rest``, the file's for ``clusters``)."""

    index: int
    name: str
    clusters: tuple[KubernetesCluster, ...]
    bake: timedelta

    @property
    def step(self) -> str:
        """The wave's op name: ``wave_1_canary``."""
        return f"wave_{self.index + 1}_{self.name}"


@dataclass(frozen=True)
class ResolvedPlan:
    plan: RolloutPlan
    waves: tuple[ResolvedWave, ...]

    @property
    def name(self) -> str:
        return self.plan.name

    def describe(self) -> str:
        lines = [f"plan {self.name}: {len(self.waves)} waves, bake {format_duration(self.plan.bake)}, health "
                 f"timeout {format_duration(self.plan.health_timeout)}, at most {self.plan.max_clusters_at_once} clusters at once"]
        for wave in self.waves:
            lines.append(f"  {wave.step}: " + ", ".join(f"{c.name} ({c.cloud})" for c in wave.clusters))
        return "\n".join(lines)


def replication_pairs(fleet: Fleet) -> set[frozenset[str]]:
    """Pairs of PostgreSQL clusters (names) that hold one database's primary and its standby.

    A standby naming its primary (``replicates:``) pairs with that primary; a ``standby``/``dr``
    cluster without ``replicates`` (not a streaming standby the platform seeds) pairs with every
    primary, to be safe."""
    pairs: set[frozenset[str]] = set()
    primaries = [c.name for c in fleet.clusters if c.role == "primary"]
    for cluster in fleet.clusters:
        if cluster.role == "primary":
            continue
        followed = cluster.replicates
        for primary in ([followed] if isinstance(followed, str) else primaries):
            if primary != cluster.name:
                pairs.add(frozenset((primary, cluster.name)))
    return pairs


def _resolve(plan: RolloutPlan, fleet: Fleet) -> tuple[list[tuple[Loc, str]], list[list[KubernetesCluster]]]:
    problems: list[tuple[Loc, str]] = []
    by_name = {c.name: c for c in fleet.kubernetes}
    taken: dict[str, int] = {}
    chosen: list[list[KubernetesCluster]] = []
    for index, wave in enumerate(plan.waves):
        members: list[KubernetesCluster] = []
        if wave.clusters is not None:
            for position, name in enumerate(wave.clusters):
                if name not in by_name:
                    problems.append((("waves", index, "clusters", position),
                                     f"unknown Kubernetes cluster {name!r} ({known_names(by_name)})"))
                elif name in taken:
                    problems.append((("waves", index, "clusters", position),
                                     f"cluster {name!r} is already in wave {plan.waves[taken[name]].name!r}: "
                                     "a cluster is changed in one wave only"))
                else:
                    members.append(by_name[name])
        elif wave.cloud is not None:
            members = [c for c in fleet.kubernetes if c.cloud == wave.cloud and c.name not in taken]
        else:
            members = [c for c in fleet.kubernetes if c.name not in taken]
        for cluster in members:
            taken[cluster.name] = index
        if not members:
            problems.append((("waves", index), f"wave {wave.name!r} has no cluster left to change"))
        chosen.append(members)
    names = [w.name for w in plan.waves]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append((("waves", index, "name"), f"duplicate wave name {name!r}"))
    return problems, chosen


def pair_problems(wave: Sequence[KubernetesCluster], pairs: Iterable[frozenset[str]]) -> list[str]:
    """Why ``wave`` would change a database's primary and its standby together (empty: it would not)."""
    runs = {postgres: cluster.name for cluster in wave for postgres in cluster.postgres_clusters}
    problems = []
    for pair in sorted(pairs, key=sorted):
        first, second = sorted(pair)
        if first in runs and second in runs and runs[first] != runs[second]:
            problems.append(f"changes {runs[first]} (runs {first}) and {runs[second]} (runs {second}) together, "
                            "a database's primary and its standby: put them in different waves")
    return problems


def plan_problems(plan: RolloutPlan, fleet: Fleet, pairs: Iterable[frozenset[str]] | None = None
                  ) -> tuple[list[tuple[Loc, str]], ResolvedPlan]:
    """Every problem of ``plan`` against ``fleet`` as (field path within the plan, message),
    and the plan resolved (waves with the clusters they would change)."""
    pairs = replication_pairs(fleet) if pairs is None else set(pairs)
    problems, chosen = _resolve(plan, fleet)
    for index, members in enumerate(chosen):
        for message in pair_problems(members, pairs):
            problems.append((("waves", index), f"wave {plan.waves[index].name!r} {message}"))
    waves = tuple(ResolvedWave(index, wave.name, tuple(members), wave.bake or plan.bake)
                  for index, (wave, members) in enumerate(zip(plan.waves, chosen, strict=True)))
    return problems, ResolvedPlan(plan, waves)


def plans_path_from_env() -> Path:
    """``$PLATFORM_ROLLOUT_PLANS``, else deploy/rollout/plans.yaml of the repository."""
    configured = os.environ.get(PLANS_PATH_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[2] / "deploy" / "rollout" / "plans.yaml"


def load_plans(path: str | os.PathLike[str], fleet: Fleet, *,
               pairs: Iterable[frozenset[str]] | None = None) -> dict[str, ResolvedPlan]:
    """The plans of the file at ``path``, resolved against ``fleet``; :class:`PlanError` lists
    every problem with its line."""
    try:
        document = read_yaml_mapping(path, what="rollout plans file", expected=_EXPECTED)
    except DeclarationError as exc:
        raise PlanError(exc.errors) from None
    parsed = document.validate(PlansFile)
    findings: list[Finding] = list(document.findings)
    resolved: dict[str, ResolvedPlan] = {}
    if parsed is not None:
        for index, plan in enumerate(parsed.plans):
            if plan.name in resolved:
                findings.append(document.finding(("plans", index, "name"), f"duplicate plan name {plan.name!r}"))
                continue
            problems, resolved[plan.name] = plan_problems(plan, fleet, pairs)
            findings += [document.finding(("plans", index, *loc), message) for loc, message in problems]
    if findings or parsed is None:
        raise PlanError(render_findings(findings))
    return resolved

