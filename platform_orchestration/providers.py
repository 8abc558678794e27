"""Which secret provider and key service this process uses, decided by its environment.

With `VAULT_ADDR` set, Vault (or OpenBao) serves every secret reference and wraps every
backup's data key with transit; without it, the embedded default serves env:/file:
references and wraps data keys with a local key file kept outside the repository
(`PLATFORM_LOCAL_KEK`, default ~/.config/platform-orchestration/). The CLI and the Dagster
resources both start here, so a break-glass restore reads secrets exactly as a run does.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.secrets import LocalSecretProvider, SecretProvider


def _environment(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def vault_configured(environ: Mapping[str, str] | None = None) -> bool:
    return bool(_environment(environ).get("VAULT_ADDR", "").strip())


def secret_provider_from_env(environ: Mapping[str, str] | None = None) -> SecretProvider:
    if vault_configured(environ):
        # Imported when used: hvac and requests are not worth loading for the embedded default.
        from platform_orchestration.secrets.vault import (
            VaultClient,
            VaultSecretProvider,
        )

        return VaultSecretProvider(VaultClient.from_env(environ))
    return LocalSecretProvider()


def data_keys_from_env(secrets: SecretProvider | None = None,
                       environ: Mapping[str, str] | None = None) -> DataKeyProvider:
    """Transit when Vault is configured (sharing the provider's client when given), else the
    local key file."""
    if vault_configured(environ):
        from platform_orchestration.crypto.vault_transit import VaultTransitKeys
        from platform_orchestration.secrets.vault import (
            VaultClient,
            VaultSecretProvider,
        )

        client = secrets.client if isinstance(secrets, VaultSecretProvider) else VaultClient.from_env(environ)
        return VaultTransitKeys(client)
    from platform_orchestration.crypto.local_keys import LocalDataKeyProvider

    # PLATFORM_LOCAL_KEK, else ~/.config/platform-orchestration/demo-kek
    return LocalDataKeyProvider(_environment(environ).get("PLATFORM_LOCAL_KEK") or None)


def providers_from_env(environ: Mapping[str, str] | None = None) -> tuple[SecretProvider, DataKeyProvider]:
    """The secret provider and the key service, sharing one Vault client when Vault is used."""
    secrets = secret_provider_from_env(environ)
    return secrets, data_keys_from_env(secrets, environ)
