"""The Jobs this code location would submit to Kubernetes, built by dagster-k8s's own code.

As dagster-k8s's unit tests do it (dagster_k8s_tests/unit_tests/test_executor.py): the k8s
executor is created from the run's config, and its `K8sStepHandler` launches every step of every
job against a recorded batch API, which keeps the `create_namespaced_job` bodies instead of
sending them; the instance's run launcher is deploy/dagster.yaml's. Each Job is asserted (image,
service account, resources from the step and the database, env by reference, no secret value,
labels) and validated strictly against the Kubernetes schema. The production instance itself is
loaded against a real throwaway PostgreSQL server.
"""

from __future__ import annotations

import base64
import json
import zlib
from pathlib import Path

import dagster as dg
import kubernetes
import kubernetes_validate
import psycopg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import create_execution_plan
from dagster._core.execution.context.system import PlanData, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import create_context_free_log_manager
from dagster._core.execution.retries import RetryMode
from dagster._core.executor.init import InitExecutorContext
from dagster._core.executor.step_delegating.step_handler.base import StepHandlerContext
from dagster._core.test_utils import create_run_for_test
from dagster._grpc.types import ExecuteStepArgs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.executor import _K8S_EXECUTOR_CONFIG_SCHEMA, K8sStepHandler, k8s_job_executor
from dagster_k8s.utils import sanitize_k8s_label
from kube import (
    IMAGE,
    NAMESPACE,
    PRODUCTION_INSTANCE,
    REPOSITORY_ROOT,
    TARGET_KUBERNETES,
    as_in_a_pod,
    production_run_launcher,
    write_kubeconfig,
)

from platform_orchestration.fleet import load_fleet
from platform_orchestration.kube import CLUSTER_SIZED_STEPS, GiB, SIZED_STEPS, step_resources

PRODUCTION_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "production.yaml"
STORAGE_PASSWORD = "storage-password-never-in-a-job-7Qx"
# Plain values dagster-k8s and deploy/dagster.yaml put in every step container; anything else
# must come by reference (envFrom, secretKeyRef).
PLAIN_ENV = {"DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS", "DAGSTER_RUN_JOB_NAME", "DAGSTER_RUN_STEP_KEY", "DAGSTER_HOME",
             "TMPDIR"}


class RecordedBatchApi:
    """Stands in for kubernetes' BatchV1Api: keeps what would be created; any other call fails."""

    def __init__(self) -> None:
        self.created: list[tuple[str, dict]] = []

    def create_namespaced_job(self, body, namespace, **_):
        self.created.append((namespace, kubernetes.client.ApiClient().sanitize_for_serialization(body)))
        return body

    def __getattr__(self, name):
        raise AssertionError(f"unexpected batch API call {name}")


@pytest.fixture
def k8s_instance(tmp_path, monkeypatch):
    monkeypatch.setenv("PLATFORM_K8S_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", STORAGE_PASSWORD)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # nothing is sent
    with dg.instance_for_test(overrides={"run_launcher": production_run_launcher(kubeconfig)}) as instance:
        yield instance, kubeconfig


def _step_jobs(instance, kubeconfig: Path, job_name: str, partition: str | None, run_config=None,
               fleet: Path = PRODUCTION_FLEET, known_state=None, step_keys=None):
    """(step key, namespace, Job body) for every step of `job_name`, as the k8s executor would launch them."""
    from platform_orchestration.definitions import build_definitions

    job = build_definitions(fleet).resolve_job_def(job_name)
    tags = {}
    if partition is not None:
        run_config = job.partitioned_config.get_run_config_for_partition_key(partition)
        tags = job.partitioned_config.get_tags_for_partition_key(partition)
    run_config = run_config or {}
    executor_config = process_config(resolve_to_config_type(_K8S_EXECUTOR_CONFIG_SCHEMA),
                                     run_config.get("execution", {}).get("config", {}))
    assert executor_config.success, executor_config.errors
    recon_job = ReconstructableRepository.for_module(
        "platform_orchestration.definitions", "defs", working_directory=str(REPOSITORY_ROOT)
    ).get_reconstructable_job(job_name)
    executor = k8s_job_executor.executor_creation_fn(InitExecutorContext(
        job=recon_job, executor_def=k8s_job_executor, executor_config=executor_config.value, instance=instance))
    run = create_run_for_test(instance, job_name=job_name, tags=tags, run_config=run_config,
                              job_code_origin=recon_job.get_python_origin())
    plan = create_execution_plan(job, run_config=run_config, tags=tags, known_state=known_state,
                                 step_keys_to_execute=step_keys)
    plan_context = PlanOrchestrationContext(
        plan_data=PlanData(job=recon_job, dagster_run=run, instance=instance, execution_plan=plan,
                           raise_on_error=True, retry_mode=RetryMode.DISABLED),
        log_manager=create_context_free_log_manager(instance, run), executor=executor, output_capture=None)
    batch = RecordedBatchApi()
    handler = K8sStepHandler(
        image=IMAGE, container_context=executor._step_handler._executor_container_context,  # noqa: SLF001
        load_incluster_config=False, kubeconfig_file=str(kubeconfig), k8s_client_batch_api=batch,
        per_step_k8s_config=executor_config.value.get("per_step_k8s_config", {}))
    steps = plan.steps if step_keys is None else [plan.get_step_by_key(key) for key in step_keys]
    for step in steps:
        list(handler.launch_step(StepHandlerContext(
            instance=instance, plan_context=plan_context, steps=[step],
            execute_step_args=ExecuteStepArgs(recon_job.get_python_origin(), run.run_id, [step.key]))))
    assert len(batch.created) == len(steps)
    return [(step.key, namespace, body) for step, (namespace, body) in zip(steps, batch.created, strict=True)]


def _assert_a_valid_step_job(job_name: str, step: str, namespace: str, body: dict) -> dict:
    kubernetes_validate.validate(body, TARGET_KUBERNETES, strict=True)
    assert namespace == NAMESPACE
    pod = body["spec"]["template"]
    spec = pod["spec"]
    [container] = spec["containers"]
    assert container["image"] == IMAGE
    assert spec["serviceAccountName"] == "platform-dr"
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for labels in (body["metadata"]["labels"], pod["metadata"]["labels"]):
        assert labels["dagster/job"] == job_name and labels["dagster/op"] == sanitize_k8s_label(step)  # a[b] -> a-b
        assert labels["app.kubernetes.io/part-of"] == "platform-dr"
        assert labels["app.kubernetes.io/component"] == "step_worker"
    assert [source["configMapRef"]["name"] for source in container["envFrom"]] == [
        "platform-dr-env", "platform-dr-vault"]
    for variable in container["env"]:
        if "valueFrom" in variable:
            assert variable["valueFrom"] == {"secretKeyRef": {"name": "platform-dr-storage",
                                                              "key": "postgresql-password"}}
        else:
            assert variable["name"] in PLAIN_ENV, variable
    # no secret value anywhere, not even in the compressed step arguments
    env = {v["name"]: v.get("value") for v in container["env"]}
    arguments = zlib.decompress(base64.b64decode(env["DAGSTER_COMPRESSED_EXECUTE_STEP_ARGS"])).decode()
    assert STORAGE_PASSWORD not in json.dumps(body) + arguments
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["fleet"] == "/etc/platform/fleet"
    return container


@pytest.mark.parametrize(("job_name", "partition"), [
    ("protection_flow", "analytics"), ("protection_flow", "inventory"), ("take_backups", "orders"),
    ("run_restore_drills", "customers"), ("prune_backups", "orders"), ("refresh_compliance", None),
    ("rewrap_backup_keys", None)])
def test_every_step_job_carries_its_resources_and_validates(k8s_instance, monkeypatch, job_name, partition):
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    instance, kubeconfig = k8s_instance
    database = load_fleet(PRODUCTION_FLEET, environ={}).database(partition) if partition else None
    jobs = _step_jobs(instance, kubeconfig, job_name, partition)
    for step, namespace, body in jobs:
        container = _assert_a_valid_step_job(job_name, step, namespace, body)
        expected = step_resources(step, database if step in SIZED_STEPS else None)
        assert container["resources"] == expected.as_kubernetes(), step
        volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
        if step == "restore_drills":
            claim = volumes["work"]["ephemeral"]["volumeClaimTemplate"]["spec"]
            raw = database.expected_dump_size
            size = int(claim["resources"]["requests"]["storage"].removesuffix("Gi")) * GiB
            assert 2.5 * raw + 2 * GiB <= size < 2.5 * raw + 3 * GiB  # the work file and the throwaway cluster
            assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["work"] == "/var/tmp/platform"
        else:
            assert set(volumes) == {"fleet"}


def test_big_databases_get_bigger_drill_and_backup_pods(k8s_instance, monkeypatch):
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    instance, kubeconfig = k8s_instance

    def drill_and_backup(database):
        jobs = {step: body for step, _, body in _step_jobs(instance, kubeconfig, "protection_flow", database)}
        drill = jobs["restore_drills"]["spec"]["template"]["spec"]["volumes"]
        backup = jobs["backups"]["spec"]["template"]["spec"]["containers"][0]["resources"]
        claim = next(v for v in drill if v["name"] == "work")["ephemeral"]["volumeClaimTemplate"]["spec"]
        return claim["resources"]["requests"]["storage"], backup["requests"]["cpu"]

    assert drill_and_backup("inventory") == ("22Gi", "1000m")  # 8 GiB dump
    assert drill_and_backup("analytics") == ("752Gi", "2000m")  # 300 GiB dump


def test_the_disaster_restore_job_gets_a_work_volume_for_a_default_sized_database(k8s_instance, monkeypatch):
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    instance, kubeconfig = k8s_instance
    config = {"ops": {"restore_from_backup": {"config": {"database": "orders", "target_dsn":
                                                         "postgresql://restore@pg.example/orders"}}}}
    [(step, namespace, body)] = _step_jobs(instance, kubeconfig, "disaster_restore", None, run_config=config)
    container = _assert_a_valid_step_job("disaster_restore", step, namespace, body)
    assert container["resources"] == step_resources("restore_from_backup").as_kubernetes()
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "27Gi"


PHYSICAL_FLEET = """\
clusters:
  - name: pg-aws
    cloud: aws
    region: eu-west-1
    expected_size: 300GiB
    physical: {store: aws-s3, policy: critical, dsn: "host=10.0.0.5 user=postgres dbname=postgres"}
  - name: pg-unsized
    cloud: aws
    region: eu-west-1
    physical: {store: aws-s3, policy: critical, dsn: "host=10.0.0.6 user=postgres dbname=postgres"}
  - name: pg-azure
    cloud: azure
    region: westeurope
    role: standby
    replicates: pg-aws
    standby:
      policy: critical
      dsn: host=10.1.0.5 user=postgres
      primary_conninfo: host=10.0.0.5 user=replicator
      replication_password: {env: REPL_PASSWORD}
stores:
  - {name: aws-s3, kind: s3, bucket: pg-physical, region: eu-west-1}
policies:
  - name: critical
    rpo: 1h
    stores: [aws-s3]
    drill: {every: 1d, rto: 15m}
    retention: {keep_last: 7}
    physical: {base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d}
    replication: {max_lag_bytes: 16MiB, max_lag: 30s, failover_rto: 5m, max_slot_wal: 1GiB}
  # schedules/protection.yaml selects databases by these two policies (this fleet has none)
  - {name: standard, rpo: 1d, stores: [aws-s3], drill: {every: 7d, rto: 30m}, retention: {keep_last: 3}}
databases: []
"""


@pytest.mark.parametrize(("job_name", "partition", "work_volume"), [
    ("run_pitr_drills", "pg-aws", "454Gi"),  # 1.5 x 300 GiB + 4 GiB
    ("run_pitr_drills", "pg-unsized", "34Gi"),  # 20 GiB assumed
    ("run_failover_drills", "pg-azure", "454Gi"),  # the standby of pg-aws holds as much
    ("take_base_backups", "pg-aws", None), ("copy_physical_repositories", "pg-aws", None),
    ("prune_physical_repositories", "pg-unsized", None), ("observe_replication", "pg-azure", None),
    ("record_replication_compliance", None, None)])
def test_physical_and_replication_steps_get_pods_sized_for_what_they_hold(
        k8s_instance, monkeypatch, tmp_path, job_name, partition, work_volume):
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    monkeypatch.setenv("REPL_PASSWORD", "replication-password-never-in-a-job")
    fleet = tmp_path / "physical.yaml"
    fleet.write_text(PHYSICAL_FLEET)
    instance, kubeconfig = k8s_instance
    size = load_fleet(fleet, environ={}).expected_cluster_size(partition) if partition else None
    jobs = _step_jobs(instance, kubeconfig, job_name, partition, fleet=fleet)
    assert (work_volume is not None) == any(step in CLUSTER_SIZED_STEPS for step, _, _ in jobs)
    for step, namespace, body in jobs:
        container = _assert_a_valid_step_job(job_name, step, namespace, body)
        assert container["resources"] == step_resources(step, cluster_size=size).as_kubernetes(), step
        volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
        if step in CLUSTER_SIZED_STEPS:
            claim = volumes["work"]["ephemeral"]["volumeClaimTemplate"]["spec"]
            assert claim["resources"]["requests"]["storage"] == work_volume
            assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["work"] == "/var/tmp/platform"
        else:
            assert set(volumes) == {"fleet"}, step
    assert "replication-password-never-in-a-job" not in json.dumps([body for _, _, body in jobs])


def test_the_point_in_time_restore_gets_no_work_volume_and_mounts_the_claim_the_readme_says(
        k8s_instance, monkeypatch, tmp_path):
    """Everything it restores goes to target_dir, which must be a claim the operator keeps: a work
    volume would be deleted with the pod, so the step gets none. The README's recipe (a
    persistentVolumeClaim and its mount at target_dir, through per_step_k8s_config) must make a
    valid Job with that claim mounted there, beside the step's own resources."""
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    monkeypatch.setenv("REPL_PASSWORD", "replication-password-never-in-a-job")
    fleet = tmp_path / "physical.yaml"
    fleet.write_text(PHYSICAL_FLEET)
    instance, kubeconfig = k8s_instance
    op_config = {"cluster": "pg-aws", "to": "latest", "target_dir": "/restored/pg-aws"}
    [(step, namespace, body)] = _step_jobs(instance, kubeconfig, "restore_pitr", None, fleet=fleet,
                                           run_config={"ops": {"restore_to_point_in_time": {"config": op_config}}})
    container = _assert_a_valid_step_job("restore_pitr", step, namespace, body)
    assert container["resources"] == step_resources("restore_to_point_in_time").as_kubernetes()
    assert step_resources("restore_to_point_in_time").work_volume is None
    assert {v["name"] for v in body["spec"]["template"]["spec"]["volumes"]} == {"fleet"}

    kept = {"pod_spec_config": {"volumes": [{"name": "restored", "persistentVolumeClaim": {"claimName": "pg-aws-pitr"}}]},
            "container_config": {"volume_mounts": [{"name": "restored", "mountPath": "/restored/pg-aws"}]}}
    run_config = {"ops": {"restore_to_point_in_time": {"config": op_config}},
                  "execution": {"config": {"per_step_k8s_config": {"restore_to_point_in_time": kept}}}}
    [(step, namespace, body)] = _step_jobs(instance, kubeconfig, "restore_pitr", None, fleet=fleet,
                                           run_config=run_config)
    container = _assert_a_valid_step_job("restore_pitr", step, namespace, body)
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    assert volumes["restored"]["persistentVolumeClaim"] == {"claimName": "pg-aws-pitr"}
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["restored"] == "/restored/pg-aws"
    assert container["resources"] == step_resources("restore_to_point_in_time").as_kubernetes()


def test_a_batched_runs_drill_pods_are_sized_for_the_largest_database_of_its_batch(
        k8s_instance, monkeypatch, tmp_path):
    """One op's pods serve every database of a batch (the k8s executor sizes per op, not per
    mapped step), so a batch holding a 300 GiB database gets that database's drill volume and a
    batch of databases that state no size gets the default's; the schedule's run config says so
    and dagster-k8s builds the mapped step's Job with it."""
    from datetime import datetime, timezone

    from benchmarks.synthetic import database_names, write_fleet_file
    from dagster._core.execution.plan.state import KnownExecutionState

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.ops.batches import mapping_keys

    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    fleet = write_fleet_file(tmp_path, 150)
    big = database_names(150)[120]
    fleet.write_text(fleet.read_text().replace(f"  - name: {big}\n", f"  - name: {big}\n    expected_dump_size: 300GiB\n"))
    repository = build_definitions(fleet).get_repository_def()
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 12, 3, 3, 0, tzinfo=timezone.utc),
                                        repository_def=repository)
    requests = repository.get_schedule_def("restore_drills_daily").evaluate_tick(context).run_requests
    assert len(requests) == 2

    def drill_volume(run_config) -> str:
        drill = run_config["execution"]["config"]["per_step_k8s_config"]["batch_restore_drills"]
        return drill["pod_spec_config"]["volumes"][0]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"][
            "requests"]["storage"]

    assert [drill_volume(r.run_config) for r in requests] == ["27Gi", "752Gi"]  # 2.5 x 10 GiB or 300 GiB + 2 GiB

    instance, kubeconfig = k8s_instance
    members = requests[1].run_config["ops"]["batch"]["config"]["databases"]
    assert big in members
    known = KnownExecutionState(dynamic_mappings={"batch": {"result": mapping_keys(members)}})
    drill_step = f"batch_restore_drills[{mapping_keys([big])[0]}]"
    [(step, namespace, body)] = _step_jobs(instance, kubeconfig, "run_restore_drills_batched", None,
                                           run_config=requests[1].run_config, fleet=fleet, known_state=known,
                                           step_keys=[drill_step])
    assert step == drill_step
    container = _assert_a_valid_step_job("run_restore_drills_batched", step, namespace, body)
    assert container["resources"] == step_resources("restore_drills", raw_dump_size=300 * GiB).as_kubernetes()
    volumes = {v["name"]: v for v in body["spec"]["template"]["spec"]["volumes"]}
    assert volumes["work"]["ephemeral"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"] == "752Gi"


def test_every_step_of_every_job_has_its_pod_resources(tmp_path, monkeypatch):
    """A step without them would get whatever the namespace defaults to (or nothing at all)."""
    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.kube import K8S_CONFIG_TAG

    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    physical = tmp_path / "physical.yaml"
    physical.write_text(PHYSICAL_FLEET)
    unsized = set()
    for fleet in (PRODUCTION_FLEET, physical):
        for job in build_definitions(fleet).resolve_all_job_defs():
            unsized |= {f"{job.name}: {node.name}" for node in job.graph.node_dict.values()
                        if K8S_CONFIG_TAG not in node.definition.tags and not job.name.startswith("__ASSET_JOB")}
    assert not unsized, sorted(unsized)


def test_without_the_k8s_executor_runs_carry_no_kubernetes_run_config(monkeypatch):
    from platform_orchestration.definitions import build_definitions

    monkeypatch.setenv("PLATFORM_EXECUTOR", "multiprocess")
    job = build_definitions(PRODUCTION_FLEET).resolve_job_def("protection_flow")
    assert job.partitioned_config.get_run_config_for_partition_key("orders") == {}


def test_the_production_instance_loads_with_the_k8s_launcher_on_a_real_postgresql(tmp_path, target_cluster,
                                                                                  monkeypatch):
    """deploy/dagster.yaml as the pods mount it: in-cluster configuration (the pod's token,
    CA and API address), storage in a real PostgreSQL server."""
    from psycopg import sql

    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("dagster_k8s_instance")))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(PRODUCTION_INSTANCE.read_text())
    as_in_a_pod(monkeypatch, tmp_path)
    for name, value in {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(target_cluster.port),
                        "DAGSTER_PG_USERNAME": "postgres", "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
                        "DAGSTER_PG_DB": "dagster_k8s_instance"}.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert (launcher.job_namespace, launcher.service_account_name, launcher.instance_config_map) == (
            NAMESPACE, "platform-dr", "platform-dr-instance")
        assert launcher.env_config_maps == ["platform-dr-env", "platform-dr-vault"]
        assert launcher.postgres_password_secret == "platform-dr-storage"
        assert launcher.fail_pod_on_run_failure
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 2
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 1
        assert not instance.run_retries_retry_on_asset_or_op_failure
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.compute_log_manager).__name__ == "NoOpComputeLogManager"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 24

        @dg.op
        def noop() -> None: ...

        @dg.job
        def smoke() -> None:
            noop()

        assert smoke.execute_in_process(instance=instance).success
    with psycopg.connect(target_cluster.connection("dagster_k8s_instance").dsn) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 1


def test_the_run_queue_lets_at_most_four_runs_use_one_cloud_link():
    """deploy/dagster.yaml's queue, asked by Dagster's queued-run daemon (as test_dagster's
    per-database test does): six databases of the aws cluster whose policy copies to GCS."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.specs import DATABASE_RUN_TAG

    fleet_file = Path(PRODUCTION_FLEET)
    job = build_definitions(fleet_file).resolve_job_def("take_backups")
    tags = job.partitioned_config.get_tags_for_partition_key("inventory")
    assert tags["platform/egress-aws-gcp"] == "true" and "platform/egress-aws-azure" not in tags  # standard: aws, gcp
    drills = build_definitions(fleet_file).resolve_job_def("run_restore_drills")
    assert not [t for t in drills.partitioned_config.get_tags_for_partition_key("inventory") if "egress" in t]

    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("platform_orchestration"), "__repository__")
    with dg.instance_for_test(overrides={"concurrency": production["concurrency"],
                                         "telemetry": {"enabled": False}}) as instance:
        for n in range(6):
            run_tags = {**tags, DATABASE_RUN_TAG: f"db{n}"}
            create_run_for_test(instance, job_name="take_backups", status=dg.DagsterRunStatus.QUEUED,
                                tags=run_tags, remote_job_origin=origin.get_job_origin("take_backups"))
        launchable = QueuedRunCoordinatorDaemon(interval_seconds=1)._get_runs_to_dequeue(  # noqa: SLF001
            instance, instance.get_concurrency_config(), None)
    assert len(launchable) == 4
    assert len({r.tags[DATABASE_RUN_TAG] for r in launchable}) == 4


def test_the_run_queue_runs_one_rollout_of_a_plan_at_a_time():
    """deploy/dagster.yaml's queue, asked by Dagster's queued-run daemon: two queued runs of the
    production plan's rollout job (tagged as the job tags them) and one of another plan."""
    from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
    from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.ops.rollout import ROLLOUT_TAG

    repo = build_definitions(Path(PRODUCTION_FLEET)).get_repository_def()
    [job] = [j for j in repo.get_all_jobs() if ROLLOUT_TAG in j.tags]
    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    origin = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("platform_orchestration"), "__repository__")
    with dg.instance_for_test(overrides={"concurrency": production["concurrency"],
                                         "telemetry": {"enabled": False}}) as instance:
        for tags in (job.tags, job.tags, {**job.tags, ROLLOUT_TAG: "another-plan"}):
            create_run_for_test(instance, job_name=job.name, status=dg.DagsterRunStatus.QUEUED,
                                tags=dict(tags), remote_job_origin=origin.get_job_origin(job.name))
        launchable = QueuedRunCoordinatorDaemon(interval_seconds=1)._get_runs_to_dequeue(  # noqa: SLF001
            instance, instance.get_concurrency_config(), None)
    assert sorted(r.tags[ROLLOUT_TAG] for r in launchable) == sorted([job.tags[ROLLOUT_TAG], "another-plan"])


def test_every_cloud_link_of_the_fleets_has_a_limit():
    from platform_orchestration.kube import cloud_links, link_tag

    limits = {limit["key"] for limit in yaml.safe_load(PRODUCTION_INSTANCE.read_text())["concurrency"]["runs"]
              ["tag_concurrency_limits"]}
    for path in (REPOSITORY_ROOT / "deploy" / "fleet").glob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        fleet = load_fleet(path, environ={"DEMO_S3_PORT": "1", "DEMO_AZURE_PORT": "2", "DEMO_GCS_PORT": "3"})
        for database in fleet.databases:
            for link in cloud_links(fleet, database.name):
                assert link_tag(link) in limits, (path.name, database.name, link)


def test_a_bad_expected_dump_size_is_one_line_naming_the_field(tmp_path):
    from platform_orchestration.fleet import FleetError

    bad = tmp_path / "fleet.yaml"
    bad.write_text(PRODUCTION_FLEET.read_text().replace("expected_dump_size: 8GiB", "expected_dump_size: 8 parsecs"))
    with pytest.raises(FleetError) as caught:
        load_fleet(bad, environ={})
    [line] = caught.value.errors
    assert line.endswith("databases[1].expected_dump_size: expected a size like 512MiB, 40GiB or 2TiB, got '8 parsecs'")
    assert load_fleet(PRODUCTION_FLEET, environ={}).database("inventory").expected_dump_size == 8 * GiB


def test_a_bad_cluster_expected_size_is_one_line_naming_the_field(tmp_path):
    from platform_orchestration.fleet import FleetError

    bad = tmp_path / "fleet.yaml"
    bad.write_text(PHYSICAL_FLEET.replace("expected_size: 300GiB", "expected_size: -3GiB"))
    with pytest.raises(FleetError) as caught:
        load_fleet(bad, environ={})
    [line] = caught.value.errors
    assert "clusters[0].expected_size: " in line and "'-3GiB'" in line, line
