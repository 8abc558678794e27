"""Taking a logical backup: pg_dump -> zstd [-> encrypt] -> SHA-256 -> every required store,
in one pass; the server's globals beside it.

Nothing is held whole in memory or staged on local disk: pg_dump's custom-format
output is compressed, encrypted when a key provider is given (a fresh data key per
backup; backups/encryption.py, crypto/streaming.py), hashed as it streams and written to all the policy's stores
at once, so every store holds only ciphertext and the manifest's SHA-256 is the stored
bytes'. Each store's copy is read back and checked before that store gets its
manifest; the manifest is the last thing written, so a backup interrupted at any point
never becomes visible.

Roles, their memberships and settings, and tablespaces are not in pg_dump's output: the
same login dumps them with pg_dumpall (`--globals-only --no-role-passwords`, the same
install as pg_dump) before the dump starts, and they are stored beside the dump as the
small `globals.sql.zst` object: compressed, encrypted with the dump's data key under
associated data of their own (so the two ciphertexts cannot be swapped), written to every
store that committed the dump and checked there like it, before the manifest.
"""

from __future__ import annotations

import hashlib
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import psycopg
import zstandard

from platform_orchestration import __version__
from platform_orchestration.backups.encryption import associated_data, encryption_info
from platform_orchestration.backups.integrity import (
    BackupCorrupt,
    stored_checksum_matches,
)
from platform_orchestration.backups.index import refresh_index_quietly
from platform_orchestration.backups.manifest import (
    BackupManifest,
    DumpInfo,
    GlobalsInfo,
    ServerInfo,
    dump_key,
    globals_binding,
    globals_key,
    new_backup_id,
)
from platform_orchestration.backups.progress import ProgressListener, no_progress
from platform_orchestration.clock import Clock, utc_now
from platform_orchestration.crypto import DataKey, DataKeyProvider
from platform_orchestration.crypto.streaming import encrypt_chunks
from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.postgres.binaries import client_tools_for
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.globals import dump_globals
from platform_orchestration.postgres.snapshot import ExportedSnapshot
from platform_orchestration.storage import ObjectStore, StoreError, write_bytes
from platform_orchestration.storage.fanout import FanOutWriter

PIPE_READ_BYTES = 1024 * 1024


class BackupFailed(PlatformError):
    """No store received a verified copy; the message names database, store(s) and step."""


@dataclass(frozen=True)
class BackupOutcome:
    manifest: BackupManifest
    stored_in: tuple[str, ...]
    failed_stores: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class CompressionSettings:
    # Level 1 on the calling thread (threads=0) keeps up with pg_dump with room to spare
    # (about 390 MiB/s of dump on one core, pg_dump yields about 150) and measured at the
    # pg_dump floor; level 3 or extra zstd threads only compete with pg_dump and the server
    # for the same cores, for 1-2% smaller output (benchmarks/, README).
    level: int = 1
    threads: int = 0


class _CountingReader:
    def __init__(self, raw, on_read: Callable[[int], None]) -> None:  # noqa: ANN001
        self._raw = raw
        self._on_read = on_read
        self.total = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.total += len(data)
        self._on_read(self.total)
        return data


def _stored_globals(raw: bytes, tool: str, compression: CompressionSettings, data_key: DataKey | None,
                    aad: bytes) -> tuple[bytes, GlobalsInfo]:
    """The globals object's bytes as stored (compressed, then encrypted with the dump's data
    key under `aad`), and their manifest section."""
    stored = zstandard.ZstdCompressor(level=compression.level, write_checksum=True).compress(raw)
    if data_key is not None:
        stored = b"".join(encrypt_chunks([stored], data_key.plaintext, aad))
    return stored, GlobalsInfo(tool=tool, raw_bytes=len(raw), stored_bytes=len(stored),
                               sha256=hashlib.sha256(stored).hexdigest())


def take_backup(
    *,
    database: str,
    cluster: str,
    policy: str,
    connection: PgConnection,
    stores: Sequence[ObjectStore],
    compression: CompressionSettings = CompressionSettings(),
    progress: ProgressListener = no_progress,
    clock: Clock = utc_now,
    keys: DataKeyProvider | None = None,
    credentials: Literal["static", "dynamic"] | None = None,
) -> BackupOutcome:
    """Dump `database` once into every store in `stores`; raise BackupFailed if none got a
    verified copy. Stores that failed are reported in the outcome (their copy can be made
    later from a verified one).

    With `keys`, the backup is encrypted after compression with a fresh data key from
    `keys`, bound to this backup (database and id) as associated data; the manifest keeps
    only the wrapped key. A key service that fails fails the backup before pg_dump starts; the
    globals are dumped while pg_dump runs, and a pg_dumpall that cannot dump them fails the
    backup before anything is committed.

    Times and the id come from `clock` (the worker's); the manifest keeps the server's
    snapshot time (`snapshot_at`) and the worker's just before it (`snapshot_worker_at`)."""
    if not stores:
        raise BackupFailed(f"backup of {database}: no stores to write to")
    started_at = clock()
    backup_id = new_backup_id(started_at)
    key = dump_key(database, backup_id)
    step = "data key"
    try:
        data_key: DataKey | None = keys.new_data_key() if keys is not None else None
        step = "snapshot"
        snapshot_worker_at = clock()  # no later than the snapshot: ages are never understated
        with ExportedSnapshot(connection) as snapshot:
            facts = snapshot.facts
            tools = client_tools_for(facts.server_version_num // 10000)
            counts: dict[str, int] = {}
            count_errors: list[BaseException] = []
            stored_globals: list[tuple[bytes, GlobalsInfo]] = []
            globals_errors: list[BaseException] = []

            def beside_the_dump() -> None:
                """What runs while pg_dump streams, off its critical path: the globals (a
                pg_dumpall of its own) and the row counts in the dump's snapshot."""
                try:
                    stored_globals.append(_stored_globals(
                        dump_globals(connection, tools), f"pg_dumpall {tools.version}", compression,
                        data_key, associated_data(database, globals_binding(backup_id))))
                except BaseException as exc:  # reported after the dump, not lost in a thread
                    globals_errors.append(exc)
                try:
                    counts.update(snapshot.count_rows())
                except BaseException as exc:
                    count_errors.append(exc)

            step = "open stores"
            fan_out = FanOutWriter(stores, key)  # before anything starts: nothing to undo if it fails
            counter = threading.Thread(target=beside_the_dump, name=f"beside-dump-{database}")
            counter.start()
            digest = hashlib.sha256()
            stored = 0
            dump: subprocess.Popen[bytes] | None = None
            stderr_chunks: list[bytes] = []
            stderr_reader: threading.Thread | None = None
            try:
                step = "pg_dump"
                dump = subprocess.Popen(
                    [tools.tool("pg_dump"), "--format=custom", "--compress=0",
                     f"--snapshot={facts.snapshot_id}", "--no-sync", f"--dbname={connection.dsn}"],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=connection.tool_env(),
                )
                stderr_reader = threading.Thread(target=lambda: stderr_chunks.append(dump.stderr.read()))
                stderr_reader.start()
                source = _CountingReader(dump.stdout, lambda n: progress("dump", n))
                compressor = zstandard.ZstdCompressor(level=compression.level, write_checksum=True,
                                                      threads=compression.threads)
                step = "stream"
                chunks = compressor.read_to_iter(source, read_size=PIPE_READ_BYTES,
                                                 write_size=PIPE_READ_BYTES)
                if data_key is not None:
                    chunks = encrypt_chunks(chunks, data_key.plaintext,
                                            associated_data(database, backup_id))
                for chunk in chunks:
                    digest.update(chunk)
                    stored += len(chunk)
                    fan_out.write(chunk)
                step = "pg_dump"
                returncode = dump.wait()
                stderr_reader.join()
                if returncode != 0:
                    message = b"".join(stderr_chunks).decode(errors="replace").strip()
                    raise BackupFailed(f"backup of {database}: pg_dump {tools.version} exited with "
                                       f"{returncode}: {message[-2000:]}")
                step = "globals"
                counter.join()
                if globals_errors:
                    raise globals_errors[0]
                globals_stored, globals_info = stored_globals[0]
                step = "row counts"
                if count_errors:
                    raise BackupFailed(f"backup of {database}: counting rows in the dump's snapshot "
                                       f"failed: {count_errors[0]}")
                step = "commit"
                committed = fan_out.commit()
            except BaseException:
                fan_out.abort()
                if dump is not None:
                    if dump.poll() is None:
                        dump.kill()
                    dump.wait()
                raise
            finally:
                counter.join()
                if stderr_reader is not None:
                    stderr_reader.join()
    except BackupFailed:
        raise
    # What a backup can meet on a bad day: our own errors (key service, stores, a server that
    # is down), PostgreSQL refusing a query, the OS refusing a process. Anything else is a bug
    # and keeps its own type and traceback.
    except (PlatformError, psycopg.Error, OSError) as exc:
        raise BackupFailed(f"backup of {database} failed at step {step}: {one_line(exc)}") from exc

    finished_at = clock()
    manifest = BackupManifest(
        backup_id=backup_id,
        database=database,
        cluster=cluster,
        policy=policy,
        started_at=started_at,
        finished_at=finished_at,
        snapshot_at=facts.snapshot_at,
        snapshot_worker_at=snapshot_worker_at,
        lsn=facts.lsn,
        server=ServerInfo(version=facts.server_version, version_num=facts.server_version_num,
                          system_identifier=facts.system_identifier),
        dump=DumpInfo(tool=f"pg_dump {tools.version}", tool_major=tools.major,
                      compression_level=compression.level, raw_bytes=source.total,
                      stored_bytes=stored, sha256=digest.hexdigest()),
        row_counts=counts,
        produced_by=f"platform-orchestration {__version__}",
        credentials=credentials,
        encryption=(encryption_info(data_key, keys)
                    if data_key is not None and keys is not None else None),
        globals=globals_info,
    )
    failed = dict(fan_out.failed)
    verified: list[str] = []
    for store in committed:
        try:
            write_bytes(store, manifest.globals_key, globals_stored)
            stored_checksum_matches(store, manifest)  # the dump and the globals
            write_bytes(store, manifest.manifest_key, manifest.in_store(store.name, clock()).to_json())
            verified.append(store.name)
            refresh_index_quietly(store, database)
        except (BackupCorrupt, StoreError) as exc:
            failed[store.name] = f"verify: {exc}"
            # The unverified dump must not linger where a copy could later be assumed.
            try:
                store.delete(key)
                store.delete(globals_key(database, backup_id))
            except StoreError:
                pass
    if not verified:
        raise BackupFailed(f"backup {backup_id} of {database}: no store holds a verified copy: "
                           + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    return BackupOutcome(manifest=manifest, stored_in=tuple(verified), failed_stores=failed,
                         seconds=(finished_at - started_at).total_seconds())
