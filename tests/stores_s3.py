"""The `s3` backend of the store conformance suite: a real moto server process (started
once per session), a fresh bucket per store, and fault proxies in front of the server.

Besides the `Backend` protocol, `S3Backend` offers what S3-specific tests need: buckets with
Object Lock, stores over a chosen bucket, and an `admin` client that bypasses our store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from fault_proxy import FaultProxy
from store_backends import unique_name

from platform_orchestration import emulators
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.storage.s3 import S3ObjectStore

HOST = "127.0.0.1"
REGION = "us-east-1"
# moto accepts any credentials; explicit ones keep boto3 away from the machine's own.
DUMMY_CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing"}
FAST_RETRIES: dict[str, Any] = {"max_attempts": 3, "connect_timeout": 2.0, "read_timeout": 10.0}


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(host, port) of a moto S3 server process, for the whole session."""
    emulator = emulators.moto_server(free_port()).start(tmp_path_factory.mktemp("moto"))
    try:
        yield HOST, emulator.port
    finally:
        emulator.stop()


class S3Backend:
    kind = "s3"
    networked = True

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.endpoint = f"http://{host}:{port}"
        self.admin = boto3.session.Session(
            aws_access_key_id=DUMMY_CREDENTIALS["access_key_id"],
            aws_secret_access_key=DUMMY_CREDENTIALS["secret_access_key"],
            region_name=REGION,
        ).client("s3", endpoint_url=self.endpoint)
        self._proxies: list[FaultProxy] = []

    def new_bucket(self, *, object_lock: bool = False) -> str:
        """A fresh, empty bucket (versioned, with Object Lock enabled, if `object_lock`)."""
        bucket = unique_name("s3-bucket")
        self.admin.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=object_lock)
        return bucket

    def store(self, bucket: str, *, name: str | None = None, via: FaultProxy | None = None,
              fast_retries: bool = False, **options: Any) -> S3ObjectStore:
        """A store over `bucket`; `options` are S3ObjectStore keywords (prefix, immutability...)."""
        options.setdefault("credentials", DUMMY_CREDENTIALS)
        if fast_retries:
            options = {**FAST_RETRIES, **options}
        return S3ObjectStore(name or bucket, bucket, region=REGION,
                             endpoint_url=via.endpoint if via is not None else self.endpoint, **options)

    def new_store(self, *, name: str | None = None, via: FaultProxy | None = None,
                  page_size: int | None = None, fast_retries: bool = False) -> S3ObjectStore:
        options: dict[str, Any] = {} if page_size is None else {"page_size": page_size}
        return self.store(self.new_bucket(), name=name, via=via, fast_retries=fast_retries, **options)

    def proxy(self) -> FaultProxy:
        proxy = FaultProxy(self.host, self.port).start()
        self._proxies.append(proxy)
        return proxy

    def stop_proxies(self) -> None:
        for proxy in self._proxies:
            proxy.stop()
        self._proxies.clear()


@pytest.fixture
def s3_backend(moto_server: tuple[str, int]) -> Iterator[S3Backend]:
    backend = S3Backend(*moto_server)
    yield backend
    backend.stop_proxies()
