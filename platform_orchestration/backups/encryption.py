"""Envelope encryption as backups use it: a fresh data key per backup, wrapped by a key
service, bound to the backup it protects.

The cipher itself is crypto/streaming.py; the key services are crypto/ too. What is here
knows manifests: which data key a backup needs, whether it can be had before anything is
fetched or started, and the associated data that ties a ciphertext to one backup. It is
derived from the backup's database and id, never read from the manifest: ciphertext moved
to another backup, or a manifest's `encryption` section moved onto another backup's dump,
fails authentication.
"""

from __future__ import annotations

from collections.abc import Iterator

from platform_orchestration.backups.errors import BackupCorrupt, BackupKeyUnavailable
from platform_orchestration.backups.manifest import BackupManifest, EncryptionInfo
from platform_orchestration.crypto import DataKey, DataKeyProvider, KeyServiceError
from platform_orchestration.crypto.streaming import (
    DATA_KEY_BYTES,
    SCHEME,
    CiphertextRejected,
    decrypt_chunks,
)
from platform_orchestration.storage import ObjectStore

_AAD_PREFIX = b"platform-orchestration/v1|"

def associated_data(database: str, backup_id: str) -> bytes:
    """What binds a backup's ciphertext to that backup (authenticated, not encrypted).

    >>> associated_data("orders", "20261125T213307123Z-a1b2c3")
    b'platform-orchestration/v1|orders|20261125T213307123Z-a1b2c3'
    """
    return _AAD_PREFIX + database.encode() + b"|" + backup_id.encode()


def _where(store: ObjectStore, manifest: BackupManifest) -> str:
    return f"backup {manifest.backup_id} of {manifest.database} in store {store.name}"


def encryption_info(data_key: DataKey, keys: DataKeyProvider) -> EncryptionInfo:
    """The manifest's `encryption` section for a backup encrypted with `data_key`."""
    return EncryptionInfo(scheme=SCHEME, wrapped_key=data_key.wrapped, key_service=keys.describe(),
                          key_name=data_key.key_name, key_version=data_key.key_version)


def require_key_provider(store: ObjectStore, manifest: BackupManifest,
                         keys: DataKeyProvider | None) -> DataKeyProvider | None:
    """Fail early, without calling the key service, when `manifest`'s backup is encrypted
    and cannot be decrypted here: no key provider (BackupKeyUnavailable) or a scheme this
    version cannot read (BackupCorrupt). Returns `keys` (None only for an unencrypted backup)."""
    info = manifest.encryption
    if info is None:
        return keys
    if info.scheme != SCHEME:
        raise BackupCorrupt(f"{_where(store, manifest)}: unsupported encryption scheme "
                            f"{info.scheme!r} (this version reads {SCHEME})")
    if keys is None:
        raise BackupKeyUnavailable(
            f"{_where(store, manifest)} is encrypted (key {info.key_name} v{info.key_version} of "
            f"{info.key_service}) but no key provider was given to decrypt it")
    return keys


def data_key_for(store: ObjectStore, manifest: BackupManifest, keys: DataKeyProvider | None) -> bytes:
    """The plaintext data key of an encrypted backup, unwrapped by `keys`. Raises
    BackupKeyUnavailable (no provider, or the key service refused), BackupCorrupt (a scheme
    this version cannot read) or ValueError (the backup is not encrypted)."""
    info = manifest.encryption
    if info is None:
        raise ValueError(f"{_where(store, manifest)} is not encrypted")
    provider = require_key_provider(store, manifest, keys)
    assert provider is not None
    try:
        plaintext = provider.unwrap(info.wrapped_key)
    except KeyServiceError as exc:
        raise BackupKeyUnavailable(
            f"{_where(store, manifest)}: its data key could not be unwrapped by {provider.describe()} "
            f"(key {info.key_name} v{info.key_version}): {exc}") from None
    if len(plaintext) != DATA_KEY_BYTES:
        raise BackupKeyUnavailable(f"{_where(store, manifest)}: the key service returned a "
                                   f"{len(plaintext)}-byte data key, expected {DATA_KEY_BYTES}")
    return plaintext




def decrypted_backup_chunks(store: ObjectStore, manifest: BackupManifest, chunks: Iterator[bytes],
                            keys: DataKeyProvider | None, *, binding: str | None = None,
                            where: str | None = None) -> Iterator[bytes]:
    """The plaintext of an encrypted backup's stored chunks; a ciphertext that does not
    authenticate raises BackupCorrupt naming the backup and the store (or `where`). `binding`
    is what the ciphertext is bound to, when not the dump (the backup id): the globals object
    has its own, so the two ciphertexts of one backup cannot stand in for each other."""
    plaintext = decrypt_chunks(chunks, data_key_for(store, manifest, keys),
                               associated_data(manifest.database, binding or manifest.backup_id),
                               where or _where(store, manifest))
    try:
        yield from plaintext
    except CiphertextRejected as exc:
        raise BackupCorrupt(str(exc).replace("encrypted data", "encrypted dump", 1)) from exc
