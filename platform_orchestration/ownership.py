"""Who owns what a command leaves on this machine, and reaping what its dead owners left.

A drill starts a throwaway PostgreSQL server in a scratch cluster directory; a restore
decompresses the backup into a scratch work directory. A command killed with ``kill -9``
(an OOM kill, an evicted pod, a break-glass operator's Ctrl-\\) runs no ``finally``: the
server would keep running and the directories (hundreds of MB each) would stay for ever.

Two things prevent that:

- **A lease**, written *before* anything it names is created: a small JSON file in
  :func:`lease_directory` naming the owner (pid and start time, so a reused pid is not taken
  for the owner), the paths it is about to create, and the server it starts (pid, start
  time, port, data directory). The owner removes its lease when it has cleaned up itself.
- **A reaper** (:func:`reap_abandoned`): for every lease whose owner is gone it stops the
  server (SIGQUIT, PostgreSQL's immediate shutdown, then SIGKILL), removes the paths and
  then the lease. A lease whose owner is alive is never touched, nor anything it names. The
  next drill, ``prune`` (so the retention job), and ``platform-dr cleanup`` run it.

The throwaway server also gets a parent-death signal (see postgres/cluster.py): on Linux it
is stopped by the kernel the moment its owner dies, so the reaper usually only has
directories left to remove.

An owner is identified as (boot id, pid namespace, pid, start time in clock ticks): a lease
or a partial file written on another machine, or in another container's pid namespace, is
never judged by this machine's process table (its owner is "unknown", and it is left alone).
A lease from an earlier boot of this machine is dead by definition.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from platform_orchestration.errors import PlatformError

__all__ = [
    "LEASE_DIR_ENV", "Lease", "ProcessIdentity", "ReapReport", "leased_work_directory",
    "lease_directory", "leases", "reap_abandoned",
]

LEASE_DIR_ENV = "PLATFORM_LEASE_DIR"
# Only what this product creates is ever removed by the reaper, whatever a lease says.
OWNED_NAME_PREFIXES = ("pg-ephemeral-", "restore-")


class LeaseError(PlatformError):
    """A lease could not be written (its directory is not writable)."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _boot_id() -> str:
    return (_read("/proc/sys/kernel/random/boot_id") or "unknown").strip().replace("-", "")[:16]


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0"
    return "".join(ch for ch in link if ch.isdigit()) or "0"


def _start_ticks(pid: int) -> int | None:
    """The process's start time since boot in clock ticks (field 22 of /proc/PID/stat), or None
    if there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if text is None:
        return None
    try:
        return int(text[text.rindex(")") + 2:].split()[19])  # after the command, which may hold spaces
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    """A process, named so that a reused pid or another machine's pid is never taken for it."""

    boot: str
    pid_namespace: str
    pid: int
    started: int

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        # 0: this machine cannot tell start times (no /proc); is_alive then answers None.
        return cls(_boot_id(), _pid_namespace(), pid, _start_ticks(pid) or 0)

    @classmethod
    def of_pid(cls, pid: int) -> ProcessIdentity | None:
        """The process `pid` of this machine and namespace, None if there is none."""
        started = _start_ticks(pid)
        return None if started is None else cls(_boot_id(), _pid_namespace(), pid, started)

    def is_alive(self) -> bool | None:
        """True if the process runs, False if it is gone (exited, or its pid now belongs to a
        process started later), None if this machine cannot tell (it ran in another pid
        namespace, on another machine, or in an earlier boot of this one)."""
        if self.boot != _boot_id() or self.pid_namespace != _pid_namespace():
            return None
        if not self.started or not Path(f"/proc/{os.getpid()}/stat").exists():
            return None  # no start times here (no /proc): never take a process for gone
        return _start_ticks(self.pid) == self.started

    def token(self) -> str:
        """A compact form without dots or slashes, for file names.

        >>> ProcessIdentity("0f1e2d3c4b5a6978", "4026531836", 4242, 123456).token()
        'o0f1e2d3c4b5a6978n4026531836p4242s123456'
        """
        return f"o{self.boot}n{self.pid_namespace}p{self.pid}s{self.started}"

    @classmethod
    def from_token(cls, token: str) -> ProcessIdentity | None:
        """
        >>> ProcessIdentity.from_token('o0f1e2d3c4b5a6978n4026531836p4242s123456').pid
        4242
        >>> ProcessIdentity.from_token('0123abcd') is None
        True
        """
        try:
            rest = token.removeprefix("o")
            if rest == token:
                return None
            boot, rest = rest.split("n", 1)
            namespace, rest = rest.split("p", 1)
            pid, started = rest.split("s", 1)
            return cls(boot, namespace, int(pid), int(started))
        except ValueError:
            return None


def lease_directory() -> Path:
    """Where this user's leases live: ``$PLATFORM_LEASE_DIR``, else
    ``/var/tmp/platform-orchestration-leases-<uid>`` (kept across reboots, as the stand-in
    cluster directories under /var/tmp are, so a cleanup after a crash still finds them)."""
    configured = os.environ.get(LEASE_DIR_ENV, "").strip()
    return Path(configured) if configured else Path(f"/var/tmp/platform-orchestration-leases-{os.getuid()}")


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


@dataclass
class Lease:
    """What one owner is about to create or has created: paths, and perhaps a server."""

    kind: str
    owner: ProcessIdentity
    paths: list[str]
    lease_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    created: bool = False  # every path exists (was made); an absent path of a live owner's is then removed
    server: dict | None = None  # {"pid", "started", "port", "data_dir"}
    file: Path | None = None

    @classmethod
    def take(cls, kind: str, paths: Sequence[Path | str]) -> Lease:
        """Write a lease for `paths` (not yet created) owned by this process."""
        lease = cls(kind, ProcessIdentity.current(), [str(p) for p in paths])
        lease._write()
        return lease

    def add_paths(self, *paths: Path | str) -> None:
        self.paths += [str(p) for p in paths if str(p) not in self.paths]
        self._write()

    def mark_created(self) -> None:
        self.created = True
        self._write()

    def record_server(self, pid: int, port: int, data_dir: Path) -> None:
        started = _start_ticks(pid)
        self.server = {"pid": pid, "started": started, "port": port, "data_dir": str(data_dir)}
        self._write()

    def release(self) -> None:
        """Drop the lease (its owner has removed what it names)."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)

    def _write(self) -> None:
        directory = lease_directory()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.file = directory / f"{self.lease_id}.json"
            partial = directory / f".{self.lease_id}.json.partial"
            document = {k: v for k, v in asdict(self).items() if k != "file"}
            partial.write_text(json.dumps(document, indent=1))
            os.replace(partial, self.file)  # a reader sees the old lease or the new, never half of one
        except OSError as exc:
            raise LeaseError(f"cannot write a lease for {self.kind} {', '.join(self.paths)} in "
                             f"{directory}: {exc}") from exc

    @classmethod
    def read(cls, path: Path) -> Lease:
        document = json.loads(path.read_text())
        owner = ProcessIdentity(**document.pop("owner"))
        return cls(owner=owner, file=path, **document)


def leases() -> list[Lease]:
    """Every readable lease of this user on this machine."""
    directory = lease_directory()
    found = []
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            found.append(Lease.read(directory / name))
    return found


def leased_work_directory(prefix: str, parent: Path | None = None) -> Path:
    """A fresh private directory like ``tempfile.mkdtemp(prefix=prefix, dir=parent)``, named in
    a lease first, so the reaper removes it if this process dies before it does. The owner
    removes it as it would a mkdtemp directory; the lease then goes at the next lease this
    process takes, or the next reap."""
    if not prefix.startswith(OWNED_NAME_PREFIXES):
        raise ValueError(f"work directory prefix {prefix!r}: the reaper only removes {OWNED_NAME_PREFIXES}")
    _release_own_finished_leases()
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
    lease = Lease.take("work-directory", [path])
    path.mkdir(mode=0o700)
    lease.mark_created()
    return path


def _remove_stale_partial_leases(older_than: float = 3600.0) -> None:
    """A lease being written is a ``.ID.json.partial`` for a moment; a writer killed in that
    moment leaves it (with nothing created yet: the lease is written first)."""
    directory = lease_directory()
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            if name.startswith(".") and name.endswith(".json.partial"):
                with contextlib.suppress(OSError):
                    if time.time() - os.stat(directory / name).st_mtime > older_than:
                        os.unlink(directory / name)


def release_lease_of(path: Path) -> None:
    """Drop this process's lease naming `path` (after removing it)."""
    me = ProcessIdentity.current()
    for lease in leases():
        if lease.owner == me and str(path) in lease.paths:
            lease.release()


def _release_own_finished_leases() -> None:
    me = ProcessIdentity.current()
    for lease in leases():
        if lease.owner == me and lease.created and not any(os.path.lexists(p) for p in lease.paths):
            lease.release()


@dataclass(frozen=True)
class ReapReport:
    """What a reap stopped and removed (or, dry run, would), and what it left and why."""

    servers_stopped: tuple[int, ...] = ()
    paths_removed: tuple[str, ...] = ()
    bytes_freed: int = 0
    leases_removed: int = 0
    live: int = 0  # leases whose owner runs: untouched
    unknown_owner: int = 0  # leases written in another pid namespace or machine: untouched
    failures: tuple[str, ...] = ()
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would stop" if self.dry_run else "stopped"
        return (f"abandoned by dead owners: {verb} {len(self.servers_stopped)} server(s), "
                f"{'would remove' if self.dry_run else 'removed'} {len(self.paths_removed)} "
                f"directory(ies) ({self.bytes_freed} bytes); {self.live} in use by live owners, "
                f"{self.unknown_owner} of owners this machine cannot see")


def _server_pids(lease: Lease) -> list[int]:
    """The lease's server processes that still run: its recorded postmaster (same start time)
    and whatever postmaster.pid in its data directory names, if that process serves it."""
    pids: list[int] = []
    server = lease.server or {}
    if server.get("pid") and server.get("started") is not None and _start_ticks(server["pid"]) == server["started"]:
        pids.append(int(server["pid"]))
    data_dirs = [server["data_dir"]] if server.get("data_dir") else []
    data_dirs += [os.path.join(p, "data") for p in lease.paths]
    for data_dir in data_dirs:
        text = _read(os.path.join(data_dir, "postmaster.pid"))
        if not text or not text.split("\n", 1)[0].strip().isdigit():
            continue
        pid = int(text.split("\n", 1)[0])
        command = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
        if data_dir in command and pid not in pids:  # the postmaster was started with -D data_dir
            pids.append(pid)
    return pids


def _stop(pid: int, started: int | None, timeout: float = 10.0) -> bool:
    """SIGQUIT (immediate shutdown), then SIGKILL; True once the process is gone."""
    for sig, wait in ((signal.SIGQUIT, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # ours when we started it (a test's own server)
            state = _read(f"/proc/{pid}/stat")
            if state is None or _start_ticks(pid) != started or state[state.rindex(")") + 2] == "Z":
                return True
            time.sleep(0.05)
    return False


def _unless_gone(_function: object, _path: str, info: tuple) -> None:
    if not isinstance(info[1], FileNotFoundError):
        raise info[1]


def reap_abandoned(*, dry_run: bool = False) -> ReapReport:
    """Stop the servers and remove the paths of every lease whose owner is gone, then the lease.
    Leases of live owners, and of owners this machine cannot see, are left as they are. A
    failure to remove one lease's things is reported and the reap goes on."""
    stopped: list[int] = []
    removed: list[str] = []
    freed = live = unknown = dropped = 0
    failures: list[str] = []
    for lease in leases():
        alive = lease.owner.is_alive()
        if alive is None and lease.owner.boot != _boot_id():
            alive = False  # the lease directory is this machine's: an earlier boot's owner is dead
        if alive is None:
            unknown += 1
            continue
        if alive:
            if lease.created and not any(os.path.lexists(p) for p in lease.paths) and lease.server is None:
                if not dry_run:  # the owner removed what it named and keeps running: nothing to guard
                    lease.release()
                continue
            live += 1
            continue
        pids = _server_pids(lease)
        if dry_run:
            stopped += pids
        else:
            for pid in pids:
                if _stop(pid, _start_ticks(pid)):
                    stopped.append(pid)
                else:
                    failures.append(f"server pid {pid} of {lease.kind} lease {lease.lease_id} would not stop")
        for path in lease.paths:
            if not os.path.lexists(path):
                continue
            if not os.path.basename(path).startswith(OWNED_NAME_PREFIXES):
                failures.append(f"lease {lease.lease_id} names {path}, which this product does not create: "
                                "left alone")
                continue
            size = _du(Path(path))
            if not dry_run:
                try:
                    shutil.rmtree(path, onerror=_unless_gone)  # another reaper may be at it too
                except OSError as exc:
                    failures.append(f"removing {path} of {lease.kind} lease {lease.lease_id} failed: {exc}")
                    continue
            removed.append(path)
            freed += size
        if not dry_run and not any(f"lease {lease.lease_id}" in f for f in failures):
            lease.release()
            dropped += 1
    if not dry_run:
        _remove_stale_partial_leases()
    return ReapReport(tuple(stopped), tuple(removed), freed, dropped, live, unknown, tuple(failures), dry_run)
