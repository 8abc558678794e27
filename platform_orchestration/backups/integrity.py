"""Reading a stored dump back and proving it is the one the manifest describes.

The stored object is the compressed dump, encrypted after compression when the manifest
has an `encryption` section: its size and SHA-256 (of the stored bytes, ciphertext when
encrypted) are checked first, then the AEAD authenticates every segment, then zstd checks
its frame and content checksums.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import zstandard

from platform_orchestration.backups.encryption import decrypted_backup_chunks
from platform_orchestration.backups.errors import BackupCorrupt
from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.storage import ObjectStore

PG_DUMP_MAGIC = b"PGDMP"


def _where(store: ObjectStore, manifest: BackupManifest) -> str:
    return f"backup {manifest.backup_id} of {manifest.database} in store {store.name}"


def checked_stored_chunks(store: ObjectStore, manifest: BackupManifest,
                          progress: ProgressListener = no_progress,
                          stage: str = "fetch") -> Iterator[bytes]:
    """Stream the stored (compressed) dump; raise BackupCorrupt at the end if its size or
    SHA-256 differ from the manifest's. Consumers must not act on the data before the
    generator finishes without error."""
    digest = hashlib.sha256()
    done = 0
    for chunk in store.read(manifest.dump_key):
        digest.update(chunk)
        done += len(chunk)
        progress(stage, done)
        yield chunk
    if done != manifest.dump.stored_bytes:
        raise BackupCorrupt(f"{_where(store, manifest)}: size mismatch: manifest says "
                            f"{manifest.dump.stored_bytes} bytes, store holds {done}")
    if digest.hexdigest() != manifest.dump.sha256:
        raise BackupCorrupt(f"{_where(store, manifest)}: checksum mismatch: manifest sha256 "
                            f"{manifest.dump.sha256}, stored object sha256 {digest.hexdigest()}")


def decompressed(store: ObjectStore, manifest: BackupManifest, chunks: Iterator[bytes],
                 keys: DataKeyProvider | None = None) -> Iterator[bytes]:
    """Decrypt (when the manifest says the backup is encrypted, with its data key unwrapped
    by `keys`) and decompress the stored chunks, turning a failed authentication or a broken
    frame (its content checksum included) into BackupCorrupt, and checking the result is a
    pg_dump archive. An encrypted backup without `keys`, or whose key the key service
    refuses, raises BackupKeyUnavailable (a BackupCorrupt) before any chunk is read."""
    if manifest.encryption is not None:
        chunks = decrypted_backup_chunks(store, manifest, chunks, keys)
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    first = True
    try:
        for chunk in chunks:
            out = decompressor.decompress(chunk)
            if first and out:
                if not out.startswith(PG_DUMP_MAGIC):
                    _drain(chunks)
                    raise BackupCorrupt(f"{_where(store, manifest)}: not a pg_dump custom archive")
                first = False
            if out:
                yield out
        if not decompressor.eof:
            raise BackupCorrupt(f"{_where(store, manifest)}: compressed stream is truncated")
    except zstandard.ZstdError as exc:
        _drain(chunks)
        raise BackupCorrupt(f"{_where(store, manifest)}: compressed stream is damaged: {exc}") from None


def _drain(chunks: Iterator[bytes]) -> None:
    """Read the rest of the stored object before reporting damage found while decompressing:
    when `chunks` is `checked_stored_chunks`, a stored object that differs from its manifest
    (the root cause) then raises its size/checksum mismatch instead."""
    for _ in chunks:
        pass


def verify_stored_backup(store: ObjectStore, manifest: BackupManifest,
                         progress: ProgressListener = no_progress, *,
                         keys: DataKeyProvider | None = None) -> int:
    """Re-read a stored backup end to end: size, SHA-256, AEAD authentication of every
    segment (encrypted backups, whose data key `keys` unwraps), zstd frame and content
    checksums, archive magic, raw size. Returns the raw (decompressed) size."""
    raw = 0
    for out in decompressed(store, manifest, checked_stored_chunks(store, manifest, progress, "verify"),
                            keys):
        raw += len(out)
    if raw != manifest.dump.raw_bytes:
        raise BackupCorrupt(f"{_where(store, manifest)}: decompressed size {raw} differs from the "
                            f"manifest's {manifest.dump.raw_bytes}")
    return raw


def stored_checksum_matches(store: ObjectStore, manifest: BackupManifest) -> None:
    """Cheaper check used right after a write: size and SHA-256 of the stored object."""
    for _ in checked_stored_chunks(store, manifest, stage="check"):
        pass
