"""Ciphers and key services, knowing nothing of backups or manifests.

`DataKeyProvider` is the key service's side of envelope encryption; its two providers sit
side by side: `vault_transit.VaultTransitKeys` (production) and `local_keys.LocalDataKeyProvider`
(a local key file, the embedded default). `streaming.py` is the streaming AEAD that encrypts
a stream under a data key. How backups use them (which key a manifest names, what binds a
ciphertext to its backup, rewrapping manifests) is in backups/encryption.py and backups/rewrap.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from platform_orchestration.errors import PlatformError


class KeyServiceError(PlatformError):
    """The key service refused or failed; the message names the key, never key material."""


@dataclass(frozen=True)
class DataKey:
    """A data key: `plaintext` encrypts one backup and is never stored; `wrapped` is what the
    manifest keeps, readable only through the key service."""

    plaintext: bytes = field(repr=False)
    wrapped: str
    key_name: str
    key_version: int


class DataKeyProvider(Protocol):
    """Issues, unwraps and rewraps data keys under a named key-encryption key."""

    def new_data_key(self) -> DataKey: ...

    def unwrap(self, wrapped: str) -> bytes:
        """The plaintext data key; raises KeyServiceError if `wrapped` was tampered with."""
        ...

    def rewrap(self, wrapped: str) -> tuple[str, int]:
        """The same data key wrapped under the newest version of the key: (wrapped, version)."""
        ...

    def describe(self) -> str:
        """Which key service and key, for messages and manifests (no secrets)."""
        ...
