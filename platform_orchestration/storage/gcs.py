"""A store in a Google Cloud Storage bucket (or a GCS-compatible endpoint such as an emulator).

Writes are resumable upload sessions fed in chunks of `chunk_bytes` (a multiple of 256 KiB):
memory stays bounded by about one chunk, and the object becomes visible only when the final
chunk is sent by `commit()`. An object smaller than one chunk is sent as a single upload at
commit instead (one request, same visibility guarantee). A chunk that fails transiently (503,
a cut connection, a timeout) is not resent from zero: the session is asked how many bytes it
has persisted and the upload resumes from there. `abort()` cancels the session (HTTP DELETE of
its URI), so nothing is ever visible.

GCS has no API to list open resumable sessions: `incomplete_uploads()` reports the sessions
this process started and neither finished nor cancelled (a registry shared by every store
instance on the same endpoint and bucket), and `discard_incomplete()` cancels those. A session
left behind by a crashed process is invisible, unbilled, and expired by GCS after a week.

Immutability (`Immutability`) becomes per-object retention set at upload
(`compliance` -> mode `Locked`, `governance` -> `Unlocked`, retain-until = now + `retain`);
the bucket must have object retention enabled. A delete refused because of retention or a hold
raises `ObjectLocked`.

Every failure surfaces as `StoreError` (`ObjectNotFound` for a missing object) naming the store
and the key. Messages are scrubbed: no credentials, no query strings, no resumable session URIs
(their `upload_id` lets anyone holding it write to the session), and the SDK exception is not
chained, so tracebacks do not carry them either.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import mimetypes
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import google.auth
import google_crc32c
import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.api_core.retry import Retry
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY
from google.oauth2 import service_account

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

__all__ = ["FAST_RETRIES", "CREDENTIAL_FIELDS", "GcsObjectStore", "google_credentials", "GcsObjectWriter", "RetrySettings", "UPLOAD_QUANTUM"]

log = logging.getLogger(__name__)

UPLOAD_QUANTUM = 256 * 1024
"""GCS accepts non-final resumable chunks only in multiples of this many bytes."""

DEFAULT_CHUNK_BYTES = 8 * 1024 * 1024
_SCOPES = ("https://www.googleapis.com/auth/devstorage.full_control",)
CREDENTIAL_FIELDS = frozenset({"service_account_json"})
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# Mid-stream download failures: the response is re-opened at the offset reached.
_STREAM_ERRORS = (
    requests.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.Timeout,
    urllib3.exceptions.ProtocolError,
    ConnectionError,
)

_T = TypeVar("_T")


@dataclass(frozen=True)
class RetrySettings:
    """Exponential backoff for every request: first wait `initial` s, growing by `multiplier` up
    to `maximum` s between attempts, giving up `deadline` s after the first attempt."""

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    deadline: float = 180.0
    stream_restarts: int = 5
    """How many times in a row a download may be re-opened without receiving a byte."""

    def retry(self) -> Retry:
        """The google.api_core Retry these settings describe (GCS's transient errors only)."""
        return DEFAULT_RETRY.with_delay(initial=self.initial, maximum=self.maximum,
                                        multiplier=self.multiplier).with_timeout(self.deadline)


FAST_RETRIES = RetrySettings(initial=0.02, maximum=0.2, multiplier=2.0, deadline=2.0, stream_restarts=3)
"""For tests against an emulator: a few quick attempts, a failure known within ~2 s."""


# --- scrubbing -----------------------------------------------------------------------------------

_SCRUBBERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
     "<private key>"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 <redacted>"),
    (re.compile(r"(?i)\b(upload_id|x-goog-signature|x-goog-credential|signature|access_token|"
                r"refresh_token|id_token|assertion|client_secret|private_key(?:_id)?|sig|key|token)"
                r"(\"?\s*[=:]\s*\"?)[^&\s'\",)]+"), r"\1\2<redacted>"),
    # Any query string: session URIs, signed URLs and API keys all live there.
    (re.compile(r"\?[^\s'\")]*"), "?<redacted>"),
)


def scrub(text: str) -> str:
    """`text` with credentials, tokens, query strings and session ids removed."""
    for pattern, replacement in _SCRUBBERS:
        text = pattern.sub(replacement, text)
    return text


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.RetryError):
        cause = f": {_describe_exception(exc.cause)}" if exc.cause is not None else ""
        return f"gave up retrying ({exc.message}){cause}"
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code} {exc.message}"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return f"connection failed ({type(exc).__name__})"
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return f"authentication failed ({type(exc).__name__}: {exc})"
    return f"{type(exc).__name__}: {exc}"


# --- retention ------------------------------------------------------------------------------------

_UNTIL = re.compile(r"until (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d))")
_LOCK_REASONS = frozenset({"retentionPolicyNotMet", "objectUnderActiveHold", "objectRetentionNotMet"})


def retention_refusal(exc: BaseException) -> tuple[bool, datetime | None]:
    """Whether `exc` is GCS refusing a change because of retention or a hold, and until when
    when the message says (GCS words it `... is subject to ... retention ... and cannot be
    deleted, overwritten or archived until 2030-01-01T00:00:00.5-08:00`)."""
    if not isinstance(exc, api_exceptions.Forbidden):
        return False, None
    message = exc.message or ""
    reasons = {str(error.get("reason")) for error in (exc.errors or []) if isinstance(error, dict)}
    if not (reasons & _LOCK_REASONS or re.search(r"(?i)retention|\bhold\b", message)):
        return False, None
    match = _UNTIL.search(message)
    if match is None:
        return True, None
    stamp = match.group(1).replace("Z", "+00:00")
    # fromisoformat before 3.11 rejects nanoseconds: keep microseconds.
    stamp = re.sub(r"\.(\d{6})\d+", r".\1", stamp)
    try:
        return True, datetime.fromisoformat(stamp)
    except ValueError:
        return True, None


def _retention_for(immutability: Immutability | None, now: datetime) -> tuple[str, datetime] | None:
    if immutability is None:
        return None
    mode = "Locked" if immutability.mode == "compliance" else "Unlocked"
    return mode, now + immutability.retain


# --- open sessions registry -----------------------------------------------------------------------


@dataclass
class _Session:
    """A resumable upload session this process opened and has not finished."""

    object_name: str
    uri: str = field(repr=False)
    started_at: datetime
    # Updated by the writer each time the session acknowledges bytes.
    last_active_at: datetime | None = None
    persisted: int = 0


_SESSIONS: dict[tuple[str, str], dict[int, _Session]] = {}
_SESSIONS_LOCK = threading.Lock()


def _track(place: tuple[str, str], session: _Session) -> None:
    with _SESSIONS_LOCK:
        _SESSIONS.setdefault(place, {})[id(session)] = session


def _untrack(place: tuple[str, str], session: _Session) -> None:
    with _SESSIONS_LOCK:
        _SESSIONS.get(place, {}).pop(id(session), None)


def _tracked(place: tuple[str, str]) -> list[_Session]:
    with _SESSIONS_LOCK:
        return list(_SESSIONS.get(place, {}).values())


# --- the writer -----------------------------------------------------------------------------------


class GcsObjectWriter(WriterLifecycle):
    """Streams one object: a single upload at commit if it stays under one chunk, else a
    resumable session fed chunk by chunk and finalized by commit()."""

    def __init__(self, store: GcsObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._offset = 0  # object offset of _buffer[0]: bytes before it are persisted
        self._size = 0
        self._crc = google_crc32c.Checksum()
        self._session: _Session | None = None
        self._failed = False
        self.bytes_sent = 0
        """Bytes of object data put on the wire, resends included (for progress and tests)."""
        self.resumed_from: list[int] = []
        """Offsets the session reported persisted when the upload resumed after a failure."""

    # -- ObjectWriter --

    def write(self, chunk: bytes) -> None:
        """Buffer `chunk`; every full chunk is sent to the session (retried, resumed)."""
        self._check_open()
        self._buffer += chunk
        self._size += len(chunk)
        self._crc.update(chunk)
        try:
            # Strictly more than a chunk: commit always has bytes left for the final request.
            while len(self._buffer) > self._store.chunk_bytes:
                if self._session is None:
                    self._session = self._store.open_session(self._key)
                before = self._offset
                self._transmit(final=False)
                if self._offset == before:
                    raise StoreError(f"store {self._store.name}: writing {self._key} failed: "
                                     "the upload session stopped accepting data")
        except StoreError:
            self._failed = True
            raise

    def commit(self) -> None:
        """Make the object visible with everything written; raises StoreError (and leaves
        nothing visible) if that fails."""
        self._check_open()
        try:
            if self._session is None:
                blob = self._store.upload_whole(self._key, bytes(self._buffer))
                self._check_result(int(blob.size or 0), blob.crc32c)
            else:
                resource: dict[str, Any] | None = None
                while resource is None:
                    before = self._offset
                    resource = self._transmit(final=True)
                    if resource is None and self._offset == before:
                        raise StoreError(f"store {self._store.name}: writing {self._key} failed: "
                                         "the upload session stopped accepting data")
                _untrack(self._store.place, self._session)
                self._check_result(int(resource.get("size") or 0), resource.get("crc32c"))
        except StoreError:
            self._failed = True
            raise
        self._buffer = bytearray()
        self.committed = True

    def abort(self) -> None:
        """Drop the data and cancel the session (one attempt: a session left behind stays
        listed by incomplete_uploads() for discard_incomplete(), and is invisible anyway)."""
        self.aborted = True
        self._buffer = bytearray()
        if self._session is not None and not self.committed:
            self._store.cancel_session(self._session, retry=False)

    # -- internals --

    def _check_open(self) -> None:
        if self.committed or self.aborted or self._failed:
            state = "committed" if self.committed else "aborted" if self.aborted else "failed"
            raise StoreError(f"store {self._store.name}: writer for {self._key} is already {state}")

    def _check_result(self, size: int, crc: str | None) -> None:
        ours = base64.b64encode(self._crc.digest()).decode()
        if size != self._size or (crc is not None and crc != ours):
            # Never leave a damaged object looking like a good one.
            self._store.delete_quietly(self._key)
            raise StoreError(f"store {self._store.name}: writing {self._key} failed: the stored object "
                             f"does not match what was sent (size {size} vs {self._size}, crc32c {crc} vs {ours})")

    def _transmit(self, final: bool) -> dict[str, Any] | None:
        """Send the next chunk (non-final: a multiple of 256 KiB; final: all that is left) with
        retries; after a failed attempt, resume from the offset the session has persisted.
        Returns the object resource once the upload is finalized."""
        assert self._session is not None
        session = self._session
        state = {"resync": False}

        def attempt() -> dict[str, Any] | None:
            if state["resync"]:
                done = self._resync(session, final)
                self.resumed_from.append(self._offset)
                if done is not None:
                    return done
            state["resync"] = True
            return self._put(session, final)

        return self._store.call(attempt, "writing", self._key)

    def _put(self, session: _Session, final: bool) -> dict[str, Any] | None:
        if final:
            length = len(self._buffer)
            total = str(self._size)
        else:
            length = min(len(self._buffer), self._store.chunk_bytes) // UPLOAD_QUANTUM * UPLOAD_QUANTUM
            total = "*"
            if length == 0:
                return None
        if length:
            content_range = f"bytes {self._offset}-{self._offset + length - 1}/{total}"
        else:
            content_range = f"bytes */{total}"
        body = bytes(self._buffer[:length])
        self.bytes_sent += length
        response = self._store.session_request("PUT", session, data=body,
                                               headers={"Content-Range": content_range})
        return self._absorb(response, final)

    def _resync(self, session: _Session, final: bool) -> dict[str, Any] | None:
        total = str(self._size) if final else "*"
        response = self._store.session_request("PUT", session, data=b"",
                                               headers={"Content-Range": f"bytes */{total}"})
        return self._absorb(response, final)

    def _absorb(self, response: requests.Response, final: bool) -> dict[str, Any] | None:
        """Move past what the session says it persisted; the resource if it is finalized."""
        status = response.status_code
        if status in (200, 201):
            if not final:
                raise StoreError(f"store {self._store.name}: writing {self._key} failed: "
                                 "the session finalized the object before commit")
            return response.json()
        if status == 308:
            persisted = _persisted_bytes(response.headers.get("Range"))
            end = self._offset + len(self._buffer)
            if not self._offset <= persisted <= end:
                raise StoreError(f"store {self._store.name}: writing {self._key} failed: the session "
                                 f"reports {persisted} bytes persisted, expected {self._offset}-{end}")
            del self._buffer[:persisted - self._offset]
            self._offset = persisted
            if self._session is not None:
                self._session.persisted = persisted
                self._session.last_active_at = datetime.now(timezone.utc)
            return None
        if status in (404, 410, 499):
            raise StoreError(f"store {self._store.name}: writing {self._key} failed: the upload session "
                             f"is gone (HTTP {status}: cancelled or expired)")
        raise api_exceptions.from_http_status(status, f"upload session answered HTTP {status}")


def _persisted_bytes(range_header: str | None) -> int:
    if not range_header:
        return 0
    match = re.fullmatch(r"bytes=0-(\d+)", range_header.strip())
    if match is None:
        raise ValueError(f"the upload session answered an unexpected Range header {range_header!r}")
    return int(match.group(1)) + 1


# --- the store ------------------------------------------------------------------------------------


def google_credentials(store_name: str, secrets: Mapping[str, str], endpoint_url: str | None
                       ) -> tuple[Credentials | None, str | None]:
    """(credentials, project id they name) from a store's resolved secrets:
    `service_account_json` (a key file's content); without it, anonymous access when
    `endpoint_url` is set (an emulator), else None: Application Default Credentials."""
    if "service_account_json" in secrets:
        try:
            info = json.loads(secrets["service_account_json"])
            credentials = service_account.Credentials.from_service_account_info(info, scopes=_SCOPES)
        except (ValueError, KeyError, TypeError, AttributeError):
            # The exception could quote the key material: say only what is wrong.
            raise StoreError(f"store {store_name}: service_account_json is not a valid "
                             "service-account key (JSON with client_email, private_key, token_uri)") from None
        return credentials, info.get("project_id")
    if endpoint_url:
        return AnonymousCredentials(), None
    return None, None


class GcsObjectStore:
    """Objects under `prefix/` in a GCS bucket. See the module docstring for the guarantees."""

    reads_over_network = True

    def __init__(self, name: str, bucket: str, *, project: str | None = None, prefix: str = "",
                 endpoint_url: str | None = None, credentials: Credentials | None = None,
                 immutability: Immutability | None = None, page_size: int = 1000,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES, retry: RetrySettings = RetrySettings(),
                 connect_timeout: float = 10.0, read_timeout: float = 120.0) -> None:
        """`credentials` None means Application Default Credentials. Every request has the
        (connect, read) timeouts and is retried on transient errors per `retry`."""
        if chunk_bytes <= 0 or chunk_bytes % UPLOAD_QUANTUM:
            raise ValueError(f"chunk_bytes must be a positive multiple of {UPLOAD_QUANTUM}, got {chunk_bytes}")
        self.name = name
        self.bucket_name = bucket
        self.project = project
        self.prefix = prefix.strip("/")
        self.immutability = immutability
        self.page_size = page_size
        self.chunk_bytes = chunk_bytes
        self.retry_settings = retry
        self._retry = retry.retry()
        self._timeout = (connect_timeout, read_timeout)
        if credentials is None:
            try:
                credentials, _ = google.auth.default(scopes=_SCOPES)
            except auth_exceptions.DefaultCredentialsError:
                raise StoreError(f"store {name}: no credentials given and no Application Default "
                                 "Credentials found") from None
        # One authorized HTTP session carries both the SDK's calls and our chunk and download
        # requests; each store has its own, so stores on different endpoints coexist.
        self.http = AuthorizedSession(credentials)
        client_options = {"api_endpoint": endpoint_url.rstrip("/")} if endpoint_url else None
        self._client = storage.Client(project=project, credentials=credentials, _http=self.http,
                                      client_options=client_options)
        # google-cloud-storage 3.17 fetches the bucket's metadata (GET b/BUCKET) in a thread of
        # its own on a client's first call, for OpenTelemetry span attributes we do not record:
        # a request nobody asked for, needing storage.buckets.get, racing the caller's own
        # first request (it took the one 403 a fault test injected). None turns it off for
        # this client only (the library checks the attribute; its switch is a process-wide
        # environment variable).
        self._client._bucket_metadata_cache = None
        self._bucket = self._client.bucket(bucket)
        self.api_endpoint = self._client.api_endpoint.rstrip("/")
        self.place = (self.api_endpoint, bucket)

    # -- ObjectStore --

    def describe(self) -> str:
        parts = urlsplit(self.api_endpoint)
        endpoint = urlunsplit((parts.scheme, parts.hostname or "", "", "", "")) + (
            f":{parts.port}" if parts.port else "")
        where = f"gs://{self.bucket_name}/{self.prefix + '/' if self.prefix else ''}"
        return f"{self.name} (gcs {where} at {endpoint})"

    def open_writer(self, key: str) -> GcsObjectWriter:
        return GcsObjectWriter(self, check_key(key))

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Stream the object's current generation; ObjectNotFound (raised here, before any
        byte) if it does not exist. A cut download resumes from the offset reached; the
        whole object's crc32c is checked at the end."""
        name = self.object_name(check_key(key))
        blob = self.call(lambda: self._bucket.get_blob(name, retry=None, timeout=self._timeout),
                         "reading", key)
        if blob is None:
            raise ObjectNotFound(f"store {self.name}: no object {key}")
        return self._download(key, blob, chunk_bytes)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects whose key starts with `prefix`, in key order (page by page)."""
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0
        found: list[ObjectInfo] = []
        try:
            for blob in self._client.list_blobs(self._bucket, prefix=full_prefix, page_size=self.page_size,
                                                retry=self._retry, timeout=self._timeout):
                found.append(ObjectInfo(blob.name[strip:], int(blob.size or 0),
                                        blob.updated or datetime.fromtimestamp(0, timezone.utc),
                                        str(blob.generation) if blob.generation is not None else None))
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure("listing", prefix or "(all keys)", exc) from None
        yield from sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        """Remove the object; a missing one is fine. ObjectLocked while retention or a hold
        protects it."""
        name = self.object_name(check_key(key))
        try:
            self._bucket.blob(name).delete(retry=self._retry, timeout=self._timeout)
        except api_exceptions.NotFound:
            return
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            locked, until = retention_refusal(exc)
            if locked:
                raise ObjectLocked(f"store {self.name}: deleting {key} refused: the object is under "
                                   f"retention{f' until {until.isoformat()}' if until else ''}", until) from None
            raise self.failure("deleting", key, exc) from None

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and its generation (the download is pinned to it)."""
        name = self.object_name(check_key(key))
        blob = self.call(lambda: self._bucket.get_blob(name, retry=None, timeout=self._timeout),
                         "reading", key)
        if blob is None:
            raise ObjectNotFound(f"store {self.name}: no object {key}")
        generation = blob.generation  # taken now: a download may reset it from its headers
        try:
            data = blob.download_as_bytes(client=self._client, if_generation_match=generation,
                                          retry=self._retry, timeout=self._timeout)
        except (api_exceptions.NotFound, api_exceptions.PreconditionFailed):
            # Replaced or removed between the two requests: read it afresh.
            return self.read_versioned(key)
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure("reading", key, exc) from None
        return data, str(generation)

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """One upload with ``ifGenerationMatch`` (0: only if absent): GCS refuses it with 412
        when another writer got there first. The GCS emulator does not enforce generation
        preconditions (RECIPES.md): against it the write always succeeds."""
        blob = self._bucket.blob(self.object_name(check_key(key)))
        try:
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=_content_type(key),
                                  client=self._client, retry=self._retry, timeout=self._timeout,
                                  checksum="crc32c", if_generation_match=0 if version is None else int(version))
        except api_exceptions.PreconditionFailed:
            raise PreconditionFailed(f"store {self.name}: {key} changed since it was read") from None
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure("writing", key, exc) from None

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Resumable sessions this process opened on this bucket and neither committed nor
        cancelled (GCS cannot list sessions; one abandoned by another process is invisible,
        unbilled, and expires after a week), idle since before `older_than` when given."""
        return sorted((upload for _session, upload in self._incomplete(prefix, older_than)),
                      key=lambda upload: upload.key)

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Cancel the sessions incomplete_uploads() reports; returns those gone. One that
        cannot be cancelled now (server unreachable) stays listed."""
        return sorted((upload for session, upload in self._incomplete(prefix, older_than)
                       if self.cancel_session(session, retry=True)), key=lambda upload: upload.key)

    def _incomplete(self, prefix: str, older_than: datetime | None) -> list[tuple[_Session, IncompleteUpload]]:
        found = []
        for session in self._sessions(prefix):
            upload = IncompleteUpload(self._relative(session.object_name),
                                      session.last_active_at or session.started_at,
                                      size=session.persisted, started_at=session.started_at)
            if upload.idle_since_before(older_than):
                found.append((session, upload))
        return found

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        """Rewrite `key` from `source` inside GCS when `source` is a GCS store on the same
        endpoint and project (rewrite works across buckets and regions); False otherwise, or
        when our credentials may not read the source bucket."""
        if not (isinstance(source, GcsObjectStore) and source.api_endpoint == self.api_endpoint
                and source.project == self.project):
            return False
        check_key(key)
        source_blob = source._bucket.blob(source.object_name(key))
        target = self._bucket.blob(self.object_name(key))
        self._apply_retention(target)
        token: str | None = None
        try:
            while True:
                token, _done, _total = target.rewrite(source_blob, token=token, client=self._client,
                                                      retry=self._retry, timeout=self._timeout)
                if token is None:
                    return True
        except api_exceptions.NotFound:
            raise ObjectNotFound(f"store {source.name}: no object {key} (copying to {self.name})") from None
        except api_exceptions.Forbidden as exc:
            locked, until = retention_refusal(exc)
            if locked:
                raise ObjectLocked(f"store {self.name}: copying {key} refused: the existing object is "
                                   "under retention", until) from None
            log.info("store %s: no server-side copy from %s (%s); streaming instead", self.name,
                     source.name, scrub(_describe_exception(exc)))
            return False
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure(f"copying from {source.name}", key, exc) from None

    # -- helpers shared with the writer --

    def object_name(self, key: str) -> str:
        """The GCS object name of `key`: under `prefix/` when the store has a prefix."""
        return f"{self.prefix}/{key}" if self.prefix else key

    def failure(self, action: str, key: str, exc: BaseException) -> StoreError:
        """A StoreError naming store and key; raise it `from None` (the SDK's exception
        carries URLs)."""
        return StoreError(f"store {self.name}: {action} {key} failed: {scrub(_describe_exception(exc))}")

    def call(self, function: Callable[[], _T], action: str, key: str) -> _T:
        """`function()` retried per the store's settings; failures become StoreError."""
        try:
            return self._retry(function)()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure(action, key, exc) from None

    def upload_whole(self, key: str, data: bytes) -> storage.Blob:
        """One request (retried) that creates the object with `data`; returns its blob."""
        blob = self._bucket.blob(self.object_name(key))
        self._apply_retention(blob)
        try:
            blob.upload_from_file(io.BytesIO(data), size=len(data), content_type=_content_type(key),
                                  client=self._client, retry=self._retry, timeout=self._timeout,
                                  checksum="crc32c")
        except Exception as exc:  # noqa: BLE001 - every SDK failure becomes a StoreError
            raise self.failure("writing", key, exc) from None
        return blob

    def open_session(self, key: str) -> _Session:
        """A new resumable upload session for `key`, tracked until finished or cancelled."""
        name = self.object_name(key)
        blob = self._bucket.blob(name)
        self._apply_retention(blob)
        uri = self.call(lambda: blob.create_resumable_upload_session(
            content_type=_content_type(key), client=self._client, timeout=self._timeout,
            checksum=None, retry=None), "writing", key)
        session = _Session(name, uri, datetime.now(timezone.utc))
        _track(self.place, session)
        return session

    def session_request(self, method: str, session: _Session, **kwargs: Any) -> requests.Response:
        """One request to the session URI (no retry: callers decide how to resume)."""
        return self.http.request(method, session.uri, timeout=self._timeout, **kwargs)

    def cancel_session(self, session: _Session, *, retry: bool) -> bool:
        """DELETE the session; True (and untracked) once the server no longer holds it for
        us. A transient failure keeps it tracked and returns False."""

        def attempt() -> int:
            status = self.session_request("DELETE", session).status_code
            if status in _RETRYABLE_STATUS:
                raise api_exceptions.from_http_status(status, f"cancel answered HTTP {status}")
            return status

        key = self._relative(session.object_name)
        try:
            status = self._retry(attempt)() if retry else attempt()
        except Exception as exc:  # noqa: BLE001 - reported, the session stays tracked
            log.warning("store %s: could not cancel the upload session for %s: %s", self.name, key,
                        scrub(_describe_exception(exc)))
            return False
        if status not in (200, 204, 404, 410, 499):  # 499: GCS's answer to a cancelled session
            log.info("store %s: cancelling the upload session for %s answered HTTP %s; it is "
                     "forgotten here and expires server-side", self.name, key, status)
        _untrack(self.place, session)
        return True

    def delete_quietly(self, key: str) -> None:
        try:
            self.delete(key)
        except StoreError as exc:
            log.warning("%s", exc)

    # -- internals --

    def _relative(self, object_name: str) -> str:
        return object_name[len(self.prefix) + 1:] if self.prefix else object_name

    def _sessions(self, prefix: str) -> list[_Session]:
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        return [s for s in _tracked(self.place) if s.object_name.startswith(full_prefix)]

    def _apply_retention(self, blob: storage.Blob) -> None:
        retention = _retention_for(self.immutability, datetime.now(timezone.utc))
        if retention is not None:
            blob.retention.mode, blob.retention.retain_until_time = retention

    def _download(self, key: str, blob: storage.Blob, chunk_bytes: int) -> Iterator[bytes]:
        url = (f"{self.api_endpoint}/download/storage/v1/b/{quote(self.bucket_name, safe='')}"
               f"/o/{quote(blob.name, safe='')}?alt=media&generation={blob.generation}")
        size = int(blob.size or 0)
        crc = google_crc32c.Checksum()
        offset = 0
        fruitless = 0
        while offset < size:
            start = offset
            response = self.call(lambda: self._open_download(url, start, key), "reading", key)
            try:
                for piece in response.iter_content(chunk_bytes):
                    if piece:
                        crc.update(piece)
                        offset += len(piece)
                        fruitless = 0
                        yield piece
                if offset < size:
                    raise requests.exceptions.ChunkedEncodingError("response ended early")
            except _STREAM_ERRORS as exc:
                fruitless += 1
                if fruitless > self.retry_settings.stream_restarts:
                    raise self.failure("reading", key, exc) from None
                log.info("store %s: download of %s interrupted at byte %d, resuming", self.name, key, offset)
            finally:
                response.close()
        if offset != size:
            raise StoreError(f"store {self.name}: reading {key} failed: got {offset} bytes, expected {size}")
        expected = blob.crc32c
        if expected is not None and base64.b64encode(crc.digest()).decode() != expected:
            raise StoreError(f"store {self.name}: reading {key} failed: crc32c mismatch (the bytes "
                             "received differ from the stored object)")

    def _open_download(self, url: str, offset: int, key: str) -> requests.Response:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.http.request("GET", url, headers=headers, stream=True, timeout=self._timeout)
        if response.status_code == (206 if offset else 200):
            return response
        response.close()
        if response.status_code == 404:
            raise ObjectNotFound(f"store {self.name}: no object {key}")
        raise api_exceptions.from_http_status(response.status_code,
                                              f"download answered HTTP {response.status_code}")


def _content_type(key: str) -> str:
    guessed, _ = mimetypes.guess_type(key)
    return guessed or "application/octet-stream"
