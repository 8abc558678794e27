"""A fault campaign: SIGKILL whole `platform-dr` processes at random moments, break stores, check.

Each trial runs one real `platform-dr` command (a separate process, in its own process group,
as an operator or a scheduler runs it) against a real PostgreSQL server and real stores, and
either kills the whole process group with SIGKILL at a random moment of it, or breaks a store
under it:

- ``kill-<command>`` for backup, copies, prune, rewrap, drill and restore. The moment is drawn
  uniformly over the command's calibrated duration (measured once at the start, undisturbed).
  Before ``copies`` a backup is taken with one store's directory immutable (``chattr +i``: the
  *unwritable store* fault, which must cost only that store's copy, exit code 3), so the copy
  has something to do; before ``rewrap`` the key is rotated (``platform-dr rotate-key``); before
  ``prune`` there are more backups than the policy keeps.
- ``store-gone``: a store's directory replaced by a file during a backup (exit 3, the others
  hold the backup).
- ``disk-full``: a store on a small tmpfs, filled to leave less than a backup needs (exit 3, no
  partial file left in it). Only where a tmpfs may be mounted (root); else the trial is skipped
  and the report says so.
- ``s3-killed``: the S3 emulator (moto server) SIGKILLed at a random moment of a backup into it
  and a local store (exit 3 or 0 if it finished first; the local copy must verify). moto keeps
  its objects in memory, so its store is restarted empty and left out of the "no store loses
  its newest copy" check; everything else is checked as for the others.

After every trial, whatever happened, the campaign checks (each failure is a *violation*):

1. `platform-dr list --json` works (exit 0) and `platform-dr cleanup` works (exit 0);
2. every listed copy verifies (checksums and decryption end to end; a copy already verified is
   verified again whenever its manifest changes, and all of them at the end);
3. the newest backup never disappears, and no store loses its newest verified copy;
4. the newest backup restores (`restore --replace` into a scratch database) and matches the
   source's fingerprint (every table's row count and md5) at the moment it was taken;
5. no traceback on any command's stderr;
6. after that cleanup, nothing is left (each a *leftover*): no server a command started still
   runs, no directory or work file a lease named exists, no lease of a dead owner, nothing in
   the campaign's temporary directory, no ``.partial-*`` file in any local store. Empty
   directories of killed prunes are swept by age (``sweep_older_than``, at least 1h); they are
   counted, and at the end the sweep is run with a cutoff in the future to prove it takes them.

The source database is changed before every backup (a generation row), so a restore proves
which backup it came from and the fingerprint to compare with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import psycopg

from platform_orchestration import emulators
from platform_orchestration.backups.catalog import read_backups
from platform_orchestration.backups.integrity import verify_stored_backup
from platform_orchestration.backups.leftovers import sweep_leftovers
from platform_orchestration.fleet import load_fleet
from platform_orchestration.ownership import LEASE_DIR_ENV, ProcessIdentity, leases
from platform_orchestration.postgres import PgConnection, ephemeral_cluster
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.protection import FleetProtection

COMMANDS = ("backup", "copies", "prune", "rewrap", "drill", "restore")
FAULTS = ("store-gone", "disk-full", "s3-killed")
DATABASE = "chaos"
CLOUD_DATABASE = "cloud"
KEEP_LAST = 2
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclasses.dataclass
class TrialResult:
    number: int
    kind: str
    seconds: float
    killed_at: float | None = None  # seconds into the command; None: not killed
    finished_first: bool = False  # the command ended before its kill moment
    exit_code: int | None = None
    violations: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[str] = dataclasses.field(default_factory=list)
    servers_seen: int = 0  # throwaway servers the command had started (from its leases)
    paths_seen: int = 0  # directories its leases named
    partials_seen: int = 0  # partial files seen while it ran


@dataclasses.dataclass
class CampaignReport:
    seed: int
    trials: list[TrialResult]
    seconds: float
    rows: int
    database_bytes: int
    skipped: list[str]
    final_violations: list[str]
    empty_directories_swept: int
    load_average: tuple[float, float, float]
    calibration: dict[str, float]
    canary: TrialResult | None = None  # the checks run once on planted faults: they must find them

    @property
    def violations(self) -> list[str]:
        return [f"trial {t.number} ({t.kind}): {v}" for t in self.trials for v in t.violations] + self.final_violations

    @property
    def leftovers(self) -> list[str]:
        return [f"trial {t.number} ({t.kind}): {v}" for t in self.trials for v in t.leftovers]

    def summary(self) -> str:
        kinds = Counter(t.kind for t in self.trials)
        killed = Counter(t.kind for t in self.trials if t.killed_at is not None and not t.finished_first)
        with_server = Counter(t.kind for t in self.trials if t.servers_seen and not t.finished_first)
        mid_write = Counter(t.kind for t in self.trials if t.partials_seen and not t.finished_first
                            and t.killed_at is not None)
        lines = [
            f"fault campaign: seed {self.seed}, {len(self.trials)} trials in {self.seconds:.0f}s "
            f"(database {self.rows} rows, {self.database_bytes / 2**20:.0f} MiB; load average "
            f"{self.load_average[0]:.2f} {self.load_average[1]:.2f} {self.load_average[2]:.2f})",
            "calibrated (undisturbed) command times: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in self.calibration.items()),
        ]
        for kind in sorted(kinds):
            extra = f", {killed[kind]} killed mid-run" if kind.startswith("kill-") or kind == "s3-killed" else ""
            if with_server[kind]:
                extra += f", {with_server[kind]} with a throwaway server up"
            if mid_write[kind]:
                extra += f", {mid_write[kind]} while writing to a store"
            lines.append(f"  {kind:<12} {kinds[kind]:>3} trial(s){extra}")
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines.append(f"empty directories of killed prunes swept by age at the end: {self.empty_directories_swept}")
        lines.append(f"violations: {len(self.violations)}; leftovers after cleanup: {len(self.leftovers)}")
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines += [f"  LEFTOVER {v}" for v in self.leftovers]
        return "\n".join(lines)


def _fingerprint(connection: PgConnection) -> dict[str, tuple[int, str]]:
    with psycopg.connect(connection.dsn) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
        found = {}
        for table in tables:
            count, digest = conn.execute(
                f'SELECT count(*), md5(coalesce(string_agg(t::text, \'|\' ORDER BY t::text), \'\')) FROM "{table}" t'
            ).fetchone()
            found[table] = (count, digest)
        return found


def _generation(connection: PgConnection) -> int:
    with psycopg.connect(connection.dsn) as conn:
        return conn.execute("SELECT coalesce(max(n), 0) FROM generations").fetchone()[0]


def _stat_alive(pid: int, started: int | None) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = text[text.rindex(")") + 2:].split()
    return fields[0] != "Z" and (started is None or int(fields[19]) == started)


class _LeaseWatcher:
    """Reads the lease directory while a command runs: what it started and created, so that
    after the kill and the cleanup the campaign can check every one of them is gone."""

    def __init__(self, directory: Path, stores: tuple[Path, ...] = ()) -> None:
        self.directory = directory
        self.stores = stores
        self.partials: set[str] = set()  # partial files seen being written: the kill came mid-write
        self.paths: set[str] = set()
        self.servers: set[tuple[int, int | None]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _look(self) -> None:
        for lease in leases():
            if lease.owner.pid == os.getpid():
                continue
            self.paths.update(lease.paths)
            if lease.server:
                self.servers.add((lease.server["pid"], lease.server.get("started")))
        for root in self.stores:
            for directory, _dirs, names in os.walk(root):
                self.partials.update(os.path.join(directory, n) for n in names if n.startswith(".partial-"))

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._look()
            time.sleep(0.02)

    def __enter__(self) -> _LeaseWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()


class Campaign:
    def __init__(self, *, seed: int, rows: int, scratch: Path, log=print) -> None:  # noqa: ANN001
        self.rng = random.Random(seed)
        self.seed = seed
        self.rows = rows
        self.scratch = scratch
        self.log = log
        self.skipped: list[str] = []
        self.fingerprints: dict[int, dict] = {}
        self.generation = 0
        self.verified: dict[tuple[str, str, str], str] = {}  # (db, store, id) -> manifest digest
        self.newest: dict[tuple[str, str], str] = {}  # (db, store) -> newest verified id
        self.calibration: dict[str, float] = {}
        self.stack = contextlib.ExitStack()
        self.tmpfs: Path | None = None
        self.stderrs: list[tuple[str, str]] = []  # (command, stderr) of the current trial
        self.watcher: _LeaseWatcher | None = None
        self.calibrated = False  # then every undisturbed run updates the expected durations

    # --- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        s = self.scratch
        for sub in ("tmp", "leases", "kek", "stores/a", "stores/b", "logs"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        (s / "kek").chmod(0o700)
        (s / "leases").chmod(0o700)
        self.env = {**os.environ, "TMPDIR": str(s / "tmp"), LEASE_DIR_ENV: str(s / "leases"),
                    "PLATFORM_LOCAL_KEK": str(s / "kek" / "kek"), **S3_CREDENTIALS}
        self.env.pop("VAULT_ADDR", None)
        # The campaign's own servers and helpers use the same lease directory (as live owners).
        os.environ[LEASE_DIR_ENV] = self.env[LEASE_DIR_ENV]
        os.environ["PLATFORM_LOCAL_KEK"] = self.env["PLATFORM_LOCAL_KEK"]
        os.environ.update(S3_CREDENTIALS)
        self.store_c = s / "stores" / "c"
        self.store_c.mkdir(parents=True, exist_ok=True)
        self._mount_tmpfs()
        self.source = self.stack.enter_context(ephemeral_cluster(16))
        self.target = self.stack.enter_context(ephemeral_cluster(16))
        self._seed()
        self.moto_port = free_port()
        self._start_moto()
        self.fleet_file = s / "fleet.yaml"
        self._write_fleet()
        self.fleet = load_fleet(self.fleet_file)
        self.protection = self.stack.enter_context(FleetProtection.from_environment(self.fleet))
        self._calibrate()

    def _mount_tmpfs(self) -> None:
        mount = self.scratch / "tmpfs"
        mount.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g,mode=0755", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            self.skipped.append(f"disk-full: a tmpfs cannot be mounted here ({result.stderr.strip()})")
            return
        self.tmpfs = mount
        self.stack.callback(lambda: subprocess.run(["umount", "-l", str(mount)], capture_output=True))
        self.store_c = mount / "store"
        self.store_c.mkdir()

    def _seed(self) -> None:
        with psycopg.connect(self.source.connection().dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
            conn.execute(f"CREATE DATABASE {CLOUD_DATABASE}")
        for name, rows in ((DATABASE, self.rows), (CLOUD_DATABASE, max(self.rows // 2, 1000))):
            with psycopg.connect(self.source.connection(name).dsn, autocommit=True) as conn:
                # Mixed data: compressible text, incompressible md5s, numbers, jsonb.
                conn.execute(f"""
                    CREATE TABLE items AS SELECT g AS id, md5(g::text) AS h, repeat('abc', g % 50) AS t,
                           jsonb_build_object('n', g, 'r', random()) AS j
                    FROM generate_series(1, {rows}) g;
                    ALTER TABLE items ADD PRIMARY KEY (id);
                    CREATE TABLE generations (n int PRIMARY KEY, at timestamptz DEFAULT now());
                """)
        with psycopg.connect(self.source.connection(DATABASE).dsn) as conn:
            self.database_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        self._mutate()

    def _mutate(self) -> None:
        """A new generation of the source, recorded with its fingerprint."""
        self.generation += 1
        connection = self.source.connection(DATABASE)
        with psycopg.connect(connection.dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO generations (n) VALUES (%s)", (self.generation,))
            conn.execute("UPDATE items SET h = md5(h) WHERE id %% 97 = %s", (self.generation % 97,))
        self.fingerprints[self.generation] = _fingerprint(connection)

    def _start_moto(self) -> None:
        self.moto = emulators.moto_server(self.moto_port).start(self.scratch / "logs")
        boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                              region_name="us-east-1").client(
            "s3", endpoint_url=self.moto.endpoint).create_bucket(Bucket="chaos-s3")
        self.stack.callback(self.moto.stop)

    def _write_fleet(self) -> None:
        s = self.scratch
        self.fleet_file.write_text(f"""\
clusters:
  - {{name: chaos-pg, cloud: local, region: loopback, role: primary}}
stores:
  - {{name: a, kind: local, cloud: aws, path: {s / 'stores' / 'a'}}}
  - {{name: b, kind: local, cloud: azure, path: {s / 'stores' / 'b'}}}
  - {{name: c, kind: local, cloud: gcp, path: {self.store_c}}}
  - name: s3
    kind: s3
    cloud: aws
    bucket: chaos-s3
    region: us-east-1
    endpoint_url: http://127.0.0.1:{self.moto_port}
    credentials:
      access_key_id: {{env: AWS_ACCESS_KEY_ID}}
      secret_access_key: {{env: AWS_SECRET_ACCESS_KEY}}
databases:
  - {{name: {DATABASE}, cluster: chaos-pg, dsn: "postgresql://postgres@127.0.0.1:{self.source.port}/{DATABASE}",
      policy: critical}}
  - {{name: {CLOUD_DATABASE}, cluster: chaos-pg,
      dsn: "postgresql://postgres@127.0.0.1:{self.source.port}/{CLOUD_DATABASE}", policy: cloud}}
policies:
  - name: critical
    rpo: 1h
    stores: [a, b, c]
    drill: {{every: 1d, rto: 30m}}
    retention: {{keep_last: {KEEP_LAST}}}
  - name: cloud
    rpo: 1h
    stores: [a, s3]
    drill: {{every: 1d, rto: 30m}}
    retention: {{keep_last: {KEEP_LAST}}}
""")

    def _calibrate(self) -> None:
        """Time every command once, undisturbed, in the state its trials run it in (copies with
        a copy to make, prune with backups to delete, rewrap after a rotation)."""
        trial = TrialResult(0, "calibration", 0.0)
        for command in ("backup", "copies", "drill", "restore", "prune", "rewrap", "rotate-key"):
            prepare = getattr(self, f"_prepare_{command}", None)
            if prepare is not None:
                prepare(trial)
            started = time.monotonic()
            result = self._run(self._args(command))
            self.calibration[command] = time.monotonic() - started
            if result.returncode != 0:
                # Both streams: a drill that ran and failed says why on stdout (its verdict), with
                # nothing on stderr.
                raise RuntimeError(f"calibration: platform-dr {command} failed ({result.returncode}):\n"
                                   f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}")
        self._mutate()
        started = time.monotonic()
        self._run(["backup", CLOUD_DATABASE, "--wait", "60"])
        self.calibration["backup to s3"] = time.monotonic() - started
        self._check_state(trial, [])
        if trial.violations:
            raise RuntimeError(f"calibration: {trial.violations}")
        self.first_calibration = dict(self.calibration)
        self.calibrated = True

    # --- running commands -----------------------------------------------------------------

    def _args(self, command: str) -> list[str]:
        return {
            "backup": ["backup", DATABASE, "--wait", "60"],
            "copies": ["copies", DATABASE],
            "prune": ["prune", DATABASE, "--wait", "60"],
            "rewrap": ["rewrap", "--wait", "60"],
            "drill": ["drill", DATABASE],
            "restore": ["restore", DATABASE, "--replace", "--with-globals", "--target-dsn",
                        f"host=127.0.0.1 port={self.target.port} user=postgres dbname=killed_restore"],
            "rotate-key": ["rotate-key"],
            "list": ["list", "--json"],
            "cleanup": ["cleanup"],
        }[command]

    def _popen(self, args: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(self.fleet_file),
                                 *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
                                start_new_session=True)

    def _observed(self, args: list[str], seconds: float) -> None:
        """Keep a command's expected duration current: the machine's load changes during a
        campaign, and a calibration made under load would put most kills after the end."""
        name = "backup to s3" if args[:2] == ["backup", CLOUD_DATABASE] else args[0]
        if name in self.calibration and self.calibrated:
            self.calibration[name] = 0.5 * self.calibration[name] + 0.5 * seconds

    def _run(self, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
        process = self._popen(args)
        started = time.monotonic()
        out, err = process.communicate(timeout=timeout)
        self._observed(args, time.monotonic() - started)
        self.stderrs.append((args[0], err))
        return subprocess.CompletedProcess(args, process.returncode, out, err)

    def _run_killed(self, args: list[str], at: float, trial: TrialResult,
                    kill: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
        """Run, and at `at` seconds SIGKILL its whole process group (or call `kill`)."""
        if self.watcher is not None:
            self.watcher.partials.clear()  # count what the killed command wrote, not its preparation
        process = self._popen(args)
        trial.killed_at = at
        started = time.monotonic()
        try:
            out, err = process.communicate(timeout=at)
            trial.finished_first = True
            self._observed(args, time.monotonic() - started)
        except subprocess.TimeoutExpired:
            if kill is None:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                kill()
            out, err = process.communicate(timeout=600)
        self.stderrs.append((args[0], err))
        trial.exit_code = process.returncode
        return subprocess.CompletedProcess(args, process.returncode, out, err)

    # --- trials ---------------------------------------------------------------------------

    def trial(self, number: int, kind: str) -> TrialResult:
        trial = TrialResult(number, kind, 0.0)
        self.stderrs = []
        started = time.monotonic()
        with _LeaseWatcher(self.scratch / "leases", self._local_stores()) as watcher:
            self.watcher = watcher
            getattr(self, "_" + kind.replace("-", "_"))(trial)
        self._check_state(trial, watcher)
        trial.servers_seen, trial.paths_seen = len(watcher.servers), len(watcher.paths)
        trial.partials_seen = len(watcher.partials)
        trial.seconds = time.monotonic() - started
        return trial

    def _moment(self, command: str) -> float:
        """Uniform from just before the command's start-up ends (imports, fleet, key service:
        the calibrated rotate-key) to its calibrated end (on a loaded machine a command can
        finish early: such a trial counts as "it had finished", not as a kill)."""
        startup = self.calibration["rotate-key"]
        return self.rng.uniform(0.8 * startup, max(self.calibration[command], startup))

    def _prepare_backup(self, trial: TrialResult) -> None:
        self._mutate()

    def _kill_backup(self, trial: TrialResult) -> None:
        self._prepare_backup(trial)
        self._run_killed(self._args("backup"), self._moment("backup"), trial)

    def _prepare_copies(self, trial: TrialResult) -> None:
        """The unwritable-store fault: a backup with store b's database directory immutable
        must cost only b's copy (exit 3); the copies command then has that copy to make."""
        directory = self.scratch / "stores" / "b" / "backups" / DATABASE
        directory.mkdir(parents=True, exist_ok=True)
        locked = subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
        try:
            self._mutate()
            if locked:
                result = self._run(self._args("backup"))
                self._expect(trial, result, 3, "backup with store b unwritable", "no copy in b")
        finally:
            subprocess.run(["chattr", "-i", str(directory)], capture_output=True)
        if not locked and not any("unwritable" in s for s in self.skipped):
            self.skipped.append("unwritable store: chattr +i is not possible here; copies trials copy nothing")

    def _kill_copies(self, trial: TrialResult) -> None:
        self._prepare_copies(trial)
        self._run_killed(self._args("copies"), self._moment("copies"), trial)

    def _prepare_prune(self, trial: TrialResult) -> None:
        while len(read_backups(self.protection.store("a"), DATABASE).backups) <= KEEP_LAST + 1:
            self._mutate()
            self._expect(trial, self._run(self._args("backup")), 0, "backup before prune")
        self._check_backups(trial)  # the newest, before the prune, are these: they must survive it

    def _kill_prune(self, trial: TrialResult) -> None:
        self._prepare_prune(trial)
        self._run_killed(self._args("prune"), self._moment("prune"), trial)

    def _prepare_rewrap(self, trial: TrialResult) -> None:
        self._expect(trial, self._run(self._args("rotate-key")), 0, "rotate-key")

    def _kill_rewrap(self, trial: TrialResult) -> None:
        self._prepare_rewrap(trial)
        self._run_killed(self._args("rewrap"), self._moment("rewrap"), trial)

    def _kill_drill(self, trial: TrialResult) -> None:
        self._run_killed(self._args("drill"), self._moment("drill"), trial)

    def _kill_restore(self, trial: TrialResult) -> None:
        self._run_killed(self._args("restore"), self._moment("restore"), trial)

    def _store_gone(self, trial: TrialResult) -> None:
        root = self.scratch / "stores" / "b"
        aside = root.with_name("b.aside")
        root.rename(aside)
        root.write_text("not a directory: the store is gone\n")
        try:
            self._mutate()
            self._expect(trial, self._run(self._args("backup")), 3, "backup with store b gone", "no copy in b")
        finally:
            root.unlink()
            aside.rename(root)

    def _disk_full(self, trial: TrialResult) -> None:
        if self.tmpfs is None:
            self._kill_backup(trial)  # stands in, so the schedule keeps its length
            return
        free = shutil.disk_usage(self.tmpfs).free
        newest = max(read_backups(self.protection.store("a"), DATABASE).backups, key=lambda b: b.backup_id)
        filler = self.tmpfs / "filler"
        with open(filler, "wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, max(free - newest.manifest.dump.stored_bytes // 3, 0))
        try:
            self._mutate()
            self._expect(trial, self._run(self._args("backup")), 3, "backup with store c full", "no copy in c")
            partials = list(self.store_c.rglob(".partial-*"))
            if partials:
                trial.violations.append(f"a failed write left {len(partials)} partial file(s) in the full store")
        finally:
            filler.unlink()
        # The copy c missed, so that c's newest stays the newest backup (the next trials expect it).
        self._expect(trial, self._run(self._args("copies")), 0, "copies after the disk was freed")

    def _s3_killed(self, trial: TrialResult) -> None:
        self._mutate()

        def kill_moto() -> None:
            assert self.moto.process is not None
            os.killpg(self.moto.process.pid, signal.SIGKILL)
            self.moto.process.wait()

        result = self._run_killed(["backup", CLOUD_DATABASE, "--wait", "60"],
                                  self.rng.uniform(0.8 * self.calibration["rotate-key"],
                                                   self.calibration["backup to s3"] * 1.1), trial, kill_moto)
        if not trial.finished_first:
            if result.returncode == 3:
                if "no copy in s3" not in result.stderr:
                    trial.violations.append(f"backup with S3 down: exit 3 without naming s3: {result.stderr!r}")
            elif result.returncode != 0:
                trial.violations.append(f"backup with S3 killed: exit {result.returncode} (expected 3, or 0 "
                                        f"if it had finished): {result.stderr.strip()[-300:]}")
        else:
            self.moto.stop()
        self._start_moto()
        for key in [k for k in self.newest if k[1] == "s3"]:
            del self.newest[key]  # moto starts empty: its store is not checked for lost copies
        self.verified = {k: v for k, v in self.verified.items() if k[1] != "s3"}

    def _expect(self, trial: TrialResult, result: subprocess.CompletedProcess, code: int, what: str,
                needle: str | None = None) -> None:
        if result.returncode != code:
            trial.violations.append(f"{what}: exit {result.returncode}, expected {code}: "
                                    f"{result.stderr.strip()[-300:]}")
        elif needle and needle not in result.stderr:
            trial.violations.append(f"{what}: stderr does not say {needle!r}: {result.stderr.strip()[-300:]}")

    # --- the checks ------------------------------------------------------------------------

    def _check_state(self, trial: TrialResult, watcher: _LeaseWatcher | list) -> None:
        listing = self._run(self._args("list"))
        if listing.returncode != 0:
            trial.violations.append(f"list failed with exit {listing.returncode}: {listing.stderr.strip()[-300:]}")
        else:
            with contextlib.suppress(ValueError):
                json.loads(listing.stdout)
        cleanup = self._run(self._args("cleanup"))
        if cleanup.returncode != 0:
            trial.violations.append(f"cleanup failed with exit {cleanup.returncode}: {cleanup.stderr.strip()[-300:]}")
        self._check_backups(trial)
        self._check_restore(trial)
        for command, err in self.stderrs:
            if "Traceback" in err or "unexpected error" in err:
                trial.violations.append(f"{command} printed a traceback or a bug: {err.strip()[-500:]}")
        if isinstance(watcher, _LeaseWatcher):
            self._check_leftovers(trial, watcher)

    def _check_backups(self, trial: TrialResult) -> None:
        for database, stores in ((DATABASE, ("a", "b", "c")), (CLOUD_DATABASE, ("a", "s3"))):
            newest_overall = max((v for (db, _s), v in self.newest.items() if db == database), default=None)
            present_anywhere = set()
            for name in stores:
                store = self.protection.store(name)
                listing = read_backups(store, database)
                if listing.unreadable:
                    trial.violations.append(f"store {name}: unreadable {[u.key for u in listing.unreadable]}")
                ids = set()
                for stored in listing.backups:
                    ids.add(stored.backup_id)
                    digest = hashlib.sha256(stored.manifest.model_dump_json().encode()).hexdigest()
                    key = (database, name, stored.backup_id)
                    if self.verified.get(key) == digest:
                        continue
                    try:
                        verify_stored_backup(store, stored.manifest, keys=self.protection.keys)
                    except Exception as exc:  # noqa: BLE001 - every failure is a finding
                        trial.violations.append(f"backup {stored.backup_id} of {database} in {name} does not "
                                                f"verify: {type(exc).__name__}: {exc}")
                        continue
                    self.verified[key] = digest
                present_anywhere |= ids
                previous = self.newest.get((database, name))
                if previous is not None and previous not in ids:
                    trial.violations.append(f"store {name} lost its newest verified copy {previous} of {database}")
                verified_here = [i for i in ids if (database, name, i) in self.verified]
                if verified_here:
                    self.newest[(database, name)] = max(verified_here)
            if newest_overall is not None and newest_overall not in present_anywhere:
                trial.violations.append(f"the newest backup {newest_overall} of {database} disappeared")

    def _check_restore(self, trial: TrialResult) -> None:
        target = self.target.connection("verify_restore")
        try:
            self.protection.restore(DATABASE, target, replace=True)
        except Exception as exc:  # noqa: BLE001
            trial.violations.append(f"restore of the newest backup failed: {type(exc).__name__}: {exc}")
            return
        generation = _generation(target)
        expected = self.fingerprints.get(generation)
        if expected is None or _fingerprint(target) != expected:
            trial.violations.append(f"the restored newest backup (generation {generation}) does not match the "
                                    "source's fingerprint when it was taken")

    def _check_leftovers(self, trial: TrialResult, watcher: _LeaseWatcher) -> None:
        for pid, started in watcher.servers:
            if _stat_alive(pid, started):
                trial.leftovers.append(f"server pid {pid} still runs")
        for path in watcher.paths:
            if os.path.lexists(path):
                trial.leftovers.append(f"{path} still exists")
        me = ProcessIdentity.current()
        for lease in leases():
            if lease.owner != me:
                trial.leftovers.append(f"lease {lease.lease_id} of pid {lease.owner.pid} "
                                       f"({'live' if lease.owner.is_alive() else 'dead'}) for {lease.paths}")
        campaign_own = {str(p) for lease in leases() for p in lease.paths}
        for entry in (self.scratch / "tmp").iterdir():
            # The server binaries' copy (postgres/cluster.py) is a cache kept on purpose, not a leftover.
            if str(entry) not in campaign_own and not entry.name.startswith("platform-orchestration-pg-"):
                trial.leftovers.append(f"{entry} left in the temporary directory")
        for root in self._local_stores():
            for partial in root.rglob(".partial-*"):
                trial.leftovers.append(f"partial file {partial}")

    def _local_stores(self) -> tuple[Path, ...]:
        return (self.scratch / "stores" / "a", self.scratch / "stores" / "b", self.store_c)

    # --- the end ---------------------------------------------------------------------------

    def finish(self) -> tuple[list[str], int]:
        """Verify every listed copy once more, then sweep empty directories with a cutoff in
        the future (proving the age-based sweep takes every one)."""
        violations = []
        self.verified.clear()
        final = TrialResult(-1, "final", 0.0)
        self._check_backups(final)
        violations += final.violations
        swept = 0
        future = datetime.now(timezone.utc) + timedelta(days=1)
        for name in ("a", "b", "c"):
            sweep = sweep_leftovers(self.protection.store(name), (f"backups/{DATABASE}/", f"backups/{CLOUD_DATABASE}/",
                                                                  f"drills/{DATABASE}/", "evidence/"),
                                    older_than=future)
            swept += len(sweep.directories)
            violations += [f"final sweep of {name}: {f}" for f in sweep.failures]
            if sweep.uploads:
                violations.append(f"final sweep of {name} found {len(sweep.uploads)} partial file(s)")
        return violations, swept

    def canary(self) -> TrialResult:
        """Plant one fault of each kind the checks look for and run them once: a partial file
        whose writer still runs (cleanup must keep it, the check must report it), a stray work
        directory, and store b's newest copy deleted (a lost newest copy)."""
        trial = TrialResult(0, "canary", 0.0)
        writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        try:
            owner = ProcessIdentity.of_pid(writer.pid)
            assert owner is not None
            folder = self.scratch / "stores" / "a" / "backups" / DATABASE
            (folder / f".partial-canary.{'0' * 32}-{owner.token()}").write_bytes(b"still being written")
            (self.scratch / "tmp" / "restore-canary").mkdir()
            newest = self.newest[(DATABASE, "b")]
            for path in sorted((self.scratch / "stores" / "b" / "backups" / DATABASE / newest).iterdir()):
                path.unlink()
            with _LeaseWatcher(self.scratch / "leases") as watcher:
                pass
            self.stderrs = []
            self._check_state(trial, watcher)
        finally:
            writer.kill()
            writer.wait()
        return trial

    def close(self) -> None:
        self.stack.close()


def schedule(trials: int, rng: random.Random) -> list[str]:
    """`trials` trial kinds: the six kill kinds and three faults in turn, each round shuffled."""
    kinds = [f"kill-{c}" for c in COMMANDS] + list(FAULTS)
    order: list[str] = []
    while len(order) < trials:
        round_ = kinds[:]
        rng.shuffle(round_)
        order += round_
    return order[:trials]


def run_campaign(trials: int, seed: int, rows: int = 1_000_000, log=print,  # noqa: ANN001
                 canary: bool = False) -> CampaignReport:
    """Set up, run `trials` seeded trials, check after each; with `canary`, finally prove the
    checks find planted faults (CampaignReport.canary)."""
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="platform-chaos-", dir="/var/tmp"))
    # Searchable by the server's user: its TMPDIR holds the server binaries' copy when the
    # install itself is out of that user's reach (a clone under a private directory).
    scratch.chmod(0o755)
    campaign = Campaign(seed=seed, rows=rows, scratch=scratch, log=log)
    environment = dict(os.environ)  # the campaign points its own process at its scratch too
    results: list[TrialResult] = []
    try:
        campaign.setup()
        log(f"set up in {time.monotonic() - started:.0f}s; calibration: "
            + ", ".join(f"{k} {v:.1f}s" for k, v in campaign.calibration.items()))
        for number, kind in enumerate(schedule(trials, campaign.rng), start=1):
            result = campaign.trial(number, kind)
            results.append(result)
            moment = "" if result.killed_at is None else (
                f" kill at {result.killed_at:.2f}s" + (" (it had finished)" if result.finished_first else ""))
            log(f"trial {number:>3} {kind:<14}{moment}: {result.seconds:.1f}s, "
                f"{len(result.violations)} violation(s), {len(result.leftovers)} leftover(s)"
                + "".join(f"\n    VIOLATION {v}" for v in result.violations)
                + "".join(f"\n    LEFTOVER {v}" for v in result.leftovers))
        final_violations, swept = campaign.finish()
        planted = campaign.canary() if canary else None
        calibration = dict(campaign.first_calibration)
    finally:
        campaign.close()
        os.environ.clear()
        os.environ.update(environment)
        shutil.rmtree(scratch, ignore_errors=True)
    return CampaignReport(seed, results, time.monotonic() - started, rows, campaign.database_bytes,
                          campaign.skipped, final_violations, swept, os.getloadavg(), calibration, planted)


__all__ = ["CampaignReport", "TrialResult", "run_campaign", "schedule"]
