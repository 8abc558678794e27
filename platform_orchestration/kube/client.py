"""Talking to one Kubernetes cluster's API server: connect as the fleet says, read, list,
server-side apply, patch. Plain values in and out (the objects are dicts as the API serves them).

Connection comes from the cluster's ``access`` in the fleet: a kubeconfig context (the kubeconfig
by reference: a file, or its text in an environment variable or in Vault) or the pod's in-cluster
service account. No credential is ever written in the fleet file, logged or put in a message.

Kinds are mapped to their API resources by a fixed table (:data:`RESOURCES`), the kinds the
platform deploys and observes; no discovery round trip per object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import kubernetes
import urllib3
import yaml

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.fleet.model import KubernetesCluster

__all__ = [
    "APPLY_CONTENT_TYPE",
    "ClusterUnreachable",
    "KubeApi",
    "KubeError",
    "NotFound",
    "RESOURCES",
    "Resource",
    "connect",
    "resource_for",
]

APPLY_CONTENT_TYPE = "application/apply-patch+yaml"


class SecretProvider(Protocol):
    """What resolves a fleet secret reference (platform_orchestration.secrets' providers)."""

    def resolve(self, ref) -> str: ...  # noqa: ANN001 - a fleet SecretRef


class KubeError(PlatformError):
    """A Kubernetes API call failed; the message names the cluster, the object and the reason."""


class NotFound(KubeError):
    """The object (or its API resource) does not exist on the cluster."""


class ClusterUnreachable(KubeError):
    """The cluster's API server could not be reached (or its access could not be loaded)."""


@dataclass(frozen=True)
class Resource:
    """An API resource: where objects of one kind live."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


RESOURCES: dict[str, Resource] = {
    "v1/ConfigMap": Resource("", "v1", "configmaps"),
    "v1/Secret": Resource("", "v1", "secrets"),
    "v1/Service": Resource("", "v1", "services"),
    "v1/ServiceAccount": Resource("", "v1", "serviceaccounts"),
    "v1/Pod": Resource("", "v1", "pods"),
    "v1/PersistentVolumeClaim": Resource("", "v1", "persistentvolumeclaims"),
    "v1/Namespace": Resource("", "v1", "namespaces", namespaced=False),
    "v1/Node": Resource("", "v1", "nodes", namespaced=False),
    "apps/v1/Deployment": Resource("apps", "v1", "deployments"),
    "apps/v1/StatefulSet": Resource("apps", "v1", "statefulsets"),
    "apps/v1/DaemonSet": Resource("apps", "v1", "daemonsets"),
    "batch/v1/Job": Resource("batch", "v1", "jobs"),
    "batch/v1/CronJob": Resource("batch", "v1", "cronjobs"),
    "policy/v1/PodDisruptionBudget": Resource("policy", "v1", "poddisruptionbudgets"),
    "networking.k8s.io/v1/NetworkPolicy": Resource("networking.k8s.io", "v1", "networkpolicies"),
    "networking.k8s.io/v1/Ingress": Resource("networking.k8s.io", "v1", "ingresses"),
    "autoscaling/v2/HorizontalPodAutoscaler": Resource("autoscaling", "v2", "horizontalpodautoscalers"),
    "rbac.authorization.k8s.io/v1/Role": Resource("rbac.authorization.k8s.io", "v1", "roles"),
    "rbac.authorization.k8s.io/v1/RoleBinding": Resource("rbac.authorization.k8s.io", "v1", "rolebindings"),
    "rbac.authorization.k8s.io/v1/ClusterRole": Resource("rbac.authorization.k8s.io", "v1", "clusterroles",
                                                         namespaced=False),
    "rbac.authorization.k8s.io/v1/ClusterRoleBinding": Resource("rbac.authorization.k8s.io", "v1",
                                                                "clusterrolebindings", namespaced=False),
    "postgresql.cnpg.io/v1/Cluster": Resource("postgresql.cnpg.io", "v1", "clusters"),
    "argoproj.io/v1alpha1/Application": Resource("argoproj.io", "v1alpha1", "applications"),
}

# The fleet's workload kinds, as apiVersion/kind (a bare `Cluster` is CloudNativePG's).
WORKLOAD_API = {"Deployment": "apps/v1/Deployment", "StatefulSet": "apps/v1/StatefulSet",
                "Cluster": "postgresql.cnpg.io/v1/Cluster"}


def resource_for(api_version: str, kind: str) -> Resource:
    """The API resource of ``apiVersion``/``kind``; :class:`KubeError` for a kind the table lacks."""
    try:
        return RESOURCES[f"{api_version}/{kind}"]
    except KeyError:
        raise KubeError(f"{kind} ({api_version}) is not a kind the platform deploys (known: "
                        f"{', '.join(sorted(key.rsplit('/', 1)[1] for key in RESOURCES))})") from None


def describe(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` of an object, for messages."""
    meta = obj.get("metadata") or {}
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind', '?')} {where}{meta.get('name', '?')}"


class KubeApi:
    """One cluster's API server. Every failure is a :class:`KubeError` naming the cluster."""

    def __init__(self, cluster: str, client: kubernetes.client.ApiClient, *, timeout: float = 10.0) -> None:
        self.cluster = cluster
        self._client = client
        self._timeout = timeout

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, body: Any = None, query: Iterable[tuple[str, str]] = (),
                content_type: str = "application/json", what: str = "") -> Any:
        what = what or f"{method} {path}"
        try:
            response = self._client.call_api(
                path, method, query_params=list(query),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=self._timeout)
        except kubernetes.client.ApiException as exc:
            reason = _status_message(exc)
            if exc.status == 404:
                raise NotFound(f"Kubernetes cluster {self.cluster}: {what}: not found") from None
            raise KubeError(f"Kubernetes cluster {self.cluster}: {what}: {exc.status} {reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(f"Kubernetes cluster {self.cluster} is unreachable: "
                                     f"{one_line(type(exc).__name__ + ': ' + str(exc), 300)}") from None
        raw = response.data
        return json.loads(raw) if raw else {}

    # --- reads ---

    def version(self) -> dict[str, Any]:
        return self.request("GET", "/version", what="server version")

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        resource = resource_for(api_version, kind)
        return self.request("GET", resource.path(namespace, name), what=f"{kind} {namespace or ''}/{name}".replace(" /", " "))

    def get_or_none(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return self.get(api_version, kind, namespace, name)
        except NotFound:
            return None

    def list(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """The objects of a kind (in ``namespace``, or everywhere); a resource the server does not
        serve (a CRD not installed) lists as empty."""
        resource = resource_for(api_version, kind)
        try:
            return list(self.request("GET", resource.path(namespace), what=f"list {kind}").get("items") or [])
        except NotFound:
            return []

    # --- writes ---

    def apply(self, obj: Mapping[str, Any], *, field_manager: str, dry_run: bool = False,
              force: bool = False) -> dict[str, Any]:
        """Server-side apply of ``obj`` (as ``kubectl apply --server-side``) under ``field_manager``;
        with ``dry_run`` the server computes the result (dryRun=All) and changes nothing."""
        meta = obj.get("metadata") or {}
        resource = resource_for(str(obj.get("apiVersion")), str(obj.get("kind")))
        query = [("fieldManager", field_manager)]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        return self.request("PATCH", resource.path(meta.get("namespace"), meta.get("name")), body=dict(obj),
                            query=query, content_type=APPLY_CONTENT_TYPE, what=f"apply {describe(obj)}")

    def merge_patch(self, api_version: str, kind: str, namespace: str | None, name: str,
                    patch: Mapping[str, Any], *, subresource: str | None = None) -> dict[str, Any]:
        resource = resource_for(api_version, kind)
        return self.request("PATCH", resource.path(namespace, name, subresource), body=dict(patch),
                            content_type="application/merge-patch+json", what=f"patch {kind} {namespace}/{name}")


def _status_message(exc: kubernetes.client.ApiException) -> str:
    try:
        return one_line(json.loads(exc.body).get("message") or exc.reason, 300)
    except (TypeError, ValueError, AttributeError):
        return one_line(exc.reason or "", 300)


def connect(cluster: KubernetesCluster, secrets: SecretProvider | None = None, *,
            timeout: float = 10.0) -> KubeApi:
    """A client of ``cluster``'s API server, as its ``access`` says. :class:`ClusterUnreachable`
    when the access cannot be loaded (no such context, an unreadable kubeconfig, no service
    account outside a pod); nothing is contacted yet."""
    access = cluster.access
    configuration = kubernetes.client.Configuration()
    try:
        if access.in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        elif access.kubeconfig is None:
            kubernetes.config.load_kube_config(context=access.context, client_configuration=configuration)
        elif access.kubeconfig.source == "file":
            kubernetes.config.load_kube_config(config_file=str(access.kubeconfig.file), context=access.context,
                                               client_configuration=configuration)
        else:
            if secrets is None:
                raise ClusterUnreachable(f"Kubernetes cluster {cluster.name}: its kubeconfig is a secret "
                                         f"({access.kubeconfig.describe()}) but no secret provider was given")
            document = yaml.safe_load(secrets.resolve(access.kubeconfig))
            kubernetes.config.load_kube_config_from_dict(document, context=access.context,
                                                         client_configuration=configuration)
    except KubeError:
        raise
    except (kubernetes.config.ConfigException, OSError, yaml.YAMLError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if access.in_cluster else (
            f"context {access.context!r} of kubeconfig "
            f"{access.kubeconfig.describe() if access.kubeconfig else '($KUBECONFIG or ~/.kube/config)'}")
        # The loader's messages name files and contexts, never the credentials themselves.
        raise ClusterUnreachable(f"Kubernetes cluster {cluster.name}: cannot load its {where}: "
                                 f"{one_line(exc, 300)}") from None
    configuration.retries = 1
    return KubeApi(cluster.name, kubernetes.client.ApiClient(configuration), timeout=timeout)

