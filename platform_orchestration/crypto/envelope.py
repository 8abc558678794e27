"""Envelope encryption of a backup's stored bytes, with Tink's streaming AEAD.

Every backup gets a fresh 32-byte data key from a `DataKeyProvider`; the compressed dump
is encrypted with it as Tink's AES256_GCM_HKDF_1MB streaming AEAD (1 MiB segments, each
authenticated, the last one marked, so modification, reordering and truncation are all
detected), and only the data key *wrapped* by the key service goes into the manifest.

The associated data is derived from the backup's database and id, never read from the
manifest: ciphertext moved to another backup, or a manifest's `encryption` section moved
onto another backup's dump, fails authentication.

Memory is bounded both ways: encryption drains Tink's output after every chunk, and
decryption feeds Tink from an iterator, so a backup is never held whole.
"""

from __future__ import annotations

from platform_orchestration.errors import PlatformError
import hmac
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from platform_orchestration.backups.integrity import BackupCorrupt
from platform_orchestration.backups.manifest import BackupManifest, EncryptionInfo, ManifestError
from platform_orchestration.crypto import DataKey, DataKeyProvider, KeyServiceError
from platform_orchestration.storage import ObjectNotFound, ObjectStore, StoreError, read_bytes, write_bytes

SCHEME = "tink-streaming-aead/AES256_GCM_HKDF_1MB"
DATA_KEY_BYTES = 32
SEGMENT_BYTES = 1024 * 1024
# Plaintext handed out per read on decryption: one segment's worth, the unit Tink
# authenticates anyway.
READ_BYTES = 1024 * 1024
_AAD_PREFIX = b"platform-orchestration/v1|"
_KEY_TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"

streaming_aead.register()


class BackupKeyUnavailable(BackupCorrupt):
    """An encrypted backup's data key cannot be had: no key provider was given, or the key
    service could not unwrap it (a modified wrapped key, a missing key version, an outage).

    The stored bytes may be intact, but nothing can be restored from them here; it derives
    from BackupCorrupt so every caller that refuses an unreadable backup (restore, verify,
    drills recording a failure, the CLI's one-line errors) treats it the same way."""


class RewrapFailed(PlatformError):
    """A manifest could not be moved to the newest key version; it was left as it was
    (or removed, if its backup was pruned meanwhile). The message names backup and store."""


def associated_data(database: str, backup_id: str) -> bytes:
    """What binds a backup's ciphertext to that backup (authenticated, not encrypted).

    >>> associated_data("orders", "20261125T213307123Z-a1b2c3")
    b'platform-orchestration/v1|orders|20261125T213307123Z-a1b2c3'
    """
    return _AAD_PREFIX + database.encode() + b"|" + backup_id.encode()


def _streaming_aead(data_key: bytes) -> streaming_aead.StreamingAead:
    """Tink's StreamingAead over a one-key keyset built in memory from the raw data key:
    AES256_GCM_HKDF_1MB's parameters, RAW output prefix (no key id in the ciphertext)."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"a data key is {DATA_KEY_BYTES} bytes, got {len(data_key)}")
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(version=0, key_value=data_key)
    key.params.derived_key_size = DATA_KEY_BYTES
    key.params.hkdf_hash_type = common_pb2.SHA256
    key.params.ciphertext_segment_size = SEGMENT_BYTES
    keyset = tink_pb2.Keyset(primary_key_id=1)
    entry = keyset.key.add()
    entry.key_data.type_url = _KEY_TYPE_URL
    entry.key_data.value = key.SerializeToString()
    entry.key_data.key_material_type = tink_pb2.KeyData.SYMMETRIC
    entry.status = tink_pb2.ENABLED
    entry.key_id = 1
    entry.output_prefix_type = tink_pb2.RAW
    handle = cleartext_keyset_handle.from_keyset(keyset)
    return handle.primitive(streaming_aead.StreamingAead)


class _Sink(io.RawIOBase):
    """Where Tink writes ciphertext: collected until drained, so at most about one
    segment is ever held."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        """Everything written since the last drain (works after Tink closed the sink)."""
        out = b"".join(self._parts)
        self._parts.clear()
        return out


def encrypt_chunks(chunks: Iterable[bytes], data_key: bytes, aad: bytes) -> Iterator[bytes]:
    """Encrypt a stream of plaintext chunks; yields ciphertext chunks (about one per input
    chunk of 1 MiB or more, none for the first segment until it fills). The concatenation
    of what is yielded, once the generator is exhausted, is one complete Tink ciphertext;
    a generator abandoned early yields an incomplete one that will not decrypt."""
    sink = _Sink()
    stream = _streaming_aead(data_key).new_encrypting_stream(sink, aad)
    for chunk in chunks:
        stream.write(chunk)
        out = sink.drain()
        if out:
            yield out
    stream.close()  # writes the final, end-marked segment
    out = sink.drain()
    if out:
        yield out


class _ChunkSource(io.RawIOBase):
    """An iterator of ciphertext chunks as the readable file Tink wants. An exception the
    iterator raises (a store error, a checksum mismatch found at its end) is kept, since
    Tink reports it only as its own TinkError."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.error: BaseException | None = None

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return False
            except BaseException as exc:
                self.error = exc
                raise
        return True

    def read(self, size: int = -1) -> bytes:
        # Tink reads through this, not readinto: one copy instead of RawIOBase's two.
        if size is None or size < 0:
            return self.readall()
        if size == 0 or not self._fill():
            return b""
        out = self._pending[:size]
        self._pending = self._pending[len(out):]
        return bytes(out)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if not self._fill():
            return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def decrypt_chunks(chunks: Iterator[bytes], data_key: bytes, aad: bytes, where: str) -> Iterator[bytes]:
    """Decrypt a stream of ciphertext chunks; yields plaintext chunks, each one only after
    its segment authenticated. Raises BackupCorrupt naming `where` when the ciphertext does
    not authenticate (modified, truncated, another backup's, or another key); consumers must
    not act on the data before the generator finishes without error, since a truncation is
    only detected at the end.

    An exception raised by `chunks` itself propagates as it is. On an authentication
    failure the rest of `chunks` is read first, so that a stored object differing from its
    manifest (checked by `checked_stored_chunks` at its end) reports that root cause."""
    source = _ChunkSource(chunks)
    done = 0
    try:
        stream = _streaming_aead(data_key).new_decrypting_stream(source, aad)
        try:
            while True:
                # read1: one segment as Tink hands it over, not reassembled into READ_BYTES.
                out = stream.read1(READ_BYTES)
                if not out:
                    break
                done += len(out)
                yield out
        finally:
            stream.close()
    except tink.TinkError as exc:
        if source.error is not None:
            raise source.error from None
        for _ in chunks:
            pass
        raise BackupCorrupt(
            f"{where}: encrypted dump failed authentication after {done} decrypted bytes: it was "
            "modified or truncated, or it is not this backup's ciphertext under this backup's "
            "data key; nothing may be restored from it") from exc


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


def _stored_manifest(store: ObjectStore, manifest: BackupManifest, what: str) -> BackupManifest:
    try:
        return BackupManifest.from_json(read_bytes(store, manifest.manifest_key), what)
    except ObjectNotFound:
        raise RewrapFailed(f"{what} failed: the backup is gone from the store (pruned?)") from None


def rewrap_backup(store: ObjectStore, manifest: BackupManifest, keys: DataKeyProvider) -> BackupManifest:
    """Wrap the data key of `manifest`'s backup under the newest version of its key and
    rewrite that backup's manifest in `store` (one atomic object write); the dump is
    neither read nor written, since the data key itself stays the same. The manifest as
    stored in `store` is the one rewrapped (its `copy` section kept); `manifest` only names
    the backup. Returns the manifest as stored afterwards; if its key is already at the
    newest version, nothing is written.

    The new wrapping must unwrap to the same data key before anything is written, and the
    stored manifest must not have changed since it was read; a backup whose dump vanished
    meanwhile (pruned) gets no manifest back. Raises ValueError for an unencrypted backup,
    RewrapFailed (naming backup, store and cause) for anything else."""
    if manifest.encryption is None:
        raise ValueError(f"{_where(store, manifest)} is not encrypted: there is no key to rewrap")
    what = f"rewrap of {_where(store, manifest)}"
    try:
        current = _stored_manifest(store, manifest, what)
        info = current.encryption
        if info is None:
            raise ValueError(f"{_where(store, manifest)} is not encrypted: there is no key to rewrap")
        try:
            wrapped, version = keys.rewrap(info.wrapped_key)
            if version == info.key_version:
                return current
            # A rewrap that lost the data key would make the backup unreadable for good.
            if not hmac.compare_digest(keys.unwrap(wrapped), keys.unwrap(info.wrapped_key)):
                raise RewrapFailed(f"{what} failed: {keys.describe()} returned a rewrapped key that "
                                   "does not unwrap to the same data key; the manifest was left unchanged")
        except KeyServiceError as exc:
            raise RewrapFailed(f"{what} failed: key service {keys.describe()}: {exc}") from None
        updated = current.model_copy(update={"encryption": info.model_copy(
            update={"wrapped_key": wrapped, "key_version": version, "key_service": keys.describe()})})
        if _stored_manifest(store, manifest, what) != current:
            raise RewrapFailed(f"{what} failed: the stored manifest changed while its key was being "
                               "rewrapped (another rewrap?); it was left as it is")
        write_bytes(store, manifest.manifest_key, updated.to_json())
        if not any(o.key == manifest.dump_key for o in store.list(manifest.dump_key)):
            # Pruned between our read and our write: never leave a manifest without its dump.
            store.delete(manifest.manifest_key)
            raise RewrapFailed(f"{what} failed: the dump disappeared meanwhile (pruned?); the "
                               "manifest was removed with it")
    except ManifestError as exc:
        raise RewrapFailed(f"{what} failed: {exc}") from None
    except StoreError as exc:
        raise RewrapFailed(f"{what} failed: {exc}") from None
    return updated


RewrapOutcome = Literal["rewrapped", "current", "unencrypted", "failed"]


@dataclass(frozen=True)
class RewrapEntry:
    """What a rewrap did to one backup's manifest in one store."""

    database: str | None
    backup_id: str | None
    store: str
    outcome: RewrapOutcome
    from_version: int | None = None
    to_version: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class RewrapReport:
    """Every backup copy a rewrap looked at, one entry per manifest per store (a store
    that could not be listed gives one failed entry without a backup)."""

    key_service: str
    entries: tuple[RewrapEntry, ...] = field(default_factory=tuple)

    def with_outcome(self, outcome: RewrapOutcome) -> list[RewrapEntry]:
        return [e for e in self.entries if e.outcome == outcome]

    @property
    def ok(self) -> bool:
        return not self.with_outcome("failed")

    def summary(self) -> str:
        counts = {o: len(self.with_outcome(o)) for o in ("rewrapped", "current", "unencrypted", "failed")}
        return (f"rewrap under {self.key_service}: {counts['rewrapped']} rewrapped, {counts['current']} "
                f"already current, {counts['unencrypted']} not encrypted, {counts['failed']} failed")
