"""A run of protection_flow launched through K8sRunLauncher, against a Kubernetes API double.

There is no real API server here. The double is kmock 0.8's KubernetesEmulator, served over HTTP
on a free port and spoken to by the real `kubernetes` client inside dagster-k8s: it stores the
objects it is sent and serves them back (create, read, list, patch, status subresources). Its
gaps, so what this test cannot prove: no admission or schema validation (the Job it records is
validated here against the Kubernetes schema instead), no controllers (no Job controller makes
the pod, no kubelet runs it: the test plays both, creating the pod and writing the pod's and the
Job's status as they would; a new Job has no status at all until then), no resourceVersion or
uid, naive merge patches, label selectors ignored, `?watch=True` unrecognised, and
server-side apply to a missing object answers 404.

The instance is deploy/dagster.yaml's run launcher and run monitoring, with the API server given
by a kubeconfig instead of the in-cluster configuration (tests run outside a pod); run
monitoring is Dagster's own daemon function, called once per kubelet move.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import dagster as dg
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.launcher.base import WorkerStatus
from dagster._core.storage.tags import DOCKER_IMAGE_TAG
from dagster._core.test_utils import create_run_for_test, in_process_test_workspace
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._daemon.monitoring.run_monitoring import monitor_started_run
from kube import IMAGE, NAMESPACE, PRODUCTION_INSTANCE, REPOSITORY_ROOT, TARGET_KUBERNETES, production_run_launcher, \
    ApiServerDouble, write_kubeconfig

from platform_orchestration.specs import DATABASE_RUN_TAG

PRODUCTION_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "production.yaml"
JOBS = ("batch", "v1", "jobs")


class LauncherApiServer(ApiServerDouble):
    """The API server double, with what the Job controller and the kubelet would do."""

    def jobs(self) -> dict[str, dict]:
        batch = kubernetes.client.BatchV1Api(self.client)
        return {job.metadata.name: self.client.sanitize_for_serialization(job)
                for job in batch.list_namespaced_job(NAMESPACE).items}

    # --- what the Job controller and the kubelet would do ---

    def pod_started(self, job: dict) -> str:
        core = kubernetes.client.CoreV1Api(self.client)
        name = job["metadata"]["name"] + "-x7k2p"
        template = job["spec"]["template"]
        core.create_namespaced_pod(NAMESPACE, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {**template["metadata"]["labels"], "job-name": job["metadata"]["name"]}},
            "spec": template["spec"]})
        core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {"phase": "Running"}})
        self._job_status(job, {"active": 1})
        return name

    def pod_ended(self, job: dict, pod: str, phase: str) -> None:
        core = kubernetes.client.CoreV1Api(self.client)
        core.patch_namespaced_pod_status(pod, NAMESPACE, {"status": {"phase": phase}})
        self._job_status(job, {"active": 0, "succeeded" if phase == "Succeeded" else "failed": 1})

    def _job_status(self, job: dict, status: dict) -> None:
        kubernetes.client.BatchV1Api(self.client).patch_namespaced_job_status(
            job["metadata"]["name"], NAMESPACE, {"status": status})


@pytest.fixture
def double() -> Iterator[LauncherApiServer]:
    with LauncherApiServer() as server:
        yield server


@pytest.fixture
def launched(double, tmp_path, monkeypatch):
    """protection_flow of `orders`, launched by the production run launcher into the double."""
    monkeypatch.setenv("PLATFORM_EXECUTOR", "k8s")
    monkeypatch.setenv("PLATFORM_K8S_NAMESPACE", NAMESPACE)
    code = tmp_path / "code_location.py"
    code.write_text("from platform_orchestration.definitions import build_definitions\n"
                    f"defs = build_definitions({str(PRODUCTION_FLEET)!r})\n")
    production = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", double.url)
    with dg.instance_for_test(overrides={"run_launcher": production_run_launcher(kubeconfig),
                                         "run_monitoring": production["run_monitoring"]}) as instance, \
            in_process_test_workspace(instance, LoadableTargetOrigin(python_file=str(code), attribute="defs"),
                                      container_image=IMAGE) as workspace:
        location = workspace.get_code_location(workspace.code_location_names[0])
        remote_job = location.get_repository("__repository__").get_full_job("protection_flow")
        from platform_orchestration.definitions import build_definitions

        partitioned = build_definitions(PRODUCTION_FLEET).resolve_job_def("protection_flow").partitioned_config
        run = create_run_for_test(
            instance, job_name="protection_flow", tags=partitioned.get_tags_for_partition_key("orders"),
            run_config=partitioned.get_run_config_for_partition_key("orders"),
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin())
        instance.launch_run(run.run_id, workspace)
        yield instance, workspace, instance.get_run_by_id(run.run_id)


def test_launching_protection_flow_creates_the_run_job_in_the_double(launched, double):
    instance, _, run = launched
    jobs = double.jobs()
    assert list(jobs) == [f"dagster-run-{run.run_id}"]
    job = jobs[f"dagster-run-{run.run_id}"]
    kubernetes_validate.validate(job, TARGET_KUBERNETES, strict=True)
    assert run.tags[DOCKER_IMAGE_TAG] == IMAGE and run.status == dg.DagsterRunStatus.STARTING
    pod = job["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == IMAGE
    assert container["args"][:3] == ["dagster", "api", "execute_run"]
    assert pod["spec"]["serviceAccountName"] == "platform-dr"
    assert pod["spec"]["securityContext"]["runAsNonRoot"]
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "256Mi"}
    assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["platform-dr-env", "platform-dr-vault"]
    env = {v["name"]: v for v in container["env"]}
    assert env["DAGSTER_PG_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": "platform-dr-storage", "key": "postgresql-password"}}
    # the fleet file by volume; the instance travels in the arguments, as its settings (env
    # references), never a value
    assert pod["spec"]["volumes"] == [{"name": "fleet", "configMap": {"name": "platform-dr-fleet"}}]
    assert "instance_ref" in container["args"][-1]
    labels = pod["metadata"]["labels"]
    assert labels["dagster/job"] == "protection_flow" and labels["app.kubernetes.io/component"] == "run_worker"
    assert labels["app.kubernetes.io/part-of"] == "platform-dr"
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["ttlSecondsAfterFinished"] == 86400


def _reported(instance: dg.DagsterInstance, run: dg.DagsterRun, event: DagsterEventType) -> dg.DagsterRun:
    """What the run pod's process reports through the instance's storage (its start, its end)."""
    instance.report_dagster_event(DagsterEvent(event_type_value=event.value, job_name=run.job_name),
                                  run_id=run.run_id)
    return instance.get_run_by_id(run.run_id)


def _started(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dg.DagsterRun:
    return _reported(instance, run, DagsterEventType.RUN_START)


def test_run_monitoring_sees_the_pod_run_and_succeed(launched, double):
    instance, workspace, run = launched
    job = double.jobs()[f"dagster-run-{run.run_id}"]
    launcher = instance.run_launcher

    pod = double.pod_started(job)
    run = _started(instance, run)
    assert launcher.check_run_worker_health(run).status == WorkerStatus.RUNNING
    monitor_started_run(instance, workspace, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED

    run = _reported(instance, run, DagsterEventType.RUN_SUCCESS)  # the run's last word, then it exits 0
    double.pod_ended(job, pod, "Succeeded")
    assert launcher.check_run_worker_health(run).status == WorkerStatus.SUCCESS
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert list(double.jobs()) == [f"dagster-run-{run.run_id}"]  # nothing relaunched


def test_run_monitoring_fails_a_run_whose_pod_ended_without_a_word_once_resumes_are_spent(launched, double,
                                                                                       monkeypatch):
    instance, workspace, run = launched
    job = double.jobs()[f"dagster-run-{run.run_id}"]
    pod = double.pod_started(job)
    run = _started(instance, run)
    double.pod_ended(job, pod, "Succeeded")  # exited 0 but never reported the run's end
    monkeypatch.setattr(type(instance), "run_monitoring_max_resume_run_attempts", property(lambda self: 0))

    monitor_started_run(instance, workspace, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))

    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert list(double.jobs()) == [f"dagster-run-{run.run_id}"]


def test_run_monitoring_resumes_a_run_whose_pod_died_with_a_new_job(launched, double):
    """A pod lost without reporting (node drained, OOM-killed): run monitoring resumes the run
    (max_resume_run_attempts: 2) by launching a second Job; the steps already done stay done."""
    instance, workspace, run = launched
    job = double.jobs()[f"dagster-run-{run.run_id}"]
    pod = double.pod_started(job)
    run = _started(instance, run)
    double.pod_ended(job, pod, "Failed")
    assert instance.run_launcher.check_run_worker_health(run).status == WorkerStatus.FAILED

    monitor_started_run(instance, workspace, instance.get_run_record_by_id(run.run_id), logging.getLogger("test"))

    assert sorted(double.jobs()) == [f"dagster-run-{run.run_id}", f"dagster-run-{run.run_id}-1"]
    resumed = double.jobs()[f"dagster-run-{run.run_id}-1"]
    kubernetes_validate.validate(resumed, TARGET_KUBERNETES, strict=True)
    assert resumed["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["dagster", "api", "resume_run"]
    assert instance.get_run_by_id(run.run_id).tags[DATABASE_RUN_TAG] == "orders"
