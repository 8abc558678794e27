"""One job per rollout plan (deploy/rollout/plans.yaml): each wave is an op, in the plan's order,
so the run's timeline in the UI is the rollout. Launched from the Launchpad with one config for
the whole run (:class:`RolloutConfig`); the domain work is platform_orchestration.rollout's.

Progress lives in the Dagster instance's event log: each finished wave logs an
``AssetObservation`` of the asset key ``rollout/<plan>`` carrying the target revision, the
direction (forward, or rollback of a revision) and what the wave applied. The instance is the
one durable store every run of the code location already writes to (PostgreSQL in production),
it outlives run pods, and the UI shows the history on that key's page. A rerun (a new launch
with the same config, or a re-execution from the failed step) skips the waves recorded for its
plan, revision and direction, and starts at the one that failed.
"""


from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Optional

import dagster as dg
from pydantic import Field

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.kube.client import connect
from platform_orchestration.resources import FleetResource
from platform_orchestration.rollout.engine import Rollout, RolloutRequest, WaveHalted, find_kubectl, render_overlay
from platform_orchestration.rollout.plans import ResolvedPlan, ResolvedWave

__all__ = ["ROLLOUT_TAG", "InstanceProgress", "RolloutConfig", "build_rollout_jobs", "rollout_job_name"]

ROLLOUT_TAG = "platform/rollout"
"""Run tag naming the plan a rollout run works on (one run per plan at a time, deploy/dagster.yaml)."""
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
PROGRESS_LIMIT = 10_000


class RolloutConfig(dg.Config):
    """What to roll out, given once for the whole run in the Launchpad."""

    revision: str = Field(description="The revision to roll out (a git commit SHA for mode argocd); with "
                                      "rollback, the revision to roll back from.")
    overlay: str = Field(default="deploy/kustomize/overlays/{cloud}",
                         description="The Kustomize overlay (mode apply): a path (relative to the repository) "
                                     "or a remote URL; {cloud}, {cluster} and {revision} are filled in per cluster.")
    mode: str = Field(default="apply", description="apply (server-side apply of the rendered overlay) or "
                                                   "argocd (move the cluster's Argo CD Application).")
    dry_run: bool = Field(default=False, description="Show the server-side-apply diff per cluster; change nothing.")
    rollback: bool = Field(default=False, description="Apply, wave by wave, the revision that completed "
                                                      "before `revision`.")
    bake_seconds: Optional[float] = Field(default=None, description="Overrides the plan's bake time.")
    health_timeout_seconds: Optional[float] = Field(default=None, description="Overrides the plan's health timeout.")
    poll_seconds: float = Field(default=5.0, description="How often health is polled while waiting.")


def rollout_job_name(plan: str) -> str:
    return f"rollout_{plan}"


class InstanceProgress:
    """:class:`~platform_orchestration.rollout.engine.ProgressStore` in the instance's event log."""

    def __init__(self, context: dg.OpExecutionContext) -> None:
        self._context = context

    @staticmethod
    def key(plan: str) -> dg.AssetKey:
        return dg.AssetKey(["rollout", plan])

    def _records(self, plan: str) -> list[Mapping[str, Any]]:
        """Every recorded wave of ``plan``, oldest first."""
        result = self._context.instance.fetch_observations(self.key(plan), limit=PROGRESS_LIMIT, ascending=True)
        records = []
        for record in result.records:
            observation = record.asset_observation
            if observation is not None and "record" in observation.metadata:
                records.append(observation.metadata["record"].data)
        return records

    def finished_waves(self, plan: str, revision: str, direction: str) -> dict[str, Mapping[str, Any]]:
        return {r["wave"]: r for r in self._records(plan) if r["revision"] == revision and r["direction"] == direction}

    def record_wave(self, plan: str, revision: str, direction: str, wave: str, record: Mapping[str, Any]) -> None:
        entry = {**record, "plan": plan, "revision": revision, "direction": direction, "wave": wave}
        self._context.log_event(dg.AssetObservation(asset_key=self.key(plan), metadata={
            "revision": revision, "direction": direction, "wave": wave,
            "clusters": ", ".join(record.get("clusters", [])), "record": dg.MetadataValue.json(entry)}))

    def completed_revisions(self, plan: str) -> list[str]:
        done: list[str] = []
        for record in self._records(plan):
            if record["direction"] == "forward" and record.get("last_wave"):
                done = [r for r in done if r != record["revision"]] + [record["revision"]]
        return done


def _render(overlay: str) -> list[dict[str, Any]]:
    local = "://" not in overlay and not overlay.startswith(("github.com/", "git@"))
    path = str(REPOSITORY_ROOT / overlay) if local and not Path(overlay).is_absolute() else overlay
    return render_overlay(path, find_kubectl())


def _request(plan: ResolvedPlan, config: RolloutConfig) -> RolloutRequest:
    return RolloutRequest(
        plan=plan.name, revision=config.revision, overlay=config.overlay, mode=config.mode,  # type: ignore[arg-type]
        dry_run=config.dry_run, rollback=config.rollback, poll_seconds=config.poll_seconds,
        bake=timedelta(seconds=config.bake_seconds) if config.bake_seconds is not None else None,
        health_timeout=(timedelta(seconds=config.health_timeout_seconds)
                        if config.health_timeout_seconds is not None else None))


def _problems_table(exc: WaveHalted) -> dg.MetadataValue:
    lines = ["| cluster | workload | reason |", "|---|---|---|"]
    lines += [f"| {p.cluster} | {p.workload} | {p.reason.replace('|', '/')} |" for p in exc.problems]
    return dg.MetadataValue.md("\n".join(lines))


def _wave_op(plan: ResolvedPlan, wave: ResolvedWave) -> dg.OpDefinition:
    clusters = ", ".join(f"{c.name} ({c.cloud})" for c in wave.clusters)

    @dg.op(name=wave.step, ins={"after": dg.In(dg.Nothing)} if wave.index else {}, out=dg.Out(dg.Nothing),
           description=f"Wave {wave.index + 1} of plan {plan.name}: {clusters}. Change, wait for health on the "
                       "target revision, bake, re-check.",
           tags={ROLLOUT_TAG: plan.name, "platform/wave": wave.name, **k8s_op_tags("rollout_wave")})
    def wave_op(context: dg.OpExecutionContext, config: RolloutConfig, fleet: FleetResource):
        secrets, _ = fleet.secrets.providers()
        try:
            rollout = Rollout(plan, _request(plan, config), connect=lambda c: connect(c, secrets),
                              progress=InstanceProgress(context), render=_render, clock=lambda: datetime.now(UTC),
                              log=context.log.info)
            report = rollout.run_wave(wave)
        except WaveHalted as exc:
            raise dg.Failure(description=str(exc), metadata={
                "wave": wave.step, "problems": _problems_table(exc),
                "resume": "rerun with the same config: finished waves are skipped"}) from None
        except PlatformError as exc:
            raise dg.Failure(description=one_line(exc)) from None
        context.log.info(report.summary())
        metadata: dict[str, Any] = {"revision": report.revision, "skipped": report.skipped,
                                    "clusters": ", ".join(c.cluster for c in report.changes) or clusters,
                                    "waited_seconds": dg.MetadataValue.float(round(report.waited_seconds, 2)),
                                    "baked_seconds": dg.MetadataValue.float(report.baked_seconds)}
        for change in report.changes:
            metadata[f"change {change.cluster}"] = change.action
            if change.diff:
                context.log.info(f"{change.cluster} (dry run):\n{change.diff}")
                metadata[f"diff {change.cluster}"] = dg.MetadataValue.md(f"```diff\n{change.diff}\n```")
        yield dg.Output(None, metadata=metadata)

    return wave_op


def build_rollout_job(plan: ResolvedPlan) -> dg.JobDefinition:
    ops = [_wave_op(plan, wave) for wave in plan.waves]

    def fan_out(config: dict[str, Any]) -> dict[str, Any]:
        return {"ops": {op.name: {"config": dict(config)} for op in ops}}

    mapping = dg.ConfigMapping(config_fn=fan_out, config_schema=RolloutConfig.to_config_schema())

    @dg.job(name=rollout_job_name(plan.name), config=mapping,
            executor_def=dg.in_process_executor, tags={ROLLOUT_TAG: plan.name},
            description=(plan.plan.description or f"Roll a change out across plan {plan.name}'s clusters") +
                        " (" + " -> ".join(w.step for w in plan.waves) + ")")
    def rollout_job() -> None:
        previous = None
        for op in ops:
            previous = op(after=previous) if previous is not None else op()

    return rollout_job


def build_rollout_jobs(plans: Mapping[str, ResolvedPlan]) -> list[dg.JobDefinition]:
    return [build_rollout_job(plan) for plan in plans.values()]
