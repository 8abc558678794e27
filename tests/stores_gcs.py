"""The `gcs` backend of the store conformance suite: a real GCS emulator process.

`gcp-storage-emulator` (PyPI) serves the GCS JSON API; the real google-cloud-storage SDK talks
to it over HTTP, through a FaultProxy when a test injects faults. Known gaps of the emulator
(so untested here): it does not cancel resumable sessions (DELETE answers 501), keeps no
object versions, drops object retention metadata and enforces no retention, and ignores
generation preconditions.
"""

from __future__ import annotations

import dataclasses

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fault_proxy import FaultProxy
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from store_backends import unique_name

from platform_orchestration.fleet.model import GcsStoreSpec, ImmutabilitySpec
from platform_orchestration.storage.gcs import (
    FAST_RETRIES,
    GcsObjectStore,
    RetrySettings,
)
from platform_orchestration.stores import store_from_spec

PROJECT = "test-project"
# Without fast_retries a store still gives up within seconds, never minutes.
# Short backoff for the wire-fault tests, with more time to give up than the core's FAST_RETRIES
# (2 s): the emulator is pure Python and, on a loaded 2-core machine, one 8 MiB ranged read
# through the fault proxy can take longer than that (seen in full runs, never alone).
FAULT_RETRIES = dataclasses.replace(FAST_RETRIES, deadline=10.0)
TEST_RETRIES = RetrySettings(initial=0.05, maximum=0.5, multiplier=2.0, deadline=10.0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GcsEmulator:
    """A `gcp-storage-emulator` process on a free loopback port (in-memory storage)."""

    def __init__(self, log_path: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        executable = Path(sys.executable).with_name("gcp-storage-emulator")
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [str(executable), "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            try:
                if requests.get(self.endpoint + "/", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator did not start (log: {log_path})")
            time.sleep(0.05)
        self.admin = storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                                    client_options={"api_endpoint": self.endpoint})

    def stop(self) -> None:
        self._process.kill()
        self._process.wait(timeout=10)
        self._log.close()


class GcsBackend:
    kind = "gcs"
    networked = True

    def __init__(self, emulator: GcsEmulator) -> None:
        self.emulator = emulator
        self._proxies: list[FaultProxy] = []

    def new_store(self, *, name: str | None = None, via: FaultProxy | None = None,
                  page_size: int | None = None, fast_retries: bool = False,
                  prefix: str = "", immutability: ImmutabilitySpec | None = None,
                  chunk_bytes: int | None = None) -> GcsObjectStore:
        """A store over a fresh bucket (see `Backend.new_store`); GCS tests also pass a
        prefix, immutability or a smaller chunk size."""
        bucket = unique_name("gcs")
        self.emulator.admin.create_bucket(bucket)
        return self.store_on(bucket, name=name or bucket, via=via, page_size=page_size,
                             fast_retries=fast_retries, prefix=prefix, immutability=immutability,
                             chunk_bytes=chunk_bytes)

    def store_on(self, bucket: str, *, name: str | None = None, via: FaultProxy | None = None,
                 page_size: int | None = None, fast_retries: bool = False, prefix: str = "",
                 immutability: ImmutabilitySpec | None = None,
                 chunk_bytes: int | None = None) -> GcsObjectStore:
        """Another store over an existing bucket, built from a fleet spec like production."""
        spec = GcsStoreSpec(name=name or bucket, bucket=bucket, project=PROJECT, prefix=prefix,
                            endpoint_url=via.endpoint if via else self.emulator.endpoint,
                            immutability=immutability)
        options: dict[str, object] = {"retry": FAULT_RETRIES if fast_retries else TEST_RETRIES,
                                      "connect_timeout": 5.0, "read_timeout": 30.0}
        if page_size is not None:
            options["page_size"] = page_size
        if chunk_bytes is not None:
            options["chunk_bytes"] = chunk_bytes
        return store_from_spec(spec, {}, **options)

    def proxy(self) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", self.emulator.port).start()
        self._proxies.append(proxy)
        return proxy

    def close(self) -> None:
        for proxy in self._proxies:
            proxy.stop()


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs-emulator") / "emulator.log")
    yield emulator
    emulator.stop()


@pytest.fixture
def gcs_backend(gcs_emulator: GcsEmulator) -> Iterator[GcsBackend]:
    backend = GcsBackend(gcs_emulator)
    yield backend
    backend.close()
