"""Envelope encryption of backups: real PostgreSQL, local stores, a local key file in tmp_path.

Every tampering test changes stored bytes the way an attacker with write access to a
store could, including fixing up the manifest's size and SHA-256, so that the AEAD (or
the key wrapping) is what must catch it; and a restore that fails must leave its target
exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from pg import fingerprint, flip_byte

from platform_orchestration.backups.catalog import find_backup, list_backups
from platform_orchestration.backups.copy import ensure_copies
from platform_orchestration.backups.drill import run_restore_drill
from platform_orchestration.backups.encryption import associated_data
from platform_orchestration.backups.errors import BackupKeyUnavailable
from platform_orchestration.backups.integrity import BackupCorrupt, verify_stored_backup
from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.backups.restore import restore_backup
from platform_orchestration.backups.rewrap import RewrapFailed, rewrap_backup
from platform_orchestration.backups.take import BackupFailed
from platform_orchestration.crypto import DataKey, KeyServiceError
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.crypto.streaming import (
    SCHEME,
    CiphertextRejected,
    decrypt_chunks,
    encrypt_chunks,
)
from platform_orchestration.fleet import load_fleet
from platform_orchestration.protection import FleetProtection
from platform_orchestration.storage import read_bytes, write_bytes

CANARY = "CANARY-plaintext-6f1d2c9e-never-in-a-store"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MiB = 1024 * 1024


class RecordingKeys(LocalDataKeyProvider):
    """The local provider, remembering every data key it issued (to search stores for)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.issued: list[DataKey] = []

    def new_data_key(self) -> DataKey:
        key = super().new_data_key()
        self.issued.append(key)
        return key


@pytest.fixture
def keys(tmp_path: Path) -> RecordingKeys:
    return RecordingKeys(tmp_path / "config" / "platform-orchestration" / "demo-kek")


@pytest.fixture
def canary_db(scratch_source_db):
    with psycopg.connect(scratch_source_db.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO public.customers (name, note, created_at) VALUES (%s, %s, now())",
                     ("canary", CANARY))
    return scratch_source_db


def _stored_objects(stores) -> dict[str, bytes]:
    return {f"{s.name}:{path.relative_to(s.root)}": path.read_bytes()
            for s in stores for path in sorted(s.root.rglob("*")) if path.is_file()}


def _rewrite_manifest(store, manifest: BackupManifest, **changes) -> BackupManifest:
    """Replace the manifest in `store`; a dict given for `dump` or `encryption` is merged
    into that section field by field."""
    update = {}
    for section in ("dump", "encryption"):
        if isinstance(changes.get(section), dict):
            update[section] = getattr(manifest, section).model_copy(update=changes.pop(section))
    update.update(changes)
    changed = manifest.model_copy(update=update)
    write_bytes(store, manifest.manifest_key, changed.to_json())
    return changed


def _fix_checksum(store, manifest: BackupManifest) -> BackupManifest:
    """Make the manifest's size and SHA-256 match whatever the store now holds, so only
    cryptography can notice the change."""
    data = read_bytes(store, manifest.dump_key)
    return _rewrite_manifest(store, manifest,
                             dump={"sha256": hashlib.sha256(data).hexdigest(), "stored_bytes": len(data)})


def _put_stale_content(target) -> None:
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE stale (id int, what text)")
        conn.execute("INSERT INTO stale SELECT i, 'old ' || i FROM generate_series(1, 100) i")


def _database_exists(target) -> bool:
    maintenance = target.for_database("postgres")
    with psycopg.connect(maintenance.dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (target.dbname,)).fetchone() is not None


# --- The pipeline ------------------------------------------------------------------------------

def test_encrypted_round_trip_preserves_content_exactly(backup, stores, keys, source_db, target_db):
    manifest = backup(stores, keys=keys).manifest

    assert manifest.encryption is not None
    assert manifest.encryption.scheme == SCHEME == "tink-streaming-aead/AES256_GCM_HKDF_1MB"
    assert (manifest.encryption.key_name, manifest.encryption.key_version) == ("local", 1)
    assert manifest.encryption.wrapped_key.startswith("local:v1:")
    assert str(keys.path) in manifest.encryption.key_service
    for store in stores:
        assert verify_stored_backup(store, manifest, keys=keys) == manifest.dump.raw_bytes
    restore_backup(find_backup(stores, SOURCE_DB), target_db, keys=keys)
    assert fingerprint(target_db) == fingerprint(source_db)


def test_stores_hold_only_ciphertext(backup, stores, tmp_path, keys, canary_db):
    plain_stores = [type(s)(s.name, tmp_path / "plain" / s.name) for s in stores[:1]]
    plain = backup(plain_stores, connection=canary_db).manifest
    encrypted = backup(stores, connection=canary_db, keys=keys).manifest

    # The canary is in the dump: an unencrypted backup of it yields it once decompressed.
    import zstandard
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(
        read_bytes(plain_stores[0], plain.dump_key))
    assert CANARY.encode() in raw
    for store in stores:
        stored = read_bytes(store, encrypted.dump_key)
        assert len(stored) == encrypted.dump.stored_bytes
        assert hashlib.sha256(stored).hexdigest() == encrypted.dump.sha256  # of the ciphertext
        assert CANARY.encode() not in stored and b"PGDMP" not in stored
        assert not stored.startswith(ZSTD_MAGIC)
        assert ZSTD_MAGIC not in stored[:4096]
        # Tink's overhead: a 40-byte header, 16 bytes of tag per 1 MiB segment.
        assert 0 < encrypted.dump.stored_bytes - plain.dump.stored_bytes < 64 + 16 * (
            encrypted.dump.stored_bytes // MiB + 1)


def test_secrets_never_appear_in_any_stored_object(backup, stores, keys):
    backup(stores, keys=keys)
    backup(stores, keys=keys)
    secrets = [k.plaintext for k in keys.issued] + list(keys._load().values())  # data keys, KEKs
    assert len(keys.issued) == 2
    forms = []
    for secret in secrets:
        forms += [secret, secret.hex().encode(), secret.hex().upper().encode(),
                  base64.b64encode(secret), base64.urlsafe_b64encode(secret),
                  base64.b64encode(secret).rstrip(b"=")]
    objects = _stored_objects(stores)
    # dump + globals + manifest, two backups, three stores; and each store's catalog index
    # (which holds copies of the manifests, so it is searched too)
    assert len(objects) == 18 + 3
    for where, data in objects.items():
        for form in forms:
            assert form not in data, f"a secret appears in {where}"


def test_unencrypted_manifests_stay_as_they_were(backup, stores):
    manifest = backup(stores).manifest

    document = json.loads(read_bytes(stores[0], manifest.manifest_key))
    assert "encryption" not in document  # older readers (extra="forbid") still load it
    loaded = BackupManifest.from_json(read_bytes(stores[0], manifest.manifest_key), "test")
    assert loaded.encryption is None
    verify_stored_backup(stores[0], manifest, keys=None)


def test_an_encrypted_manifest_round_trips_through_json(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest
    stored = BackupManifest.from_json(read_bytes(stores[0], manifest.manifest_key), "test")

    assert stored.encryption == manifest.encryption
    assert json.loads(stored.to_json())["encryption"]["key_version"] == 1


def test_a_failing_key_service_fails_the_backup_before_anything_is_written(backup, stores, keys):
    class Down(LocalDataKeyProvider):
        def new_data_key(self) -> DataKey:
            raise KeyServiceError("key service unreachable")

    with pytest.raises(BackupFailed, match="step data key: key service unreachable"):
        backup(stores, keys=Down(keys.path))
    assert _stored_objects(stores) == {}


# --- Tampering -------------------------------------------------------------------------------------

def test_modified_ciphertext_fails_on_its_checksum_first(backup, stores, keys, empty_db):
    manifest = backup(stores, keys=keys).manifest
    aws = stores[0]
    flip_byte(aws.path_for(manifest.dump_key))
    _put_stale_content(empty_db)
    before = fingerprint(empty_db)

    with pytest.raises(BackupCorrupt, match=f"{manifest.backup_id}.*store aws: checksum mismatch"):
        verify_stored_backup(aws, manifest, keys=keys)
    with pytest.raises(BackupCorrupt, match=f"{manifest.backup_id}.*store aws: checksum mismatch"):
        restore_backup(find_backup(stores, SOURCE_DB, store_name="aws"), empty_db, replace=True, keys=keys)
    assert fingerprint(empty_db) == before


@pytest.mark.parametrize("where", ["header", "first segment", "last byte", "truncated"])
def test_modified_ciphertext_with_a_matching_checksum_fails_authentication(
        backup, stores, keys, empty_db, where):
    manifest = backup(stores, keys=keys).manifest
    azure = stores[1]
    path = azure.path_for(manifest.dump_key)
    if where == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        flip_byte(path, {"header": 5, "first segment": 1000, "last byte": path.stat().st_size - 1}[where])
    tampered = _fix_checksum(azure, manifest)
    _put_stale_content(empty_db)
    before = fingerprint(empty_db)

    with pytest.raises(BackupCorrupt) as failure:
        verify_stored_backup(azure, tampered, keys=keys)
    message = str(failure.value)
    assert f"backup {manifest.backup_id} of {SOURCE_DB} in store azure" in message
    assert "failed authentication" in message and "checksum" not in message
    stored = find_backup(stores, SOURCE_DB, store_name="azure")
    with pytest.raises(BackupCorrupt, match="store azure: encrypted dump failed authentication"):
        restore_backup(stored, empty_db, replace=True, keys=keys)
    assert fingerprint(empty_db) == before
    verify_stored_backup(stores[0], manifest, keys=keys)  # the other copies are intact


def test_a_modified_wrapped_key_fails_clearly(backup, stores, keys, empty_db):
    manifest = backup(stores, keys=keys).manifest
    gcp = stores[2]
    wrapped = manifest.encryption.wrapped_key
    i = len(wrapped) // 2
    tampered = _rewrite_manifest(gcp, manifest, encryption={
        "wrapped_key": wrapped[:i] + ("A" if wrapped[i] != "A" else "B") + wrapped[i + 1:]})
    _put_stale_content(empty_db)
    before = fingerprint(empty_db)

    with pytest.raises(BackupKeyUnavailable) as failure:
        verify_stored_backup(gcp, tampered, keys=keys)
    message = str(failure.value)
    assert f"backup {manifest.backup_id} of {SOURCE_DB} in store gcp" in message
    assert "could not be unwrapped" in message and "failed authentication" in message
    with pytest.raises(BackupKeyUnavailable):
        restore_backup(find_backup(stores, SOURCE_DB, store_name="gcp"), empty_db, replace=True, keys=keys)
    assert fingerprint(empty_db) == before
    # Changing the version in the wrapped string is caught too (it is authenticated).
    _rewrite_manifest(gcp, manifest, encryption={"wrapped_key": wrapped.replace("local:v1:", "local:v2:")})
    keys.rotate()
    with pytest.raises(BackupKeyUnavailable, match="failed authentication"):
        verify_stored_backup(gcp, find_backup(stores, SOURCE_DB, store_name="gcp").manifest, keys=keys)


def test_an_encryption_section_moved_to_another_backup_fails(backup, stores, keys):
    a = backup(stores, keys=keys).manifest
    b = backup(stores, keys=keys).manifest
    aws = stores[0]

    # B's manifest given A's wrapped key: B's ciphertext does not authenticate under A's key.
    swapped = _rewrite_manifest(aws, b, encryption=a.encryption.model_dump())
    with pytest.raises(BackupCorrupt, match=f"{b.backup_id}.*store aws: encrypted dump failed authentication"):
        verify_stored_backup(aws, swapped, keys=keys)

    # B's dump replaced by A's, with A's key, size, checksum: everything matches except the
    # associated data, which binds A's ciphertext to A's id.
    azure = stores[1]
    write_bytes(azure, b.dump_key, read_bytes(azure, a.dump_key))
    moved = _rewrite_manifest(azure, b, encryption=a.encryption.model_dump(), dump=a.dump.model_dump())
    with pytest.raises(BackupCorrupt, match=f"{b.backup_id}.*store azure: encrypted dump failed authentication"):
        verify_stored_backup(azure, moved, keys=keys)
    assert associated_data(SOURCE_DB, a.backup_id) != associated_data(SOURCE_DB, b.backup_id)

    verify_stored_backup(aws, a, keys=keys)  # A itself is fine


def test_a_stripped_encryption_section_does_not_pass_for_plaintext(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest
    stripped = _rewrite_manifest(stores[0], manifest, encryption=None)

    with pytest.raises(BackupCorrupt, match="compressed stream is damaged"):
        verify_stored_backup(stores[0], stripped, keys=keys)


# --- Without keys ----------------------------------------------------------------------------

def test_an_encrypted_backup_without_a_key_provider_fails_clearly(backup, stores, keys, target_db):
    manifest = backup(stores, keys=keys).manifest
    stored = find_backup(stores, SOURCE_DB)

    expected = (f"backup {manifest.backup_id} of {SOURCE_DB} in store aws is encrypted "
                r"\(key local v1 of local key file .*\) but no key provider was given")
    with pytest.raises(BackupKeyUnavailable, match=expected):
        verify_stored_backup(stored.store, stored.manifest)
    with pytest.raises(BackupKeyUnavailable, match=expected):
        restore_backup(stored, target_db)
    assert not _database_exists(target_db)


def test_a_drill_of_an_encrypted_backup_without_keys_fails_and_is_recorded(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest

    record = run_restore_drill(database=SOURCE_DB, stores=stores, rto_target=timedelta(minutes=10),
                               rpo_target=timedelta(hours=1))

    assert not record.passed and record.backup_id == manifest.backup_id
    assert "no key provider was given" in record.failure


def test_a_drill_of_an_encrypted_backup_passes_with_keys(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest

    record = run_restore_drill(database=SOURCE_DB, stores=stores, store_name="gcp", keys=keys,
                               rto_target=timedelta(minutes=10), rpo_target=timedelta(hours=1))

    assert record.passed, record.failure
    assert record.backup_id == manifest.backup_id and record.rows_verified == sum(manifest.row_counts.values())


def test_copies_carry_the_ciphertext_as_is_without_a_key(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest
    aws, _azure, gcp = stores
    for key in (manifest.manifest_key, manifest.dump_key):
        gcp.delete(key)

    report = ensure_copies(SOURCE_DB, stores)  # no key provider anywhere in copies

    assert report.copied == ("gcp",)
    assert read_bytes(gcp, manifest.dump_key) == read_bytes(aws, manifest.dump_key)
    copied = find_backup([gcp], SOURCE_DB).manifest
    assert copied.encryption == manifest.encryption and copied.copy_info.copied_from == "aws"
    verify_stored_backup(gcp, copied, keys=keys)


# --- Rotation and rewrap --------------------------------------------------------------------

def test_rotation_then_rewrap_moves_every_manifest_and_leaves_dumps_alone(backup, stores, keys, source_db,
                                                                          target_db):
    manifest = backup(stores, keys=keys).manifest
    dumps = {s.name: read_bytes(s, manifest.dump_key) for s in stores}
    before = {s.name: find_backup([s], SOURCE_DB).manifest for s in stores}

    assert keys.rotate() == 2
    for store in stores:
        rewrapped = rewrap_backup(store, before[store.name], keys)
        assert rewrapped.encryption.key_version == 2
        assert rewrapped.encryption.wrapped_key.startswith("local:v2:")

    for store in stores:
        now = find_backup([store], SOURCE_DB).manifest
        assert now.encryption.key_version == 2
        assert now.encryption.wrapped_key != before[store.name].encryption.wrapped_key
        assert keys.unwrap(now.encryption.wrapped_key) == keys.unwrap(manifest.encryption.wrapped_key)
        # Only the wrapping changed: same dump, same everything else, copy section kept.
        assert now.model_copy(update={"encryption": None}) == before[store.name].model_copy(
            update={"encryption": None})
        assert read_bytes(store, manifest.dump_key) == dumps[store.name]
        verify_stored_backup(store, now, keys=keys)
    restore_backup(find_backup(stores, SOURCE_DB, store_name="azure"), target_db, keys=keys)
    assert fingerprint(target_db) == fingerprint(source_db)

    # Already at the newest version: nothing is written.
    stored_bytes = read_bytes(stores[0], manifest.manifest_key)
    rewrap_backup(stores[0], find_backup([stores[0]], SOURCE_DB).manifest, keys)
    assert read_bytes(stores[0], manifest.manifest_key) == stored_bytes


def test_rewrap_with_a_foreign_key_file_fails_and_changes_nothing(backup, stores, keys, tmp_path):
    manifest = backup(stores, keys=keys).manifest
    foreign = LocalDataKeyProvider(tmp_path / "other" / "kek")
    foreign.rotate()
    before = read_bytes(stores[0], manifest.manifest_key)

    with pytest.raises(RewrapFailed, match=f"rewrap of backup {manifest.backup_id} .* store aws failed"):
        rewrap_backup(stores[0], manifest, foreign)
    assert read_bytes(stores[0], manifest.manifest_key) == before


def test_rewrap_of_a_pruned_backup_fails_without_resurrecting_it(backup, stores, keys):
    manifest = backup(stores, keys=keys).manifest
    keys.rotate()
    stores[0].delete(manifest.manifest_key)
    stores[0].delete(manifest.dump_key)

    with pytest.raises(RewrapFailed, match="gone from the store"):
        rewrap_backup(stores[0], manifest, keys)
    assert list_backups(stores[0], SOURCE_DB) == []


def test_fleet_protection_encrypts_and_rewraps_the_whole_fleet(tmp_path, source_cluster, source_db, keys,
                                                               target_db):
    protection = FleetProtection(load_fleet(write_fleet(tmp_path / "fleet", source_cluster, SOURCE_DB)),
                                 keys=keys)
    first = protection.backup(SOURCE_DB).manifest
    unencrypted = FleetProtection(protection.fleet).backup(SOURCE_DB).manifest
    assert first.encryption is not None and unencrypted.encryption is None
    protection.verify(SOURCE_DB, backup_id=first.backup_id)

    keys.rotate()
    report = protection.rewrap_all()

    assert report.ok, report.summary()
    rewrapped = report.with_outcome("rewrapped")
    assert sorted(e.store for e in rewrapped) == ["aws", "azure", "gcp"]
    assert {(e.backup_id, e.from_version, e.to_version) for e in rewrapped} == {(first.backup_id, 1, 2)}
    assert len(report.with_outcome("unencrypted")) == 3
    assert report.summary().endswith("3 rewrapped, 0 already current, 3 not encrypted, 0 failed")
    assert len(protection.rewrap_all(SOURCE_DB).with_outcome("current")) == 3
    protection.restore(SOURCE_DB, target_db, backup_id=first.backup_id, store_name="gcp")
    assert fingerprint(target_db) == fingerprint(source_db)


# --- The envelope and the key file on their own ---------------------------------------------------

def _chunked(data: bytes, size: int):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_envelope_round_trips_streams_with_bounded_chunks():
    key, aad = os.urandom(32), associated_data("db", "id")
    data = os.urandom(5 * MiB + 12345)

    ciphertext_chunks = list(encrypt_chunks(_chunked(data, 256 * 1024), key, aad))
    assert max(len(c) for c in ciphertext_chunks) <= 2 * MiB
    ciphertext = b"".join(ciphertext_chunks)
    plaintext_chunks = list(decrypt_chunks(_chunked(ciphertext, 100_000), key, aad, "here"))
    assert max(len(c) for c in plaintext_chunks) <= MiB
    assert b"".join(plaintext_chunks) == data
    assert b"".join(decrypt_chunks(iter([b"".join(encrypt_chunks(iter([]), key, aad))]), key, aad,
                                   "here")) == b""

    with pytest.raises(CiphertextRejected, match="here: encrypted data failed authentication"):
        list(decrypt_chunks(_chunked(ciphertext, MiB), key, associated_data("db", "other"), "here"))
    # Cut exactly after the second 1 MiB ciphertext segment: the last segment is marked,
    # so dropping whole segments from the end is caught too.
    with pytest.raises(CiphertextRejected, match="failed authentication after"):
        list(decrypt_chunks(_chunked(ciphertext[:2 * MiB], MiB), key, aad, "here"))
    with pytest.raises(CiphertextRejected, match="failed authentication"):
        list(decrypt_chunks(_chunked(ciphertext, MiB), os.urandom(32), aad, "here"))


def test_envelope_passes_a_source_error_through_as_it_is():
    key, aad = os.urandom(32), b"aad"
    ciphertext = b"".join(encrypt_chunks(_chunked(os.urandom(3 * MiB), MiB), key, aad))

    def failing():
        yield from _chunked(ciphertext, MiB)
        raise BackupCorrupt("checksum mismatch at the end")

    with pytest.raises(BackupCorrupt, match="^checksum mismatch at the end$"):
        list(decrypt_chunks(failing(), key, aad, "here"))


def test_key_file_is_private_versioned_and_rotates(tmp_path):
    path = tmp_path / "config" / "platform-orchestration" / "demo-kek"
    keys = LocalDataKeyProvider(path)
    assert path.stat().st_mode & 0o777 == 0o600

    old = keys.new_data_key()
    assert (old.key_version, len(old.plaintext)) == (1, 32) and old.wrapped.startswith("local:v1:")
    assert keys.rotate() == 2 and keys.rotate() == 3
    again = LocalDataKeyProvider(path)  # another process: sees every version
    assert again.current_version() == 3 and again.unwrap(old.wrapped) == old.plaintext
    wrapped, version = again.rewrap(old.wrapped)
    assert version == 3 and wrapped.startswith("local:v3:") and keys.unwrap(wrapped) == old.plaintext
    assert keys.new_data_key().key_version == 3
    assert path.stat().st_mode & 0o777 == 0o600
    assert old.plaintext.hex() not in repr(old)


def test_key_file_refuses_unsafe_places_and_permissions(tmp_path):
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    with pytest.raises(KeyServiceError, match="inside the git work tree"):
        LocalDataKeyProvider(repo / "var" / "kek")
    path = tmp_path / "kek"
    LocalDataKeyProvider(path)
    path.chmod(0o640)
    with pytest.raises(KeyServiceError, match="accessible to group or others"):
        LocalDataKeyProvider(path)


def test_wrapped_keys_are_checked_in_every_part(tmp_path):
    keys = LocalDataKeyProvider(tmp_path / "kek")
    wrapped = keys.new_data_key().wrapped
    name, version, body = wrapped.split(":")
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    for bad, why in [
        (f"{name}:{version}:{base64.b64encode(bytes(raw)).decode()}", "failed authentication"),
        (f"other:{version}:{body}", "wrapped under key 'other'"),
        (f"{name}:v7:{body}", "has no version 7"),
        (f"{name}:{version}:not*base64", "not a wrapped data key"),
        ("", "not a wrapped data key"),
    ]:
        with pytest.raises(KeyServiceError, match=why):
            keys.unwrap(bad)
