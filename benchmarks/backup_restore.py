"""Backup and restore, measured against pg_dump / pg_restore on the same database in one run.

    python -m benchmarks.backup_restore [--sizes 0.5,2] [--repeat 3] [--jobs 2] [--no-sweep]
                                        [--whole-gib 0.9] [--startup-runs 20] [--quick]

First, whole processes as an operator runs them: the start-up of `platform-dr --help` and
`platform-dr validate`, then `platform-dr backup DB` (default settings: encrypted with the
embedded default's local key file, one local store) against `pg_dump -Fc -Z0 > /dev/null` on
three kinds of data of --whole-gib each: mixed (the generator below), pgbench (`pgbench -i`)
and random bytea. --quick stops there.

Then, for each size (GiB) a mixed database is generated inside a throwaway PostgreSQL server, then,
in --repeat interleaved rounds (so drift hits every contender alike):

* backup: `take_backup` (pg_dump -Fc -Z0 | zstd | SHA-256 | local store, fsync, read-back
  checksum, manifest) against the floor `pg_dump -Fc -Z0 > /dev/null` and against plain
  `pg_dump -Fc > file`;
* restore: `restore_backup` (fetch + decompress to a work file + pg_restore -j, then row-count
  verification) into a fresh database on a second server, against createdb + `pg_restore -j`
  of the plain -Fc file into another fresh database on that same server;
* on the smallest size only, the backup again with each zstd level/threads combination.

Each of our operations runs in a freshly spawned Python process and is timed inside it, so
the peak RSS reported (VmHWM) is that operation's alone; pg_dump and pg_restore are separate
processes and are not counted in it (their own peak is recorded for information).

Figures are medians, reported as ratios to the baselines measured in the same run. They are
printed as tables, written as JSON to var/bench/results.json, and summarised in a markdown
block ready for the README.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import zstandard
from psycopg import sql
from psycopg.conninfo import make_conninfo

from platform_orchestration.backups.catalog import latest_backup
from platform_orchestration.backups.restore import restore_backup
from platform_orchestration.backups.take import CompressionSettings, take_backup
from platform_orchestration.postgres import (
    LocalCluster,
    PgConnection,
    PgInstall,
    client_tools_for,
    ephemeral_cluster,
)
from platform_orchestration.storage import LocalObjectStore

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "var" / "bench" / "results.json"
WORK_DIR = ROOT / "var" / "bench" / "work"

MiB = 1024**2
GiB = 1024**3
SERVER_MAJOR = 16

BACKUP_VS_FLOOR_GOAL = 1.10
SIZE_VS_PLAIN_GOAL = 0.85
RESTORE_VS_PG_RESTORE_GOAL = 1.15
PEAK_RSS_GOAL_BYTES = 200 * MiB

# What the compression sweep tries on the smallest size (every level with every thread
# count); the core's default is always measured, at every size.
SWEEP_LEVELS = (1, 3)
SWEEP_THREADS = (0, 2)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds only the report."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _connect(conn: PgConnection) -> psycopg.Connection:
    # make_conninfo drops a None password; the benchmark's own servers trust local users.
    return psycopg.connect(make_conninfo(conn.dsn, password=conn.password), autocommit=True)


def _create_database(cluster: LocalCluster, name: str) -> None:
    with _connect(cluster.connection("postgres")) as c:
        c.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def _drop_database(cluster: LocalCluster, name: str) -> None:
    with _connect(cluster.connection("postgres")) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _database_bytes(conn: PgConnection) -> int:
    with _connect(conn) as c:
        row = c.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


# --- The generated database --------------------------------------------------------------
#
# One "unit" is one `orders` row (wide: text and jsonb) and two `readings` rows (numeric), so
# the mix, about 60 % wide and 40 % numeric with indexes, is the same at every size. Values
# are derived from the row number by hashing (hashint8), so a size always gets the same
# data. Text is words from a small vocabulary, names and domains from short lists, and one
# uuid-like hex reference per order: redundancy like real OLTP rows, neither random bytes
# (which no compressor shrinks, and which makes zstd's higher levels lose to level 1) nor
# repeated strings. Rows stay far below the TOAST threshold: PostgreSQL's own compression
# would otherwise hide data from both pg_dump and zstd.

_WORDS = (
    "the of and to in is for on with as by at from order customer delivery package item "
    "shipping address payment refund invoice account please thanks call before after door "
    "gift wrap fragile handle care express standard priority return exchange size colour "
    "blue red green black white small medium large extra box bag store online mobile app "
    "discount coupon code applied loyalty member points balance card cash transfer pending "
    "confirmed shipped delivered cancelled delayed weather warehouse stock back ordered "
    "supplier invoice tax included excluded weekend morning evening office home reception "
    "neighbour leave ring twice note special request birthday anniversary message printed "
    "label tracking number carrier local pickup point lock"
).split()
_FIRST_NAMES = "anna ben carla david emma felix grace hugo iris jonas karin liam mia noah olga paul".split()
_LAST_NAMES = "smith jones garcia muller rossi dubois novak silva berg kowalski jensen costa".split()
_DOMAINS = "example.com mail.example.org shop.example.net corp.example.io".split()
_NOTE_WORDS = 14


def _pick(array: str, count: int, seed: str) -> str:
    """SQL for a pseudo-random element of `array` (a text[] of `count` elements), chosen by
    hashing `seed`; hashint8 is PostgreSQL's integer hash, fast and repeatable."""
    return f"{array}[1 + mod(hashint8({seed}) & 2147483647, {count})]"


_NOTE = ("left(concat_ws(' ', "
         + ", ".join(_pick("v.words", len(_WORDS), f"i * {_NOTE_WORDS} + {k}")
                     for k in range(_NOTE_WORDS))
         + "), 30 + (hashint8(i + 5) & 63))")

_TABLES = (
    """CREATE TABLE orders (
        id bigint NOT NULL,
        created_at timestamptz NOT NULL,
        customer_id integer NOT NULL,
        status text NOT NULL,
        email text NOT NULL,
        note text,
        payload jsonb NOT NULL)""",
    """CREATE TABLE readings (
        id bigint NOT NULL,
        sensor_id integer NOT NULL,
        taken_at timestamptz NOT NULL,
        value double precision NOT NULL,
        amount numeric(14,2) NOT NULL,
        quality smallint NOT NULL)""",
)

# Literal SQL, not bind parameters, for the word lists: they are constants of this module.
_FILL_ORDERS = f"""
INSERT INTO orders
SELECT i,
       timestamptz '2024-01-01' + i * interval '7 seconds' + (hashint8(i + 3) & 4095) * interval '1 ms',
       c.id,
       (ARRAY['new', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded'])[1 + mod(i, 6)],
       {_pick("v.first", len(_FIRST_NAMES), "c.id + 11")} || '.'
         || {_pick("v.last", len(_LAST_NAMES), "c.id + 12")}
         || (hashint8(c.id + 1) & 1023) || '@' || {_pick("v.domains", len(_DOMAINS), "c.id + 13")},
       {_NOTE},
       jsonb_build_object(
         'sku', 'SKU-' || lpad((hashint8(i + 4) & 8191)::text, 5, '0'),
         'qty', 1 + mod(i, 9),
         'price', ((hashint8(i + 2) & 65535) / 100.0)::numeric(10,2),
         'channel', (ARRAY['web', 'app', 'store', 'phone'])[1 + mod(i, 4)],
         'tags', jsonb_build_array('t' || mod(i, 17), 't' || mod(i, 23)),
         'ref', md5(i::text))
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,
     LATERAL (SELECT hashint8(i) & 1048575 AS id) AS c,  -- a customer's email is always the same
     (SELECT '{{{",".join(_WORDS)}}}'::text[] AS words,
             '{{{",".join(_FIRST_NAMES)}}}'::text[] AS first,
             '{{{",".join(_LAST_NAMES)}}}'::text[] AS last,
             '{{{",".join(_DOMAINS)}}}'::text[] AS domains) AS v
"""

# Sensor-like series: a slow wave plus noise, two decimals; amounts with cents.
_FILL_READINGS = """
INSERT INTO readings
SELECT i,
       mod(i, 10000)::int,
       timestamptz '2024-01-01' + (i / 10000) * interval '1 minute',
       round((20 + 10 * sin(i / 50000.0) + random() * 2)::numeric, 2)::double precision,
       ((hashint8(i) & 1048575) / 100.0)::numeric(14,2),
       mod(i, 5)::smallint
FROM generate_series(2 * %(lo)s::bigint - 1, 2 * %(hi)s::bigint) AS i
"""

_INDEXES = (
    "ALTER TABLE orders ADD PRIMARY KEY (id)",
    "CREATE INDEX orders_customer_created ON orders (customer_id, created_at)",
    "CREATE INDEX orders_email ON orders (email)",
    "ALTER TABLE readings ADD PRIMARY KEY (id)",
    "CREATE INDEX readings_sensor_taken ON readings (sensor_id, taken_at)",
)

_CALIBRATION_UNITS = 100_000
_CHUNK_UNITS = 250_000
_SIZE_TOLERANCE = 0.98


@dataclass(frozen=True)
class Dataset:
    name: str
    target_gib: float
    database_bytes: int
    orders_rows: int
    readings_rows: int
    generate_seconds: float


def _fill(conn: PgConnection, first: int, last: int) -> None:
    """Units first..last into both tables, in as many sessions as there are cores: one
    INSERT ... SELECT is one backend, i.e. one core."""

    def fill(statement: str, lo: int, hi: int) -> None:
        with _connect(conn) as c:
            c.execute("SET synchronous_commit = off")
            c.execute(statement, {"lo": lo, "hi": hi})

    chunks = [(statement, lo, min(lo + _CHUNK_UNITS - 1, last))
              for statement in (_FILL_ORDERS, _FILL_READINGS)
              for lo in range(first, last + 1, _CHUNK_UNITS)]
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for future in [pool.submit(fill, *chunk) for chunk in chunks]:
            future.result()


def _freeze(conn: PgConnection) -> None:
    with _connect(conn) as c:
        # Set hint bits and the visibility map now; otherwise the first pg_dump to read a
        # page would pay for writing it back, and whichever contender ran first would lose.
        c.execute("VACUUM (FREEZE, ANALYZE)")
        c.execute("CHECKPOINT")


def _build(conn: PgConnection, units: int) -> None:
    """Both tables with `units` units: bulk load, then indexes (as a restore builds them)."""
    with _connect(conn) as c:
        for ddl in _TABLES:
            c.execute(ddl)
    _fill(conn, 1, units)
    with _connect(conn) as c:
        c.execute("SET maintenance_work_mem = '512MB'")
        for ddl in _INDEXES:
            c.execute(ddl)
    _freeze(conn)


def generate_database(cluster: LocalCluster, name: str, size_gib: float) -> Dataset:
    """A database of about `size_gib` GiB (pg_database_size), generated inside the server.

    Bytes per unit are measured on a small sample built the same way, so the size holds
    whatever the server version's storage details; a large database comes out somewhat
    denser than the sample (btree deduplication: each customer's email recurs more often),
    so it is then topped up to within _SIZE_TOLERANCE of the target.
    """
    started = time.perf_counter()
    target = size_gib * GiB
    sample = f"{name}_calibration"
    _drop_database(cluster, sample)
    _create_database(cluster, sample)
    empty = _database_bytes(cluster.connection(sample))
    _build(cluster.connection(sample), _CALIBRATION_UNITS)
    per_unit = (_database_bytes(cluster.connection(sample)) - empty) / _CALIBRATION_UNITS
    _drop_database(cluster, sample)

    units = max(_CALIBRATION_UNITS // 10, round((target - empty) / per_unit))
    _drop_database(cluster, name)
    _create_database(cluster, name)
    conn = cluster.connection(name)
    _build(conn, units)
    for _attempt in range(3):
        size = _database_bytes(conn)
        if size >= _SIZE_TOLERANCE * target:
            break
        extra = max(1000, math.ceil((target - size) / ((size - empty) / units)))
        _fill(conn, units + 1, units + extra)
        units += extra
        _freeze(conn)
    return Dataset(name=name, target_gib=size_gib, database_bytes=_database_bytes(conn),
                   orders_rows=units, readings_rows=2 * units,
                   generate_seconds=time.perf_counter() - started)


# --- Our operations, each in a fresh Python process ----------------------------------------

@dataclass(frozen=True)
class BackupSample:
    seconds: float  # take_backup end to end
    # Until pg_dump's output ended; the rest is waiting for pg_dump and the row counts,
    # fsync, reading the stored copy back for its checksum, and the manifest.
    stream_seconds: float
    raw_bytes: int  # pg_dump -Fc -Z0 output
    stored_bytes: int  # zstd output, what the store holds
    peak_rss_bytes: int  # this Python process's VmHWM, interpreter and imports included
    tool_peak_rss_bytes: int  # pg_dump's own peak; not ours, for information
    cores_busy: float  # machine-wide, during take_backup


@dataclass(frozen=True)
class RestoreSample:
    fetch_seconds: float
    restore_seconds: float
    verify_seconds: float
    peak_rss_bytes: int
    tool_peak_rss_bytes: int  # pg_restore's (and its -j workers') peak, for information
    cores_busy: float  # machine-wide, during restore_backup

    @property
    def recovery_seconds(self) -> float:
        return self.fetch_seconds + self.restore_seconds

    @property
    def total_seconds(self) -> float:
        return self.fetch_seconds + self.restore_seconds + self.verify_seconds


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal, sum(fields)


def _cores_busy(since: tuple[int, int]) -> float:
    """Cores busy machine-wide (servers, tools and us) since `since`: how close to the
    machine's capacity an operation ran, which is what decides whether compression threads
    can help."""
    busy, total = _cpu_jiffies()
    return (busy - since[0]) / max(1, total - since[1]) * (os.cpu_count() or 1)


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _children_peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB: the largest of the waited-for children (pg_dump or
    # pg_restore, whose own figure covers the -j workers it waited for).
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def backup_in_child(dsn: str, database: str, store_dir: str, level: int, threads: int) -> BackupSample:
    store = LocalObjectStore("bench", Path(store_dir))
    stream_end = 0.0

    def progress(stage: str, done_bytes: int) -> None:
        nonlocal stream_end
        if stage == "dump":  # called on every read of pg_dump's pipe, the last one at EOF
            stream_end = time.perf_counter()

    cpu = _cpu_jiffies()
    started = time.perf_counter()
    outcome = take_backup(database=database, cluster="bench", policy="bench",
                          connection=PgConnection(dsn), stores=[store],
                          compression=CompressionSettings(level=level, threads=threads),
                          progress=progress)
    seconds = time.perf_counter() - started
    return BackupSample(seconds=seconds, stream_seconds=stream_end - started,
                        raw_bytes=outcome.manifest.dump.raw_bytes,
                        stored_bytes=outcome.manifest.dump.stored_bytes,
                        peak_rss_bytes=_peak_rss_bytes(),
                        tool_peak_rss_bytes=_children_peak_rss_bytes(), cores_busy=_cores_busy(cpu))


def restore_in_child(store_dir: str, database: str, target_dsn: str, jobs: int,
                     scratch_dir: str) -> RestoreSample:
    stored = latest_backup(LocalObjectStore("bench", Path(store_dir)), database)
    if stored is None:
        raise RuntimeError(f"no backup of {database} in {store_dir}")
    cpu = _cpu_jiffies()
    result = restore_backup(stored, PgConnection(target_dsn), jobs=jobs, workdir=Path(scratch_dir))
    return RestoreSample(fetch_seconds=result.fetch_seconds, restore_seconds=result.restore_seconds,
                         verify_seconds=result.verify_seconds, peak_rss_bytes=_peak_rss_bytes(),
                         tool_peak_rss_bytes=_children_peak_rss_bytes(), cores_busy=_cores_busy(cpu))


_T = TypeVar("_T")


def in_child(fn: Callable[..., _T], *args: object) -> _T:
    """Run `fn(*args)` in a freshly spawned interpreter and return its result.

    Spawned, not forked: a forked child would start with the parent's pages (the report
    being built, psycopg state), and its VmHWM would not be the operation's alone.
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# --- Baselines: the stock tools, run and timed from this process ----------------------------

def _run(argv: list[str], env: dict[str, str], stdout: Path | None = None) -> float:
    """Run a tool to completion (stdout to `stdout` or /dev/null); return its wall time."""
    with open(stdout if stdout is not None else os.devnull, "wb") as out:
        started = time.perf_counter()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited with {result.returncode}: "
                           f"{result.stderr.decode(errors='replace').strip()[-2000:]}")
    return seconds


def _settle(clusters: Sequence[LocalCluster]) -> None:
    """Before each measurement: flush the servers' dirty buffers and the kernel's dirty
    pages, so no contender pays for writing back what the previous one left behind."""
    for cluster in clusters:
        with _connect(cluster.connection("postgres")) as c:
            c.execute("CHECKPOINT")
    os.sync()


# --- One size: everything on the same database -----------------------------------------------

def _label(codec: CompressionSettings) -> str:
    return f"zstd-{codec.level} threads={codec.threads}"


@dataclass
class SizeRun:
    dataset: Dataset
    floor_seconds: list[float] = field(default_factory=list)
    floor_cores: list[float] = field(default_factory=list)
    plain_seconds: list[float] = field(default_factory=list)
    plain_cores: list[float] = field(default_factory=list)
    plain_bytes: int = 0
    backups: dict[CompressionSettings, list[BackupSample]] = field(default_factory=dict)
    restores: list[RestoreSample] = field(default_factory=list)
    pg_restore_seconds: list[float] = field(default_factory=list)
    pg_restore_cores: list[float] = field(default_factory=list)


def _rotated(items: Sequence[_T], by: int) -> list[_T]:
    """Round r starts with a different contender, so none is always first (or last)."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def bench_size(source: LocalCluster, target: LocalCluster, size_gib: float, *, repeat: int,
               jobs: int, codecs: Sequence[CompressionSettings],
               default: CompressionSettings) -> SizeRun:
    name = "bench_" + f"{size_gib:g}".replace(".", "_") + "gib"
    work = WORK_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    (work / "scratch").mkdir(parents=True)
    log(f"{name}: generating about {size_gib:g} GiB")
    dataset = generate_database(source, name, size_gib)
    log(f"{name}: {dataset.database_bytes / GiB:.2f} GiB, {dataset.orders_rows:,} orders + "
        f"{dataset.readings_rows:,} readings in {dataset.generate_seconds:.0f} s")
    run = SizeRun(dataset)
    conn = source.connection(name)
    env = conn.tool_env()
    tools: PgInstall = client_tools_for(source.install.major)  # what take_backup picks too
    plain_file = work / "plain.dump"
    floor_argv = [tools.tool("pg_dump"), "--format=custom", "--compress=0", f"--dbname={conn.dsn}"]
    plain_argv = [tools.tool("pg_dump"), "--format=custom", f"--dbname={conn.dsn}"]
    both = (source, target)

    def store_dir(codec: CompressionSettings) -> Path:
        return work / f"store-zstd{codec.level}-t{codec.threads}"

    def floor() -> None:
        _settle(both)
        cpu = _cpu_jiffies()
        run.floor_seconds.append(_run(floor_argv, env))
        run.floor_cores.append(_cores_busy(cpu))

    def plain() -> None:
        plain_file.unlink(missing_ok=True)
        _settle(both)
        cpu = _cpu_jiffies()
        run.plain_seconds.append(_run(plain_argv, env, stdout=plain_file))
        run.plain_cores.append(_cores_busy(cpu))
        run.plain_bytes = plain_file.stat().st_size

    def ours(codec: CompressionSettings) -> None:
        # One backup per store: the default's store then holds exactly the one to restore.
        shutil.rmtree(store_dir(codec), ignore_errors=True)
        _settle(both)
        sample = in_child(backup_in_child, conn.dsn, name, str(store_dir(codec)),
                          codec.level, codec.threads)
        run.backups.setdefault(codec, []).append(sample)

    def restore_ours() -> None:
        target_db = "restore_ours"
        _drop_database(target, target_db)
        _settle(both)
        sample = in_child(restore_in_child, str(store_dir(default)), name,
                          target.connection(target_db).dsn, jobs, str(work / "scratch"))
        run.restores.append(sample)
        _drop_database(target, target_db)

    def pg_restore() -> tuple[float, float]:
        target_db = "restore_baseline"
        _drop_database(target, target_db)
        _settle(both)
        cpu = _cpu_jiffies()
        started = time.perf_counter()
        # createdb is part of the baseline as restore_backup's restore_seconds includes it.
        _create_database(target, target_db)
        _run([tools.tool("pg_restore"), f"--jobs={jobs}", "--no-owner", "--no-privileges",
              f"--dbname={target.connection(target_db).dsn}", str(plain_file)], env)
        seconds, cores = time.perf_counter() - started, _cores_busy(cpu)
        _drop_database(target, target_db)
        return seconds, cores

    def restore_baseline() -> None:
        seconds, cores = pg_restore()
        run.pg_restore_seconds.append(seconds)
        run.pg_restore_cores.append(cores)

    # Untimed: warms the page cache and the server the same way for everyone.
    _run(floor_argv, env)
    backups: list[tuple[str, Callable[[], None]]] = [
        ("floor pg_dump -Fc -Z0 > /dev/null", floor),
        ("plain pg_dump -Fc > file", plain),
        *[(f"take_backup {_label(codec)}", partial(ours, codec)) for codec in codecs],
    ]
    restores: list[tuple[str, Callable[[], None]]] = [
        (f"restore_backup -j{jobs}", restore_ours),
        (f"createdb + pg_restore -j{jobs}", restore_baseline),
    ]
    for round_ in range(repeat):
        for what, operation in _rotated(backups, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()
    # Untimed: a fresh server creates its WAL segment files on first use and recycles them
    # afterwards, so without this whichever restore ran first would be the slower.
    log(f"{name}: warming the target server up with one untimed pg_restore")
    pg_restore()
    for round_ in range(repeat):
        for what, operation in _rotated(restores, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()

    _drop_database(source, name)
    shutil.rmtree(work, ignore_errors=True)
    return run


# --- Whole processes: platform-dr as an operator runs it ----------------------------------------
#
# Everything above times our code inside an already started interpreter. An operator (or a
# CronJob) runs `platform-dr backup DB`: a process that starts Python, imports what the command
# needs, reads the fleet file and the key file, takes the backup, checks the stored copy, writes
# the manifest and exits. These measure that whole process, fork to exit, against the floor.

CLI = (sys.executable, "-m", "platform_orchestration.cli")
STARTUP_GOALS_SECONDS = {"platform-dr --help": 0.3, "platform-dr validate": 0.6}
WHOLE_VS_FLOOR_GOAL = 1.10
WHOLE_KINDS = ("mixed", "pgbench", "random")
_RANDOM_ROW_BYTES = 2 * 1996  # two TOAST chunks exactly: pages fill up
_PGBENCH_MIB_PER_SCALE = 15.07  # pg_database_size per pgbench scale unit, PostgreSQL 16


def _cli_env(root: Path = ROOT, **extra: str) -> dict[str, str]:
    """The environment the CLI runs in: the code of the checkout at `root` (whatever the
    virtualenv's editable install points at), the embedded default for secrets and keys."""
    env = {k: v for k, v in os.environ.items() if k not in ("PLATFORM_FLEET", "VAULT_ADDR")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _byte_compile_package(root: Path = ROOT) -> None:
    """Start-up is measured as a deployment sees it: with the package byte-compiled (pip does
    it on install, and Python itself on first import unless PYTHONDONTWRITEBYTECODE is set)."""
    import compileall

    compileall.compile_dir(str(root / "platform_orchestration"), quiet=1)


def _compared(label: str, compare: Path) -> str:
    return f"{label} [{compare.name}]"


@dataclass(frozen=True)
class ProcessSample:
    seconds: float  # wall, fork to exit
    cpu_seconds: float  # user + sys of the process and the children it waited for


def _timed_process(argv: Sequence[str], env: dict[str, str],
                   cwd: Path = ROOT) -> tuple[ProcessSample, str]:
    """Run `argv` to completion in `cwd`; its wall and CPU time, and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[2:])} exited with {result.returncode}: "
                           f"{result.stderr.strip()[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return ProcessSample(seconds, cpu), result.stdout


def bench_startup(runs: int, compare: Path | None = None) -> dict[str, list[ProcessSample]]:
    """`platform-dr --help` and `platform-dr validate` (the demo fleet) as whole processes,
    with the bare interpreter for reference, `runs` interleaved rounds; the same commands of
    the checkout `compare` too, in the same rounds."""
    roots = [ROOT] if compare is None else [ROOT, compare]
    contenders = [("python -c pass", (sys.executable, "-c", "pass"), _cli_env(), ROOT)] + [
        (label if root == ROOT else _compared(label, root), (*CLI, *args), _cli_env(root), root)
        for label, args in (("platform-dr --help", ("--help",)), ("platform-dr validate", ("validate",)))
        for root in roots]
    samples: dict[str, list[ProcessSample]] = {label: [] for label, *_ in contenders}
    for _label, argv, env, cwd in contenders:  # untimed: the page cache holds the modules for all
        _timed_process(argv, env, cwd)
    log(f"start-up: {runs} rounds of {', '.join(samples)}")
    for round_ in range(runs):
        for label, argv, env, cwd in _rotated(contenders, round_):
            samples[label].append(_timed_process(argv, env, cwd)[0])
    return samples


def generate_pgbench(cluster: LocalCluster, name: str, size_gib: float) -> Dataset:
    """pgbench's tables at the scale that gives about `size_gib` GiB: mostly pgbench_accounts,
    four integers and an 84-character blank filler per row, highly compressible. Uses the
    pgbench of the client tools when there is one, else the same tables made in SQL."""
    started = time.perf_counter()
    scale = max(1, round(size_gib * 1024 / _PGBENCH_MIB_PER_SCALE))
    _drop_database(cluster, name)
    _create_database(cluster, name)
    conn = cluster.connection(name)
    tools = client_tools_for(cluster.install.major)
    if tools.has("pgbench"):
        _run([tools.tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
              "-p", str(cluster.port), "-U", "postgres", name], conn.tool_env())
    else:
        with _connect(conn) as c:
            c.execute("""
                CREATE TABLE pgbench_branches (bid int NOT NULL, bbalance int, filler char(88));
                CREATE TABLE pgbench_tellers (tid int NOT NULL, bid int, tbalance int, filler char(84));
                CREATE TABLE pgbench_accounts (aid int NOT NULL, bid int, abalance int, filler char(84));
                CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp,
                                              filler char(22));
                INSERT INTO pgbench_branches SELECT b, 0 FROM generate_series(1, %(s)s) b;
                INSERT INTO pgbench_tellers SELECT t, (t - 1) / 10 + 1, 0 FROM generate_series(1, 10 * %(s)s) t;
                INSERT INTO pgbench_accounts SELECT a, (a - 1) / 100000 + 1, 0, ''
                    FROM generate_series(1, 100000 * %(s)s) a;
                ALTER TABLE pgbench_branches ADD PRIMARY KEY (bid);
                ALTER TABLE pgbench_tellers ADD PRIMARY KEY (tid);
                ALTER TABLE pgbench_accounts ADD PRIMARY KEY (aid);
            """, {"s": scale})
    _freeze(conn)
    return Dataset(name=name, target_gib=size_gib, database_bytes=_database_bytes(conn),
                   orders_rows=0, readings_rows=0, generate_seconds=time.perf_counter() - started)


def generate_random(cluster: LocalCluster, name: str, size_gib: float) -> Dataset:
    """About `size_gib` GiB of random bytea (about 4 KiB values, stored out of line, not
    compressed): pg_dump writes them in hex, which zstd only halves back to the random bytes,
    so the stream is about twice the stored size and nothing else is gained."""
    started = time.perf_counter()
    _drop_database(cluster, name)
    _create_database(cluster, name)
    conn = cluster.connection(name)
    rows = max(1000, int(size_gib * GiB / (_RANDOM_ROW_BYTES * 1.04)))  # TOAST tuples' overhead
    with _connect(conn) as c:
        c.execute("CREATE TABLE blobs (id bigint NOT NULL, payload bytea NOT NULL)")
        c.execute("ALTER TABLE blobs ALTER COLUMN payload SET STORAGE EXTERNAL")
        with c.cursor() as cur, cur.copy("COPY blobs (id, payload) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "bytea"])
            for i in range(rows):
                copy.write_row((i, os.urandom(_RANDOM_ROW_BYTES)))
        c.execute("ALTER TABLE blobs ADD PRIMARY KEY (id)")
    _freeze(conn)
    return Dataset(name=name, target_gib=size_gib, database_bytes=_database_bytes(conn),
                   orders_rows=0, readings_rows=0, generate_seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class WholeSample:
    seconds: float  # `platform-dr backup DB`, fork to exit
    # Split by the manifest's own clock: process start to take_backup's start (imports, fleet
    # and key files, opening the store); take_backup up to the end of the dump (snapshot, row
    # counts, the stream, fsync); then reading the stored copy back for its SHA-256, writing
    # the manifest and exiting.
    startup_seconds: float
    dump_seconds: float
    after_seconds: float
    cpu_seconds: float  # the CLI process and pg_dump, user + sys
    raw_bytes: int
    stored_bytes: int
    cores_busy: float


@dataclass
class WholeRun:
    kind: str
    dataset: Dataset
    floor_seconds: list[float] = field(default_factory=list)
    floor_cores: list[float] = field(default_factory=list)
    floor_cpu: list[float] = field(default_factory=list)  # pg_dump's user + sys
    samples: list[WholeSample] = field(default_factory=list)
    compared: list[WholeSample] = field(default_factory=list)  # another checkout's CLI (--compare-with)


def _write_bench_fleet(path: Path, cluster: LocalCluster, database: str, store: Path,
                       s3_endpoint: str | None = None) -> None:
    s3 = (f"""  - name: bench-s3
    kind: s3
    bucket: {S3_BUCKET}
    region: us-east-1
    endpoint_url: {s3_endpoint}
    credentials:
      access_key_id: {{env: BENCH_AWS_ACCESS_KEY_ID}}
      secret_access_key: {{env: BENCH_AWS_SECRET_ACCESS_KEY}}
""" if s3_endpoint else "")
    path.write_text(f"""\
# Written by benchmarks/backup_restore.py: one database of a throwaway server, one local store
# (and a bucket of the S3 emulator, for verify).
clusters:
  - {{name: bench-pg, cloud: local, region: loopback, role: primary}}
stores:
  - {{name: bench, kind: local, cloud: local, path: {store}}}
{s3}databases:
  - {{name: {database}, cluster: bench-pg, dsn: "postgresql://postgres@127.0.0.1:{cluster.port}/{database}",
     policy: bench}}
policies:
  - name: bench
    rpo: 1h
    stores: [bench{", bench-s3" if s3_endpoint else ""}]
    drill: {{every: 1d, rto: 1h}}
    retention: {{keep_last: 1}}
""")


def bench_whole(source: LocalCluster, kind: str, size_gib: float, *, repeat: int,
                key_dir: Path, compare: Path | None = None, keep: bool = False) -> WholeRun:
    """`platform-dr backup DB` with default settings (encrypted with the embedded default's
    local key file, zstd level 1, one local store) against `pg_dump -Fc -Z0 > /dev/null`."""
    name = f"whole_{kind}"
    work = WORK_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"{name}: generating about {size_gib:g} GiB")
    generate = {"mixed": generate_database, "pgbench": generate_pgbench, "random": generate_random}[kind]
    dataset = generate(source, name, size_gib)
    log(f"{name}: {dataset.database_bytes / GiB:.2f} GiB in {dataset.generate_seconds:.0f} s")
    run = WholeRun(kind, dataset)
    conn = source.connection(name)
    tools = client_tools_for(source.install.major)
    floor_argv = [tools.tool("pg_dump"), "--format=custom", "--compress=0", f"--dbname={conn.dsn}"]
    store = work / "store"
    fleet = work / "fleet.yaml"
    _write_bench_fleet(fleet, source, name, store)
    backup_argv = (*CLI, "--fleet", str(fleet), "backup", name)

    def floor() -> None:
        _settle([source])
        cpu = _cpu_jiffies()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.floor_seconds.append(_run(floor_argv, conn.tool_env()))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        run.floor_cores.append(_cores_busy(cpu))
        run.floor_cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)

    def ours(root: Path, samples: list[WholeSample]) -> None:
        shutil.rmtree(store, ignore_errors=True)
        _settle([source])
        cpu = _cpu_jiffies()
        forked = time.time()
        sample, stdout = _timed_process(backup_argv, _cli_env(root, PLATFORM_LOCAL_KEK=str(key_dir / "kek")),
                                        root)
        exited = forked + sample.seconds
        cores = _cores_busy(cpu)
        backup_id = stdout.split()[0]
        manifest = json.loads((store / "backups" / name / backup_id / "manifest.json").read_text())
        began = datetime.fromisoformat(manifest["started_at"]).timestamp()
        ended = datetime.fromisoformat(manifest["finished_at"]).timestamp()
        samples.append(WholeSample(
            seconds=sample.seconds, startup_seconds=began - forked, dump_seconds=ended - began,
            after_seconds=exited - ended, cpu_seconds=sample.cpu_seconds,
            raw_bytes=manifest["dump"]["raw_bytes"], stored_bytes=manifest["dump"]["stored_bytes"],
            cores_busy=cores))

    contenders = [("floor pg_dump -Fc -Z0 > /dev/null", floor),
                  (f"platform-dr backup {name}", partial(ours, ROOT, run.samples))]
    if compare is not None:
        contenders.append((_compared(f"platform-dr backup {name}", compare), partial(ours, compare, run.compared)))
    # Untimed: warm the page cache (data and modules) and the server alike for all.
    _run(floor_argv, conn.tool_env())
    for _what, operation in contenders[1:]:
        operation()
    run.samples.clear()
    run.compared.clear()
    for round_ in range(repeat):
        for what, operation in _rotated(contenders, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()
    if not keep:  # kept for bench_whole_restore
        _drop_database(source, name)
    shutil.rmtree(work, ignore_errors=True)
    return run


# --- Whole restore and verify processes ------------------------------------------------------

WHOLE_RESTORE_VS_PG_RESTORE_GOAL = 1.10
WHOLE_VERIFY_VS_READ_GOAL = 1.20

# Runs the CLI in this very process (as `python -m platform_orchestration.cli` would) and, at
# exit, writes its own peak RSS (VmHWM) to $BENCH_PEAK_FILE.
_PEAK_WRAPPER = """
import os, runpy, sys
sys.argv = ["platform-dr", *sys.argv[1:]]
try:
    runpy.run_module("platform_orchestration.cli", run_name="__main__", alter_sys=True)
finally:
    own = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(str(own))
"""
_TREE_SAMPLE_SECONDS = 0.05


def _tree_rss_bytes(root: int) -> int:
    """The summed RSS of `root` and all its descendants now (pg_restore and its -j workers)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        rss[int(entry.name)] = int(fields[21]) * page
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return sum(rss.get(pid, 0) for pid in tree)


_READ_LOOP = "import sys\nwith open(sys.argv[1], 'rb', buffering=0) as f:\n    while f.read(1 << 20): pass\n"
# One plain boto3 read of an object, 1 MiB at a time, as a user without platform-dr would.
_S3_READ = """import sys, boto3
client = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench")
for _ in client.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"].iter_chunks(1 << 20):
    pass
"""
S3_BUCKET = "bench-backups"


@dataclass(frozen=True)
class CliSample:
    seconds: float  # fork to exit
    peak_rss_bytes: int  # the CLI process's own VmHWM
    tree_peak_rss_bytes: int  # the process tree's summed RSS (ours, pg_restore, its workers), sampled


@dataclass
class WholeRestoreRun:
    kind: str
    dataset: Dataset
    stored_bytes: int = 0
    raw_bytes: int = 0
    plain_bytes: int = 0
    restores: list[CliSample] = field(default_factory=list)
    pg_restore_seconds: list[float] = field(default_factory=list)
    verifies: list[CliSample] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)
    s3_verifies: list[CliSample] = field(default_factory=list)
    s3_read_seconds: list[float] = field(default_factory=list)
    link_verifies: list[CliSample] = field(default_factory=list)
    link_read_seconds: list[float] = field(default_factory=list)
    link_mb_per_second: float = 0.0


def _sampled(argv: Sequence[str], env: dict[str, str], started: float | None = None) -> tuple[float, int]:
    """Run `argv` to completion, sampling its process tree's summed RSS every 50 ms; its wall
    time (from `started`, default its fork) and that peak. Every contender of a comparison runs
    through this, baselines too: the sampling costs a few ms of CPU each time (a scan of /proc),
    which must not be charged to ours alone."""
    started = time.perf_counter() if started is None else started
    process = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tree = 0
    while process.poll() is None:
        tree = max(tree, _tree_rss_bytes(process.pid))
        time.sleep(_TREE_SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} exited with {process.returncode}: {stderr[-2000:]}")
    return seconds, tree


def _cli_with_peaks(args: Sequence[str], env: dict[str, str], peak_file: Path) -> CliSample:
    """Run the CLI to completion; its wall time, its own peak RSS (VmHWM, exact) and the
    peak of its whole process tree's summed RSS (sampled every 50 ms)."""
    seconds, tree = _sampled((sys.executable, "-c", _PEAK_WRAPPER, *args), {**env, "BENCH_PEAK_FILE": str(peak_file)})
    own = int(peak_file.read_text())
    return CliSample(seconds, own, max(tree, own))


def bench_whole_restore(source: LocalCluster, target: LocalCluster, kind: str, *, repeat: int,
                        jobs: int, key_dir: Path, s3_endpoint: str | None = None,
                        link: tuple[str, float] | None = None) -> WholeRestoreRun:
    """On the whole-process database `whole_<kind>` (still in `source`): `platform-dr restore DB
    --target-dsn fresh --jobs N` (default settings: encrypted, one local store) against
    CREATE DATABASE + `pg_restore -jN --no-owner --no-privileges` of a plain -Fc file of the
    same database into a fresh database of the same target server; and `platform-dr verify DB`
    against reading the stored object once (a Python read loop, interpreter start included);
    with `s3_endpoint` (moto server), `platform-dr verify DB --store bench-s3` against one plain
    boto3 read of the same object (interpreter start and boto3's import included); with `link`
    (the endpoint of a `benchmarks.link` relay in front of moto, and its MB/s), the same two
    through that bandwidth-limited link, as from a cloud store over a network."""
    name = f"whole_{kind}"
    work = WORK_DIR / f"{name}_restore"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    conn = source.connection(name)
    tools = client_tools_for(source.install.major)
    store = work / "store"
    fleet = work / "fleet.yaml"
    # The backup goes to both stores; restore and local verify use a fleet without the S3 store,
    # so that their process does not import boto3 for nothing (as an all-local fleet's would not).
    fleet_s3 = work / "fleet-s3.yaml"
    _write_bench_fleet(fleet, source, name, store)
    _write_bench_fleet(fleet_s3, source, name, store, s3_endpoint)
    fleet_link = work / "fleet-link.yaml"
    if link is not None:
        _write_bench_fleet(fleet_link, source, name, store, link[0])
    env = _cli_env(PLATFORM_LOCAL_KEK=str(key_dir / "kek"), BENCH_AWS_ACCESS_KEY_ID="bench",
                   BENCH_AWS_SECRET_ACCESS_KEY="bench")
    backup_id = _timed_process((*CLI, "--fleet", str(fleet_s3 if s3_endpoint else fleet), "backup", name),
                               env)[1].split()[0]
    manifest = json.loads((store / "backups" / name / backup_id / "manifest.json").read_text())
    stored_path = store / "backups" / name / backup_id / "dump.pgdump.zst"
    plain = work / "plain.dump"
    _run([tools.tool("pg_dump"), "--format=custom", f"--dbname={conn.dsn}"], conn.tool_env(), stdout=plain)
    run = WholeRestoreRun(kind, Dataset(name=name, target_gib=0, database_bytes=_database_bytes(conn),
                                        orders_rows=0, readings_rows=0, generate_seconds=0),
                          stored_bytes=manifest["dump"]["stored_bytes"], raw_bytes=manifest["dump"]["raw_bytes"],
                          plain_bytes=plain.stat().st_size, link_mb_per_second=link[1] if link else 0.0)
    target_tools = client_tools_for(target.install.major)
    peak_file = work / "peak"
    counter = itertools.count(1)

    def fresh() -> str:
        return f"{name}_r{next(counter)}"

    def ours(timed: bool = True) -> None:
        database = fresh()
        _settle([source, target])
        sample = _cli_with_peaks(["--fleet", str(fleet), "restore", name, "--target-dsn",
                                  target.connection(database).dsn, "--jobs", str(jobs)], env, peak_file)
        if timed:
            run.restores.append(sample)
        _drop_database(target, database)

    def baseline(timed: bool = True) -> None:
        database = fresh()
        _settle([source, target])
        started = time.perf_counter()
        _create_database(target, database)
        seconds, _tree = _sampled([target_tools.tool("pg_restore"), f"--jobs={jobs}", "--no-owner", "--no-privileges",
                                   f"--dbname={target.connection(database).dsn}", str(plain)],
                                  target.connection(database).tool_env(), started)
        if timed:
            run.pg_restore_seconds.append(seconds)
        _drop_database(target, database)

    def verify() -> None:
        _settle([source, target])
        run.verifies.append(_cli_with_peaks(["--fleet", str(fleet), "verify", name], env, peak_file))

    def read_once() -> None:
        _settle([source, target])
        run.read_seconds.append(_sampled((sys.executable, "-c", _READ_LOOP, str(stored_path)), env)[0])

    def verify_s3() -> None:
        _settle([source, target])
        run.s3_verifies.append(_cli_with_peaks(["--fleet", str(fleet_s3), "verify", name, "--store", "bench-s3"],
                                               env, peak_file))

    def read_s3() -> None:
        _settle([source, target])
        run.s3_read_seconds.append(_sampled(
            (sys.executable, "-c", _S3_READ, str(s3_endpoint), S3_BUCKET, str(stored_path.relative_to(store))), env)[0])

    def verify_link() -> None:
        _settle([source, target])
        run.link_verifies.append(_cli_with_peaks(["--fleet", str(fleet_link), "verify", name, "--store",
                                                  "bench-s3"], env, peak_file))

    def read_link() -> None:
        _settle([source, target])
        assert link is not None
        run.link_read_seconds.append(_sampled(
            (sys.executable, "-c", _S3_READ, link[0], S3_BUCKET, str(stored_path.relative_to(store))), env)[0])

    baseline(timed=False)  # untimed: the target creates its WAL segments, the cache warms
    ours(timed=False)
    contenders = [(f"pg_restore -j{jobs}", baseline), (f"platform-dr restore {name}", ours),
                  (f"platform-dr verify {name}", verify), ("read the stored object once", read_once)]
    if s3_endpoint:
        contenders += [(f"platform-dr verify {name} --store bench-s3", verify_s3),
                       ("one boto3 read of the S3 object", read_s3)]
    if link:
        contenders += [(f"platform-dr verify {name} --store bench-s3 through {link[1]:g} MB/s", verify_link),
                       (f"one boto3 read through {link[1]:g} MB/s", read_link)]
    for round_ in range(repeat):
        for what, operation in _rotated(contenders, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()
    shutil.rmtree(work, ignore_errors=True)
    return run


def _start_link(endpoint: str, mb_per_second: float) -> tuple[subprocess.Popen[bytes], str]:
    """A `benchmarks.link` relay in front of `endpoint` (http://127.0.0.1:PORT); its process and
    endpoint, once it accepts connections."""
    from platform_orchestration.postgres.cluster import free_port

    port = free_port()
    process = subprocess.Popen((sys.executable, "-m", "benchmarks.link", str(port), endpoint.rsplit(":", 1)[1],
                                "--mb-per-second", str(mb_per_second)), cwd=ROOT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"benchmarks.link did not start on port {port}") from None
            time.sleep(0.05)


def _start_moto(log_dir: Path):  # noqa: ANN202 - an emulators.Emulator
    """moto server on a free port, with the bucket the whole-process fleets use."""
    import boto3

    from platform_orchestration import emulators
    from platform_orchestration.postgres.cluster import free_port

    moto = emulators.moto_server(free_port()).start(log_dir / "logs")
    boto3.client("s3", endpoint_url=moto.endpoint, region_name="us-east-1", aws_access_key_id="bench",
                 aws_secret_access_key="bench").create_bucket(Bucket=S3_BUCKET)
    return moto


def summarise_whole_restore(run: WholeRestoreRun) -> dict[str, Any]:
    restore = _median([s.seconds for s in run.restores])
    verify = _median([s.seconds for s in run.verifies])
    return {
        "kind": run.kind, "database": asdict(run.dataset), "stored_bytes": run.stored_bytes,
        "raw_bytes": run.raw_bytes, "plain_bytes": run.plain_bytes,
        "restore_seconds": _stats([s.seconds for s in run.restores]),
        "pg_restore_seconds": _stats(run.pg_restore_seconds),
        "ratio_restore_vs_pg_restore": restore / _median(run.pg_restore_seconds),
        "restore_peak_rss_bytes": max(s.peak_rss_bytes for s in run.restores),
        "restore_tree_peak_rss_bytes": max(s.tree_peak_rss_bytes for s in run.restores),
        "verify_seconds": _stats([s.seconds for s in run.verifies]),
        "read_seconds": _stats(run.read_seconds),
        "ratio_verify_vs_read": verify / _median(run.read_seconds),
        "verify_peak_rss_bytes": max(s.peak_rss_bytes for s in run.verifies),
        **({"s3_verify_seconds": _stats([s.seconds for s in run.s3_verifies]),
            "s3_read_seconds": _stats(run.s3_read_seconds),
            "ratio_s3_verify_vs_read": _median([s.seconds for s in run.s3_verifies]) / _median(run.s3_read_seconds),
            "s3_verify_peak_rss_bytes": max(s.peak_rss_bytes for s in run.s3_verifies)}
           if run.s3_verifies else {}),
        **({"link_mb_per_second": run.link_mb_per_second,
            "link_verify_seconds": _stats([s.seconds for s in run.link_verifies]),
            "link_read_seconds": _stats(run.link_read_seconds),
            "ratio_link_verify_vs_read": _median([s.seconds for s in run.link_verifies])
            / _median(run.link_read_seconds),
            "link_verify_peak_rss_bytes": max(s.peak_rss_bytes for s in run.link_verifies)}
           if run.link_verifies else {}),
    }


def summarise_startup(samples: dict[str, list[ProcessSample]]) -> dict[str, Any]:
    return {label: {"seconds": _stats([s.seconds for s in runs]),
                    "cpu_seconds": _stats([s.cpu_seconds for s in runs])}
            for label, runs in samples.items()}


def summarise_whole(run: WholeRun) -> dict[str, Any]:
    floor = _median(run.floor_seconds)

    def figures(samples: list[WholeSample]) -> dict[str, Any]:
        return {
            "seconds": _stats([s.seconds for s in samples]),
            "startup_seconds": _stats([s.startup_seconds for s in samples]),
            "dump_seconds": _stats([s.dump_seconds for s in samples]),
            "after_seconds": _stats([s.after_seconds for s in samples]),
            "cpu_seconds": _stats([s.cpu_seconds for s in samples]),
            "cores_busy": _median([s.cores_busy for s in samples]),
            "raw_bytes": samples[-1].raw_bytes, "stored_bytes": samples[-1].stored_bytes,
            "ratio_vs_floor": _median([s.seconds for s in samples]) / floor,
        }

    summary = {
        "kind": run.kind, "database": asdict(run.dataset),
        "floor_seconds": _stats(run.floor_seconds), "floor_cores_busy": _median(run.floor_cores),
        "floor_cpu_seconds": _stats(run.floor_cpu),
        **figures(run.samples),
    }
    if run.compared:
        summary["compared"] = figures(run.compared)
    return summary


# --- Report -------------------------------------------------------------------------------------

def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "samples": list(values)}


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarise(run: SizeRun, default: CompressionSettings) -> dict[str, Any]:
    """All figures of one size, medians and ratios, JSON-ready: the tables read only this."""
    floor = _median(run.floor_seconds)
    plain = _median(run.plain_seconds)
    pg_restore = _median(run.pg_restore_seconds)

    def backup_figures(codec: CompressionSettings) -> dict[str, Any]:
        samples = run.backups[codec]
        seconds = _median([s.seconds for s in samples])
        stored = samples[-1].stored_bytes  # identical across rounds up to a few bytes
        return {
            "level": codec.level, "threads": codec.threads,
            "seconds": _stats([s.seconds for s in samples]),
            "stream_seconds": _stats([s.stream_seconds for s in samples]),
            "raw_bytes": samples[-1].raw_bytes, "stored_bytes": stored,
            "peak_rss_bytes": max(s.peak_rss_bytes for s in samples),
            "pg_dump_peak_rss_bytes": max(s.tool_peak_rss_bytes for s in samples),
            "cores_busy": _median([s.cores_busy for s in samples]),
            "ratio_vs_floor": seconds / floor, "ratio_vs_plain": seconds / plain,
            "size_ratio_vs_plain": stored / run.plain_bytes,
        }

    ours = backup_figures(default)
    recovery = _median([r.recovery_seconds for r in run.restores])
    total = _median([r.total_seconds for r in run.restores])
    summary: dict[str, Any] = {
        "database": asdict(run.dataset),
        "backup": {
            "floor_seconds": _stats(run.floor_seconds),
            "floor_cores_busy": _median(run.floor_cores),
            "plain_seconds": _stats(run.plain_seconds),
            "plain_cores_busy": _median(run.plain_cores),
            "plain_bytes": run.plain_bytes,
            "ours": ours,
        },
        "restore": {
            "ours": {
                "fetch_seconds": _stats([r.fetch_seconds for r in run.restores]),
                "restore_seconds": _stats([r.restore_seconds for r in run.restores]),
                "verify_seconds": _stats([r.verify_seconds for r in run.restores]),
                "recovery_seconds": _stats([r.recovery_seconds for r in run.restores]),
                "total_seconds": _stats([r.total_seconds for r in run.restores]),
                "peak_rss_bytes": max(r.peak_rss_bytes for r in run.restores),
                "pg_restore_peak_rss_bytes": max(r.tool_peak_rss_bytes for r in run.restores),
                "cores_busy": _median([r.cores_busy for r in run.restores]),
            },
            "pg_restore_seconds": _stats(run.pg_restore_seconds),
            "pg_restore_cores_busy": _median(run.pg_restore_cores),
            "ratio_recovery_vs_pg_restore": recovery / pg_restore,
            "ratio_total_vs_pg_restore": total / pg_restore,
        },
    }
    if len(run.backups) > 1:
        summary["compression"] = [backup_figures(codec) for codec in run.backups]
    return summary


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _mib(n: float) -> str:
    return f"{n / MiB:.0f} MiB"


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def goals(sizes: Sequence[dict[str, Any]], startup: dict[str, Any] | None = None,
          whole: Sequence[dict[str, Any]] = (),
          whole_restore: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(goal: str, size: dict[str, Any] | None, value: float, limit: float, shown: str,
              strict: bool = False) -> None:
        met = value < limit if strict else value <= limit
        checks.append({"goal": goal, "database": _gib(size["database"]["database_bytes"]) if size else None,
                       "value": value, "limit": limit, "shown": shown, "met": met})

    for label, limit in STARTUP_GOALS_SECONDS.items():
        if startup and label in startup:
            value = startup[label]["seconds"]["median"]
            check(f"{label} start to exit < {limit:g} s", None, value, limit, f"{value:.2f} s", strict=True)
    for run in whole:
        check(f"whole `platform-dr backup` <= {WHOLE_VS_FLOOR_GOAL:.2f}x floor, {run['kind']} data",
              run, run["ratio_vs_floor"], WHOLE_VS_FLOOR_GOAL, _x(run["ratio_vs_floor"]))
    for run in whole_restore:
        check(f"whole `platform-dr restore` <= {WHOLE_RESTORE_VS_PG_RESTORE_GOAL:.2f}x pg_restore -j2, "
              f"{run['kind']} data", run, run["ratio_restore_vs_pg_restore"], WHOLE_RESTORE_VS_PG_RESTORE_GOAL,
              _x(run["ratio_restore_vs_pg_restore"]))
        check(f"whole `platform-dr verify` <= {WHOLE_VERIFY_VS_READ_GOAL:.2f}x reading the stored bytes once, "
              f"{run['kind']} data", run, run["ratio_verify_vs_read"], WHOLE_VERIFY_VS_READ_GOAL,
              _x(run["ratio_verify_vs_read"]))
        if "ratio_s3_verify_vs_read" in run:
            check(f"whole `platform-dr verify` from S3 (moto) <= {WHOLE_VERIFY_VS_READ_GOAL:.2f}x one boto3 read, "
                  f"{run['kind']} data", run, run["ratio_s3_verify_vs_read"], WHOLE_VERIFY_VS_READ_GOAL,
                  _x(run["ratio_s3_verify_vs_read"]))
        if "ratio_link_verify_vs_read" in run:
            check(f"whole `platform-dr verify` from S3 through {run['link_mb_per_second']:g} MB/s <= "
                  f"{WHOLE_VERIFY_VS_READ_GOAL:.2f}x one boto3 read through it, {run['kind']} data", run,
                  run["ratio_link_verify_vs_read"], WHOLE_VERIFY_VS_READ_GOAL, _x(run["ratio_link_verify_vs_read"]))
        peak = max(run["restore_peak_rss_bytes"], run["verify_peak_rss_bytes"])
        check(f"peak RSS of platform-dr restore/verify < {_mib(PEAK_RSS_GOAL_BYTES)}, {run['kind']} data",
              run, peak, PEAK_RSS_GOAL_BYTES, _mib(peak), strict=True)

    for size in sizes:
        backup, restore = size["backup"], size["restore"]
        check(f"backup time <= {BACKUP_VS_FLOOR_GOAL:.2f}x floor", size,
              backup["ours"]["ratio_vs_floor"], BACKUP_VS_FLOOR_GOAL, _x(backup["ours"]["ratio_vs_floor"]))
        check(f"stored size <= {SIZE_VS_PLAIN_GOAL:.0%} of plain -Fc", size,
              backup["ours"]["size_ratio_vs_plain"], SIZE_VS_PLAIN_GOAL,
              f"{backup['ours']['size_ratio_vs_plain']:.0%}")
        check(f"restore (fetch+restore) <= {RESTORE_VS_PG_RESTORE_GOAL:.2f}x pg_restore", size,
              restore["ratio_recovery_vs_pg_restore"], RESTORE_VS_PG_RESTORE_GOAL,
              _x(restore["ratio_recovery_vs_pg_restore"]))
        peak = max(backup["ours"]["peak_rss_bytes"], restore["ours"]["peak_rss_bytes"])
        check(f"peak RSS < {_mib(PEAK_RSS_GOAL_BYTES)}", size, peak, PEAK_RSS_GOAL_BYTES, _mib(peak),
              strict=True)
    return checks


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    # First column left-aligned (labels), the others right-aligned (figures).
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*row) for row in rows)])


def render(report: dict[str, Any], markdown: bool) -> str:
    sizes: list[dict[str, Any]] = report["sizes"]
    jobs = report["settings"]["jobs"]
    default = report["settings"]["default_compression"]
    code = (lambda t: f"`{t}`") if markdown else (lambda t: t)
    out: list[str] = []

    def heading(text: str) -> None:
        out.append(f"**{text}**\n" if markdown else f"{text}\n{'=' * len(text)}")

    if report.get("startup"):
        heading(f"Start-up: whole processes, fork to exit, medians of "
                f"{report['settings']['startup_runs']} interleaved runs")
        out.append(_table(
            ["command", "median", "min", "max", "CPU (user+sys)"],
            [[code(label), f"{f['seconds']['median']:.3f} s", f"{f['seconds']['min']:.3f} s",
              f"{f['seconds']['max']:.3f} s", f"{f['cpu_seconds']['median']:.3f} s"]
             for label, f in report["startup"].items()], markdown))
        out.append("")
    if report.get("whole_process"):
        heading(f"Whole process: {code('platform-dr backup DB')} (encrypted with a local key file, "
                f"zstd-1, one local store) vs the floor {code('pg_dump -Fc -Z0 > /dev/null')}")
        out.append(_table(
            ["data", "database", "dumped", "stored", "floor", "platform-dr backup", "ratio",
             "start-up", "dump", "read-back, manifest, exit", "CPU ours/floor", "cores busy ours/floor"],
            [[kind, _gib(w["database"]["database_bytes"]), _mib(f["raw_bytes"]), _mib(f["stored_bytes"]),
              _s(w["floor_seconds"]["median"]), _s(f["seconds"]["median"]), _x(f["ratio_vs_floor"]),
              f"{f['startup_seconds']['median']:.2f} s", _s(f["dump_seconds"]["median"]),
              f"{f['after_seconds']['median']:.2f} s",
              f"{f['cpu_seconds']['median']:.1f}/{w['floor_cpu_seconds']['median']:.1f} s",
              f"{f['cores_busy']:.1f}/{w['floor_cores_busy']:.1f}"]
             for w in report["whole_process"]
             for kind, f in ((w["kind"], w), *(((_compared(w["kind"], Path(report["settings"]["compare_with"])),
                                                 w["compared"]),) if "compared" in w else ()))],
            markdown))
        out.append("")
    if report.get("whole_restore"):
        heading(f"Whole process: {code('platform-dr restore DB --jobs ' + str(jobs))} (encrypted, one local "
                f"store) vs createdb + {code(f'pg_restore -j{jobs}')} of a plain -Fc file; "
                f"{code('platform-dr verify DB')} vs reading the stored object once")
        out.append(_table(
            ["data", "database", "dumped", "stored", "-Fc file", "pg_restore", "platform-dr restore", "ratio",
             "peak RSS ours/tree", "read once", "platform-dr verify", "ratio", "verify peak RSS"],
            [[w["kind"], _gib(w["database"]["database_bytes"]), _mib(w["raw_bytes"]), _mib(w["stored_bytes"]),
              _mib(w["plain_bytes"]), _s(w["pg_restore_seconds"]["median"]), _s(w["restore_seconds"]["median"]),
              _x(w["ratio_restore_vs_pg_restore"]),
              f"{_mib(w['restore_peak_rss_bytes'])}/{_mib(w['restore_tree_peak_rss_bytes'])}",
              _s(w["read_seconds"]["median"]), _s(w["verify_seconds"]["median"]), _x(w["ratio_verify_vs_read"]),
              _mib(w["verify_peak_rss_bytes"])]
             for w in report["whole_restore"]], markdown))
        out.append("")
        if any("s3_verify_seconds" in w for w in report["whole_restore"]):
            heading(f"{code('platform-dr verify DB --store bench-s3')} (moto server) vs one plain boto3 read "
                    "of the same object (both whole processes)")
            out.append(_table(
                ["data", "stored", "boto3 read", "platform-dr verify", "ratio", "verify peak RSS"],
                [[w["kind"], _mib(w["stored_bytes"]), _s(w["s3_read_seconds"]["median"]),
                  _s(w["s3_verify_seconds"]["median"]), _x(w["ratio_s3_verify_vs_read"]),
                  _mib(w["s3_verify_peak_rss_bytes"])]
                 for w in report["whole_restore"] if "s3_verify_seconds" in w], markdown))
            out.append("")
        linked = [w for w in report["whole_restore"] if "link_verify_seconds" in w]
        if linked:
            heading(f"{code('platform-dr verify DB --store bench-s3')} vs one plain boto3 read, both through a "
                    f"{linked[0]['link_mb_per_second']:g} MB/s link to moto (benchmarks/link.py: a cloud store "
                    "over a network)")
            out.append(_table(
                ["data", "stored", "boto3 read", "platform-dr verify", "ratio", "verify peak RSS"],
                [[w["kind"], _mib(w["stored_bytes"]), _s(w["link_read_seconds"]["median"]),
                  _s(w["link_verify_seconds"]["median"]), _x(w["ratio_link_verify_vs_read"]),
                  _mib(w["link_verify_peak_rss_bytes"])] for w in linked], markdown))
            out.append("")
    if sizes:
        heading(f"Backup: take_backup (zstd-{default['level']}, {default['threads']} threads, one local "
                "store; fsync, read-back checksum and manifest included)")
        out.append(_table(
            ["Database", "ours", "floor " + code("pg_dump -Fc -Z0 >/dev/null"), "ours/floor",
             "plain " + code("pg_dump -Fc >file"), "ours/plain", "stored", "-Fc file", "stored/-Fc",
             "peak RSS", "cores busy ours/floor"],
            [[_gib(s["database"]["database_bytes"]), _s(s["backup"]["ours"]["seconds"]["median"]),
              _s(s["backup"]["floor_seconds"]["median"]), _x(s["backup"]["ours"]["ratio_vs_floor"]),
              _s(s["backup"]["plain_seconds"]["median"]), _x(s["backup"]["ours"]["ratio_vs_plain"]),
              _mib(s["backup"]["ours"]["stored_bytes"]), _mib(s["backup"]["plain_bytes"]),
              f"{s['backup']['ours']['size_ratio_vs_plain']:.0%}", _mib(s["backup"]["ours"]["peak_rss_bytes"]),
              f"{s['backup']['ours']['cores_busy']:.1f}/{s['backup']['floor_cores_busy']:.1f}"]
             for s in sizes], markdown))
        out.append("")
        heading(f"Restore: restore_backup -j{jobs} vs createdb + pg_restore -j{jobs} --no-owner "
                "--no-privileges of the plain -Fc file, each into a fresh database")
        out.append(_table(
            ["Database", "fetch", "restore", "ours fetch+restore", code(f"pg_restore -j{jobs}"), "ratio",
             "verify", "ours incl. verify", "ratio", "peak RSS"],
            [[_gib(s["database"]["database_bytes"]),
              _s(s["restore"]["ours"]["fetch_seconds"]["median"]),
              _s(s["restore"]["ours"]["restore_seconds"]["median"]),
              _s(s["restore"]["ours"]["recovery_seconds"]["median"]),
              _s(s["restore"]["pg_restore_seconds"]["median"]),
              _x(s["restore"]["ratio_recovery_vs_pg_restore"]),
              _s(s["restore"]["ours"]["verify_seconds"]["median"]),
              _s(s["restore"]["ours"]["total_seconds"]["median"]),
              _x(s["restore"]["ratio_total_vs_pg_restore"]),
              _mib(s["restore"]["ours"]["peak_rss_bytes"])]
             for s in sizes], markdown))
        for s in (s for s in sizes if "compression" in s):
            out.append("")
            heading(f"Compression settings, {_gib(s['database']['database_bytes'])} database (backup only)")
            out.append(_table(
                ["zstd level", "threads", "backup", "/floor", "stored", "/-Fc size", "peak RSS",
                 "cores busy"],
                [[str(c["level"]), str(c["threads"]), _s(c["seconds"]["median"]), _x(c["ratio_vs_floor"]),
                  _mib(c["stored_bytes"]), f"{c['size_ratio_vs_plain']:.0%}", _mib(c["peak_rss_bytes"]),
                  f"{c['cores_busy']:.1f}"]
                 for c in s["compression"]], markdown))
        out.append("")
    heading("Goals")
    for g in report["goals"]:
        mark = "met" if g["met"] else "NOT met"
        where = f", {g['database']}" if g["database"] else ""
        out.append(f"{'- ' if markdown else '  '}{g['goal']}{where}: {g['shown']} ({mark})")
    return "\n".join(out)


def markdown_block(report: dict[str, Any]) -> str:
    m = report["machine"]
    settings = report["settings"]
    intro = (
        f"Measured {report['finished_at'][:10]} with `make bench{' QUICK=1' if settings['quick'] else ''}` "
        f"on {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']:.0f} GiB RAM: PostgreSQL "
        f"{m['server_version']} server and client tools, zstandard {m['zstandard']}. Medians of "
        f"{settings['repeat']} interleaved runs on one generated database per size and kind (mixed: "
        "`orders` with text and jsonb, `readings` numeric, five btree indexes; pgbench: `pgbench -i`; "
        "random: random bytea, hex in the dump), warm page cache; 5-minute load average "
        f"{report['load_average']['start']:.1f} at the start, {report['load_average']['end']:.1f} at the end."
    )
    if report["sizes"]:
        intro += (" Peak RSS is our Python process's (VmHWM of a fresh process per operation, "
                  "interpreter included); pg_dump and pg_restore are separate processes and not counted.")
    return intro + "\n\n" + render(report, markdown=True)


def machine_info(source: LocalCluster) -> dict[str, Any]:
    cpu_model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    return {
        "cpus": os.cpu_count(), "cpu_model": cpu_model, "memory_gib": memory / GiB,
        "platform": platform.platform(), "python": platform.python_version(),
        "server_version": source.install.version,
        "client_tools": client_tools_for(source.install.major).version,
        "zstandard": zstandard.__version__,
    }


# --- Entry point ------------------------------------------------------------------------------------

def _sizes(text: str) -> list[float]:
    sizes = sorted({float(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes are positive GiB figures, e.g. 0.5,2")
    return sizes


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.backup_restore",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=_sizes, default=_sizes("0.5,2"),
                        help="database sizes in GiB, comma-separated (default 0.5,2)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per measurement; medians reported")
    parser.add_argument("--jobs", type=int, default=2, help="pg_restore -j for both restores (default 2)")
    parser.add_argument("--levels", type=_ints, default=SWEEP_LEVELS,
                        help="zstd levels the sweep tries on the smallest size (default 1,3)")
    parser.add_argument("--threads", type=_ints, default=SWEEP_THREADS,
                        help="zstd thread counts the sweep tries (default 0,2)")
    parser.add_argument("--no-sweep", action="store_true",
                        help="measure only the core's default compression")
    parser.add_argument("--whole-gib", type=float, default=0.9,
                        help="size of each whole-process database (mixed, pgbench, random), GiB; "
                             "0 skips that part (default 0.9)")
    parser.add_argument("--no-whole-restore", action="store_true",
                        help="skip the whole `platform-dr restore`/`verify` processes on the "
                             "whole-process databases (run by default, --quick too)")
    parser.add_argument("--no-s3", action="store_true",
                        help="skip verify against the S3 emulator (moto server) and its boto3 baseline")
    parser.add_argument("--link-mb-per-second", type=float, default=100.0,
                        help="also verify from S3 through a relay limited to this many MB/s (a cloud store "
                             "over a network), against one boto3 read through it; 0 skips it (default 100)")
    parser.add_argument("--startup-runs", type=int, default=20,
                        help="rounds of the start-up measurement; 0 skips it (default 20)")
    parser.add_argument("--compare-with", type=Path, metavar="CHECKOUT",
                        help="also time the CLI of another checkout of this repository (e.g. a "
                             "`git worktree` of main), in the same rounds")
    parser.add_argument("--quick", action="store_true",
                        help="start-up and whole-process backups only (a few minutes), no "
                             "take_backup/restore sizes and no sweep")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    default = CompressionSettings()  # the core's default: what production runs
    sweep = [] if args.no_sweep else [
        codec for codec in (CompressionSettings(level, threads)
                            for level in args.levels for threads in args.threads)
        if codec != default]
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[1]
    runs: list[SizeRun] = []
    whole: list[WholeRun] = []
    whole_restore: list[WholeRestoreRun] = []
    startup: dict[str, list[ProcessSample]] = {}
    compare = args.compare_with.resolve() if args.compare_with else None
    if compare is not None and not (compare / "platform_orchestration" / "cli.py").is_file():
        parser.error(f"--compare-with {args.compare_with}: no platform_orchestration/cli.py there")
    for root in (ROOT, compare):
        if root is not None:
            _byte_compile_package(root)
    if args.startup_runs > 0:
        startup = bench_startup(args.startup_runs, compare)
    # The embedded default's key file must live outside the repository.
    key_dir = Path(tempfile.mkdtemp(prefix="bench-kek-"))
    moto = None
    link_process: subprocess.Popen[bytes] | None = None
    link: tuple[str, float] | None = None
    try:
        s3_endpoint = None
        if args.whole_gib > 0 and not args.no_whole_restore and not args.no_s3:
            moto = _start_moto(key_dir)
            s3_endpoint = moto.endpoint
            if args.link_mb_per_second > 0:
                link_process, link_endpoint = _start_link(moto.endpoint, args.link_mb_per_second)
                link = (link_endpoint, args.link_mb_per_second)
        with ephemeral_cluster(SERVER_MAJOR) as source, ephemeral_cluster(SERVER_MAJOR) as target:
            machine = machine_info(source)
            if args.whole_gib > 0:
                for kind in WHOLE_KINDS:
                    whole.append(bench_whole(source, kind, args.whole_gib, repeat=args.repeat,
                                             key_dir=key_dir, compare=compare, keep=True))
                    if not args.no_whole_restore:
                        whole_restore.append(bench_whole_restore(source, target, kind, repeat=args.repeat,
                                                                 jobs=args.jobs, key_dir=key_dir,
                                                                 s3_endpoint=s3_endpoint, link=link))
                    _drop_database(source, f"whole_{kind}")
            for index, size in enumerate([] if args.quick else args.sizes):
                codecs = [default, *sweep] if index == 0 else [default]
                runs.append(bench_size(source, target, size, repeat=args.repeat, jobs=args.jobs,
                                       codecs=codecs, default=default))
    finally:
        if link_process is not None:
            link_process.kill()
            link_process.wait()
        if moto is not None:
            moto.stop()
        shutil.rmtree(key_dir, ignore_errors=True)
    shutil.rmtree(WORK_DIR, ignore_errors=True)

    sizes = [summarise(run, default) for run in runs]
    startup_summary = summarise_startup(startup) if startup else None
    whole_summary = [summarise_whole(run) for run in whole]
    whole_restore_summary = [summarise_whole_restore(run) for run in whole_restore]
    report: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "machine": machine,
        # Other work on the machine (5-minute load average): the figures are only as quiet as it.
        "load_average": {"start": load_at_start, "end": os.getloadavg()[1]},
        "settings": {"sizes_gib": [] if args.quick else args.sizes, "repeat": args.repeat,
                     "jobs": args.jobs, "default_compression": asdict(default),
                     "sweep": [] if args.quick else [asdict(codec) for codec in sweep],
                     "quick": args.quick, "whole_gib": args.whole_gib,
                     "startup_runs": args.startup_runs,
                     "compare_with": str(compare) if compare else None},
        "goals_definition": {
            "backup_vs_floor_max": BACKUP_VS_FLOOR_GOAL, "stored_vs_plain_size_max": SIZE_VS_PLAIN_GOAL,
            "restore_vs_pg_restore_max": RESTORE_VS_PG_RESTORE_GOAL,
            "peak_rss_bytes_below": PEAK_RSS_GOAL_BYTES,
            "startup_seconds_below": STARTUP_GOALS_SECONDS, "whole_vs_floor_max": WHOLE_VS_FLOOR_GOAL,
            "whole_restore_vs_pg_restore_max": WHOLE_RESTORE_VS_PG_RESTORE_GOAL,
            "whole_verify_vs_read_max": WHOLE_VERIFY_VS_READ_GOAL,
        },
        "startup": startup_summary,
        "whole_process": whole_summary,
        "whole_restore": whole_restore_summary,
        "sizes": sizes,
        "goals": goals(sizes, startup_summary, whole_summary, whole_restore_summary),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")

    print(render(report, markdown=False))
    print(f"\nWall time {report['wall_seconds'] / 60:.1f} min; JSON in {args.output}")
    print("\nFor the README:\n")
    print(markdown_block(report))
    # A report, not a test: goals not met are shown as such, the run itself succeeded.
    return 0


if __name__ == "__main__":
    sys.exit(main())
