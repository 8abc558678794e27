"""What the Azure store does beyond the shared conformance suite, against a real Azurite:
uncommitted blocks, prefixes, credentials and their secrecy, server-side copies, bounded
retries. Immutability, which Azurite does not implement, is checked on the wire against
a stand-in that answers as Azure documents (see `azure_standin`)."""

from __future__ import annotations

import base64
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from conftest import SOURCE_DB
from store_backends import upload_keys
from stores_azure import ACCOUNT, ACCOUNT_KEY, AzureBackend

from platform_orchestration.backups.catalog import list_backups
from platform_orchestration.backups.copy import copy_backup
from platform_orchestration.backups.integrity import verify_stored_backup
from platform_orchestration.backups.take import BackupOutcome
from platform_orchestration.fleet.model import (
    AzureStoreSpec,
    ImmutabilitySpec,
    SecretRef,
)
from platform_orchestration.secrets import LocalSecretProvider
from platform_orchestration.storage import (
    LocalObjectStore,
    ObjectNotFound,
    StoreError,
    read_bytes,
    write_bytes,
)
from platform_orchestration.storage.azure import (
    AzureObjectStore,
    AzureObjectWriter,
    block_size,
)
from platform_orchestration.storage.base import ObjectLocked
from platform_orchestration.stores import open_store, store_from_spec

MiB = 1024 * 1024
# A well-formed key that is not the account's: every request fails authentication.
WRONG_KEY = base64.b64encode(b"WRONG-KEY-that-must-never-be-printed-0123456789abcdef").decode()


def _keys(store: AzureObjectStore, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def _raw_names(store: AzureObjectStore, uncommitted: bool = False) -> list[str]:
    include = ["uncommittedblobs"] if uncommitted else None
    return [blob.name for blob in store.service.get_container_client(store.container).list_blobs(include=include)]


def _stage(store: AzureObjectStore, key: str, data: bytes) -> AzureObjectWriter:
    """A writer that staged `data` (as blocks) and then "crashed": never committed nor aborted."""
    writer = store.open_writer(key)
    writer.write(data)
    return writer


# --- uncommitted blocks -------------------------------------------------------------------------


def test_staged_blocks_are_invisible_reported_and_discarded(azure_backend: AzureBackend) -> None:
    store = azure_backend.new_store(block_bytes=MiB)
    write_bytes(store, "kept/object", b"kept")
    _stage(store, "crashed/dump.bin", b"x" * (3 * MiB + 1))

    committed, uncommitted = store.blob_client("crashed/dump.bin").get_block_list("all")
    assert (len(committed), len(uncommitted)) == (0, 3)
    assert _keys(store) == ["kept/object"]
    with pytest.raises(ObjectNotFound):
        read_bytes(store, "crashed/dump.bin")
    assert upload_keys(store.incomplete_uploads()) == ["crashed/dump.bin"]
    assert upload_keys(store.incomplete_uploads("crashed/")) == ["crashed/dump.bin"]
    assert upload_keys(store.incomplete_uploads("kept/")) == []

    assert len(store.discard_incomplete()) == 1

    assert upload_keys(store.incomplete_uploads()) == []
    assert _raw_names(store, uncommitted=True) == ["kept/object"]
    assert read_bytes(store, "kept/object") == b"kept"


def test_discard_never_removes_an_object_committed_since_it_was_listed(azure_backend: AzureBackend) -> None:
    store = azure_backend.new_store(block_bytes=MiB)
    writer = _stage(store, "race/dump.bin", b"y" * (2 * MiB))
    assert upload_keys(store.incomplete_uploads()) == ["race/dump.bin"]
    writer.commit()

    assert store.discard_uncommitted("race/dump.bin") is False
    assert read_bytes(store, "race/dump.bin") == b"y" * (2 * MiB)


def test_aborting_an_overwrite_keeps_the_object_already_there(azure_backend: AzureBackend) -> None:
    store = azure_backend.new_store(block_bytes=MiB)
    write_bytes(store, "backups/manifest.json", b"old")
    writer = _stage(store, "backups/manifest.json", b"z" * (2 * MiB))
    writer.abort()

    assert read_bytes(store, "backups/manifest.json") == b"old"
    assert _keys(store) == ["backups/manifest.json"]


def test_an_object_written_in_many_blocks_and_a_small_one_round_trip(azure_backend: AzureBackend) -> None:
    store = azure_backend.new_store(block_bytes=MiB)
    data = bytes(range(256)) * (9 * 4096 + 7)
    with store.open_writer("multi/object") as writer:
        for offset in range(0, len(data), 300_000):
            writer.write(data[offset:offset + 300_000])
        writer.commit()
    committed, _ = store.blob_client("multi/object").get_block_list("committed")
    assert len(committed) == 10
    assert b"".join(store.read("multi/object", chunk_bytes=100_000)) == data
    assert max(len(chunk) for chunk in store.read("multi/object", chunk_bytes=100_000)) == 100_000

    write_bytes(store, "small/empty", b"")
    assert read_bytes(store, "small/empty") == b""


def test_blocks_grow_so_a_stream_of_unknown_size_fits_in_50000_blocks() -> None:
    assert block_size(8 * MiB, 0) == block_size(8 * MiB, 9_999) == 8 * MiB
    assert block_size(8 * MiB, 10_000) == 16 * MiB
    assert block_size(8 * MiB, 49_999) == 128 * MiB
    assert sum(block_size(8 * MiB, index) for index in range(50_000)) > 2 * 1024 ** 4
    assert block_size(1000 * MiB, 40_000) == 4000 * MiB


# --- prefixes -----------------------------------------------------------------------------------


def test_a_prefix_keeps_keys_apart_and_out_of_listings(azure_backend: AzureBackend) -> None:
    container = azure_backend.create_container()
    team = azure_backend.new_store(container=container, prefix="team/pg")
    sibling = azure_backend.new_store(container=container, prefix="/team/pgx/")
    whole = azure_backend.new_store(container=container)

    write_bytes(team, "backups/a", b"1")
    write_bytes(sibling, "backups/b", b"2")
    _stage(team, "backups/partial", b"3" * (4 * MiB))

    assert _raw_names(whole) == ["team/pg/backups/a", "team/pgx/backups/b"]
    assert _keys(team) == ["backups/a"]
    assert _keys(team, "backups/") == ["backups/a"]
    assert _keys(sibling) == ["backups/b"]
    assert upload_keys(team.incomplete_uploads()) == ["backups/partial"]
    assert upload_keys(sibling.incomplete_uploads()) == []
    assert upload_keys(whole.incomplete_uploads()) == ["team/pg/backups/partial"]
    assert read_bytes(whole, "team/pg/backups/a") == read_bytes(team, "backups/a") == b"1"
    assert "team/pg" in team.describe() and ACCOUNT_KEY not in team.describe()

    team.delete("backups/a")
    assert len(team.discard_incomplete()) == 1
    assert _raw_names(whole, uncommitted=True) == ["team/pgx/backups/b"]


# --- credentials and their secrecy -------------------------------------------------------------


def _assert_secret_free(error: BaseException, *secrets: str) -> None:
    printed = "".join(traceback.format_exception(error))
    for secret in secrets:
        for plain in (secret, unquote(secret)):
            for form in (plain, quote(plain, safe=""), quote(plain)):
                assert form not in printed


def test_a_wrong_account_key_fails_every_operation_without_printing_the_key(azure_backend: AzureBackend) -> None:
    good = azure_backend.new_store()
    write_bytes(good, "k/object", b"data")
    bad = azure_backend.new_store(name="azure-wrong-key", container=good.container,
                                  credentials={"account_key": WRONG_KEY})
    operations = {
        "k/new": lambda: write_bytes(bad, "k/new", b"data"),
        "k/object": lambda: read_bytes(bad, "k/object"),
        "k/": lambda: list(bad.list("k/")),
        "k/gone": lambda: bad.delete("k/gone"),
        "k/stale": lambda: bad.incomplete_uploads("k/stale"),
        "k/x": lambda: bad.discard_incomplete("k/x"),
    }
    for key, operation in operations.items():
        with pytest.raises(StoreError) as raised:
            operation()
        message = str(raised.value)
        assert "azure-wrong-key" in message and key in message and "403" in message, message
        _assert_secret_free(raised.value, WRONG_KEY)


def test_errors_never_carry_a_sas_token_or_signed_url(azure_backend: AzureBackend) -> None:
    container = azure_backend.create_container()
    read_only = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                       permission=ContainerSasPermissions(read=True, list=True),
                                       expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    signature = dict(part.split("=", 1) for part in read_only.split("&"))["sig"]
    store = azure_backend.new_store(name="azure-sas", container=container, credentials={"sas_token": read_only})

    with pytest.raises(StoreError) as denied:
        write_bytes(store, "s/object", b"data")
    assert "azure-sas" in str(denied.value) and "s/object" in str(denied.value) and "403" in str(denied.value)
    _assert_secret_free(denied.value, read_only, signature)

    proxy = azure_backend.proxy()
    proxied = azure_backend.new_store(name="azure-sas", container=container, via=proxy,
                                      fast_retries=True, credentials={"sas_token": read_only})
    proxy.down()
    with pytest.raises(StoreError) as unreachable:
        read_bytes(proxied, "s/object")
    assert "s/object" in str(unreachable.value)
    _assert_secret_free(unreachable.value, read_only, signature)


def test_signed_urls_and_keys_in_sdk_messages_are_scrubbed(azure_backend: AzureBackend) -> None:
    """Today's SDK and transport quote no request URL in the failures provoked above; older
    urllib3 versions and proxies do ("Max retries exceeded with url: ..."), so the scrubbing
    itself is checked on such a message, built from the SDK's own signed URL."""
    container = azure_backend.create_container()
    token = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                   permission=ContainerSasPermissions(read=True),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    signature = dict(part.split("=", 1) for part in token.split("&"))["sig"]
    by_sas = azure_backend.new_store(name="azure-sas", container=container, credentials={"sas_token": token})
    signed_url = by_sas.blob_client("s/object").url
    assert "sig=" in signed_url and quote(unquote(signature), safe="") in signed_url
    failure = by_sas.failure("reading s/object", ServiceRequestError(
        f"HTTPConnectionPool(host='127.0.0.1'): Max retries exceeded with url: {signed_url} (Caused by ...)"))
    assert "azure-sas" in str(failure) and "reading s/object" in str(failure)
    _assert_secret_free(failure, token, signature)

    by_key = azure_backend.new_store(name="azure-cs", container=container,
                                     credentials={"connection_string": azure_backend.server.connection_string()})
    failure = by_key.failure("listing k/", ServiceRequestError(
        f"bad settings {azure_backend.server.connection_string()} key={ACCOUNT_KEY}"))
    _assert_secret_free(failure, ACCOUNT_KEY)


def test_every_credential_form_opens_through_the_fleet(azure_backend: AzureBackend,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    server = azure_backend.server
    container = azure_backend.create_container()
    full = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                  permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True),
                                  expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    values = {"account_key": ACCOUNT_KEY, "sas_token": "?" + full, "connection_string": server.connection_string()}
    for field, value in values.items():
        monkeypatch.setenv("AZURE_TEST_SECRET", value)
        spec = AzureStoreSpec(name=f"via-{field.replace('_', '-')}", account_url=server.account_url,
                              container=container, prefix=field,
                              credentials={field: SecretRef(env="AZURE_TEST_SECRET")})
        store = open_store(spec, LocalSecretProvider())
        assert isinstance(store, AzureObjectStore)
        write_bytes(store, "x/object", field.encode())
        assert read_bytes(store, "x/object") == field.encode()
        assert _keys(store) == ["x/object"]
        store.delete("x/object")
        assert value not in store.describe()


def test_missing_or_ambiguous_credentials_say_which_fields_are_accepted(azure_backend: AzureBackend) -> None:
    spec = AzureStoreSpec(name="azure-anon", account_url="https://acct.blob.core.windows.net", container="backups")
    with pytest.raises(StoreError) as missing:
        store_from_spec(spec, {})
    assert "azure-anon" in str(missing.value)
    assert all(field in str(missing.value) for field in ("account_key", "sas_token", "connection_string"))
    with pytest.raises(StoreError, match="only one"):
        store_from_spec(spec, {"account_key": ACCOUNT_KEY, "sas_token": "sv=x&sig=y"})
    with pytest.raises(StoreError) as malformed:
        store_from_spec(spec, {"connection_string": "AccountKey=c2VjcmV0LXZhbHVlLTEyMw==;nonsense"})
    assert "c2VjcmV0LXZhbHVlLTEyMw==" not in str(malformed.value)


# --- retries ------------------------------------------------------------------------------------


def test_retries_are_bounded_and_the_final_error_names_store_key_and_status(azure_backend: AzureBackend) -> None:
    proxy = azure_backend.proxy()
    store = azure_backend.new_store(name="azure-busy", via=proxy, fast_retries=True)
    proxy.fail_next(100, status=503)
    with pytest.raises(StoreError) as raised:
        write_bytes(store, "busy/object", b"data")
    assert proxy.failures_served == 4  # the first attempt and 3 retries
    assert "azure-busy" in str(raised.value) and "busy/object" in str(raised.value) and "503" in str(raised.value)


# --- server-side copies -------------------------------------------------------------------------


def test_a_backup_copied_between_containers_is_copied_by_azure(azure_backend: AzureBackend,
                                                                backup: Callable[..., BackupOutcome]) -> None:
    source = azure_backend.new_store()
    target = azure_backend.new_store(prefix="copies")
    outcome = backup([source])
    [stored] = list_backups(source, SOURCE_DB)

    copied = copy_backup(stored, target)

    verify_stored_backup(target, copied.manifest)
    properties = target.blob_client(outcome.manifest.dump_key).get_blob_properties()
    assert properties.copy.status == "success"
    assert properties.copy.source is not None
    assert properties.copy.source.endswith(f"/{source.container}/{outcome.manifest.dump_key}")


def test_server_side_copy_only_within_one_account(azure_backend: AzureBackend, tmp_path: Path) -> None:
    source = azure_backend.new_store()
    write_bytes(source, "c/object", b"payload")
    target = azure_backend.new_store()
    proxy = azure_backend.proxy()
    elsewhere = azure_backend.new_store(via=proxy)  # another endpoint: another account for all we know

    assert target.server_side_copy(LocalObjectStore("local", tmp_path), "c/object") is False
    assert elsewhere.server_side_copy(source, "c/object") is False
    assert target.server_side_copy(source, "c/object") is True
    assert read_bytes(target, "c/object") == b"payload"
    with pytest.raises(ObjectNotFound) as missing:
        target.server_side_copy(source, "c/missing")
    assert source.name in str(missing.value) and "c/missing" in str(missing.value)


def test_server_side_copy_from_a_store_reached_by_sas(azure_backend: AzureBackend) -> None:
    container = azure_backend.create_container()
    token = generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                   permission=ContainerSasPermissions(read=True, write=True, list=True),
                                   expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    source = azure_backend.new_store(container=container, credentials={"sas_token": token})
    write_bytes(source, "c/object", b"via sas")
    target = azure_backend.new_store()

    assert target.server_side_copy(source, "c/object") is True
    assert read_bytes(target, "c/object") == b"via sas"


# --- immutability -------------------------------------------------------------------------------


def test_immutability_settings_do_not_disturb_writes_reads_and_copies_on_azurite(azure_backend: AzureBackend) -> None:
    """Azurite accepts the policy headers and ignores them: this proves only that an
    immutable store works end to end, not that anything is locked (see the stand-in)."""
    retain = ImmutabilitySpec(mode="compliance", retain=timedelta(days=7))
    store = azure_backend.new_store(block_bytes=MiB, immutability=retain)
    write_bytes(store, "imm/small", b"s")
    write_bytes(store, "imm/empty", b"")
    write_bytes(store, "imm/large", b"L" * (2 * MiB + 5))
    other = azure_backend.new_store(immutability=retain)
    assert other.server_side_copy(store, "imm/large") is True
    assert read_bytes(other, "imm/large") == b"L" * (2 * MiB + 5)
    assert _keys(store) == ["imm/empty", "imm/large", "imm/small"]


class _AzureStandIn(BaseHTTPRequestHandler):
    """Answers as Azure documents for a container with version-level immutability: writes
    succeed (their headers are recorded), deleting a blob is refused with 409
    BlobImmutableDueToPolicy, and its properties carry the policy's expiry."""

    requests: list[tuple[str, str, dict[str, str]]]
    retain_until: datetime

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def _answer(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in {"x-ms-request-id": "standin", "x-ms-version": "2025-11-05",
                            "Date": format_datetime(datetime.now(timezone.utc), usegmt=True),
                            "Content-Length": str(len(body)), **headers}.items():
            self.send_header(name, value)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _record(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def do_PUT(self) -> None:
        self._record()
        self._answer(201, {"ETag": '"0x8DD000000000001"',
                           "Last-Modified": format_datetime(datetime.now(timezone.utc), usegmt=True),
                           "x-ms-request-server-encrypted": "true"})

    def do_DELETE(self) -> None:
        self._record()
        body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobImmutableDueToPolicy</Code>'
                b"<Message>This operation is not permitted as the blob is immutable due to a policy.\n"
                b"RequestId:standin</Message></Error>")
        self._answer(409, {"x-ms-error-code": "BlobImmutableDueToPolicy", "Content-Type": "application/xml"}, body)

    def do_HEAD(self) -> None:
        self._record()
        self._answer(200, {"ETag": '"0x8DD000000000001"', "x-ms-blob-type": "BlockBlob",
                           "Last-Modified": format_datetime(datetime.now(timezone.utc), usegmt=True),
                           "x-ms-immutability-policy-until-date": format_datetime(self.retain_until, usegmt=True),
                           "x-ms-immutability-policy-mode": "locked"}, b"12345")


StandIn = tuple[str, type[_AzureStandIn]]


@pytest.fixture
def azure_standin() -> Iterator[StandIn]:
    handler = type("Handler", (_AzureStandIn,), {
        "requests": [], "retain_until": datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{ACCOUNT}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("mode", "policy_mode"), [("compliance", "Locked"), ("governance", "Unlocked")])
def test_every_commit_carries_the_immutability_policy(azure_standin: StandIn, mode: Literal["compliance", "governance"],
                                                     policy_mode: str) -> None:
    account_url, handler = azure_standin
    store = AzureObjectStore("azure-worm", account_url, "backups", account_key=ACCOUNT_KEY, block_bytes=MiB,
                             immutability=ImmutabilitySpec(mode=mode, retain=timedelta(days=30)))
    before = datetime.now(timezone.utc)
    write_bytes(store, "small/manifest.json", b"{}")
    write_bytes(store, "large/dump", b"d" * (MiB + 1))

    commits = [headers for method, path, headers in handler.requests if "comp=blocklist" in path]
    assert len(commits) == 2
    assert not [path for method, path, _ in handler.requests if "comp=" not in path]  # never a bare Put Blob
    for headers in commits:
        assert headers["x-ms-immutability-policy-mode"] == policy_mode
        until = parsedate_to_datetime(headers["x-ms-immutability-policy-until-date"])
        assert timedelta(days=30) - timedelta(seconds=5) <= until - before <= timedelta(days=30, seconds=5)


def test_deleting_an_immutable_object_raises_object_locked_with_its_expiry(azure_standin: StandIn) -> None:
    account_url, handler = azure_standin
    store = AzureObjectStore("azure-worm", account_url, "backups", account_key=ACCOUNT_KEY)
    with pytest.raises(ObjectLocked) as locked:
        store.delete("backups/orders/1/dump.pgdump.zst")
    assert "azure-worm" in str(locked.value) and "backups/orders/1/dump.pgdump.zst" in str(locked.value)
    assert locked.value.retain_until == handler.retain_until
