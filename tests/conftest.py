"""Fixtures: real PostgreSQL clusters (session-scoped), fresh local stores standing for clouds.

`source_cluster`, `source_db` and `target_cluster` are PostgreSQL 16 unless a test is marked
`pg.both_majors`, which runs it once per supported major (`pg_major`); the clusters behind
them are started once per major and purpose for the whole session (`pg_clusters`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pg import create_database, seeded_database

from platform_orchestration.backups.take import BackupOutcome, take_backup
from platform_orchestration.ownership import LEASE_DIR_ENV, leases, reap_abandoned
from platform_orchestration.postgres import (
    LocalCluster,
    PgConnection,
    ephemeral_cluster,
)
from platform_orchestration.postgres.cluster import STAND_IN_DIR_ENV
from platform_orchestration.storage import LocalObjectStore


# --- Nothing left in /tmp or /var/tmp ------------------------------------------------------------
# The session's temporary files (and those of every process it starts: CLI runs, dagster dev),
# its leases and its clusters' stand-ins live in two directories of its own, so that what it
# leaves can be told from what other programs on the machine leave. At the end, after a reap of
# dead owners' leftovers (the tests kill processes on purpose), both must hold nothing but
# pytest's own tmp_path directories and the server binaries' mirror; then they are removed.
#
# Under pytest-xdist (`-n 2`, pyproject's addopts) the controller makes the two session
# directories and each worker gets its own pair inside them (`<tmp>/gw0`, `<var>/gw0`): its own
# TMPDIR, lease directory and stand-in directory, so that one worker's reaper never takes what
# another worker's test is about to assert on. Each worker checks its own pair at its end, while
# it still lives (leases it holds itself count as leftovers then; after it exits they would be a
# dead owner's and be reaped silently), sends what it found to the controller, and removes its
# pair if clean; the controller then fails the run on any worker's leftovers and on anything
# else left in the session directories (a worker that died keeps its pair there).
_SESSION_ENV = "PLATFORM_TESTS_SESSION_DIRS"  # "<tmp>:<var>", from the controller to its workers
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1... under xdist; None otherwise
if _WORKER is not None and os.environ.get(_SESSION_ENV):
    _CONTROLLER_TMP, _CONTROLLER_VAR = (Path(p) for p in os.environ[_SESSION_ENV].split(":"))
    _SESSION_TMP, _SESSION_VAR = _CONTROLLER_TMP / _WORKER, _CONTROLLER_VAR / _WORKER
    for _directory in (_SESSION_TMP, _SESSION_VAR):
        _directory.mkdir(mode=0o755)
else:
    _SESSION_TMP = Path(tempfile.mkdtemp(prefix="platform-orchestration-tests-"))
    # Short: a stand-in's socket path must stay under 108 bytes (a worker adds "/gwN").
    _SESSION_VAR = Path(tempfile.mkdtemp(prefix="po-tests-", dir="/var/tmp"))
    os.environ[_SESSION_ENV] = f"{_SESSION_TMP}:{_SESSION_VAR}"
for _directory in (_SESSION_TMP, _SESSION_VAR):
    _directory.chmod(0o755)  # the server user must reach the binaries' mirror and the stand-ins
os.environ["TMPDIR"] = tempfile.tempdir = str(_SESSION_TMP)
os.environ[LEASE_DIR_ENV] = str(_SESSION_VAR / "leases")
os.environ[STAND_IN_DIR_ENV] = str(_SESSION_VAR / "clusters")
# Caches kept on purpose: the server binaries' copy (postgres/cluster.py) and barman-cloud's
# (physical/tools.py), made when the checkout is out of the server user's reach (mktemp -d).
_EXPECTED_IN_TMP = ("pytest-of-", "platform-orchestration-pg-", "platform-orchestration-barman-")
_LEFTOVERS_KEY = "platform_tests_leftovers"
_worker_leftovers: dict[str, list[str]] = {}  # the controller's: what each worker reported


def session_leftovers() -> list[str]:
    """What this session (or this worker) left behind, after reaping what dead owners left."""
    reaped = reap_abandoned()
    found = [f"reap failed: {failure}" for failure in reaped.failures]
    found += [f"lease of pid {lease.owner.pid} for {', '.join(lease.paths)}" for lease in leases()]
    clusters = _SESSION_VAR / "clusters"
    found += [str(path) for path in sorted(clusters.iterdir())] if clusters.is_dir() else []
    found += [str(path) for path in sorted(_SESSION_TMP.iterdir()) if not path.name.startswith(_EXPECTED_IN_TMP)]
    found += [str(path) for path in sorted(_SESSION_VAR.iterdir()) if path.name not in ("leases", "clusters")]
    return found


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # noqa: ANN001 - xdist's hook, on the controller
    """A worker is done: keep what it reported it left behind."""
    reported = getattr(node, "workeroutput", {}).get(_LEFTOVERS_KEY)
    if reported:
        _worker_leftovers[node.gateway.id] = reported


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    worker_output = getattr(session.config, "workeroutput", None)
    leftovers = session_leftovers()
    if worker_output is not None:  # an xdist worker: report to the controller, which decides
        worker_output[_LEFTOVERS_KEY] = leftovers
        if not leftovers:
            shutil.rmtree(_SESSION_TMP, ignore_errors=True)
            shutil.rmtree(_SESSION_VAR, ignore_errors=True)
        return
    leftovers += [f"{worker}: {leftover}" for worker, found in sorted(_worker_leftovers.items())
                  for leftover in found]
    if leftovers:
        print("\nthe test session left behind (kept for inspection):\n  " + "\n  ".join(leftovers))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        return
    if exitstatus == 0:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)
        shutil.rmtree(_SESSION_VAR, ignore_errors=True)
    else:
        print(f"\ntest session files kept for inspection in {_SESSION_TMP}")
        shutil.rmtree(_SESSION_VAR, ignore_errors=True)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with `slow` tests first, each file's tests in their own order: the workers take
    files in this order (`--dist loadfile --no-loadscope-reorder`), so the long files start
    early and the run does not end with one worker on a long file while the other idles."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ordered = sorted(files.values(), key=lambda tests: not any(t.get_closest_marker("slow") for t in tests))
    items[:] = [item for tests in ordered for item in tests]

# Object-store backends for the conformance suite: `local` here, one `stores_<kind>.py` per cloud.
STORE_BACKENDS = ["local", *sorted(p.stem.removeprefix("stores_")
                                   for p in Path(__file__).parent.glob("stores_*.py"))]
pytest_plugins = ["store_backends", "vault_server", *(f"stores_{kind}" for kind in STORE_BACKENDS if kind != "local")]

SOURCE_DB = "shop"
STORE_NAMES = ("aws", "azure", "gcp")

_names = itertools.count(1)


@pytest.fixture(scope="session", autouse=True)
def local_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The embedded default encrypts every backup with a local key-encryption key; the tests
    keep theirs in a temporary directory instead of the user's ~/.config."""
    directory = tmp_path_factory.mktemp("kek")
    directory.chmod(0o700)
    path = directory / "test-kek"
    previous = os.environ.get("PLATFORM_LOCAL_KEK")
    os.environ["PLATFORM_LOCAL_KEK"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("PLATFORM_LOCAL_KEK", None)
    else:
        os.environ["PLATFORM_LOCAL_KEK"] = previous


@pytest.fixture(scope="session")
def pg_clusters() -> Iterator[Callable[[str, int], LocalCluster]]:
    """`pg_clusters(purpose, major)`: a cluster of exactly that major, started on first use and
    kept for the session ("source" and "target" per major)."""
    with contextlib.ExitStack() as stack:
        started: dict[tuple[str, int], LocalCluster] = {}

        def get(purpose: str, major: int) -> LocalCluster:
            if (purpose, major) not in started:
                cluster = stack.enter_context(ephemeral_cluster(major))
                assert cluster.install.major == major, f"no PostgreSQL {major} server installed"
                started[(purpose, major)] = cluster
            return started[(purpose, major)]

        yield get


@pytest.fixture(scope="session")
def seeded_sources(pg_clusters: Callable[[str, int], LocalCluster]) -> Callable[[int], PgConnection]:
    """`seeded_sources(major)`: the seeded database on that major's source cluster, seeded once."""
    seeded: dict[int, PgConnection] = {}

    def get(major: int) -> PgConnection:
        if major not in seeded:
            seeded[major] = seeded_database(pg_clusters("source", major), SOURCE_DB)
        return seeded[major]

    return get


@pytest.fixture(scope="session")
def pg_major(request: pytest.FixtureRequest) -> int:
    """The major of source_cluster/source_db/target_cluster: 16, or each one under `both_majors`."""
    return getattr(request, "param", 16)


@pytest.fixture(scope="session")
def source_cluster(pg_clusters: Callable[[str, int], LocalCluster], pg_major: int) -> LocalCluster:
    return pg_clusters("source", pg_major)


@pytest.fixture(scope="session")
def source_db(seeded_sources: Callable[[int], PgConnection], pg_major: int) -> PgConnection:
    """The seeded database. Tests must not modify it (the ones that do use their own)."""
    return seeded_sources(pg_major)


@pytest.fixture(scope="session")
def target_cluster(pg_clusters: Callable[[str, int], LocalCluster], pg_major: int) -> LocalCluster:
    return pg_clusters("target", pg_major)


@pytest.fixture
def fresh_name() -> Callable[[str], str]:
    """Unique database names, so tests sharing a session cluster never collide."""
    def make(prefix: str = "db") -> str:
        return f"{prefix}_{next(_names)}"
    return make


@pytest.fixture
def target_db(target_cluster: LocalCluster, fresh_name: Callable[[str], str]) -> PgConnection:
    """A database name on the target cluster that does not exist yet."""
    return target_cluster.connection(fresh_name("restored"))


@pytest.fixture
def scratch_source_db(source_cluster: LocalCluster, fresh_name: Callable[[str], str]) -> PgConnection:
    """A seeded database of its own, for tests that change the source."""
    return seeded_database(source_cluster, fresh_name("scratch"))


@pytest.fixture
def empty_db(target_cluster: LocalCluster, fresh_name: Callable[[str], str]) -> PgConnection:
    return create_database(target_cluster, fresh_name("empty"))


def make_stores(root: Path) -> list[LocalObjectStore]:
    return [LocalObjectStore(name, root / name) for name in STORE_NAMES]


@pytest.fixture
def stores(tmp_path: Path) -> list[LocalObjectStore]:
    """Three fresh, empty stores standing for three clouds, in policy order."""
    return make_stores(tmp_path / "stores")


@pytest.fixture
def backup(source_db: PgConnection) -> Callable[..., BackupOutcome]:
    """take_backup of the seeded database with the test defaults filled in."""
    def run(stores, connection: PgConnection = source_db, database: str = SOURCE_DB, **kwargs):
        return take_backup(database=database, cluster="test-cluster", policy="gold",
                           connection=connection, stores=stores, **kwargs)
    return run


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
