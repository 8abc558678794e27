"""Dagster resources: secrets and keys, the fleet, and through it the protection API
shared with the CLI."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from platform_orchestration.alerts import FileAlertSink
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.fleet import Fleet, load_fleet
from platform_orchestration.protection import FleetProtection
from platform_orchestration.secrets import LocalSecretProvider, SecretProvider


class SecretsResource(dg.ConfigurableResource):
    """Where secrets and data keys come from. Only locations and names live here (they show
    in the UI); the Vault token is read from VAULT_TOKEN / VAULT_TOKEN_FILE or the pod's
    service-account token at login, never from config.

    Empty `vault_addr`: the embedded default (env:/file: references, local key file)."""

    vault_addr: str = ""
    vault_auth_method: str = "token"
    vault_kubernetes_role: str = ""
    vault_kubernetes_mount: str = "kubernetes"
    vault_kv_mount: str = "secret"
    vault_transit_mount: str = "transit"
    vault_transit_key: str = "backups"
    local_key_file: str = ""

    @classmethod
    def from_environment(cls) -> "SecretsResource":
        env = os.environ.get
        return cls(
            vault_addr=env("VAULT_ADDR", ""), vault_auth_method=env("VAULT_AUTH_METHOD", "token"),
            vault_kubernetes_role=env("VAULT_K8S_ROLE", ""), vault_kubernetes_mount=env("VAULT_K8S_MOUNT", "kubernetes"),
            vault_kv_mount=env("VAULT_KV_MOUNT", "secret"), vault_transit_mount=env("VAULT_TRANSIT_MOUNT", "transit"),
            vault_transit_key=env("VAULT_TRANSIT_KEY", "backups"), local_key_file=env("PLATFORM_LOCAL_KEK", ""),
        )

    def providers(self) -> tuple[SecretProvider, DataKeyProvider]:
        if not self.vault_addr:
            return LocalSecretProvider(), LocalDataKeyProvider(self.local_key_file or None)
        from platform_orchestration.secrets.vault import VaultClient, VaultSecretProvider, VaultTransitKeys

        token_file = os.environ.get("VAULT_TOKEN_FILE")
        client = VaultClient(
            address=self.vault_addr, auth_method=self.vault_auth_method,  # type: ignore[arg-type]
            token=os.environ.get("VAULT_TOKEN"), token_file=Path(token_file) if token_file else None,
            kubernetes_role=self.vault_kubernetes_role or None, kubernetes_mount=self.vault_kubernetes_mount,
            kv_mount=self.vault_kv_mount, transit_mount=self.vault_transit_mount, transit_key=self.vault_transit_key,
        )
        return VaultSecretProvider(client), VaultTransitKeys(client)


class FleetResource(dg.ConfigurableResource):
    """The fleet file this code location protects (PLATFORM_FLEET in production)."""

    fleet_file: str
    secrets: SecretsResource

    def load(self) -> Fleet:
        return load_fleet(self.fleet_file)

    @contextlib.contextmanager
    def protection(self) -> Iterator[FleetProtection]:
        """The protection API for one step; dynamic database logins taken during the step
        are revoked when it ends, failed or not."""
        secrets, keys = self.secrets.providers()
        with FleetProtection(self.load(), secrets=secrets, keys=keys) as protection:
            yield protection


class AlertsResource(dg.ConfigurableResource):
    """Where failure alerts go (a JSON-lines file that an alert shipper follows)."""

    alerts_file: str

    def sink(self) -> FileAlertSink:
        return FileAlertSink(Path(self.alerts_file))
