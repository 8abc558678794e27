"""A store in an S3 bucket (AWS, or any S3-compatible service reached through `endpoint_url`).

How the ObjectStore contract maps onto S3:

- **Writes** stream with bounded memory. Bytes are buffered up to one part (8 MiB, doubling
  after every 1,000 parts up to `max_part_size`, 128 MiB: a stream of unknown size can reach
  about 860 GiB within S3's 10,000 parts); an object smaller than one part is sent by a single PutObject at `commit()`, a
  larger one by a multipart upload completed at `commit()`. Every body carries its
  Content-MD5, so S3 rejects a part corrupted on the way. S3 makes an object visible only
  when PutObject or CompleteMultipartUpload succeeds: nothing is visible before `commit()`.
- **Failed writes clean up.** A write or commit that fails aborts its multipart upload
  before raising; `abort()` does the same. An abort that itself fails (the server is gone)
  is logged, never raised over the original error, and the upload is left for
  `incomplete_uploads()` / `discard_incomplete()` to find and abort later.
- **Immutability** (`Immutability`) sets Object Lock on every object at creation
  (mode COMPLIANCE or GOVERNANCE, retain-until = creation time + `retain`), then checks with
  HeadObject that the store applied it and applies it with PutObjectRetention if not (some
  S3-compatible stores, and moto, drop the lock headers of multipart uploads and copies).
  The bucket must have been created with Object Lock enabled.
- **Delete** removes the key *and every version of it* (by VersionId), so on a versioned or
  locked bucket the bytes are really gone, not hidden behind a delete marker that a later
  version could re-surface from. If any version is still under retention or legal hold,
  nothing is deleted and `ObjectLocked` names the store, the key and the retain-until date.
  A plain DeleteObject on such a bucket would "succeed" by adding a delete marker, and
  the retention would silently keep the bytes: that is what this avoids.
- **Retries** are botocore's standard mode: 5xx, throttling and connection errors are
  retried with capped exponential backoff, `max_attempts` attempts in total. A read cut
  mid-stream resumes from the last byte received (Range + If-Match on the ETag).
- **Errors**: every SDK error surfaces as `StoreError` (`ObjectNotFound` for a missing
  object) whose message names the store and the key and carries the S3 error code, never
  a credential or a query string (where signed URLs carry their signature).

Permissions needed: s3:PutObject, s3:GetObject, s3:ListBucket, s3:ListBucketVersions,
s3:ListBucketMultipartUploads, s3:AbortMultipartUpload, s3:DeleteObject,
s3:DeleteObjectVersion, and with immutability s3:PutObjectRetention and
s3:GetObjectRetention.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, TypeAlias

import boto3
import urllib3.exceptions
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from s3transfer.exceptions import RetriesExceededError as TransferRetriesExceeded

from platform_orchestration.fleet.durations import format_duration
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

S3Client: TypeAlias = Any  # boto3 generates its client classes at run time

MiB = 1024 * 1024
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_MAX_PART_SIZE = 128 * MiB
DEFAULT_COPY_PART_SIZE = 64 * MiB
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000
PARTS_PER_SIZE_STEP = 1_000

_log = logging.getLogger(__name__)

# Errors the SDK (and the HTTP stack under a streaming body) raises; anything else is a bug.
_SDK_ERRORS = (BotoCoreError, ClientError, Boto3Error, TransferRetriesExceeded, urllib3.exceptions.HTTPError)
_STREAM_ERRORS = (*_SDK_ERRORS, OSError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_URL_QUERY = re.compile(r"(https?://[^\s\"'?]*)\?[^\s\"']*")
_SIGNING_FIELD = re.compile(r"(Signature|Credential|X-Amz-Security-Token|X-Amz-Signature)=[^\s,&\"']+",
                            re.IGNORECASE)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def _describe_sdk_error(exc: BaseException) -> str:
    """What went wrong, from the parts of an SDK error that never hold secrets."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        metadata = exc.response.get("ResponseMetadata", {})
        code = error.get("Code") or "error"
        message = error.get("Message") or ""
        status = metadata.get("HTTPStatusCode")
        retries = metadata.get("RetryAttempts") or 0
        detail = f"HTTP {status}" + (f", after {retries} retries" if retries else "")
        return f"{code}: {message} ({detail})" if message else f"{code} ({detail})"
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _Retention:
    """An object version's Object Lock state as HeadObject reports it."""

    mode: str | None
    retain_until: datetime | None
    legal_hold: bool

    def holds(self, now: datetime) -> bool:
        return self.legal_hold or (self.retain_until is not None and self.retain_until > now)

    def covers(self, mode: str, until: datetime) -> bool:
        # A second of slack: some stores keep whole seconds.
        return (self.mode == mode and self.retain_until is not None
                and self.retain_until >= until - timedelta(seconds=1))


@dataclass(frozen=True)
class _Version:
    version_id: str
    is_delete_marker: bool
    is_latest: bool


class S3ObjectWriter(WriterLifecycle):
    """Streams one object into S3; see the module docstring for the guarantees."""

    def __init__(self, store: S3ObjectStore, key: str) -> None:
        self._store = store
        self._key = key
        self._object_key = store.object_key(key)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        # One retain-until per object, fixed when the object is created.
        self._retain_until = store.new_retain_until()

    def write(self, chunk: bytes) -> None:
        self._require_open("write")
        self._buffer += chunk
        while len(self._buffer) >= (size := self._next_part_size()):
            with memoryview(self._buffer) as view:
                part = view[:size].tobytes()  # one copy of the part, not two
            del self._buffer[:size]
            self._upload_part(part)

    def commit(self) -> None:
        """Make the object visible at its key (and locked, with immutability); on failure,
        abort the upload and raise StoreError."""
        self._require_open("commit")
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                body = bytes(self._buffer)
                response = client.put_object(Bucket=bucket, Key=self._object_key, Body=body,
                                             ContentMD5=_content_md5(body), **self._create_arguments())
            else:
                if self._buffer:
                    self._upload_part(bytes(self._buffer))
                response = client.complete_multipart_upload(
                    Bucket=bucket, Key=self._object_key, UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts})
        except _SDK_ERRORS as exc:
            self._fail("committing", exc)
        self._buffer = bytearray()
        self.committed = True
        if self._retain_until is not None:
            self._store.ensure_retention(self._key, response.get("VersionId"), self._retain_until)

    def abort(self) -> None:
        """Discard the upload. Never raises: an upload that cannot be aborted now (the
        server is unreachable) is logged and left for `discard_incomplete()`."""
        if self.aborted or self.committed:
            return
        self.aborted = True
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        try:
            self._store.client.abort_multipart_upload(Bucket=self._store.bucket, Key=self._object_key,
                                                      UploadId=self._upload_id)
        except _SDK_ERRORS as exc:
            if _error_code(exc) == "NoSuchUpload":
                return
            _log.warning("%s; the incomplete upload stays until discard_incomplete() removes it",
                         self._store.error("aborting the upload of", self._key, exc))

    def _next_part_size(self) -> int:
        grown = self._store.part_size * 2 ** (len(self._parts) // PARTS_PER_SIZE_STEP)
        return max(self._store.part_size, min(grown, self._store.max_part_size))

    def _upload_part(self, part: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            self.abort()
            raise StoreError(f"store {self._store.name}: {self._key} is larger than an S3 multipart upload "
                             f"of {MAX_PARTS} parts allows with max_part_size {self._store.max_part_size}")
        try:
            if self._upload_id is None:
                created = client.create_multipart_upload(Bucket=bucket, Key=self._object_key,
                                                         **self._create_arguments())
                self._upload_id = created["UploadId"]
            uploaded = client.upload_part(Bucket=bucket, Key=self._object_key, UploadId=self._upload_id,
                                          PartNumber=number, Body=part, ContentMD5=_content_md5(part))
        except _SDK_ERRORS as exc:
            self._fail(f"uploading part {number} of", exc)
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

    def _create_arguments(self) -> dict[str, Any]:
        arguments = self._store.encryption_arguments()
        if self._retain_until is None:
            return arguments
        return {**arguments, "ObjectLockMode": self._store.lock_mode, "ObjectLockRetainUntilDate": self._retain_until}

    def _fail(self, action: str, exc: BaseException) -> NoReturn:
        error = self._store.error(action, self._key, exc)
        self.abort()
        raise error from exc

    def _require_open(self, action: str) -> None:
        if self.committed or self.aborted:
            state = "committed" if self.committed else "aborted"
            raise StoreError(f"store {self._store.name}: cannot {action} {self._key}: the writer was {state}")


class S3ObjectStore:
    """An ObjectStore over one S3 bucket, keys under `prefix/` when a prefix is given."""

    reads_over_network = True

    def __init__(
        self,
        name: str,
        bucket: str,
        *,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        credentials: Mapping[str, str] | None = None,
        immutability: Immutability | None = None,
        server_side_encryption: tuple[str, str | None] | None = None,
        page_size: int = 1000,
        part_size: int = DEFAULT_PART_SIZE,
        max_part_size: int = DEFAULT_MAX_PART_SIZE,
        copy_part_size: int = DEFAULT_COPY_PART_SIZE,
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        """`credentials` may hold `access_key_id` + `secret_access_key` (+ `session_token`);
        without them boto3's default chain (environment, profile, instance role) applies.
        `max_attempts` counts every attempt of a request, the first included.
        `server_side_encryption` is (``AES256`` or ``aws:kms``, KMS key id or None): every object
        this store writes asks S3 to encrypt it so."""
        if part_size < MIN_PART_SIZE or max_part_size < part_size:
            raise ValueError(f"part sizes must satisfy {MIN_PART_SIZE} <= part_size <= max_part_size")
        if page_size < 1 or max_attempts < 1:
            raise ValueError("page_size and max_attempts must be at least 1")
        self.name = name
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.immutability = immutability
        self.server_side_encryption = server_side_encryption
        self.page_size = page_size
        self.part_size = part_size
        self.max_part_size = max_part_size
        self.copy_part_size = copy_part_size
        self.max_attempts = max_attempts
        self._clock = clock
        self._key_root = f"{self.prefix}/" if self.prefix else ""

        credentials = dict(credentials or {})
        unknown = set(credentials) - {"access_key_id", "secret_access_key", "session_token"}
        if unknown:
            raise StoreError(f"store {name}: unknown credential fields {sorted(unknown)}")
        if credentials and ("access_key_id" not in credentials or "secret_access_key" not in credentials):
            raise StoreError(f"store {name}: credentials need both access_key_id and secret_access_key")
        self._secrets = tuple(value for value in credentials.values() if value)
        # Two stores may copy server-side only if one's credentials can read the other's bucket;
        # the same endpoint and the same credentials guarantee it.
        self._identity = (endpoint_url, credentials.get("access_key_id"),
                          credentials.get("secret_access_key"), credentials.get("session_token"))
        session = boto3.session.Session(
            aws_access_key_id=credentials.get("access_key_id"),
            aws_secret_access_key=credentials.get("secret_access_key"),
            aws_session_token=credentials.get("session_token"),
            region_name=region,
        )
        config = Config(
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            tcp_keepalive=True,
            # One client is shared by a fleet assessment's threads (PLATFORM_STORE_CONCURRENCY,
            # up to 32 and more): botocore's default pool of 10 would open and drop connections.
            max_pool_connections=64,
            # We send Content-MD5 ourselves; the SDK's default CRC trailers are not understood
            # by every S3-compatible store.
            request_checksum_calculation="when_required",
            # S3-compatible stores behind an endpoint_url rarely have wildcard DNS for buckets.
            s3={"addressing_style": "path"} if endpoint_url else None,
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)

    # --- helpers shared with the writer ---------------------------------------------------

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client of this store (its retries, timeouts and credentials)."""
        return self._client

    def encryption_arguments(self) -> dict[str, Any]:
        """The SSE arguments of a PutObject, CreateMultipartUpload or copy (none by default)."""
        if self.server_side_encryption is None:
            return {}
        algorithm, key_id = self.server_side_encryption
        return {"ServerSideEncryption": algorithm, **({"SSEKMSKeyId": key_id} if key_id else {})}

    def object_encryption(self, key: str) -> tuple[str | None, str | None]:
        """How S3 says the object at `key` is encrypted at rest: (ServerSideEncryption, the KMS
        key id), None for what it does not report."""
        with self._sdk_errors("reading the encryption of", key):
            head = self._client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        return head.get("ServerSideEncryption"), head.get("SSEKMSKeyId")

    @property
    def lock_mode(self) -> str | None:
        """`COMPLIANCE` or `GOVERNANCE` when the store writes locked objects, else None."""
        return self.immutability.mode.upper() if self.immutability is not None else None

    def object_key(self, key: str) -> str:
        """The S3 key of a store key: `prefix/key`."""
        return self._key_root + check_key(key)

    def new_retain_until(self) -> datetime | None:
        """Retain-until for an object created now, None without immutability."""
        if self.immutability is None:
            return None
        return self._clock() + self.immutability.retain

    def error(self, action: str, key: str, exc: BaseException) -> StoreError:
        """The StoreError (ObjectNotFound for a missing object) for a failed SDK call on `key`."""
        if _error_code(exc) in _NOT_FOUND_CODES:
            return ObjectNotFound(f"store {self.name}: no object {key} in {self._location()}")
        reason = self._redact(_describe_sdk_error(exc))
        return StoreError(f"store {self.name}: {action} {key} in {self._location()} failed: {reason}")

    @contextmanager
    def _sdk_errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except _SDK_ERRORS as exc:
            raise self.error(action, key, exc) from exc

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        text = _URL_QUERY.sub(r"\1?[query redacted]", text)
        return _SIGNING_FIELD.sub(r"\1=[redacted]", text)

    def _location(self) -> str:
        return f"s3://{self.bucket}/{self._key_root}"

    # --- the ObjectStore protocol ---------------------------------------------------------

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS {self.region or 'default region'}"
        locked = (f", object lock {self.lock_mode} {format_duration(self.immutability.retain)}"
                  if self.immutability is not None else "")
        return f"{self.name} ({self._location()} at {where}{locked})"

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.describe()})"

    def open_writer(self, key: str) -> S3ObjectWriter:
        return S3ObjectWriter(self, key)

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
        """Stream the object; ObjectNotFound is raised here, before the first chunk."""
        object_key = self.object_key(key)
        with self._sdk_errors("reading", key):
            response = self._client.get_object(Bucket=self.bucket, Key=object_key)
        return self._stream(key, object_key, response, chunk_bytes)

    def _stream(self, key: str, object_key: str, response: dict[str, Any], chunk_bytes: int) -> Iterator[bytes]:
        body = response["Body"]
        size, etag = response["ContentLength"], response["ETag"]
        received = resumes = 0
        try:
            while True:
                try:
                    for chunk in body.iter_chunks(chunk_bytes):
                        received += len(chunk)
                        yield chunk
                    return
                except _STREAM_ERRORS as exc:
                    body.close()
                    if received >= size:
                        return
                    if resumes + 1 >= self.max_attempts:
                        raise self.error(f"reading (at byte {received} of {size})", key, exc) from exc
                    resumes += 1
                    _log.info("store %s: reading %s was cut at byte %d of %d; resuming",
                              self.name, key, received, size)
                    # If-Match: resuming into a different object would splice two objects together.
                    with self._sdk_errors(f"resuming the read (at byte {received}) of", key):
                        body = self._client.get_object(Bucket=self.bucket, Key=object_key,
                                                       Range=f"bytes={received}-", IfMatch=etag)["Body"]
        finally:
            body.close()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects under `prefix`, keys relative to the store's prefix, in key order."""
        found: list[ObjectInfo] = []
        with self._sdk_errors("listing", prefix or "(all keys)"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._key_root + prefix,
                PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self._key_root):]
                    # Console-made "folders" are empty objects whose key ends in "/".
                    if not key or key.endswith("/"):
                        continue
                    found.append(ObjectInfo(key, item["Size"], item["LastModified"].astimezone(timezone.utc),
                                            item.get("ETag")))
        # S3 lists in UTF-8 byte order (= code point order); not every S3-compatible store does.
        yield from sorted(found, key=lambda info: info.key)

    def read_versioned(self, key: str) -> tuple[bytes, str]:
        """A small object's bytes and its ETag, in one GET."""
        with self._sdk_errors("reading", key):
            response = self._client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            try:
                return response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

    def write_if(self, key: str, data: bytes, version: str | None) -> None:
        """One PUT with If-Match (or If-None-Match: *): S3 refuses it with 412 when another
        writer got there first (409 when two conditional writes overlap)."""
        condition = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data,
                                    ContentMD5=_content_md5(data), **condition)
        except _SDK_ERRORS as exc:
            if _error_code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise PreconditionFailed(f"store {self.name}: {key} changed since it was read") from None
            raise self.error("writing", key, exc) from exc

    def delete(self, key: str) -> None:
        """Remove the key and every version of it; a missing key is not an error. If any
        version is under retention or legal hold, nothing is deleted and ObjectLocked is
        raised with the latest retain-until date."""
        object_key = self.object_key(key)
        versions = self._versions(key, object_key)
        if not versions:
            return
        if len(versions) == 1 and versions[0].version_id == "null" and not versions[0].is_delete_marker:
            # An unversioned bucket: a plain delete removes the bytes and needs no version rights.
            with self._sdk_errors("deleting", key):
                self._client.delete_object(Bucket=self.bucket, Key=object_key)
            return
        now = self._clock()
        retentions = {version.version_id: self._retention(key, object_key, version.version_id)
                      for version in versions if not version.is_delete_marker}
        holding = [retention for retention in retentions.values() if retention.holds(now)]
        if holding:
            raise self._locked(key, holding, now)
        # Older versions first: if we are cut off half-way, the key still shows its latest bytes.
        for version in sorted(versions, key=lambda version: version.is_latest):
            try:
                self._client.delete_object(Bucket=self.bucket, Key=object_key, VersionId=version.version_id)
            except _SDK_ERRORS as exc:
                retention = retentions.get(version.version_id)
                if _error_code(exc) == "AccessDenied" and retention is not None and retention.mode:
                    # Our clock said the retention had passed, the store's says not yet: report
                    # the date the store enforces.
                    raise self._locked(key, [retention], datetime.min.replace(tzinfo=timezone.utc)) from exc
                raise self.error("deleting", key, exc) from exc

    def _versions(self, key: str, object_key: str) -> list[_Version]:
        versions: list[_Version] = []
        with self._sdk_errors("listing the versions of", key):
            pages = self._client.get_paginator("list_object_versions").paginate(
                Bucket=self.bucket, Prefix=object_key, PaginationConfig={"PageSize": self.page_size})
            for page in pages:
                entries = [(entry, False) for entry in page.get("Versions", [])]
                entries += [(entry, True) for entry in page.get("DeleteMarkers", [])]
                for entry, is_marker in entries:
                    if entry["Key"] == object_key:
                        versions.append(_Version(entry["VersionId"], is_marker, entry.get("IsLatest", False)))
                if any(entry["Key"] != object_key for entry, _ in entries):
                    break  # keys sort after their own prefix: the rest of the listing is other keys
        return versions

    def _retention(self, key: str, object_key: str, version_id: str) -> _Retention:
        # HeadObject, not GetObjectRetention: it needs no extra permission and works on moto.
        with self._sdk_errors("reading the retention of", key):
            head = self._client.head_object(Bucket=self.bucket, Key=object_key, VersionId=version_id)
        until = head.get("ObjectLockRetainUntilDate")
        return _Retention(mode=head.get("ObjectLockMode"),
                          retain_until=until.astimezone(timezone.utc) if until is not None else None,
                          legal_hold=head.get("ObjectLockLegalHoldStatus") == "ON")

    def _locked(self, key: str, holding: list[_Retention], now: datetime) -> ObjectLocked:
        dated = sorted((retention.retain_until, retention.mode) for retention in holding
                       if retention.retain_until is not None and retention.retain_until > now)
        reasons = []
        retain_until = None
        if dated:
            retain_until, mode = dated[-1]
            reasons.append(f"under {mode} retention until {retain_until.isoformat()}")
        if any(retention.legal_hold for retention in holding):
            reasons.append("under legal hold")
        return ObjectLocked(f"store {self.name}: cannot delete {key} in {self._location()}: "
                            f"it is {' and '.join(reasons)}", retain_until)

    def ensure_retention(self, key: str, version_id: str | None, retain_until: datetime) -> None:
        """Make sure the just-written version of `key` is locked until `retain_until`:
        check with HeadObject, apply PutObjectRetention if the store dropped the lock."""
        object_key = self.object_key(key)
        mode = self.lock_mode
        assert mode is not None, "ensure_retention needs immutability"
        if version_id is None:
            with self._sdk_errors("reading the version of", key):
                version_id = self._client.head_object(Bucket=self.bucket, Key=object_key).get("VersionId")
        if version_id is None or version_id == "null":
            raise StoreError(f"store {self.name}: {key} was written to {self._location()} without a version: "
                             "the bucket has no versioning, so Object Lock cannot protect it")
        if self._retention(key, object_key, version_id).covers(mode, retain_until):
            return
        with self._sdk_errors(f"applying {mode} retention until {retain_until.isoformat()} to", key):
            self._client.put_object_retention(Bucket=self.bucket, Key=object_key, VersionId=version_id,
                                              Retention={"Mode": mode, "RetainUntilDate": retain_until})

    def _multipart_uploads(self, prefix: str,
                           older_than: datetime | None) -> Iterator[tuple[str, IncompleteUpload]]:
        """(upload id, upload) of every open multipart upload under the store key `prefix`
        (idle since before `older_than`, when given). An upload's activity is its newest
        part, read with ListParts; that request is skipped for one started after the cutoff."""
        pages = self._client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self._key_root + prefix, PaginationConfig={"PageSize": self.page_size})
        for page in pages:
            for upload in page.get("Uploads", []):
                key = upload["Key"][len(self._key_root):]
                initiated = upload["Initiated"].astimezone(timezone.utc)
                if older_than is not None and initiated >= older_than:
                    continue
                last_active, size = initiated, 0
                parts = self._client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                try:
                    for part in (p for parts_page in parts for p in parts_page.get("Parts", [])):
                        last_active = max(last_active, part["LastModified"].astimezone(timezone.utc))
                        size += part["Size"]
                except ClientError as exc:
                    if _error_code(exc) == "NoSuchUpload":  # completed or aborted meanwhile
                        continue
                    raise
                found = IncompleteUpload(key, last_active, size=size, started_at=initiated)
                if found.idle_since_before(older_than):
                    yield upload["UploadId"], found

    def incomplete_uploads(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Open multipart uploads (one entry per upload) under `prefix`; with `older_than`,
        only those whose newest part (or start, without parts) is older."""
        with self._sdk_errors("listing incomplete uploads under", prefix or "(all keys)"):
            return sorted((found for _, found in self._multipart_uploads(prefix, older_than)),
                          key=lambda found: found.key)

    def discard_incomplete(self, prefix: str = "", *,
                           older_than: datetime | None = None) -> list[IncompleteUpload]:
        """Abort open multipart uploads under `prefix`, each by its upload id (all of them,
        including any a live writer is still using, whose commit will then fail; or with
        `older_than` only those idle since before it); returns those aborted."""
        with self._sdk_errors("listing incomplete uploads under", prefix or "(all keys)"):
            uploads = list(self._multipart_uploads(prefix, older_than))
        discarded = []
        for upload_id, found in sorted(uploads, key=lambda item: item[1].key):
            try:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.object_key(found.key),
                                                    UploadId=upload_id)
                discarded.append(found)
            except _SDK_ERRORS as exc:
                if _error_code(exc) != "NoSuchUpload":  # someone else discarded it meanwhile
                    raise self.error("discarding the incomplete upload of", found.key, exc) from exc
        return discarded

    def server_side_copy(self, source: ObjectStore, key: str) -> bool:
        """Copy `key` from another S3ObjectStore on the same endpoint with the same credentials
        by S3's own (multipart) copy; False for any other source, which must then be streamed."""
        if not isinstance(source, S3ObjectStore) or source._identity != self._identity:
            return False
        object_key = self.object_key(key)
        transfer = TransferConfig(multipart_threshold=self.copy_part_size, multipart_chunksize=self.copy_part_size)
        with self._sdk_errors(f"server-side copying from {source.name} ({source._location()})", key):
            try:
                # Lock applied afterwards by ensure_retention: some S3-compatible stores (moto among
                # them) reject or ignore lock headers on CopyObject and UploadPartCopy.
                self._client.copy({"Bucket": source.bucket, "Key": source.object_key(key)}, self.bucket,
                                  object_key, SourceClient=source.client, Config=transfer,
                                  ExtraArgs=self.encryption_arguments() or None)
            except ClientError as exc:
                if _error_code(exc) in _NOT_FOUND_CODES:
                    raise ObjectNotFound(f"store {source.name}: no object {key} in {source._location()}") from exc
                raise
        retain_until = self.new_retain_until()
        if retain_until is not None:
            self.ensure_retention(key, None, retain_until)
        return True
