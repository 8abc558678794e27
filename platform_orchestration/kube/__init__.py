"""What each step's pod needs from Kubernetes, derived from what the step does.

Plain values, no Dagster: the Dagster layer turns them into `dagster-k8s/config` op tags (a
default per step) and into the k8s executor's `per_step_k8s_config` of one database's run
(sized from that database), and the tests build the Jobs dagster-k8s would submit from them.

Sizing, per step:

* ``backups``: pg_dump streams through zstd, SHA-256 and encryption straight into every store,
  nothing is spooled: CPU (pg_dump and the compressor run side by side), bounded memory, a
  little scratch space for the globals and the PostgreSQL binaries' mirror. A dump over
  ``LARGE_DUMP`` gets a second core.
* ``restore_drills`` and the disaster restore: the dump is first written to a local work file
  (the raw dump's size, so pg_restore can run with -j2), then restored into a throwaway
  cluster whose data directory, indexes and WAL take about 1.5 times the raw dump again: a
  work volume of ``2.5 x raw dump + 2 GiB`` (a generic ephemeral volume, a PersistentVolumeClaim
  of the cluster's default storage class made for the pod and deleted with it: node disks
  rarely hold hundreds of GiB), two cores for pg_restore -j2, memory for the throwaway server.
* ``backup_copies`` and ``physical_copies``: stream verified copies from one store to another,
  bounded memory.
* ``physical_base_backups``: barman-cloud-backup streams the cluster's files, compressed, into
  the repository; it buffers the parts it uploads (a few at a time) in temporary files, so some
  scratch space, a core for compression and reading.
* ``pitr_drills`` and ``failover_drills``: a whole copy of the cluster is brought up on the pod
  (a base backup restored and its WAL replayed, or pg_basebackup of the standby), then
  promoted: a work volume of ``1.5 x the cluster + 4 GiB`` (its data directory, the WAL fetched
  for replay and written after promotion), two cores, memory for the server.
* ``restore_to_point_in_time``: the same work as a PITR drill (barman-cloud-restore, WAL fetched
  and replayed, the server started), but into ``target_dir``, which must be a claim the operator
  mounts and keeps (``pod_storage`` refuses anything deleted with the pod): the base backup, the
  WAL spool and the prefetched segments all go there. So two cores and the server's memory, and
  no work volume: one would be deleted with the pod and could hold nothing of the result.
* everything else (probes, checks, retention, compliance, rewrap, the archiving and replication
  observations) is small.

The raw dump size comes from the fleet (``expected_dump_size`` of the database, what the
latest manifest reports as ``raw_bytes``); without it, ``DEFAULT_DUMP_SIZE`` is assumed. A
cluster's size is its ``expected_size`` (a standby's, else its primary's); without it,
``DEFAULT_CLUSTER_SIZE``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from platform_orchestration.fleet import Database, Fleet

__all__ = [
    "CLUSTER_SIZED_STEPS",
    "DEFAULT_CLUSTER_SIZE",
    "DEFAULT_DUMP_SIZE",
    "LARGE_DUMP",
    "SIZED_STEPS",
    "STEPS",
    "StepResources",
    "WORK_DIRECTORY",
    "WORK_VOLUME",
    "cloud_links",
    "K8S_CONFIG_TAG",
    "dagster_k8s_config",
    "k8s_op_tags",
    "largest_dump",
    "link_run_tags",
    "link_tag",
    "per_cluster_step_k8s_config",
    "per_step_k8s_config",
    "sized_steps_k8s_config",
    "step_resources",
]

GiB = 2**30
MiB = 2**20
DEFAULT_DUMP_SIZE = 10 * GiB
LARGE_DUMP = 50 * GiB
DEFAULT_CLUSTER_SIZE = 20 * GiB


@dataclass(frozen=True)
class StepResources:
    """Requests and limits of one step's container. Memory and storage in bytes, CPU in millicores."""

    cpu_millis: int
    cpu_limit_millis: int
    memory: int
    memory_limit: int
    ephemeral_storage: int
    ephemeral_storage_limit: int
    work_volume: int | None = None
    """Bytes of the work volume (a generic ephemeral volume) the step needs; None: the pod's
    emptyDir, within its ephemeral storage."""

    def as_kubernetes(self) -> dict[str, dict[str, str]]:
        """The container's ``resources`` in Kubernetes quantities."""
        return {
            "requests": {"cpu": f"{self.cpu_millis}m", "memory": _mebibytes(self.memory),
                         "ephemeral-storage": _mebibytes(self.ephemeral_storage)},
            "limits": {"cpu": f"{self.cpu_limit_millis}m", "memory": _mebibytes(self.memory_limit),
                       "ephemeral-storage": _mebibytes(self.ephemeral_storage_limit)},
        }


def _mebibytes(size: int) -> str:
    return f"{math.ceil(size / MiB)}Mi"


def _round_up_gib(size: float) -> int:
    return math.ceil(size / GiB) * GiB


def _small(memory: int = 256 * MiB, cpu: int = 100) -> StepResources:
    return StepResources(cpu, 4 * cpu, memory, 2 * memory, 256 * MiB, 1 * GiB)


def _backup(raw: int) -> StepResources:
    cores = 2 if raw > LARGE_DUMP else 1
    return StepResources(1000 * cores, 2000 * cores, 512 * MiB, 1 * GiB, 1 * GiB, 2 * GiB)


def _restore(raw: int) -> StepResources:
    return StepResources(2000, 4000, 2 * GiB, 4 * GiB, 1 * GiB, 2 * GiB,
                         work_volume=_round_up_gib(2.5 * raw + 2 * GiB))


def _cluster_copy(size: int) -> StepResources:
    return StepResources(2000, 4000, 1 * GiB, 2 * GiB, 1 * GiB, 2 * GiB,
                         work_volume=_round_up_gib(1.5 * size + 4 * GiB))


def _restore_into_kept_claim(_size: int) -> StepResources:
    return StepResources(2000, 4000, 1 * GiB, 2 * GiB, 1 * GiB, 2 * GiB)


def _copies(_size: int) -> StepResources:
    return StepResources(500, 2000, 512 * MiB, 1 * GiB, 512 * MiB, 1 * GiB)


# step (op) name -> its resources for a database whose raw dump is `raw` bytes, or (the
# physical and replication steps) for a cluster of that size
STEPS = {
    "clusters": lambda raw: _small(),
    "databases": lambda raw: _small(),
    "backups": _backup,
    "backup_copies": _copies,
    "restore_drills": _restore,
    "retention": lambda raw: _small(512 * MiB, 250),
    "compliance_report": lambda raw: _small(512 * MiB, 250),
    "database_protection_checks": lambda raw: _small(),
    "restore_from_backup": _restore,
    "restore_to_point_in_time": _restore_into_kept_claim,
    "rewrap_data_keys": lambda raw: _small(512 * MiB, 250),
    "wal_archiving": lambda size: _small(),
    "physical_base_backups": lambda size: StepResources(1000, 2000, 512 * MiB, 1 * GiB, 1 * GiB, 4 * GiB),
    "pitr_drills": _cluster_copy,
    "physical_copies": _copies,
    "physical_retention": lambda size: _small(512 * MiB, 250),
    "standby_clusters": lambda size: _small(),
    "replication_lag": lambda size: _small(),
    "failover_drills": _cluster_copy,
    "replication_compliance": lambda size: _small(512 * MiB, 250),
    "cluster_physical_checks": lambda size: _small(),
    "standby_replication_checks": lambda size: _small(),
    "promote_standby": lambda size: _small(),
    "kubernetes_clusters": lambda size: _small(),
    # a rollout wave: kubectl (or Argo CD's API) against the wave's clusters, then health polls
    "rollout_wave": lambda size: _small(512 * MiB, 250),
}
SIZED_STEPS = ("backups", "restore_drills")
"""Steps of a per-database run sized from that database; the others are the same for every
database (the disaster restore, whose database is chosen at launch, is sized for
``DEFAULT_DUMP_SIZE``: its Launchpad config can raise it through ``per_step_k8s_config``)."""
CLUSTER_SIZED_STEPS = ("pitr_drills", "failover_drills")
"""Steps of a per-cluster (or per-standby) run sized from that cluster."""


def step_resources(step: str, database: Database | None = None, *, raw_dump_size: int | None = None,
                   cluster_size: int | None = None) -> StepResources:
    """What the step ``step`` needs for ``database`` (its ``expected_dump_size``, else
    ``raw_dump_size``, else ``DEFAULT_DUMP_SIZE``), or, for a step of ``CLUSTER_SIZED_STEPS``, for a
    cluster of ``cluster_size`` bytes (else ``DEFAULT_CLUSTER_SIZE``). ``KeyError`` names an
    unknown step."""
    if step not in STEPS:
        raise KeyError(f"no resources known for step {step!r} (known: {', '.join(STEPS)})")
    if step in CLUSTER_SIZED_STEPS:
        return STEPS[step](cluster_size or DEFAULT_CLUSTER_SIZE)
    raw = (database.expected_dump_size if database is not None else None) or raw_dump_size or DEFAULT_DUMP_SIZE
    return STEPS[step](raw)


WORK_VOLUME = "work"
WORK_DIRECTORY = "/var/tmp/platform"
"""TMPDIR of every run and step pod (deploy/dagster.yaml): in the container's writable layer,
within its ephemeral storage, unless the step mounts a work volume there."""


def dagster_k8s_config(resources: StepResources) -> dict[str, Any]:
    """The ``dagster-k8s/config`` document giving a step's container these resources and, when
    it needs one, a work volume at ``WORK_DIRECTORY``: a generic ephemeral volume (a claim of
    the cluster's default storage class, made for the pod and deleted with it)."""
    config: dict[str, Any] = {"container_config": {"resources": resources.as_kubernetes()}}
    if resources.work_volume is not None:
        claim = {"spec": {"accessModes": ["ReadWriteOnce"],
                          "resources": {"requests": {"storage": _gibibytes(resources.work_volume)}}}}
        config["pod_spec_config"] = {"volumes": [{"name": WORK_VOLUME, "ephemeral": {"volumeClaimTemplate": claim}}]}
        config["container_config"]["volume_mounts"] = [{"name": WORK_VOLUME, "mountPath": WORK_DIRECTORY}]
    return config


def _gibibytes(size: int) -> str:
    return f"{math.ceil(size / GiB)}Gi"


K8S_CONFIG_TAG = "dagster-k8s/config"


def k8s_op_tags(step: str) -> dict[str, str]:
    """The op tags giving step ``step`` its default resources (for a database of
    ``DEFAULT_DUMP_SIZE``). A run of one database adds, for its sized steps, resources and the
    work volume sized from the database (:func:`per_step_k8s_config`); so that the two never
    name two volumes ``work``, a sized step's tag asks for that space as ephemeral storage
    instead of a volume (what it gets if a run was launched without the per-step config)."""
    resources = step_resources(step)
    if step in (*SIZED_STEPS, *CLUSTER_SIZED_STEPS) and resources.work_volume is not None:
        resources = dataclasses.replace(resources, ephemeral_storage=resources.work_volume,
                                        ephemeral_storage_limit=resources.work_volume + 2 * GiB, work_volume=None)
    return {K8S_CONFIG_TAG: json.dumps(dagster_k8s_config(resources), sort_keys=True)}


def per_step_k8s_config(database: Database) -> dict[str, dict[str, Any]]:
    """The k8s executor's ``per_step_k8s_config`` for a run of ``database``: its sized steps."""
    return sized_steps_k8s_config([database])


def per_cluster_step_k8s_config(fleet: Fleet, cluster: str) -> dict[str, dict[str, Any]]:
    """The k8s executor's ``per_step_k8s_config`` for a run of one cluster (or standby): its
    drills, sized from :meth:`Fleet.expected_cluster_size`."""
    size = fleet.expected_cluster_size(cluster)
    return {step: dagster_k8s_config(step_resources(step, cluster_size=size)) for step in CLUSTER_SIZED_STEPS}


def largest_dump(databases: Iterable[Database]) -> int:
    """The largest raw dump among ``databases``: each one's ``expected_dump_size``, or
    ``DEFAULT_DUMP_SIZE`` for one that does not say (and for none at all)."""
    return max((d.expected_dump_size or DEFAULT_DUMP_SIZE for d in databases), default=DEFAULT_DUMP_SIZE)


def sized_steps_k8s_config(databases: Iterable[Database]) -> dict[str, dict[str, Any]]:
    """``dagster-k8s/config`` of each step of ``SIZED_STEPS`` for a run of ``databases``: one
    database's run, or a batched run, whose pods of one op serve every database of the batch (the
    k8s executor sizes per op, not per mapped step), so sized for the largest of them."""
    raw = largest_dump(databases)
    return {step: dagster_k8s_config(step_resources(step, raw_dump_size=raw)) for step in SIZED_STEPS}


def cloud_links(fleet: Fleet, database_name: str) -> list[tuple[str, str]]:
    """The cross-cloud links a backup of ``database_name`` sends data over: from its cluster's
    cloud to the cloud of each store of its policy in another cloud, in policy order."""
    source = fleet.cluster_for(database_name).cloud
    links: list[tuple[str, str]] = []
    for store in fleet.stores_for(database_name):
        if store.cloud != source and (source, store.cloud) not in links:
            links.append((source, store.cloud))
    return links


def link_tag(link: tuple[str, str]) -> str:
    """The run tag marking a run that sends data over ``link`` (deploy/dagster.yaml limits each)."""
    return f"platform/egress-{link[0]}-{link[1]}"


def link_run_tags(fleet: Fleet, database_name: str) -> Mapping[str, str]:
    return {link_tag(link): "true" for link in cloud_links(fleet, database_name)}
