"""The `azure` backend of the store conformance suite: a real Azurite (the Azure Blob
Storage emulator from npm, pinned in package-lock.json) started once per session, in
memory, on a free port, and stopped at the end; each store gets a fresh container."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import LinearRetry
from fault_proxy import FaultProxy
from store_backends import unique_name

from platform_orchestration import emulators
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.storage.azure import AzureObjectStore

REPO = Path(__file__).resolve().parent.parent
AZURITE_BLOB = REPO / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft).
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
TEST_BLOCK_BYTES = 4 * 1024 * 1024


class Azurite:
    """A running Azurite blob service."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.account_url = f"http://127.0.0.1:{port}/{ACCOUNT}"

    def connection_string(self, account_url: str | None = None) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                f"BlobEndpoint={account_url or self.account_url};")


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    node = shutil.which("node")
    if node is None or not AZURITE_BLOB.is_file():
        pytest.fail(f"Azurite is not installed ({AZURITE_BLOB.relative_to(REPO)} is missing"
                    f"{'' if node else ', and so is node'}): run `make test`, which installs it "
                    "from package-lock.json with npm", pytrace=False)
    # emulators.azurite runs it with --skipApiVersionCheck: azure-storage-blob sends an API
    # version newer than Azurite 3.35 knows; the operations used here behave the same in both.
    emulator = emulators.azurite(free_port()).start(tmp_path_factory.mktemp("azurite"))
    try:
        yield Azurite(emulator.port)
    finally:
        emulator.stop()


class AzureBackend:
    """Stores over fresh Azurite containers (see store_backends.Backend)."""

    kind = "azure"
    networked = True

    def __init__(self, server: Azurite) -> None:
        self.server = server
        self._proxies: list[FaultProxy] = []
        self._admin = AzureObjectStore("azurite-admin", server.account_url, "unused", account_key=ACCOUNT_KEY)

    def create_container(self) -> str:
        container = unique_name("azure")
        self._admin.service.create_container(container)
        return container

    def new_store(self, *, name: str | None = None, via: FaultProxy | None = None,
                  page_size: int | None = None, fast_retries: bool = False,
                  container: str | None = None, prefix: str = "",
                  credentials: Mapping[str, str] | None = None,
                  **options: Any) -> AzureObjectStore:  # noqa: ANN401 - AzureObjectStore's keywords
        """A store over a fresh container (or `container`). Beyond the Backend protocol:
        `prefix`, `credentials` (default: the account key) and AzureObjectStore options."""
        container = container or self.create_container()
        account_url = f"{via.endpoint}/{ACCOUNT}" if via else self.server.account_url
        if fast_retries:
            options.setdefault("retry", LinearRetry(backoff=0, random_jitter_range=0, retry_total=3))
            options.setdefault("connection_timeout", 2)
            options.setdefault("read_timeout", 5)
        options.setdefault("block_bytes", TEST_BLOCK_BYTES)
        if page_size is not None:
            options["page_size"] = page_size
        options.update(credentials or {"account_key": ACCOUNT_KEY})
        return AzureObjectStore(name or container, account_url, container, prefix=prefix, **options)

    def proxy(self) -> FaultProxy:
        proxy = FaultProxy("127.0.0.1", self.server.port).start()
        self._proxies.append(proxy)
        return proxy

    def stop(self) -> None:
        for proxy in self._proxies:
            proxy.stop()


@pytest.fixture
def azure_backend(azurite: Azurite) -> Iterator[AzureBackend]:
    backend = AzureBackend(azurite)
    yield backend
    backend.stop()
