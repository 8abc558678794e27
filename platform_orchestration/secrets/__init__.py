"""Where secret values come from. The fleet file only ever holds references to them.

`SecretProvider` is the one interface; `LocalSecretProvider` serves the embedded default
(environment variables and files outside the repository). Values are returned to the
caller and never logged, printed or put in errors: messages name the reference only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from platform_orchestration.errors import PlatformError


class SecretUnavailable(PlatformError):
    """A referenced secret cannot be read; the message names the reference, never a value."""


class SecretProvider(Protocol):
    def resolve(self, ref) -> str:  # noqa: ANN001 - a fleet SecretRef
        """The secret's value."""
        ...


class LocalSecretProvider:
    """env: and file: references; vault: references need the Vault provider."""

    def resolve(self, ref) -> str:  # noqa: ANN001
        if ref.env is not None:
            value = os.environ.get(ref.env)
            if value is None:
                raise SecretUnavailable(f"secret {ref.describe()}: environment variable {ref.env} is not set")
            return value
        if ref.file is not None:
            path = Path(ref.file)
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise SecretUnavailable(f"secret {ref.describe()}: cannot read {path}: {exc.strerror}") from None
        raise SecretUnavailable(
            f"secret {ref.describe()}: Vault references need the Vault secrets provider, "
            "which is not configured in this deployment"
        )


# The Vault provider is imported on first use (PEP 562): hvac and requests cost a quarter of
# a second that a command using only env:/file: references should not pay.
_VAULT_NAMES = ("DatabaseLogin", "LeaseRevocationError", "VaultAuthError", "VaultClient", "VaultConfigError",
                "VaultDatabaseCredentials", "VaultLease", "VaultSecretProvider")


def __getattr__(name: str) -> object:
    if name in _VAULT_NAMES:
        from platform_orchestration.secrets import vault

        return getattr(vault, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LocalSecretProvider", "SecretProvider", "SecretUnavailable", *_VAULT_NAMES]
