"""What the store conformance suite needs from each backend: fresh stores, and a way in
front of the emulator for the fault proxy. One module per backend provides a
`<kind>_backend` fixture (tests/stores_<kind>.py); `local` lives here."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Protocol

import pytest
from fault_proxy import FaultProxy

from platform_orchestration.storage import IncompleteUpload, LocalObjectStore, ObjectStore

_numbers = itertools.count(1)


def unique_name(prefix: str) -> str:
    """Bucket/container names: lowercase letters, digits and '-', 3-63 characters."""
    return f"{prefix}-{next(_numbers)}"


class Backend(Protocol):
    kind: str
    # Whether the store talks to a server over the network (fault tests need one).
    networked: bool

    def new_store(self, *, name: str | None = None, via: FaultProxy | None = None,
                  page_size: int | None = None, fast_retries: bool = False) -> ObjectStore:
        """A store over a fresh, empty bucket/container. `via` routes it through a fault proxy;
        `page_size` makes listings paginate early; `fast_retries` keeps retry backoff short
        (and attempts few) so fault tests stay quick."""
        ...

    def proxy(self) -> FaultProxy:
        """A started fault proxy in front of the emulator (stopped by the fixture's teardown)."""
        ...


class LocalBackend:
    kind = "local"
    networked = False

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_store(self, *, name: str | None = None, via: FaultProxy | None = None,
                  page_size: int | None = None, fast_retries: bool = False) -> ObjectStore:
        bucket = unique_name("local")
        return LocalObjectStore(name or bucket, self.root / bucket)

    def proxy(self) -> FaultProxy:
        raise pytest.skip.Exception("a local store has no network to fault")


@pytest.fixture
def local_backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "local-stores")


def upload_keys(uploads: list[IncompleteUpload]) -> list[str]:
    """The keys of `incomplete_uploads()` / `discard_incomplete()` results, in their order."""
    return [upload.key for upload in uploads]
