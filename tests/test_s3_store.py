"""What only the S3 backend does, against a real moto server: Object Lock, prefixes,
credential hygiene in errors, incomplete multipart uploads, server-side copy, resumed reads.

The store-contract behaviour every backend shares is in test_store_conformance.py."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from store_backends import upload_keys
from stores_s3 import S3Backend

from platform_orchestration.fleet.model import ImmutabilitySpec, S3StoreSpec
from platform_orchestration.secrets import LocalSecretProvider
from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    read_bytes,
    write_bytes,
)
from platform_orchestration.storage import s3 as s3_module
from platform_orchestration.storage.base import ObjectLocked
from platform_orchestration.storage.s3 import S3ObjectStore
from platform_orchestration.stores import open_store

MiB = 1024 * 1024
SMALL_PART = 5 * MiB  # S3's minimum part size: multipart paths with little data

# Distinctive values: if any of them shows up in an error, it leaked.
LEAKY_ACCESS_KEY = "AKIADISTINCTIVE7KEYID"
LEAKY_SECRET = "s3cr3t-Never-Print-This-4f9a2c"
LEAKY_TOKEN = "session-token-Never-Print-This-77e1"


def _keys(store: S3ObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def _write_in_chunks(store: S3ObjectStore, key: str, data: bytes, chunk: int = MiB) -> None:
    with store.open_writer(key) as writer:
        for offset in range(0, len(data), chunk):
            writer.write(data[offset:offset + chunk])
        writer.commit()


def _versions(backend: S3Backend, bucket: str, key: str) -> list[dict[str, Any]]:
    listing = backend.admin.list_object_versions(Bucket=bucket, Prefix=key)
    return [entry for entry in listing.get("Versions", []) + listing.get("DeleteMarkers", [])
            if entry["Key"] == key]


def _record_operations(store: S3ObjectStore) -> list[tuple[str, dict[str, Any]]]:
    """Every S3 operation `store` calls from now on, with its serialized request (url_path,
    headers, body), once per call whatever the retries."""
    calls: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        calls.append((model.name, params))

    store.client.meta.events.register("before-call.s3", record)
    return calls


def _record_request_headers(store: S3ObjectStore) -> list[tuple[str, dict[str, str]]]:
    """(operation, headers) of every HTTP request `store` sends from now on, retries included."""
    sent: list[tuple[str, dict[str, str]]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        sent.append((event_name.rsplit(".", 1)[-1], dict(request.headers)))

    store.client.meta.events.register("before-send.s3", record)
    return sent


def _sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(timezone.utc)).total_seconds()))


@pytest.fixture
def locked_bucket(s3_backend: S3Backend) -> str:
    return s3_backend.new_bucket(object_lock=True)


# --- Object Lock -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["compliance", "governance"])
@pytest.mark.parametrize("size", [1024, 6 * MiB], ids=["single-put", "multipart"])
def test_a_locked_object_cannot_be_deleted_and_the_error_says_until_when(
        s3_backend: S3Backend, locked_bucket: str, mode: str, size: int) -> None:
    store = s3_backend.store(locked_bucket, name="aws-vault", part_size=SMALL_PART,
                             immutability=ImmutabilitySpec(mode=mode, retain=timedelta(days=1)))
    expected_until = datetime.now(timezone.utc) + timedelta(days=1)
    data = os.urandom(size)
    _write_in_chunks(store, "backups/orders/1/dump", data)

    head = s3_backend.admin.head_object(Bucket=locked_bucket, Key="backups/orders/1/dump")
    assert head["ObjectLockMode"] == mode.upper()
    assert abs(head["ObjectLockRetainUntilDate"] - expected_until) < timedelta(minutes=1)

    with pytest.raises(ObjectLocked) as raised:
        store.delete("backups/orders/1/dump")
    message = str(raised.value)
    assert raised.value.retain_until is not None
    assert abs(raised.value.retain_until - expected_until) < timedelta(minutes=1)
    assert "aws-vault" in message and "backups/orders/1/dump" in message and mode.upper() in message
    assert raised.value.retain_until.isoformat() in message
    assert read_bytes(store, "backups/orders/1/dump") == data
    # The server enforces it too, not only our pre-check.
    with pytest.raises(ClientError, match="AccessDenied"):
        s3_backend.admin.delete_object(Bucket=locked_bucket, Key="backups/orders/1/dump",
                                       VersionId=head["VersionId"])


def test_a_legal_hold_blocks_delete_without_a_date(s3_backend: S3Backend, locked_bucket: str) -> None:
    store = s3_backend.store(locked_bucket, name="held")
    write_bytes(store, "evidence/x.json", b"{}")
    s3_backend.admin.put_object_legal_hold(Bucket=locked_bucket, Key="evidence/x.json",
                                           LegalHold={"Status": "ON"})

    with pytest.raises(ObjectLocked, match="legal hold") as raised:
        store.delete("evidence/x.json")
    assert raised.value.retain_until is None
    assert _keys(store) == ["evidence/x.json"]


def test_once_retention_has_passed_delete_removes_every_version(s3_backend: S3Backend,
                                                                 locked_bucket: str) -> None:
    store = s3_backend.store(locked_bucket, immutability=ImmutabilitySpec(retain=timedelta(seconds=1)))
    write_bytes(store, "k", b"first")
    write_bytes(store, "k", b"second")
    assert len(_versions(s3_backend, locked_bucket, "k")) == 2

    retain_until = max(s3_backend.admin.head_object(Bucket=locked_bucket, Key="k", VersionId=v["VersionId"])
                       ["ObjectLockRetainUntilDate"] for v in _versions(s3_backend, locked_bucket, "k"))
    _sleep_until(retain_until + timedelta(milliseconds=300))
    store.delete("k")

    assert _versions(s3_backend, locked_bucket, "k") == []
    with pytest.raises(ObjectNotFound):
        read_bytes(store, "k")


def test_delete_on_a_versioned_bucket_lets_no_older_version_resurface(s3_backend: S3Backend,
                                                                      locked_bucket: str) -> None:
    store = s3_backend.store(locked_bucket)  # versioned bucket, but this store writes unlocked objects
    write_bytes(store, "manifest.json", b"old")
    write_bytes(store, "manifest.json", b"new")

    store.delete("manifest.json")
    store.delete("manifest.json")

    assert _versions(s3_backend, locked_bucket, "manifest.json") == []  # no delete marker either
    assert _keys(store) == []


def test_an_older_locked_version_keeps_the_whole_key(s3_backend: S3Backend, locked_bucket: str) -> None:
    locking = s3_backend.store(locked_bucket, name="locking",
                               immutability=ImmutabilitySpec(retain=timedelta(hours=1)))
    plain = s3_backend.store(locked_bucket, name="plain")
    write_bytes(locking, "k", b"locked version")
    write_bytes(plain, "k", b"unlocked latest version")

    with pytest.raises(ObjectLocked, match="COMPLIANCE retention until"):
        plain.delete("k")

    assert read_bytes(plain, "k") == b"unlocked latest version"
    assert len(_versions(s3_backend, locked_bucket, "k")) == 2


def test_immutability_on_a_bucket_without_object_lock_fails_the_write(s3_backend: S3Backend) -> None:
    store = s3_backend.store(s3_backend.new_bucket(), name="unlockable",
                             immutability=ImmutabilitySpec(retain=timedelta(days=1)))
    with pytest.raises(StoreError, match="unlockable"):
        write_bytes(store, "k", b"x")
    assert _keys(store) == []


# --- prefixes and configuration -------------------------------------------------------------


def test_a_prefix_scopes_every_operation(s3_backend: S3Backend) -> None:
    bucket = s3_backend.new_bucket()
    scoped = s3_backend.store(bucket, name="scoped", prefix="/team/pg/", part_size=SMALL_PART)
    whole_bucket = s3_backend.store(bucket, name="whole")
    write_bytes(whole_bucket, "backups/outside.json", b"{}")

    write_bytes(scoped, "backups/a/manifest.json", b"{}")
    writer = scoped.open_writer("backups/a/dump")
    writer.write(os.urandom(SMALL_PART))  # one part uploaded: a multipart upload is open

    stored = [item["Key"] for item in s3_backend.admin.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(stored) == ["backups/outside.json", "team/pg/backups/a/manifest.json"]
    assert _keys(scoped) == ["backups/a/manifest.json"]
    assert _keys(scoped, "backups/a/") == ["backups/a/manifest.json"]
    assert upload_keys(scoped.incomplete_uploads()) == ["backups/a/dump"]
    assert upload_keys(whole_bucket.incomplete_uploads()) == ["team/pg/backups/a/dump"]
    assert read_bytes(scoped, "backups/a/manifest.json") == b"{}"
    with pytest.raises(ObjectNotFound):
        read_bytes(scoped, "backups/outside.json")

    writer.commit()
    scoped.delete("backups/a/manifest.json")
    assert _keys(scoped) == ["backups/a/dump"]
    assert _keys(whole_bucket) == ["backups/outside.json", "team/pg/backups/a/dump"]


def test_open_store_builds_the_store_from_the_fleet_spec_and_secrets(
        s3_backend: S3Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_backend.new_bucket(object_lock=True)
    monkeypatch.setenv("TEST_S3_KEY_ID", LEAKY_ACCESS_KEY)
    monkeypatch.setenv("TEST_S3_SECRET", LEAKY_SECRET)
    spec = S3StoreSpec(name="aws-eu", bucket=bucket, prefix="/prod/", region="us-east-1",
                       endpoint_url=s3_backend.endpoint,
                       credentials={"access_key_id": {"env": "TEST_S3_KEY_ID"},
                                    "secret_access_key": {"env": "TEST_S3_SECRET"}},
                       immutability={"mode": "governance", "retain": "2d"})

    store = open_store(spec, LocalSecretProvider())

    assert isinstance(store, S3ObjectStore) and isinstance(store, ObjectStore)
    assert (store.name, store.bucket, store.prefix, store.lock_mode) == ("aws-eu", bucket, "prod", "GOVERNANCE")
    write_bytes(store, "k", b"v")
    assert s3_backend.admin.head_object(Bucket=bucket, Key="prod/k")["ObjectLockMode"] == "GOVERNANCE"
    for text in (store.describe(), repr(store)):
        assert bucket in text and LEAKY_SECRET not in text and LEAKY_ACCESS_KEY not in text


def test_half_given_credentials_are_refused_without_echoing_them() -> None:
    with pytest.raises(StoreError, match="access_key_id and secret_access_key") as raised:
        S3ObjectStore("half", "some-bucket", credentials={"access_key_id": LEAKY_ACCESS_KEY})
    assert LEAKY_ACCESS_KEY not in str(raised.value)


# --- credentials never in errors ------------------------------------------------------------


def _failures(store: S3ObjectStore) -> Iterator[tuple[str, Callable[[], object]]]:
    yield "write", lambda: write_bytes(store, "backups/db/1/dump", b"x")
    yield "multipart write", lambda: _write_in_chunks(store, "backups/db/1/dump", os.urandom(6 * MiB))
    yield "read", lambda: read_bytes(store, "backups/db/1/dump")
    yield "list", lambda: list(store.list("backups/"))
    yield "delete", lambda: store.delete("backups/db/1/dump")
    yield "incomplete uploads", lambda: store.incomplete_uploads("backups/")


def _assert_no_secret_in(exc: BaseException, store: S3ObjectStore) -> None:
    whole_chain = "".join(traceback.format_exception(exc))
    for secret in (LEAKY_SECRET, LEAKY_ACCESS_KEY, LEAKY_TOKEN):
        assert secret not in whole_chain
    assert "Signature=" not in whole_chain and "X-Amz-Credential" not in whole_chain
    assert store.name in str(exc)


def test_errors_from_a_missing_bucket_name_store_and_key_but_no_credential(s3_backend: S3Backend) -> None:
    store = s3_backend.store("no-such-bucket-here", name="misconfigured", part_size=SMALL_PART,
                             credentials={"access_key_id": LEAKY_ACCESS_KEY, "secret_access_key": LEAKY_SECRET,
                                          "session_token": LEAKY_TOKEN})
    for what, operation in _failures(store):
        with pytest.raises(StoreError) as raised:
            operation()
        _assert_no_secret_in(raised.value, store)
        assert "NoSuchBucket" in str(raised.value), what
        if what != "list" and what != "incomplete uploads":
            assert "backups/db/1/dump" in str(raised.value), what


def test_errors_with_the_server_unreachable_carry_no_credential(s3_backend: S3Backend) -> None:
    proxy = s3_backend.proxy()
    store = s3_backend.store(s3_backend.new_bucket(), name="cut-off", via=proxy, fast_retries=True,
                             part_size=SMALL_PART,
                             credentials={"access_key_id": LEAKY_ACCESS_KEY, "secret_access_key": LEAKY_SECRET})
    proxy.down()
    for what, operation in _failures(store):
        with pytest.raises(StoreError) as raised:
            operation()
        _assert_no_secret_in(raised.value, store)
        assert "?" not in str(raised.value).replace("?[query redacted]", ""), what


# --- incomplete uploads ---------------------------------------------------------------------


def test_an_upload_interrupted_by_a_crash_is_found_and_discarded(s3_backend: S3Backend) -> None:
    store = s3_backend.store(s3_backend.new_bucket(), part_size=SMALL_PART)
    small = store.open_writer("small/pending")
    small.write(b"below one part: nothing is sent before commit")
    crashed = store.open_writer("big/crashed")
    crashed.write(os.urandom(6 * MiB))
    # The process "dies" here: neither writer is committed nor aborted.

    assert _keys(store) == []
    assert upload_keys(store.incomplete_uploads()) == ["big/crashed"]
    assert upload_keys(store.incomplete_uploads("small/")) == []
    assert len(store.discard_incomplete("small/")) == 0
    assert len(store.discard_incomplete()) == 1
    assert upload_keys(store.incomplete_uploads()) == []
    assert s3_backend.admin.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []


def test_an_abort_the_server_cannot_hear_is_logged_and_cleaned_later(
        s3_backend: S3Backend, caplog: pytest.LogCaptureFixture) -> None:
    proxy = s3_backend.proxy()
    store = s3_backend.store(s3_backend.new_bucket(), name="flaky", via=proxy, fast_retries=True,
                             part_size=SMALL_PART)
    writer = store.open_writer("big/object")
    writer.write(os.urandom(6 * MiB))
    proxy.down()

    with caplog.at_level(logging.WARNING, logger="platform_orchestration.storage.s3"):
        writer.abort()  # must not raise: it runs in cleanup paths, over the original error

    assert "flaky" in caplog.text and "big/object" in caplog.text and "discard_incomplete" in caplog.text
    proxy.up()
    assert upload_keys(store.incomplete_uploads()) == ["big/object"]
    assert len(store.discard_incomplete()) == 1
    assert upload_keys(store.incomplete_uploads()) == []


def test_a_part_failing_past_every_retry_aborts_its_upload(s3_backend: S3Backend) -> None:
    proxy = s3_backend.proxy()
    store = s3_backend.store(s3_backend.new_bucket(), name="failing", via=proxy, fast_retries=True,
                             part_size=SMALL_PART)
    writer = store.open_writer("big/object")
    writer.write(os.urandom(SMALL_PART))  # part 1 uploaded
    proxy.fail_next(3, status=500)  # every attempt of part 2

    with pytest.raises(StoreError, match=r"failing: uploading part 2 of big/object .*500") as raised:
        writer.write(os.urandom(SMALL_PART))

    assert "after 2 retries" in str(raised.value)
    assert proxy.failures_served == 3
    assert upload_keys(store.incomplete_uploads()) == []  # the writer aborted its own upload
    with pytest.raises(StoreError, match="aborted"):
        writer.commit()


# --- writes ---------------------------------------------------------------------------------


def test_every_body_carries_its_content_md5_and_parts_grow(s3_backend: S3Backend,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "PARTS_PER_SIZE_STEP", 1)
    store = s3_backend.store(s3_backend.new_bucket(), part_size=SMALL_PART, max_part_size=2 * SMALL_PART)
    sent = _record_request_headers(store)
    data = os.urandom(26 * MiB)

    _write_in_chunks(store, "big", data)
    write_bytes(store, "small", b"tiny")

    part_sizes = [int(headers["Content-Length"]) for operation, headers in sent if operation == "UploadPart"]
    assert part_sizes == [SMALL_PART, 2 * SMALL_PART, 2 * SMALL_PART, 26 * MiB - 5 * SMALL_PART]
    bodies = [headers for operation, headers in sent if operation in ("UploadPart", "PutObject")]
    assert len(bodies) == 5 and all("Content-MD5" in headers for headers in bodies)
    assert read_bytes(store, "big") == data


def test_a_read_cut_mid_stream_resumes_where_it_stopped(s3_backend: S3Backend) -> None:
    proxy = s3_backend.proxy()
    bucket = s3_backend.new_bucket()
    data = os.urandom(48 * MiB)
    s3_backend.admin.put_object(Bucket=bucket, Key="big", Body=data)
    store = s3_backend.store(bucket, via=proxy, fast_retries=True)
    calls = _record_operations(store)

    received = bytearray()
    for index, chunk in enumerate(store.read("big", chunk_bytes=256 * 1024)):
        received += chunk
        if index == 0:
            proxy.down()  # cuts the open download
            proxy.up()

    assert bytes(received) == data
    ranges = [request["headers"].get("Range") for name, request in calls if name == "GetObject"]
    assert len(ranges) >= 2 and ranges[0] is None and ranges[1].startswith("bytes=")


# --- server-side copy -----------------------------------------------------------------------


def test_server_side_copy_is_done_by_s3_in_parts(s3_backend: S3Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    source = s3_backend.store(s3_backend.new_bucket(), name="source")
    target = s3_backend.store(s3_backend.new_bucket(), name="target", copy_part_size=SMALL_PART)
    data = os.urandom(11 * MiB)
    write_bytes(source, "backups/db/1/dump", data)

    def no_streaming(*_: object, **__: object) -> None:
        raise AssertionError("a server-side copy must not read the source through us")

    monkeypatch.setattr(source, "read", no_streaming)
    source_calls, target_calls = _record_operations(source), _record_operations(target)

    assert target.server_side_copy(source, "backups/db/1/dump") is True

    assert {name for name, _ in source_calls} <= {"HeadObject"}
    target_operations = [name for name, _ in target_calls]
    assert target_operations.count("UploadPartCopy") == 3
    assert "UploadPart" not in target_operations and "PutObject" not in target_operations
    monkeypatch.undo()
    assert read_bytes(target, "backups/db/1/dump") == data


def test_a_server_side_copy_into_a_locked_store_is_locked(s3_backend: S3Backend, locked_bucket: str) -> None:
    source = s3_backend.store(s3_backend.new_bucket(), name="source")
    target = s3_backend.store(locked_bucket, name="vault", immutability=ImmutabilitySpec(retain=timedelta(days=7)))
    write_bytes(source, "dump", b"bytes to keep")

    assert target.server_side_copy(source, "dump") is True

    with pytest.raises(ObjectLocked, match="vault") as raised:
        target.delete("dump")
    assert raised.value.retain_until is not None
    assert raised.value.retain_until > datetime.now(timezone.utc) + timedelta(days=6)


def test_server_side_copy_declines_what_s3_cannot_copy(s3_backend: S3Backend, tmp_path: Path) -> None:
    target = s3_backend.new_store(name="target")
    proxy = s3_backend.proxy()
    local = LocalObjectStore("local", tmp_path / "local")
    other_endpoint = s3_backend.new_store(name="elsewhere", via=proxy)
    other_account = s3_backend.store(s3_backend.new_bucket(), name="other-account",
                                     credentials={"access_key_id": "other", "secret_access_key": "other"})
    for source in (local, other_endpoint, other_account):
        write_bytes(source, "k", b"v")
        assert target.server_side_copy(source, "k") is False
    assert _keys(target) == []


def test_server_side_copy_of_a_missing_object_names_the_source(s3_backend: S3Backend) -> None:
    source, target = s3_backend.new_store(name="empty-source"), s3_backend.new_store(name="target")
    with pytest.raises(ObjectNotFound, match="empty-source: no object gone/key"):
        target.server_side_copy(source, "gone/key")
