"""What the conformance suite cannot see of the GCS store: resumable sessions, prefixes,
scrubbed errors, rewrite, retention on the wire.

Everything runs against the real `gcp-storage-emulator` process (tests/stores_gcs.py), through
a TCP fault proxy where faults are injected. Requests are observed (never altered) with a
`requests` response hook on the store's HTTP session. Emulator gaps, so untested here: it
answers a session cancel (DELETE) with 501 and keeps the session, and it drops and does not
enforce object retention; the 403-to-ObjectLocked mapping is tested on GCS's error text.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests
from google.api_core import exceptions as api_exceptions
from store_backends import upload_keys
from stores_gcs import PROJECT, GcsBackend

from platform_orchestration.fleet.model import GcsStoreSpec, ImmutabilitySpec
from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectNotFound,
    StoreError,
)
from platform_orchestration.storage.base import ObjectLocked, read_bytes, write_bytes
from platform_orchestration.storage.gcs import (
    FAST_RETRIES,
    GcsObjectStore,
    retention_refusal,
    scrub,
)
from platform_orchestration.stores import open_store, store_from_spec

KiB = 1024
MiB = 1024 * KiB
SMALL_CHUNK = 256 * KiB


@dataclass
class Seen:
    method: str
    url: str
    status: int
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    body: bytes | None  # request bodies under 64 KiB only


def observe(store: GcsObjectStore) -> list[Seen]:
    """Every request the store makes from now on, with its answer."""
    seen: list[Seen] = []

    def hook(response: requests.Response, *args: object, **kwargs: object) -> None:
        body = response.request.body
        if isinstance(body, str):
            body = body.encode()
        seen.append(Seen(response.request.method or "", response.request.url or "", response.status_code,
                         dict(response.request.headers), dict(response.headers),
                         body if isinstance(body, bytes) and len(body) < 64 * KiB else None))

    store.http.hooks["response"].append(hook)
    return seen


def chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset:offset + size]


def keys(store: GcsObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def session_uris(seen: list[Seen]) -> list[str]:
    return [s.response_headers["Location"] for s in seen
            if s.method == "POST" and "uploadType=resumable" in s.url and "Location" in s.response_headers]


# --- resumable uploads -------------------------------------------------------------------------


def test_an_upload_cut_mid_chunk_resumes_from_the_persisted_offset(gcs_backend: GcsBackend) -> None:
    proxy = gcs_backend.proxy()
    store = gcs_backend.new_store(via=proxy, fast_retries=True)  # 8 MiB chunks
    seen = observe(store)
    data = os.urandom(12 * MiB)
    proxy.cut_next_upload_after(3 * MiB)  # inside the first 8 MiB chunk
    with store.open_writer("cut/object.bin") as writer:
        for chunk in chunks(data):
            writer.write(chunk)
        writer.commit()

    assert proxy.connections_cut == 1
    [resumed] = writer.resumed_from
    # The session kept what arrived before the cut (about 3 MiB) and only the rest was resent:
    # a restart from zero would have put 8 MiB + 12 MiB on the wire.
    assert 2 * MiB < resumed < 8 * MiB
    assert writer.bytes_sent == 8 * MiB + len(data) - resumed
    status_queries = [s for s in seen if s.method == "PUT" and s.request_headers.get("Content-Range") == "bytes */*"]
    assert [s.status for s in status_queries] == [308]
    assert len(session_uris(seen)) == 1  # the same session throughout
    assert read_bytes(store, "cut/object.bin") == data
    assert upload_keys(store.incomplete_uploads()) == []


def test_abort_cancels_the_session_and_nothing_appears(gcs_backend: GcsBackend) -> None:
    store = gcs_backend.new_store(chunk_bytes=SMALL_CHUNK)
    seen = observe(store)
    writer = store.open_writer("pending/object.bin")
    writer.write(os.urandom(600 * KiB))  # two chunks sent: a session is open
    [uri] = session_uris(seen)
    assert upload_keys(store.incomplete_uploads()) == ["pending/object.bin"]
    assert keys(store) == []

    writer.abort()
    cancels = [s for s in seen if s.method == "DELETE"]
    assert [c.url for c in cancels] == [uri]
    # Real GCS answers 499 and forgets the session; the emulator answers 501 (not implemented).
    assert cancels[0].status in (499, 501)
    assert upload_keys(store.incomplete_uploads()) == []
    assert keys(store) == []
    with pytest.raises(StoreError, match="already aborted"):
        writer.write(b"more")


def test_a_session_whose_cancel_failed_is_discarded_later_by_any_store_on_the_bucket(
        gcs_backend: GcsBackend) -> None:
    proxy = gcs_backend.proxy()
    store = gcs_backend.new_store(via=proxy, fast_retries=True, chunk_bytes=SMALL_CHUNK)
    writer = store.open_writer("orphan/object.bin")
    writer.write(os.urandom(300 * KiB))
    proxy.down()
    writer.abort()  # cannot reach the server: the session stays known
    assert upload_keys(store.incomplete_uploads()) == ["orphan/object.bin"]

    proxy.up()
    janitor = gcs_backend.store_on(store.bucket_name, via=proxy, fast_retries=True)
    assert upload_keys(janitor.incomplete_uploads("orphan/")) == ["orphan/object.bin"]
    assert upload_keys(janitor.incomplete_uploads("other/")) == []
    assert len(janitor.discard_incomplete("orphan/")) == 1
    assert upload_keys(store.incomplete_uploads()) == []
    assert keys(store) == []


def test_an_exact_multiple_of_the_chunk_size_and_an_empty_object_round_trip(gcs_backend: GcsBackend) -> None:
    store = gcs_backend.new_store(chunk_bytes=SMALL_CHUNK)
    data = os.urandom(4 * SMALL_CHUNK)
    with store.open_writer("exact.bin") as writer:
        for chunk in chunks(data, SMALL_CHUNK):
            writer.write(chunk)
        writer.commit()
    write_bytes(store, "empty.bin", b"")
    assert read_bytes(store, "exact.bin") == data
    assert read_bytes(store, "empty.bin") == b""
    assert [(i.key, i.size) for i in store.list()] == [("empty.bin", 0), ("exact.bin", len(data))]


# --- reads ---------------------------------------------------------------------------------------


def test_a_download_cut_midway_resumes_with_a_ranged_request(gcs_backend: GcsBackend) -> None:
    direct = gcs_backend.new_store()
    data = os.urandom(32 * MiB)
    with direct.open_writer("big.bin") as writer:
        for chunk in chunks(data, 8 * MiB):
            writer.write(chunk)
        writer.commit()
    proxy = gcs_backend.proxy()
    store = gcs_backend.store_on(direct.bucket_name, via=proxy, fast_retries=True)
    seen = observe(store)

    received = []
    for index, piece in enumerate(store.read("big.bin")):
        if index == 0:
            proxy.down()
            threading.Timer(0.3, proxy.up).start()
        received.append(piece)

    assert b"".join(received) == data
    ranges = [s.request_headers.get("Range") for s in seen if s.method == "GET" and "alt=media" in s.url]
    assert ranges[0] is None
    resumed = [int(re.fullmatch(r"bytes=(\d+)-", r).group(1)) for r in ranges[1:] if r]
    assert resumed and 0 < resumed[0] < len(data)


# --- prefixes ------------------------------------------------------------------------------------


def test_a_prefix_confines_the_store_and_never_shows_in_keys(gcs_backend: GcsBackend) -> None:
    store = gcs_backend.new_store(prefix="/team/prod/", chunk_bytes=SMALL_CHUNK)
    raw = gcs_backend.store_on(store.bucket_name, name="raw")
    write_bytes(store, "a/b.json", b"1")
    write_bytes(store, "c", b"22")
    write_bytes(raw, "team/prodx/outside", b"")
    write_bytes(raw, "other", b"")

    assert keys(raw) == ["other", "team/prod/a/b.json", "team/prod/c", "team/prodx/outside"]
    assert keys(store) == ["a/b.json", "c"]
    assert keys(store, "a/") == ["a/b.json"]
    assert read_bytes(store, "c") == b"22"
    with pytest.raises(ObjectNotFound):
        store.read("other")

    writer = store.open_writer("big/object.bin")
    writer.write(os.urandom(300 * KiB))
    assert upload_keys(store.incomplete_uploads()) == ["big/object.bin"]
    assert upload_keys(raw.incomplete_uploads()) == ["team/prod/big/object.bin"]
    writer.abort()

    store.delete("c")
    assert keys(raw) == ["other", "team/prod/a/b.json", "team/prodx/outside"]
    assert "gs://" + store.bucket_name + "/team/prod/" in store.describe()


# --- errors --------------------------------------------------------------------------------------


def _everything_said(exc: BaseException) -> str:
    """The message and every exception a traceback of it would print (sources lines aside)."""
    said = []
    current: BaseException | None = exc
    while current is not None:
        said.append("".join(traceback.format_exception_only(current)))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "".join(said)


def test_errors_never_contain_the_session_uri(gcs_backend: GcsBackend) -> None:
    proxy = gcs_backend.proxy()
    store = gcs_backend.new_store(via=proxy, fast_retries=True, chunk_bytes=SMALL_CHUNK)
    seen = observe(store)
    writer = store.open_writer("secret/session.bin")
    writer.write(os.urandom(300 * KiB))
    [uri] = session_uris(seen)
    upload_id = re.search(r"upload_id=([^&]+)", uri).group(1)
    proxy.down()
    with pytest.raises(StoreError) as raised:
        writer.write(os.urandom(300 * KiB))
    writer.abort()
    said = _everything_said(raised.value)
    assert store.name in str(raised.value) and "secret/session.bin" in str(raised.value)
    for secret in (uri, upload_id, unquote(upload_id)):
        assert secret not in said


def test_errors_never_contain_service_account_key_material(gcs_backend: GcsBackend) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    closed_port = gcs_backend.proxy()
    closed_port.stop()  # token requests go nowhere: the refresh fails
    key_id = "0123456789abcdef0123456789abcdef01234567"
    info = {"type": "service_account", "project_id": PROJECT, "private_key_id": key_id, "private_key": pem,
            "client_email": "backup@test-project.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": f"http://127.0.0.1:{closed_port.port}/token"}
    bucket = gcs_backend.new_store().bucket_name
    spec = GcsStoreSpec(name="gcp-sa", bucket=bucket, project=PROJECT, endpoint_url=gcs_backend.emulator.endpoint)
    store = store_from_spec(spec, {"service_account_json": json.dumps(info)}, retry=FAST_RETRIES)
    with pytest.raises(StoreError) as raised:
        write_bytes(store, "k", b"x")
    said = _everything_said(raised.value) + store.describe()
    assert "gcp-sa" in str(raised.value)
    pem_body = "".join(pem.splitlines()[1:-1])
    for secret in (key_id, pem_body[:40], pem_body[-40:]):
        assert secret not in said

    with pytest.raises(StoreError) as bad:
        store_from_spec(spec, {"service_account_json": '{"private_key": "SECRETVALUE"'})
    assert "SECRETVALUE" not in _everything_said(bad.value)


def test_scrub_removes_session_ids_tokens_and_query_strings() -> None:
    text = ("PUT https://storage.googleapis.com/upload/storage/v1/b/bk/o?uploadType=resumable&upload_id=ADPycdt: "
            "Max retries exceeded with url: /upload?upload_id=ADPycdt (Authorization: Bearer ya29.a0AfH6; "
            "access_token=tok123)")
    cleaned = scrub(text)
    for secret in ("ADPycdt", "ya29.a0AfH6", "tok123", "uploadType"):
        assert secret not in cleaned
    assert "storage.googleapis.com/upload/storage/v1/b/bk/o" in cleaned


def test_a_missing_object_and_a_missing_bucket_name_store_and_key(gcs_backend: GcsBackend) -> None:
    store = gcs_backend.new_store()
    with pytest.raises(ObjectNotFound, match=f"store {store.name}: no object nope/x"):
        store.read("nope/x")
    gone = gcs_backend.store_on("no-such-bucket-here", name="ghost")
    with pytest.raises(StoreError, match=r"store ghost: writing k failed: HTTP 404"):
        write_bytes(gone, "k", b"x")
    with pytest.raises(StoreError, match=r"store ghost: listing"):
        keys(gone)


# --- server-side copy ----------------------------------------------------------------------------


def test_server_side_copy_rewrites_inside_the_provider(gcs_backend: GcsBackend, tmp_path: Path) -> None:
    source = gcs_backend.new_store(prefix="src")
    target = gcs_backend.new_store(prefix="dst")
    data = os.urandom(3 * MiB)
    write_bytes(source, "backups/db/1/dump.pgdump.zst", data)
    seen = observe(target)

    assert target.server_side_copy(source, "backups/db/1/dump.pgdump.zst") is True
    assert [s.method for s in seen if "/rewriteTo/" in s.url] == ["POST"]
    # The bytes never passed through us: no download, no upload.
    assert not [s for s in seen if "alt=media" in s.url or "/upload/" in s.url]
    assert read_bytes(target, "backups/db/1/dump.pgdump.zst") == data
    with pytest.raises(ObjectNotFound, match="no object backups/db/2/dump.pgdump.zst"):
        target.server_side_copy(source, "backups/db/2/dump.pgdump.zst")

    elsewhere = gcs_backend.new_store(via=gcs_backend.proxy())  # another endpoint
    assert elsewhere.server_side_copy(source, "backups/db/1/dump.pgdump.zst") is False
    assert target.server_side_copy(LocalObjectStore("disk", tmp_path), "backups/db/1/dump.pgdump.zst") is False


# --- immutability --------------------------------------------------------------------------------


def _retention_sent(seen: list[Seen]) -> list[dict[str, str]]:
    found = []
    for s in seen:
        if s.method == "POST" and s.body:
            match = re.search(rb'"retention": (\{[^}]*\})', s.body)
            if match:
                found.append(json.loads(match.group(1)))
    return found


@pytest.mark.parametrize(("mode", "gcs_mode"), [("compliance", "Locked"), ("governance", "Unlocked")])
def test_immutability_sets_object_retention_on_every_upload(gcs_backend: GcsBackend, mode: str,
                                                           gcs_mode: str) -> None:
    store = gcs_backend.new_store(immutability=ImmutabilitySpec(mode=mode, retain="7d"), chunk_bytes=SMALL_CHUNK)
    seen = observe(store)
    write_bytes(store, "small.json", b"{}")
    with store.open_writer("large.bin") as writer:
        writer.write(os.urandom(600 * KiB))
        writer.commit()
    other = gcs_backend.new_store()
    write_bytes(other, "copied", b"c")
    assert store.server_side_copy(other, "copied")

    sent = _retention_sent(seen)
    assert len(sent) == 3  # single upload, session start, rewrite
    for retention in sent:
        assert retention["mode"] == gcs_mode
        until = datetime.fromisoformat(retention["retainUntilTime"].replace("Z", "+00:00"))
        assert abs(until - (datetime.now(timezone.utc) + timedelta(days=7))) < timedelta(minutes=1)


def test_without_immutability_no_retention_is_sent(gcs_backend: GcsBackend) -> None:
    store = gcs_backend.new_store(chunk_bytes=SMALL_CHUNK)
    seen = observe(store)
    write_bytes(store, "small.json", b"{}")
    with store.open_writer("large.bin") as writer:
        writer.write(os.urandom(600 * KiB))
        writer.commit()
    assert _retention_sent(seen) == []


def test_a_retention_refusal_is_recognised_from_gcs_error_text() -> None:
    locked = api_exceptions.Forbidden(
        "DELETE https://storage.googleapis.com/storage/v1/b/bk/o/k: Object 'bk/k' is subject to object "
        "retention and cannot be deleted, overwritten or archived until 2030-01-02T03:04:05.123456789-08:00")
    assert retention_refusal(locked) == (True, datetime(2030, 1, 2, 11, 4, 5, 123456, tzinfo=timezone.utc))
    held = api_exceptions.Forbidden("Object 'bk/k' is under active Temporary hold and cannot be deleted")
    assert retention_refusal(held) == (True, None)
    by_reason = api_exceptions.Forbidden("forbidden", errors=[{"reason": "retentionPolicyNotMet"}])
    assert retention_refusal(by_reason)[0] is True
    denied = api_exceptions.Forbidden("backup@x does not have storage.objects.delete access")
    assert retention_refusal(denied) == (False, None)
    assert retention_refusal(api_exceptions.NotFound("retention")) == (False, None)


def test_a_store_sends_only_the_requests_it_is_asked_for(gcs_backend: GcsBackend) -> None:
    """google-cloud-storage 3.17 would fetch the bucket's metadata in a thread of its own on a
    client's first call (a second connection, storage.buckets.get): turned off per client."""
    proxy = gcs_backend.proxy()
    written = gcs_backend.new_store()
    write_bytes(written, "d/x", b"1")
    store = gcs_backend.store_on(written.bucket_name, name=written.name, via=proxy)
    store.delete("d/x")  # one request (the emulator closes each connection after its answer)
    time.sleep(0.5)  # room for a background request to show itself
    assert proxy.connections_accepted == 1
    assert keys(written) == []


def test_a_403_without_retention_reason_is_a_store_error_not_a_lock(gcs_backend: GcsBackend) -> None:
    proxy = gcs_backend.proxy()
    written = gcs_backend.new_store()
    write_bytes(written, "d/x", b"1")
    # The proxy fails new connections only: the delete goes through a store of its own, whose
    # client has never connected, so its first request is the one answered 403. (Through the
    # writer's client, a pooled connection that outlived the proxy's cut let the delete pass
    # in a loaded CI run.)
    store = gcs_backend.store_on(written.bucket_name, name=written.name, via=proxy, fast_retries=True)
    proxy.fail_next(1, status=403)
    with pytest.raises(StoreError) as raised:
        store.delete("d/x")
    assert not isinstance(raised.value, ObjectLocked)
    assert f"store {store.name}: deleting d/x failed: HTTP 403" in str(raised.value)
    assert keys(store) == ["d/x"]


# --- configuration -------------------------------------------------------------------------------


def test_open_store_builds_a_gcs_store_from_the_fleet_spec(gcs_backend: GcsBackend) -> None:
    bucket = gcs_backend.new_store().bucket_name
    spec = GcsStoreSpec(name="gcp-eu", bucket=bucket, project=PROJECT, prefix="fleet",
                        endpoint_url=gcs_backend.emulator.endpoint)
    store = open_store(spec)
    assert isinstance(store, GcsObjectStore)
    assert store.describe() == f"gcp-eu (gcs gs://{bucket}/fleet/ at {gcs_backend.emulator.endpoint})"
    write_bytes(store, "k", b"v")
    assert read_bytes(store, "k") == b"v"
    with pytest.raises(StoreError, match="unknown credential"):
        store_from_spec(spec, {"access_key_id": "x"})
    with pytest.raises(ValueError, match="multiple of 262144"):
        store_from_spec(spec, {}, chunk_bytes=1000)
