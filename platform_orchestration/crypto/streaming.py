"""Streaming authenticated encryption of a byte stream, with Tink's streaming AEAD.

A 32-byte data key encrypts a stream as Tink's AES256_GCM_HKDF_1MB (1 MiB segments, each
authenticated, the last one marked, so modification, reordering and truncation are all
detected). The caller supplies the associated data that binds a ciphertext to what it is
(backups/encryption.py binds a backup's to its database and id).

This module knows ciphers only: not manifests, stores or backups.

Memory is bounded both ways: encryption drains Tink's output after every chunk, and
decryption feeds Tink from an iterator, so a stream is never held whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

from platform_orchestration.errors import PlatformError

SCHEME = "tink-streaming-aead/AES256_GCM_HKDF_1MB"
DATA_KEY_BYTES = 32
SEGMENT_BYTES = 1024 * 1024
# Plaintext handed out per read on decryption: one segment's worth, the unit Tink
# authenticates anyway.
READ_BYTES = 1024 * 1024
_KEY_TYPE_URL = "type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey"

streaming_aead.register()


class CiphertextRejected(PlatformError):
    """The ciphertext does not authenticate: modified, truncated, another stream's, or
    under another key. Nothing decrypted from it may be used."""

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
    its segment authenticated. Raises CiphertextRejected naming `where` when the ciphertext does
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
        raise CiphertextRejected(
            f"{where}: encrypted data failed authentication after {done} decrypted bytes: it was "
            "modified or truncated, or it is not this ciphertext under this data key; nothing "
            "may be restored from it") from exc
