"""Reading a stored dump back and proving it is the one the manifest describes.

The stored object is the compressed dump, encrypted after compression when the manifest
has an `encryption` section: its size and SHA-256 (of the stored bytes, ciphertext when
encrypted) are checked first, then the AEAD authenticates every segment, then zstd checks
its frame and content checksums. The globals object beside it (when the manifest has a
`globals` section) is checked the same way, and its errors name it.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Iterator

import zstandard

from platform_orchestration.backups.encryption import decrypted_backup_chunks
from platform_orchestration.backups.errors import BackupCorrupt
from platform_orchestration.backups.manifest import BackupManifest, globals_binding
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.crypto import DataKeyProvider
from platform_orchestration.storage import ObjectStore, reads_over_network

PG_DUMP_MAGIC = b"PGDMP"


def _where(store: ObjectStore, manifest: BackupManifest) -> str:
    return f"backup {manifest.backup_id} of {manifest.database} in store {store.name}"


def checked_stored_chunks(store: ObjectStore, manifest: BackupManifest,
                          progress: ProgressListener = no_progress,
                          stage: str = "fetch") -> Iterator[bytes]:
    """Stream the stored (compressed) dump; raise BackupCorrupt at the end if its size or
    SHA-256 differ from the manifest's. Consumers must not act on the data before the
    generator finishes without error."""
    return _checked_chunks(store, manifest.dump_key, manifest.dump.stored_bytes, manifest.dump.sha256,
                           _where(store, manifest), progress, stage)


def checked_globals_chunks(store: ObjectStore, manifest: BackupManifest,
                           progress: ProgressListener = no_progress,
                           stage: str = "fetch") -> Iterator[bytes]:
    """The same for the globals object (the manifest must have a `globals` section)."""
    info = manifest.globals
    assert info is not None, "the backup has no globals object"
    return _checked_chunks(store, manifest.globals_key, info.stored_bytes, info.sha256,
                           _where_globals(store, manifest), progress, stage)


def _where_globals(store: ObjectStore, manifest: BackupManifest) -> str:
    return f"{_where(store, manifest)}: globals object {manifest.globals_key}"


def _checked_chunks(store: ObjectStore, key: str, size: int, sha256: str, where: str,
                    progress: ProgressListener, stage: str) -> Iterator[bytes]:
    digest = hashlib.sha256()
    done = 0
    for chunk in store.read(key):
        digest.update(chunk)
        done += len(chunk)
        progress(stage, done)
        yield chunk
    if done != size:
        raise BackupCorrupt(f"{where}: size mismatch: manifest says {size} bytes, store holds {done}")
    if digest.hexdigest() != sha256:
        raise BackupCorrupt(f"{where}: checksum mismatch: manifest sha256 {sha256}, stored object "
                            f"sha256 {digest.hexdigest()}")


# Decompressed bytes handed out per step: a fixed size, whatever the compression ratio (a
# stored MiB of repeated rows stands for hundreds of MiB), so memory never grows with it.
# One buffer, reused: no allocation (and page faults) per step; 256 KiB stays in cache.
DECOMPRESSED_STEP_BYTES = 256 * 1024
# Compressed bytes zstd is given per step.
_COMPRESSED_STEP_BYTES = 256 * 1024

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _FrameShapeError(Exception):
    """The compressed bytes are not one well-formed zstd frame (said in the message)."""


class _ZstdFrameEnd:
    """Follows one zstd frame's structure (frame header, block headers, checksum) in the
    compressed bytes without decoding them, to tell whether the stream ended exactly where the
    frame does. zstd's streaming readers stop quietly when their input runs out mid-frame, so
    a truncated stream would otherwise pass unnoticed when its last block was lost with its
    checksum. Costs one step per block (at most 128 KiB of output each)."""

    def __init__(self) -> None:
        self._gathered = bytearray()
        self._want = 5          # magic and frame header descriptor first
        self._skip = 0          # bytes to pass over (header fields, block contents)
        self._state = "frame"
        self._checksum = False
        self.complete = False

    def feed(self, data: bytes | memoryview) -> None:
        pos, size = 0, len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                if not self._skip and self._state == "end":
                    self.complete = True
                continue
            if self.complete:
                raise _FrameShapeError("data after the end of the compressed stream")
            take = min(self._want - len(self._gathered), size - pos)
            self._gathered += data[pos:pos + take]
            pos += take
            if len(self._gathered) == self._want:
                self._step(bytes(self._gathered))
                self._gathered.clear()

    def _step(self, header: bytes) -> None:
        if self._state == "frame":
            if header[:4] != _ZSTD_MAGIC:
                raise _FrameShapeError("not a zstd frame")
            descriptor = header[4]
            if descriptor & 0x08:
                raise _FrameShapeError("reserved bit set in the frame header")
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            window = 0 if single_segment else 1
            dictionary = (0, 1, 2, 4)[descriptor & 0x03]
            content_size = ((1 if single_segment else 0), 2, 4, 8)[descriptor >> 6]
            self._skip = window + dictionary + content_size
            self._state, self._want = "block", 3
        elif self._state == "block":
            value = int.from_bytes(header, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise _FrameShapeError("reserved block type")
            self._skip = 1 if kind == 1 else size  # an RLE block stores its byte once
            if last:
                self._state, self._want = ("checksum", 4) if self._checksum else ("end", 0)
        else:  # the checksum
            self._state = "end"
        if self._state == "end" and not self._skip:
            self.complete = True


class _CompressedSource(io.RawIOBase):
    """The (decrypted) compressed chunks as the readable file zstd's stream reader wants,
    following the frame's structure as they pass. An exception the chunks raise (a store
    error, a checksum mismatch found at their end, failed authentication) propagates as it is."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = memoryview(b"")
        self.frame = _ZstdFrameEnd()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return b""
            self._pending = memoryview(chunk)
        if size is None or size < 0:
            size = len(self._pending)
        out = self._pending[:size]
        self._pending = self._pending[len(out):]
        self.frame.feed(out)
        return bytes(out)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = self.read(len(buffer))
        buffer[:len(out)] = out
        return len(out)


# Stored chunks (about 1 MiB each) read, hashed and decrypted ahead of decompression, in a
# thread of their own; 0 keeps it all in the consumer's thread. Off: measured on this project's
# 2-core machines under the load of other work (load average 4-6), the thread made the fetch
# slower (median 1.78 s against 1.09 s for 168 MiB dumped, 7 rounds each; verify 0.78 against
# 0.65 s), and no faster at load average 2.2 (0.43 against 0.40 s): Tink holds the GIL while
# it decrypts, and the two threads then take turns.
READ_AHEAD_CHUNKS = 0
# From a cloud store the read waits on the network, not on a core: there the read, SHA-256 and
# decryption run in a thread this many chunks ahead of decompression, so that verify and fetch
# take about as long as the download itself. Measured in one process against moto (146 MiB
# stored, 535 MiB dumped, load 0.2): verify 0.83 s serial, 0.70-0.75 s with 4 chunks ahead.
REMOTE_READ_AHEAD_CHUNKS = 4


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def read_ahead(chunks: Iterator[bytes], depth: int = READ_AHEAD_CHUNKS) -> Iterator[bytes]:
    """`chunks`, produced by a thread of their own at most `depth` chunks ahead of the consumer,
    so that reading the store, hashing and decrypting overlap with decompressing and writing
    (hashlib, zstd and file writes release the GIL). An exception `chunks` raises is raised
    here, in order, after the chunks before it. When the consumer stops early, the producer
    stops too and `chunks` is closed. With `depth` 0, `chunks` itself, in the consumer's thread
    (a queue of size 0 would be unbounded)."""
    if depth <= 0:
        return chunks
    return _produced_ahead(chunks, depth)


def _produced_ahead(chunks: Iterator[bytes], depth: int) -> Iterator[bytes]:
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(chunk):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failed(exc))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    producer = threading.Thread(target=produce, name="backup-read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        producer.join()


def decompressed(store: ObjectStore, manifest: BackupManifest, chunks: Iterator[bytes],
                 keys: DataKeyProvider | None = None) -> Iterator[memoryview]:
    """Decrypt (when the manifest says the backup is encrypted, with its data key unwrapped
    by `keys`) and decompress the stored chunks, turning a failed authentication or a broken
    frame (its content checksum included) into BackupCorrupt, and checking the result is a
    pg_dump archive. An encrypted backup without `keys`, or whose key the key service
    refuses, raises BackupKeyUnavailable (a BackupCorrupt) before any chunk is read.

    Yields at most DECOMPRESSED_STEP_BYTES at a time, whatever the compression ratio, so
    memory does not grow with it: views of one reused buffer, each valid only until the next
    one is asked for (write or count it, do not keep it). The stream must be exactly one zstd frame: a truncated one,
    or bytes after it, are BackupCorrupt."""
    if manifest.encryption is not None:
        chunks = decrypted_backup_chunks(store, manifest, chunks, keys)
    chunks = read_ahead(chunks, REMOTE_READ_AHEAD_CHUNKS if reads_over_network(store) else READ_AHEAD_CHUNKS)
    source = _CompressedSource(chunks)
    reader = zstandard.ZstdDecompressor().stream_reader(source, read_size=_COMPRESSED_STEP_BYTES,
                                                        read_across_frames=False, closefd=False)
    buffer = bytearray(DECOMPRESSED_STEP_BYTES)
    view = memoryview(buffer)
    first = True
    try:
        while filled := reader.readinto(buffer):
            out = view[:filled]
            if first:
                if bytes(out[:len(PG_DUMP_MAGIC)]) != PG_DUMP_MAGIC:
                    _drain(chunks)
                    raise BackupCorrupt(f"{_where(store, manifest)}: not a pg_dump custom archive")
                first = False
            yield out
        # Anything left (bytes after the frame) is read, so that it is noticed.
        while source.read(_COMPRESSED_STEP_BYTES):
            pass
        if not source.frame.complete:
            raise BackupCorrupt(f"{_where(store, manifest)}: compressed stream is truncated")
    except (zstandard.ZstdError, _FrameShapeError) as exc:
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
    checksums, archive magic, raw size; then the same for the globals object when the
    backup has one. Returns the raw (decompressed) size of the dump."""
    raw = 0
    for out in decompressed(store, manifest, checked_stored_chunks(store, manifest, progress, "verify"),
                            keys):
        raw += len(out)
    if raw != manifest.dump.raw_bytes:
        raise BackupCorrupt(f"{_where(store, manifest)}: decompressed size {raw} differs from the "
                            f"manifest's {manifest.dump.raw_bytes}")
    if manifest.globals is not None:
        globals_sql(store, manifest, keys)
    return raw


def globals_sql(store: ObjectStore, manifest: BackupManifest,
                keys: DataKeyProvider | None = None) -> bytes:
    """The backup's globals (pg_dumpall's SQL script), read back whole (it is small: roles,
    memberships, settings, tablespaces), its size and SHA-256 checked, decrypted (every
    segment authenticated) when the backup is encrypted, and decompressed. Raises
    BackupCorrupt naming the globals object when anything does not match."""
    info = manifest.globals
    if info is None:
        raise BackupCorrupt(f"{_where(store, manifest)} has no globals object (it was taken "
                            "before globals were backed up)")
    where = _where_globals(store, manifest)
    chunks: Iterator[bytes] = checked_globals_chunks(store, manifest, stage="globals")
    if manifest.encryption is not None:
        chunks = decrypted_backup_chunks(store, manifest, chunks, keys,
                                         binding=globals_binding(manifest.backup_id), where=where)
    stored = b"".join(chunks)  # every check above has run once the stream is exhausted
    try:
        raw = zstandard.ZstdDecompressor().decompress(stored, max_output_size=info.raw_bytes + 1)
    except zstandard.ZstdError as exc:
        raise BackupCorrupt(f"{where}: compressed stream is damaged: {exc}") from None
    if len(raw) != info.raw_bytes:
        raise BackupCorrupt(f"{where}: decompressed size {len(raw)} differs from the manifest's "
                            f"{info.raw_bytes}")
    return raw


def stored_checksum_matches(store: ObjectStore, manifest: BackupManifest) -> None:
    """Cheaper check used right after a write: size and SHA-256 of the stored dump, and of
    the globals object when the backup has one."""
    for _ in checked_stored_chunks(store, manifest, stage="check"):
        pass
    if manifest.globals is not None:
        for _ in checked_globals_chunks(store, manifest, stage="check"):
            pass
