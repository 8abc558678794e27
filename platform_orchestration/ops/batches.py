"""Batched runs: one run for many databases, each database still its own steps, partition
and failure. What a schedule uses when it selects more databases than its `batch_size`.

Why not Dagster's own mechanisms (Dagster 1.13.27, read in its source): a run that targets
several partitions of an asset (a partition range, or a backfill under
``BackfillPolicy.single_run()`` / ``multi_run(n)``) executes each asset as ONE step over all
its partitions (``context.partition_keys``): one database failing fails the step for all of
them, and none gets its own retry or log. A backfill with the default policy is one run per
partition again (the thousands of runs we avoid), and in 1.13.27 only sensors, not
schedules, can request a backfill (the private ``RunRequest.for_asset_graph_subset``, handled
by the sensor and asset daemons only).

So a batch is an op job over the same work: one op step fans out a dynamic output per
database, and each database's chain (for ``take_backups``: databases -> backups ->
backup_copies -> checks) runs as steps of its own, calling the very functions the assets
call (assets.PER_DATABASE). Each step records its result on the real asset's partition (an
``AssetMaterialization`` with ``partition=<database>``) and the checks as
``AssetCheckEvaluation`` events on that partition, so the asset's partition history and
checks look as after a per-database run. A database whose step fails stops only its own
chain; the run fails when any did, and its failed steps (``backups[orders]``) name them.

Steps run in processes forked from a server that has imported this code location once
(``forkserver`` with ``preload_modules``): a step does not re-import the Definitions, which
at 10,000 databases takes seconds.
"""


import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

from platform_orchestration.assets import PER_DATABASE
from platform_orchestration.checks import CHECKS_OF_ASSET, assessment_metadata
from platform_orchestration.kube import k8s_op_tags
from platform_orchestration.resources import FleetResource

BATCH_RUN_TAG = "platform/batch"
"""Run tag naming the batch a batched run works on (its first and last database). Batches are
cut from the fleet in fleet order, so the same databases make the same batch on every tick."""

BATCH_CONCURRENCY_ENV = "PLATFORM_BATCH_CONCURRENCY"
DEFAULT_BATCH_CONCURRENCY = 4
_MAPPING_KEY = re.compile(r"[^A-Za-z0-9_]")


def batch_job_name(job_name: str) -> str:
    return f"{job_name}_batched"


def mapping_keys(databases: Sequence[str]) -> list[str]:
    """Dynamic-output keys, one per database: the name where Dagster allows it ([A-Za-z0-9_]),
    else the name with other characters as ``_`` and its position appended (kept unique)."""
    keys: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(databases):
        key = _MAPPING_KEY.sub("_", name)
        if key != name or key in seen:
            key = f"{key}_{index}"
        seen.add(key)
        keys.append(key)
    return keys


def stage_op_name(asset: str) -> str:
    """The op of ``asset``'s step in a batched job (the key of its ``per_step_k8s_config``)."""
    return f"batch_{asset}"


def batch_run_config(databases: Sequence[str],
                     per_step_k8s_config: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Run config of a batch; with ``per_step_k8s_config`` (asset step -> its ``dagster-k8s/config``,
    for the k8s executor), each stage's pods get those resources."""
    config: dict[str, Any] = {"ops": {"batch": {"config": {"databases": list(databases)}}}}
    if per_step_k8s_config:
        config["execution"] = {"config": {"per_step_k8s_config": {
            stage_op_name(step): dict(step_config) for step, step_config in per_step_k8s_config.items()}}}
    return config


def batch_executor() -> dg.ExecutorDefinition:
    """Multiprocess, up to $PLATFORM_BATCH_CONCURRENCY steps at once (default 4), each forked
    from a server that preloaded the code location."""
    text = os.environ.get(BATCH_CONCURRENCY_ENV, "").strip()
    concurrency = int(text) if text.isdigit() and int(text) > 0 else DEFAULT_BATCH_CONCURRENCY
    return dg.multiprocess_executor.configured(
        {"max_concurrent": concurrency,
         "start_method": {"forkserver": {"preload_modules": ["platform_orchestration.definitions"]}}},
        name="batch_multiprocess")


@functools.cache
def _stage(asset: str) -> dg.OpDefinition:
    """The op of one asset's step per database: one definition shared by every batched job
    (op names are unique in a repository; the asset's own op already has the asset's name)."""
    materialize = PER_DATABASE[asset]

    # The asset's own step resources (for a database of the default size); on Kubernetes a
    # batch's run config sizes its backups and drills for the batch's largest database.
    @dg.op(name=stage_op_name(asset), ins={"database": dg.In(str)}, out=dg.Out(str), tags=k8s_op_tags(asset),
           description=f"One database's partition of asset {asset}, as the asset's own run would do it.")
    def stage(context: dg.OpExecutionContext, fleet: FleetResource, database: str):
        with fleet.protection() as protection:
            metadata = materialize(protection, database, context.log)
        yield dg.AssetMaterialization(asset_key=asset, partition=database, metadata=metadata)
        yield dg.Output(database)

    return stage


def _checks(job_name: str, assets: Sequence[str]) -> dg.OpDefinition:
    guarded = [(asset, name) for asset in assets for name, _description in CHECKS_OF_ASSET.get(asset, [])]

    @dg.op(name=f"{job_name}_checks", ins={"database": dg.In(str)}, out={},
           tags=k8s_op_tags("database_protection_checks"),
           description="The checks of the assets this job materialised, for one database (one assessment).")
    def checks(context: dg.OpExecutionContext, fleet: FleetResource, database: str):
        with fleet.protection() as protection:
            assessment = protection.assess(database)
        metadata = assessment_metadata(assessment)
        for asset, name in guarded:
            finding = assessment.finding(name)
            yield dg.AssetCheckEvaluation(asset_key=dg.AssetKey(asset), check_name=name, passed=finding.passed,
                                          severity=dg.AssetCheckSeverity.ERROR, description=finding.detail,
                                          metadata=metadata, partition=database)

    return checks


@dg.op(name="batch", config_schema={"databases": [str]}, out=dg.DynamicOut(str),
       description="Fans the batch out: one branch of steps per database.")
def batch(context: dg.OpExecutionContext):
    databases = context.op_config["databases"]
    for database, key in zip(databases, mapping_keys(databases)):
        yield dg.DynamicOutput(database, mapping_key=key)


def build_batch_job(job_name: str, assets: Sequence[str], description: str = "",
                    executor: dg.ExecutorDefinition | None = None) -> dg.JobDefinition:
    """The batched form of asset job `job_name` over `assets` (in flow order; only the
    per-database ones): run config ``ops.batch.config.databases`` lists the batch."""
    stages = [_stage(asset) for asset in assets if asset in PER_DATABASE]
    checks = _checks(batch_job_name(job_name), [asset for asset in assets if asset in PER_DATABASE])

    def one_database(database):  # noqa: ANN001, ANN202 - Dagster's composition types
        for stage in stages:
            database = stage(database)
        return checks(database)

    @dg.graph(name=batch_job_name(job_name))
    def batched():
        batch().map(one_database)

    return batched.to_job(
        name=batch_job_name(job_name), executor_def=executor,
        description=(description + " " if description else "")
        + "Batched: many databases per run, each its own steps (see schedules' batch_size).")
