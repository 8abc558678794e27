"""Test helpers for the Kubernetes side: a pod's environment, the production instance file."""

from __future__ import annotations

from pathlib import Path

import pytest

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
