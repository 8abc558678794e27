"""Envelope encryption of backups: a fresh data key per backup, wrapped by a key service.

`DataKeyProvider` is the key service's side (Vault transit in production, a local key
file for the embedded default); the streaming encryption itself lives in `envelope.py`.
"""

from __future__ import annotations

from platform_orchestration.errors import PlatformError
from dataclasses import dataclass, field
from typing import Protocol


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
