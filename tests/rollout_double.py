"""Kubernetes API server doubles for the rollout and drift tests, one per cluster, and the
controllers the tests play.

There is no real API server here. Each double is kmock 0.8's KubernetesEmulator, served over HTTP
on a free port on its own event loop thread, spoken to by the real `kubernetes` client inside
platform_orchestration.kube.client. It stores what it is sent and serves it back. kmock's gaps,
and what the shim below does about each (so what these tests cannot prove):

* server-side apply (PATCH application/apply-patch+yaml) of a missing object answers 404: the
  shim creates the object first, as a real server's apply does; field ownership, conflicts and
  managedFields are not modelled (a real server merges per field manager; kmock merges dicts
  naively and replaces lists);
* `dryRun=All` is ignored (the object would be changed): the shim answers with the merge the
  apply would make, changing nothing;
* `/version` is fixed at v1.26.4: the shim serves the version the test gives;
* listing a resource no object of exists answers 404: the shim declares every resource of
  platform_orchestration.kube.client.RESOURCES, so empty lists are empty;
* no controllers: no Deployment/StatefulSet controller, no CloudNativePG or Argo CD, no kubelet.
  The tests play them (:class:`ClusterDouble` `deployment_ready`, `deployment_stuck`...),
  writing the status a controller would; no metadata.generation is kept, so the tests write it;
* no admission, schema validation, resourceVersion or uid; label selectors ignored.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kubernetes
from kmock import KubernetesEmulator
from kmock._internal import enums, references
from kube import ApiServerDouble

from platform_orchestration.kube.client import APPLY_CONTENT_TYPE, RESOURCES


def _merged(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in patch.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@attrs.define(kw_only=True)
class ShimmedEmulator(KubernetesEmulator):
    """kmock's emulator with the shims listed in the module docstring."""

    git_version: str = "v1.31.4"
    applies: list[tuple[str, str, dict[str, str]]] = attrs.field(factory=list)
    """Every server-side apply received: (namespace, name, query parameters)."""

    def _get_resources(self) -> list[references.resource]:
        known = {references.resource(r.group, r.version, r.plural) for r in RESOURCES.values()}
        return list(known | set(super()._get_resources()))

    async def _serve_server_version(self, request: Any) -> Any:
        major, minor = self.git_version.lstrip("v").split(".")[:2]
        return {"major": major, "minor": minor, "gitVersion": self.git_version, "platform": "linux/amd64"}

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.action == enums.action.UPDATE and request.resource is not None and request.subresource is None \
                and str(request.headers.get("Content-Type", "")).startswith(APPLY_CONTENT_TYPE):
            key = (request.resource, request.namespace, request.name)
            self.applies.append((request.namespace, request.name, dict(request.params)))
            async with self._lock:
                existing = self._objects[key] if key in self._objects else None
                live = None if existing is None or existing.deleted else existing.raw
                if request.params.get("dryRun") == "All":
                    return aiohttp.web.json_response(_merged(live or {}, request.data))
                if live is None:
                    if existing is None:
                        self._objects[key] = request.data
                    else:
                        existing.create(request.data)
        return await super()._handle(request)


class ClusterDouble(ApiServerDouble):
    """One cluster's API server double, and the controllers the tests play on it."""

    def __init__(self, name: str, git_version: str = "v1.31.4") -> None:
        self.name = name
        self.git_version = git_version

    def _emulator(self) -> ShimmedEmulator:
        return ShimmedEmulator(git_version=self.git_version)

    def reset(self) -> None:
        """Forget every object (between tests sharing the doubles)."""
        async def clear() -> None:
            async with self.emulator._lock:
                for key in list(self.emulator._objects):
                    del self.emulator._objects[key]
                self.emulator.applies.clear()
        asyncio.run_coroutine_threadsafe(clear(), self._loop).result(10)

    # --- plain API calls ---

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        import json

        data = self.client.call_api(path, method, header_params={"Content-Type": content_type,
                                                                       "Accept": "application/json"},
                                          body=body, _preload_content=False)
        return json.loads(data.data) if data.data else None

    def create(self, obj: Mapping[str, Any]) -> None:
        from platform_orchestration.kube.client import resource_for

        resource = resource_for(obj["apiVersion"], obj["kind"])
        self._call("POST", resource.path(obj["metadata"].get("namespace")), dict(obj))

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        from platform_orchestration.kube.client import resource_for

        try:
            return self._call("GET", resource_for(api_version, kind).path(namespace, name))
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, api_version: str, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any],
              subresource: str | None = None) -> None:
        from platform_orchestration.kube.client import resource_for

        self._call("PATCH", resource_for(api_version, kind).path(namespace, name, subresource), dict(patch),
                   "application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> None:
        from platform_orchestration.kube.client import resource_for

        self._call("DELETE", resource_for(api_version, kind).path(namespace, name))

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return [obj.raw for (resource, _, _), obj in list(self.emulator.objects.items())
                if not obj.deleted and obj.raw.get("kind") == kind]

    # --- what the controllers would do ---

    def node(self, name: str, ready: bool = True) -> None:
        self.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                     "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})

    def deployment_ready(self, namespace: str, name: str, generation: int = 1) -> None:
        """The Deployment controller has rolled out its template: every replica updated and available."""
        live = self.get("apps/v1", "Deployment", namespace, name)
        assert live is not None, f"no Deployment {namespace}/{name} on {self.name}"
        replicas = (live.get("spec") or {}).get("replicas", 1)
        self.patch("apps/v1", "Deployment", namespace, name, {"metadata": {"generation": generation}})
        self.patch("apps/v1", "Deployment", namespace, name, {"status": {
            "observedGeneration": generation, "replicas": replicas, "updatedReplicas": replicas,
            "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True"},
                           {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}},
            "status")

    def deployment_stuck(self, namespace: str, name: str, generation: int = 1) -> None:
        """The new pods never become ready; the controller gives up at the progress deadline."""
        self.patch("apps/v1", "Deployment", namespace, name, {"metadata": {"generation": generation}})
        self.patch("apps/v1", "Deployment", namespace, name, {"status": {
            "observedGeneration": generation, "replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                            "message": 'ReplicaSet "x-7d9" has timed out progressing.'}]}}, "status")

    def all_deployments_ready(self, generation: int = 1) -> None:
        for obj in self.objects("Deployment"):
            self.deployment_ready(obj["metadata"]["namespace"], obj["metadata"]["name"], generation)

    def statefulset_ready(self, namespace: str, name: str, revision: str = "web-6c9f") -> None:
        live = self.get("apps/v1", "StatefulSet", namespace, name)
        replicas = (live.get("spec") or {}).get("replicas", 1)
        self.patch("apps/v1", "StatefulSet", namespace, name, {"metadata": {"generation": 1}})
        self.patch("apps/v1", "StatefulSet", namespace, name, {"status": {
            "observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas,
            "currentRevision": revision, "updateRevision": revision}}, "status")

    def cnpg_phase(self, namespace: str, name: str, phase: str) -> None:
        self.patch("postgresql.cnpg.io/v1", "Cluster", namespace, name, {"status": {"phase": phase}}, "status")


@contextmanager
def cluster_doubles(*names: str) -> Iterator[dict[str, ClusterDouble]]:
    with ExitStack() as stack:
        yield {name: stack.enter_context(ClusterDouble(name)) for name in names}


def write_kubeconfig(path: Path, doubles: Mapping[str, ClusterDouble], *, unreachable: Mapping[str, str] = {}
                     ) -> Path:
    """One kubeconfig with a context per double (named after its cluster), and contexts pointing
    at closed ports for ``unreachable`` ({context: url})."""
    import yaml

    servers = {name: double.url for name, double in doubles.items()} | dict(unreachable)
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": next(iter(servers)),
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "double", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "double"}} for n in servers]}))
    return path
