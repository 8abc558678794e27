"""A store in an Azure Blob Storage container, written as block blobs.

Contract on Azure, operation by operation:

- **Writes** stage blocks (`Put Block`, `block_bytes` each, one block in memory at a time)
  and make the object appear, whole, with one `Put Block List` on commit(). An object
  smaller than one block is written with a single `Put Blob` instead. Until commit the
  staged blocks belong to an *uncommitted blob*: invisible to reads and listings.
- **Aborts and crashes.** Azure has no "abort upload" call and deletes uncommitted blocks
  itself only after 7 days. abort() and discard_incomplete() discard an uncommitted blob
  by committing an empty block list *only if no committed blob exists* (If-None-Match: *)
  and then deleting exactly that empty blob (If-Match: its ETag): a writer that commits
  meanwhile never loses its object. Uncommitted blocks staged over an existing committed
  blob (an interrupted overwrite) cannot be told apart in a listing; they are left to
  Azure's 7-day clean-up and are not reported by incomplete_uploads().
- **Immutability.** With `immutability` set, every object is committed with a version-level
  immutability policy (`Locked` for compliance, `Unlocked` for governance) expiring
  `retain` after the commit, in the same request that makes it visible, so no object is
  ever visible unprotected. The container must have version-level immutability support
  enabled (and no default policy of its own: discarding an uncommitted blob briefly
  creates an empty one). Deleting a protected object raises ObjectLocked. Azurite does
  not implement immutability (it ignores the policy headers), so this part is exercised
  against a wire-level stand-in only, not against the emulator.
- **Retries.** The SDK's retry policy (bounded attempts, exponential backoff) retries
  5xx, throttling (Azure answers 503 ServerBusy) and connection resets; every request body
  here is in memory, so a retried block is resent whole.
- **Errors** surface as StoreError naming the store and the key (ObjectNotFound for a
  missing blob, ObjectLocked for a protected one). Their text never holds the account
  key, a SAS token or a signed URL: the SDK's messages are scrubbed, and the SDK exception
  is not chained because tracebacks (Dagster's event log among them) would print it.
"""

from __future__ import annotations

import base64
import builtins
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
)
from azure.storage.blob import (
    BlobBlock,
    BlobClient,
    BlobServiceClient,
    ContainerClient,
    ExponentialRetry,
    ImmutabilityPolicy,
    LinearRetry,
)

from platform_orchestration.storage.base import (
    READ_CHUNK_BYTES,
    Immutability,
    IncompleteUpload,
    ObjectInfo,
    ObjectLocked,
    ObjectNotFound,
    ObjectStore,
    PreconditionFailed,
    StoreError,
    WriterLifecycle,
    check_key,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_BLOCK_BYTES = 8 * MiB
DOWNLOAD_CHUNK_BYTES = 4 * MiB
DEFAULT_PAGE_SIZE = 1000
CREDENTIAL_FIELDS = ("account_key", "sas_token", "connection_string")

# A block blob holds at most 50,000 blocks of at most 4000 MiB. The object's size is not
# known while it streams, so blocks double in size every 10,000: 8 MiB blocks reach
# 2.4 TiB, while an ordinary object never holds more than `block_bytes` in memory.
MAX_BLOCKS = 50_000
BLOCKS_PER_SIZE_STEP = 10_000
MAX_BLOCK_BYTES = 4000 * MiB

_LOCKED_CODES = ("BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold")
_POLICY_MODE = {"compliance": "Locked", "governance": "Unlocked"}


def block_size(base_bytes: int, index: int) -> int:
    """Size of the block at `index` (0-based) of an upload whose first block is `base_bytes`."""
    return min(base_bytes << (index // BLOCKS_PER_SIZE_STEP), MAX_BLOCK_BYTES)


def default_retry() -> ExponentialRetry:
    """Up to 5 retries of any request, 2 s, 5 s, 11 s, 29 s and 83 s apart (plus jitter):
    long enough to ride out throttling or a brief outage, bounded so a dead endpoint fails
    the store within about 2.5 minutes instead of stalling a backup."""
    return ExponentialRetry(initial_backoff=2, increment_base=3, retry_total=5, random_jitter_range=1,
                            retry_connect=5, retry_read=5, retry_status=5)


class _Scrubber:
    """Removes credentials from text the SDK produced (messages, URLs with SAS queries)."""

    _SIGNATURE = re.compile(r"([?&;]sig=)[^&\s'\"<>;]*", re.IGNORECASE)
    _CONNECTION_SECRET = re.compile(r"((?:AccountKey|SharedAccessSignature)=)[^;\s'\"<>]*", re.IGNORECASE)

    def __init__(self, secrets: list[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if len(secret) < 8:  # a short value would blank out ordinary words
                continue
            # SAS signatures travel percent-encoded, and not always the same way.
            for plain in (secret, unquote(secret)):
                forms.update({plain, quote(plain, safe=""), quote(plain), quote_plus(plain)})
        self._secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        text = self._SIGNATURE.sub(r"\1***", text)
        return self._CONNECTION_SECRET.sub(r"\1***", text)


def _secrets_of(account_key: str | None, sas_token: str | None, connection_string: str | None) -> list[str]:
    secrets = [s for s in (account_key, sas_token, connection_string) if s]
    for token in (sas_token or "", connection_string or ""):
        secrets += re.findall(r"sig=([^&;\s]+)", token)
        secrets += re.findall(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", token, re.IGNORECASE)
    return secrets


def _bare(etag: str | None) -> str | None:
    """An ETag without its quotes: listings give it bare, downloads quoted."""
    return etag.strip('"') if etag else etag


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


class AzureObjectWriter(WriterLifecycle):
    """Streams one object as staged blocks; see the module docstring for the contract."""

    def __init__(self, store: AzureObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._blob = store.blob_client(key)
        self._upload_id = uuid.uuid4().hex
        self._buffer = bytearray()
        self._block_ids: list[str] = []

    def _block_id(self, index: int) -> str:
        # Every block id of a blob must have the same length; the upload id keeps two
        # writers of one key from ever committing each other's blocks.
        return base64.b64encode(f"{self._upload_id}-{index:06d}".encode()).decode()

    def _next_block_bytes(self) -> int:
        return block_size(self._store.block_bytes, len(self._block_ids))

    def write(self, chunk: bytes) -> None:
        if self.committed or self.aborted:
            raise StoreError(f"store {self._store.name}: writing {self._key} after it was "
                             f"{'committed' if self.committed else 'aborted'}")
        self._buffer += chunk
        while len(self._buffer) >= (size := self._next_block_bytes()):
            with memoryview(self._buffer) as view:
                block = bytes(view[:size])
            del self._buffer[:size]
            self._stage(block)

    def _stage(self, data: bytes) -> None:
        if len(self._block_ids) >= MAX_BLOCKS:
            raise StoreError(f"store {self._store.name}: writing {self._key} failed: "
                             f"more than {MAX_BLOCKS} blocks (the block blob limit)")
        block_id = self._block_id(len(self._block_ids))
        try:
            self._blob.stage_block(block_id, data, length=len(data))
        except AzureError as exc:
            raise self._store.failure(f"writing {self._key}", exc) from None
        self._block_ids.append(block_id)

    def commit(self) -> None:
        """Make the object visible, whole; on failure abort and raise StoreError."""
        if self.committed:
            return
        if self.aborted:
            raise StoreError(f"store {self._store.name}: committing {self._key} after it was aborted")
        try:
            policy = self._store.immutability_policy()
            # Immutable commits always go through blocks: a commit whose response was lost
            # can then be recognised by its block list rather than failing on its own lock.
            if not self._block_ids and policy is None:
                self._blob.upload_blob(bytes(self._buffer), overwrite=True, length=len(self._buffer))
            else:
                if self._buffer:
                    self._stage(bytes(self._buffer))
                self._commit_blocks(policy)
        except AzureError as exc:
            self.abort()
            raise self._store.failure(f"committing {self._key}", exc) from None
        except StoreError:
            self.abort()
            raise
        self._buffer = bytearray()
        self.committed = True

    def _commit_blocks(self, policy: ImmutabilityPolicy | None) -> None:
        try:
            self._blob.commit_block_list([BlobBlock(block_id) for block_id in self._block_ids],
                                         immutability_policy=policy)
        except AzureError:
            # The commit may have landed before its response was lost (and a retry of it
            # then hits the object's own lock): our block list in place means it did.
            if not self._block_ids or self._committed_block_ids() != self._block_ids:
                raise

    def _committed_block_ids(self) -> list[str] | None:
        try:
            committed, _uncommitted = self._blob.get_block_list("committed")
        except AzureError:
            return None
        return [block.id for block in committed]

    def abort(self) -> None:
        """Discard what was staged, best effort: an abort runs while something already went
        wrong (often the network), and what it cannot remove is reported by
        incomplete_uploads() and removed by Azure within 7 days anyway."""
        if self.committed or self.aborted:
            return
        self.aborted = True
        self._buffer = bytearray()
        if not self._block_ids:
            return
        try:
            self._store.discard_uncommitted(self._key, retry_total=1)
        except StoreError as exc:
            log.warning("%s", exc)


class AzureObjectStore:
    """An ObjectStore over one container (and optional prefix) of an Azure storage account.

    Exactly one credential is required: `account_key` (shared key), `sas_token` (a SAS with
    read, write, delete and list permissions on the container; add `i` to set immutability
    policies) or `connection_string` (whose endpoint then takes the place of
    `account_url`). Keys are stored under `prefix/`; listings return them without it.
    `retry` is the SDK's retry policy (default: default_retry()); `connection_timeout` and
    `read_timeout` (seconds) bound each request; `page_size` is the listing page size.
    `api_version` pins the Storage REST API version (default: the SDK's newest).
    """

    reads_over_network = True

    def __init__(self, name: str, account_url: str, container: str, *, prefix: str = "",
                 account_key: str | None = None, sas_token: str | None = None,
                 connection_string: str | None = None,
                 immutability: Immutability | None = None,
                 page_size: int = DEFAULT_PAGE_SIZE, block_bytes: int = DEFAULT_BLOCK_BYTES,
                 retry: ExponentialRetry | LinearRetry | None = None,
                 connection_timeout: float = 20, read_timeout: float = 60,
                 copy_timeout: float = 3600, api_version: str | None = None) -> None:
        self.name = name
        self.container = container
        self.prefix = prefix.strip("/")
        self.immutability = immutability
        self.page_size = page_size
        self.block_bytes = block_bytes
        self.copy_timeout = copy_timeout
        self.scrub = _Scrubber(_secrets_of(account_key, sas_token, connection_string))
        values = (account_key, sas_token, connection_string)
        given = [field for field, value in zip(CREDENTIAL_FIELDS, values, strict=True) if value]
        if not given:
            raise StoreError(
                f"store {name}: no Azure credentials; give exactly one of "
                f"{', '.join(CREDENTIAL_FIELDS)} under the store's `credentials` "
                "(ambient Entra ID credentials would need azure-identity, which is not installed)")
        if len(given) > 1:
            raise StoreError(f"store {name}: give only one Azure credential, got {' and '.join(given)}")
        options: dict[str, Any] = dict(
            retry_policy=retry or default_retry(), connection_timeout=connection_timeout, read_timeout=read_timeout,
            # Downloads fetch 4 MiB per request (the SDK's first request would take 32 MiB).
            max_single_get_size=DOWNLOAD_CHUNK_BYTES, max_chunk_get_size=DOWNLOAD_CHUNK_BYTES)
        if api_version:
            options["api_version"] = api_version
        try:
            if connection_string:
                self.service = BlobServiceClient.from_connection_string(connection_string, **options)
            else:
                # A string credential is a SAS when it parses as one, else the account key; the
                # SDK derives the account name from the URL (the path's first segment on emulators).
                credential = sas_token.lstrip("?") if sas_token else account_key
                self.service = BlobServiceClient(_without_query(account_url), credential=credential, **options)
        except (ValueError, AzureError) as exc:
            # The text may quote the connection string it could not parse.
            raise StoreError(f"store {name}: invalid Azure settings: {self.scrub(str(exc))}") from None
        self.account_url = _without_query(self.service.url)
        self._container: ContainerClient = self.service.get_container_client(container)

    # --- naming -----------------------------------------------------------------------------

    def describe(self) -> str:
        where = f"{self.account_url}/{self.container}" + (f"/{self.prefix}" if self.prefix else "")
        return f"{self.name} (azure {where})"

    def _blob_name(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _key_of(self, blob_name: str) -> str:
        return blob_name[len(self.prefix) + 1:] if self.prefix else blob_name

    def _name_prefix(self, prefix: str) -> str:
        return f"{self.prefix}/{prefix}" if self.prefix else prefix

    def blob_client(self, key: str) -> BlobClient:
        """The SDK client of the blob that holds `key` (for inspection; bypasses the contract)."""
        return self._container.get_blob_client(self._blob_name(key))

    # --- errors -----------------------------------------------------------------------------

    def failure(self, action: str, exc: AzureError) -> StoreError:
        """The StoreError for `exc` raised while doing `action` (which names the key)."""
        if isinstance(exc, HttpResponseError):
            first_line = (exc.message or exc.reason or "").strip().splitlines()
            detail = f"HTTP {exc.status_code} {self._error_code(exc) or exc.reason or ''}".rstrip()
            if first_line:
                detail += f": {first_line[0]}"
        else:
            detail = f"{type(exc).__name__}: {exc}"
        detail = self.scrub(detail)
        if len(detail) > 500:
            detail = detail[:500] + "..."
        return StoreError(f"store {self.name}: {action} failed: {detail}")

    @staticmethod
    def _error_code(exc: AzureError) -> str:
        return str(getattr(exc, "error_code", None) or "")

    def _not_found(self, exc: AzureError) -> bool:
        return isinstance(exc, HttpResponseError) and exc.status_code == 404 and \
            self._error_code(exc) == "BlobNotFound"

    # --- ObjectStore ------------------------------------------------------------------------

    def immutability_policy(self) -> ImmutabilityPolicy | None:
        """The policy a commit made now gets, or None without configured immutability."""
        if self.immutability is None:
            return None
        return ImmutabilityPolicy(expiry_time=datetime.now(timezone.utc) + self.immutability.retain,
                                  policy_mode=_POLICY_MODE[self.immutability.mode])

    def open_writer(self, key: str) -> AzureObjectWriter:
        return AzureObjectWriter(self, key)

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Stream an object in chunks of at most `chunk_bytes`; the first request is made
        now, so a missing object raises ObjectNotFound here rather than when iterated."""
        try:
            # Later chunks are fetched with If-Match on this ETag: an object replaced
            # mid-read fails the read instead of splicing two versions.
            downloader = self.blob_client(key).download_blob(max_concurrency=1)
        except AzureError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(f"store {self.name}: no object {key}") from None
            raise self.failure(f"reading {key}", exc) from None
        return self._chunks(key, downloader.chunks(), chunk_bytes)

    def _chunks(self, key: str, chunks: Iterator[bytes], chunk_bytes: int) -> Iterator[bytes]:
        try:
            for chunk in chunks:
                if len(chunk) <= chunk_bytes:
                    yield chunk
                    continue
                view = memoryview(chunk)
                for offset in range(0, len(view), chunk_bytes):
                    yield bytes(view[offset:offset + chunk_bytes])
        except AzureError as exc:
            raise self.failure(f"reading {key}", exc) from None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects under `prefix`, in key order: Azure lists blob names in
        lexicographic order, so pages are passed on as they arrive, never all held."""
        try:
            for blob in self._container.list_blobs(name_starts_with=self._name_prefix(prefix),
                                                   results_per_page=self.page_size):
                yield ObjectInfo(self._key_of(blob.name), blob.size, blob.last_modified, _bare(blob.etag))
        except AzureError as exc:
            raise self.failure(f"listing {prefix or '(all keys)'}", exc) from None

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and its ETag, in one GET."""
        try:
            downloader = self.blob_client(key).download_blob(max_concurrency=1)
            return downloader.readall(), _bare(downloader.properties.etag)
        except AzureError as exc:
            if self._not_found(exc):
                raise ObjectNotFound(f"store {self.name}: no object {key}") from None
            raise self.failure(f"reading {key}", exc) from None

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """One Put Blob with an ETag condition (If-Match, or If-None-Match: * for None):
        Azure refuses it (412, or 409 for an existing blob) when another writer got there first."""
        condition: dict[str, Any] = ({"overwrite": False} if version is None else
                                     {"overwrite": True, "etag": f'"{version}"',
                                      "match_condition": MatchConditions.IfNotModified})
        try:
            self.blob_client(key).upload_blob(data, max_concurrency=1, **condition)
        except (ResourceExistsError, ResourceModifiedError):
            raise PreconditionFailed(f"store {self.name}: {key} changed since it was read") from None
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code in (409, 412):
                raise PreconditionFailed(f"store {self.name}: {key} changed since it was read") from None
            raise self.failure(f"writing {key}", exc) from None

    def delete(self, key: str) -> None:
        blob = self.blob_client(key)
        try:
            blob.delete_blob(delete_snapshots="include")
        except AzureError as exc:
            if self._not_found(exc):
                return
            if self._error_code(exc) in _LOCKED_CODES:
                until = self._retained_until(blob)
                raise ObjectLocked(f"store {self.name}: {key} is immutable"
                                   + (f" until {until.isoformat()}" if until else ""), until) from None
            raise self.failure(f"deleting {key}", exc) from None

    @staticmethod
    def _delete_quietly(blob: BlobClient) -> None:
        try:
            blob.delete_blob()
        except AzureError:
            log.debug("could not delete %s after a failed copy", blob.blob_name)

    @staticmethod
    def _retained_until(blob: BlobClient) -> datetime | None:
        try:
            return blob.get_blob_properties().immutability_policy.expiry_time
        except AzureError:
            return None

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> builtins.list[IncompleteUpload]:
        """Keys with staged blocks but no committed blob (see the module docstring), each with
        the blob's Last-Modified (its newest staged block) and the bytes staged; with
        `older_than`, only those idle since before it. `list` is a method here, hence builtins."""
        name_prefix = self._name_prefix(prefix)
        try:
            # Listed first, then the committed ones: a blob committed in between is then
            # not reported, rather than reported and needlessly discarded.
            with_uncommitted = builtins.list(self._container.list_blobs(
                name_starts_with=name_prefix, include=["uncommittedblobs"], results_per_page=self.page_size))
            committed = {blob.name for blob in self._container.list_blobs(
                name_starts_with=name_prefix, results_per_page=self.page_size)}
        except AzureError as exc:
            raise self.failure(f"listing incomplete uploads under {prefix or '(all keys)'}", exc) from None
        found = []
        for blob in with_uncommitted:
            if blob.name in committed:
                continue
            upload = IncompleteUpload(self._key_of(blob.name), blob.last_modified or blob.creation_time)
            if not upload.idle_since_before(older_than):
                continue
            size = self._staged_bytes(upload.key)
            if size is not None:
                found.append(IncompleteUpload(upload.key, upload.last_active_at, size=size))
        return sorted(found, key=lambda upload: upload.key)

    def _staged_bytes(self, key: str) -> int | None:
        """Bytes of the uncommitted blocks at `key`; None if the blob is gone meanwhile."""
        try:
            _committed, uncommitted = self.blob_client(key).get_block_list("uncommitted")
        except AzureError as exc:
            if self._not_found(exc):
                return None
            raise self.failure(f"listing the staged blocks of {key}", exc) from None
        return sum(block.size or 0 for block in uncommitted)

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> builtins.list[IncompleteUpload]:
        """Discard what incomplete_uploads() reports. Azure's staged blocks belong to a blob
        name, not to one upload: discarding a name drops every writer's uncommitted blocks
        there, which is why `older_than` goes by the newest block."""
        return [upload for upload in self.incomplete_uploads(prefix, older_than=older_than)
                if self.discard_uncommitted(upload.key)]

    def discard_uncommitted(self, key: str, retry_total: int | None = None) -> bool:
        """Remove the uncommitted blob at `key`; False (and nothing touched) when a committed
        blob is there. `retry_total` overrides the store's retry count for these requests."""
        blob = self.blob_client(key)
        options: dict[str, Any] = {} if retry_total is None else {"retry_total": retry_total}
        try:
            # Committing an empty list drops every uncommitted block; If-None-Match: * makes
            # sure it never replaces an object that was committed meanwhile.
            empty = blob.commit_block_list([], match_condition=MatchConditions.IfMissing, **options)
            blob.delete_blob(etag=str(empty["etag"]), match_condition=MatchConditions.IfNotModified, **options)
        except (ResourceExistsError, ResourceModifiedError):
            return False
        except AzureError as exc:
            if self._not_found(exc):
                return True
            raise self.failure(f"discarding the incomplete upload of {key}", exc) from None
        return True

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        """Copy `key` inside Azure when `source` is a container of this same account
        (Copy Blob, waited for); False for any other source.

        While a long copy is pending the target object is already listed; callers only
        trust a copy once it is read back (copy_backup does), so this is harmless."""
        if not isinstance(source, AzureObjectStore) or source.account_url != self.account_url:
            return False
        target = self.blob_client(key)
        # The source URL carries the source store's SAS when it has one; within one account
        # a shared-key request needs no authorisation of the source.
        source_url = source.blob_client(key).url
        what = f"copying {key} from {source.name}"
        try:
            started = target.start_copy_from_url(source_url, immutability_policy=self.immutability_policy())
            status, copy_id = str(started["copy_status"]), str(started["copy_id"])
            deadline = time.monotonic() + self.copy_timeout
            pause = 0.05
            while status == "pending":
                if time.monotonic() > deadline:
                    target.abort_copy(copy_id)
                    raise StoreError(f"store {self.name}: {what} did not finish within {self.copy_timeout:.0f}s")
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                status = str(target.get_blob_properties().copy.status)
            if status != "success":
                reason = str(target.get_blob_properties().copy.status_description)
                self._delete_quietly(target)
                raise StoreError(source.scrub(self.scrub(f"store {self.name}: {what} ended {status}: {reason}")))
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code == 404 and \
                    self._error_code(exc) in ("BlobNotFound", "CannotVerifyCopySource"):
                raise ObjectNotFound(f"store {source.name}: no object {key} (to copy into {self.name})") from None
            failure = self.failure(what, exc)
            raise StoreError(source.scrub(str(failure))) from None
        return True
