"""The production key service: Vault (or OpenBao) transit wraps every backup's data key.

It sits beside the embedded default (local_keys.py) behind the same `DataKeyProvider`
protocol, and shares the authenticated `VaultClient` that serves secrets.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from typing import TypeVar

import hvac
import hvac.exceptions
import requests
from hvac.api.secrets_engines import Transit

from platform_orchestration.crypto import DataKey, KeyServiceError
from platform_orchestration.secrets.vault import (
    VaultAuthError,
    VaultClient,
    failure_reason,
)

DATA_KEY_BITS = 256

_T = TypeVar("_T")

# --- transit -----------------------------------------------------------------------------------

_WRAPPED_KEY = re.compile(r"vault:v(\d+):[A-Za-z0-9+/]+={0,2}")


def wrapped_key_version(wrapped: str) -> int:
    """The key version in a transit ciphertext's ``vault:vN:`` prefix.

    >>> wrapped_key_version("vault:v3:AAAA")
    3
    """
    match = _WRAPPED_KEY.fullmatch(wrapped)
    if match is None:
        raise KeyServiceError("not a Vault transit wrapped key (expected vault:vN:BASE64)")
    return int(match.group(1))


class VaultTransitKeys:
    """DataKeyProvider on Vault transit: each data key is 256 random bits from Vault, returned
    once in plaintext and kept only wrapped (``vault:vN:...``) under the named transit key.

    The token needs ``update`` on ``MOUNT/datakey/plaintext/KEY``, ``MOUNT/decrypt/KEY`` and
    ``MOUNT/rewrap/KEY``; `rotate` also needs ``update`` on ``MOUNT/keys/KEY/rotate``, which a
    backup worker should not have. Every failure is a KeyServiceError naming the key.
    """

    def __init__(self, client: VaultClient, key_name: str | None = None, mount: str | None = None) -> None:
        self.client = client
        self.key_name = key_name or client.transit_key
        self.mount = (mount or client.transit_mount).strip("/")

    def describe(self) -> str:
        """e.g. ``vault transit key backups at http://127.0.0.1:8200``."""
        mount = "" if self.mount == "transit" else f" (mount {self.mount})"
        namespace = f" (namespace {self.client.namespace})" if self.client.namespace else ""
        return f"vault transit key {self.key_name}{mount} at {self.client.address}{namespace}"

    def new_data_key(self) -> DataKey:
        """A fresh data key wrapped under the newest version of the transit key."""
        response = self._transit("cannot issue a data key", lambda transit: transit.generate_data_key(
            name=self.key_name, key_type="plaintext", bits=DATA_KEY_BITS, mount_point=self.mount))
        wrapped = response["data"]["ciphertext"]
        plaintext = base64.b64decode(response["data"]["plaintext"])
        if len(plaintext) * 8 != DATA_KEY_BITS:
            raise KeyServiceError(f"{self.describe()}: returned a {len(plaintext) * 8}-bit data key, "
                                  f"expected {DATA_KEY_BITS}")
        return DataKey(plaintext=plaintext, wrapped=wrapped, key_name=self.key_name,
                       key_version=wrapped_key_version(wrapped))

    def unwrap(self, wrapped: str) -> bytes:
        """The plaintext data key. Raises KeyServiceError if ``wrapped`` was altered or was not
        wrapped by this key (transit's AES-GCM authentication fails)."""
        version = self._checked_version(wrapped)
        response = self._transit(f"cannot unwrap a data key wrapped under version {version}",
                                 lambda transit: transit.decrypt_data(
                                     name=self.key_name, ciphertext=wrapped, mount_point=self.mount))
        try:
            return base64.b64decode(response["data"]["plaintext"], validate=True)
        except (binascii.Error, KeyError, TypeError):
            raise KeyServiceError(f"{self.describe()}: answered the unwrap without a data key") from None

    def rewrap(self, wrapped: str) -> tuple[str, int]:
        """The same data key wrapped under the newest key version: ``(wrapped, version)``. The
        plaintext never leaves Vault."""
        version = self._checked_version(wrapped)
        response = self._transit(f"cannot rewrap a data key wrapped under version {version}",
                                 lambda transit: transit.rewrap_data(
                                     name=self.key_name, ciphertext=wrapped, mount_point=self.mount))
        rewrapped = response["data"]["ciphertext"]
        return rewrapped, wrapped_key_version(rewrapped)

    def rotate(self) -> int:
        """Make a new version of the transit key the one new data keys are wrapped under; old
        versions still unwrap. Returns the new version. Needs a token allowed to rotate."""
        response = self._transit("cannot rotate the key", lambda transit: transit.rotate_key(
            name=self.key_name, mount_point=self.mount))
        # Vault before 1.13 answers 204 without the key's description.
        data = response.get("data") if isinstance(response, dict) else None
        if data and "latest_version" in data:
            return int(data["latest_version"])
        described = self._transit("cannot read the key", lambda transit: transit.read_key(
            name=self.key_name, mount_point=self.mount))
        return int(described["data"]["latest_version"])

    def _checked_version(self, wrapped: str) -> int:
        try:
            return wrapped_key_version(wrapped)
        except KeyServiceError as exc:
            raise KeyServiceError(f"{self.describe()}: {exc}") from None

    def _transit(self, action: str, operation: Callable[[Transit], _T]) -> _T:
        try:
            return self.client.call(lambda session: operation(session.secrets.transit))
        except hvac.exceptions.InvalidRequest as exc:
            reason = failure_reason(exc, self.client)
            if any("authentication failed" in e or "invalid ciphertext" in e for e in (exc.errors or [])):
                reason += "; the wrapped key was altered or was not wrapped by this key"
            raise KeyServiceError(f"{self.describe()}: {action}: {reason}") from None
        except (VaultAuthError, hvac.exceptions.VaultError, requests.RequestException) as exc:
            raise KeyServiceError(f"{self.describe()}: {action}: {failure_reason(exc, self.client)}") from None
