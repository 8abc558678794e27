"""What envelope encryption costs a backup, measured on the same database in one run.

    python -m benchmarks.encryption [--size 0.5] [--repeat 7]

A database of about --size GiB is generated inside a throwaway PostgreSQL server with the
generator of benchmarks/backup_restore.py, then, in --repeat interleaved rounds (each
round starts with the other contender, so drift hits both alike):

* `take_backup` to one local store, unencrypted;
* the same with a `LocalDataKeyProvider` (Tink AES256_GCM_HKDF_1MB after zstd, before
  SHA-256 and the store);
* `verify_stored_backup` of each (the read path of restores and drills: SHA-256, plus
  decryption for the encrypted one, then zstd), for information.

Each operation runs in a freshly spawned Python process and is timed inside it (peak RSS
is that process's VmHWM). The encryption alone is also timed in this process over the
stored compressed bytes, as a throughput figure. The goal: the encrypted backup takes less
than 5 % longer than the unencrypted one (medians). Results go to stdout (tables, then a
markdown block) and to var/bench/encryption.json.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.backup_restore import (
    SERVER_MAJOR,
    WORK_DIR,
    BackupSample,
    Dataset,
    GiB,
    MiB,
    _children_peak_rss_bytes,
    _cores_busy,
    _cpu_jiffies,
    _drop_database,
    _peak_rss_bytes,
    _rotated,
    _run,
    _settle,
    generate_database,
    in_child,
    log,
    machine_info,
)
from platform_orchestration.backups.catalog import latest_backup
from platform_orchestration.backups.encryption import associated_data
from platform_orchestration.backups.integrity import verify_stored_backup
from platform_orchestration.backups.take import take_backup
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.crypto.streaming import SCHEME, encrypt_chunks
from platform_orchestration.postgres import (
    LocalCluster,
    PgConnection,
    client_tools_for,
    ephemeral_cluster,
)
from platform_orchestration.storage import LocalObjectStore

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "var" / "bench" / "encryption.json"
OVERHEAD_GOAL = 0.05


def backup_in_child(dsn: str, database: str, store_dir: str, kek_path: str | None) -> BackupSample:
    """take_backup into a fresh local store, encrypted when `kek_path` is given."""
    store = LocalObjectStore("bench", Path(store_dir))
    keys = LocalDataKeyProvider(Path(kek_path)) if kek_path is not None else None
    stream_end = 0.0

    def progress(stage: str, done_bytes: int) -> None:
        nonlocal stream_end
        if stage == "dump":
            stream_end = time.perf_counter()

    cpu = _cpu_jiffies()
    started = time.perf_counter()
    outcome = take_backup(database=database, cluster="bench", policy="bench",
                          connection=PgConnection(dsn), stores=[store], progress=progress, keys=keys)
    seconds = time.perf_counter() - started
    return BackupSample(seconds=seconds, stream_seconds=stream_end - started,
                        raw_bytes=outcome.manifest.dump.raw_bytes,
                        stored_bytes=outcome.manifest.dump.stored_bytes,
                        peak_rss_bytes=_peak_rss_bytes(),
                        tool_peak_rss_bytes=_children_peak_rss_bytes(), cores_busy=_cores_busy(cpu))


@dataclass(frozen=True)
class VerifySample:
    seconds: float
    peak_rss_bytes: int


def verify_in_child(store_dir: str, database: str, kek_path: str | None) -> VerifySample:
    stored = latest_backup(LocalObjectStore("bench", Path(store_dir)), database)
    if stored is None:
        raise RuntimeError(f"no backup of {database} in {store_dir}")
    keys = LocalDataKeyProvider(Path(kek_path)) if kek_path is not None else None
    # integrity imports the envelope (and Tink) on the first encrypted read; a fixed cost
    # per process, kept out of the per-byte comparison (take_backup imports it up front).
    import platform_orchestration.crypto.streaming  # noqa: F401
    started = time.perf_counter()
    verify_stored_backup(stored.store, stored.manifest, keys=keys)
    return VerifySample(seconds=time.perf_counter() - started, peak_rss_bytes=_peak_rss_bytes())


def encryption_only_seconds(store_dir: Path, database: str, repeat: int) -> tuple[int, float]:
    """(bytes, median seconds) of encrypt_chunks alone over the stored compressed dump,
    read into memory first so only the encryption is timed."""
    stored = latest_backup(LocalObjectStore("bench", store_dir), database)
    assert stored is not None
    chunks = list(stored.store.read(stored.manifest.dump_key))
    key, aad = os.urandom(32), associated_data(database, stored.backup_id)
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _out in encrypt_chunks(iter(chunks), key, aad):
            pass
        samples.append(time.perf_counter() - started)
    return sum(len(c) for c in chunks), statistics.median(samples)


@dataclass
class Run:
    dataset: Dataset
    floor_seconds: list[float] = field(default_factory=list)
    plain: list[BackupSample] = field(default_factory=list)
    encrypted: list[BackupSample] = field(default_factory=list)
    verify_plain: list[VerifySample] = field(default_factory=list)
    verify_encrypted: list[VerifySample] = field(default_factory=list)
    encrypt_bytes: int = 0
    encrypt_seconds: float = 0.0


def bench(source: LocalCluster, size_gib: float, repeat: int, kek: Path) -> Run:
    name = "bench_enc_" + f"{size_gib:g}".replace(".", "_") + "gib"
    work = WORK_DIR / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"{name}: generating about {size_gib:g} GiB")
    dataset = generate_database(source, name, size_gib)
    log(f"{name}: {dataset.database_bytes / GiB:.2f} GiB in {dataset.generate_seconds:.0f} s")
    run = Run(dataset)
    conn = source.connection(name)
    tools = client_tools_for(source.install.major)
    floor_argv = [tools.tool("pg_dump"), "--format=custom", "--compress=0", f"--dbname={conn.dsn}"]
    stores = {"plain": work / "store-plain", "encrypted": work / "store-encrypted"}

    def backup(kind: str) -> None:
        shutil.rmtree(stores[kind], ignore_errors=True)
        _settle([source])
        sample = in_child(backup_in_child, conn.dsn, name, str(stores[kind]),
                          str(kek) if kind == "encrypted" else None)
        getattr(run, kind).append(sample)

    def floor() -> None:
        _settle([source])
        run.floor_seconds.append(_run(floor_argv, conn.tool_env()))

    def verify(kind: str) -> None:
        _settle([source])
        sample = in_child(verify_in_child, str(stores[kind]), name, str(kek) if kind == "encrypted" else None)
        getattr(run, f"verify_{kind}").append(sample)

    _run(floor_argv, conn.tool_env())  # untimed: warms the page cache alike for everyone
    # Untimed too: the first backups after generating the database ran slower for every
    # contender (floor included) in trial runs.
    for kind in ("plain", "encrypted"):
        in_child(backup_in_child, conn.dsn, name, str(work / "warm-up"), str(kek) if kind == "encrypted" else None)
        shutil.rmtree(work / "warm-up", ignore_errors=True)
    contenders: list[tuple[str, Callable[[], None]]] = [
        ("take_backup unencrypted", partial(backup, "plain")),
        ("take_backup encrypted", partial(backup, "encrypted")),
        ("floor pg_dump -Fc -Z0 > /dev/null", floor),
    ]
    for round_ in range(repeat):
        for what, operation in _rotated(contenders, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()
    verifiers = [("verify unencrypted", partial(verify, "plain")),
                 ("verify encrypted", partial(verify, "encrypted"))]
    for round_ in range(repeat):
        for what, operation in _rotated(verifiers, round_):
            log(f"{name}: round {round_ + 1}/{repeat}: {what}")
            operation()
    log(f"{name}: encryption alone over the stored dump")
    run.encrypt_bytes, run.encrypt_seconds = encryption_only_seconds(stores["plain"], name, repeat)
    _drop_database(source, name)
    shutil.rmtree(work, ignore_errors=True)
    return run


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def summarise(run: Run) -> dict[str, Any]:
    plain = _median([s.seconds for s in run.plain])
    encrypted = _median([s.seconds for s in run.encrypted])
    raw = run.plain[-1].raw_bytes
    verify_plain = _median([s.seconds for s in run.verify_plain])
    verify_encrypted = _median([s.seconds for s in run.verify_encrypted])
    return {
        "database": asdict(run.dataset),
        "raw_bytes": raw,
        "stored_bytes": {"plain": run.plain[-1].stored_bytes, "encrypted": run.encrypted[-1].stored_bytes},
        "floor_seconds": {"median": _median(run.floor_seconds), "samples": run.floor_seconds},
        "backup": {
            kind: {"median_seconds": _median([s.seconds for s in samples]),
                   "samples": [s.seconds for s in samples],
                   "throughput_mib_s": raw / MiB / _median([s.seconds for s in samples]),
                   "peak_rss_bytes": max(s.peak_rss_bytes for s in samples),
                   "cores_busy": _median([s.cores_busy for s in samples])}
            for kind, samples in (("plain", run.plain), ("encrypted", run.encrypted))
        },
        "backup_ratio": encrypted / plain,
        "backup_ratio_min_over_min": min(s.seconds for s in run.encrypted) / min(s.seconds for s in run.plain),
        "verify": {"plain_seconds": verify_plain, "encrypted_seconds": verify_encrypted,
                   "plain_samples": [s.seconds for s in run.verify_plain],
                   "encrypted_samples": [s.seconds for s in run.verify_encrypted],
                   "ratio": verify_encrypted / verify_plain,
                   "peak_rss_bytes": max(s.peak_rss_bytes for s in run.verify_encrypted)},
        "encryption_only": {"bytes": run.encrypt_bytes, "seconds": run.encrypt_seconds,
                            "mib_s": run.encrypt_bytes / MiB / run.encrypt_seconds},
        "goal": {"max_overhead": OVERHEAD_GOAL, "overhead": encrypted / plain - 1,
                 "met": encrypted / plain - 1 < OVERHEAD_GOAL},
    }


def render(report: dict[str, Any], markdown: bool) -> str:
    s = report["result"]
    b = s["backup"]
    rows = [
        ["unencrypted", f"{b['plain']['median_seconds']:.2f} s", f"{b['plain']['throughput_mib_s']:.0f} MiB/s",
         f"{s['stored_bytes']['plain'] / MiB:.1f} MiB", f"{b['plain']['peak_rss_bytes'] / MiB:.0f} MiB",
         f"{b['plain']['cores_busy']:.1f}", f"{s['verify']['plain_seconds']:.2f} s"],
        ["encrypted", f"{b['encrypted']['median_seconds']:.2f} s",
         f"{b['encrypted']['throughput_mib_s']:.0f} MiB/s",
         f"{s['stored_bytes']['encrypted'] / MiB:.1f} MiB", f"{b['encrypted']['peak_rss_bytes'] / MiB:.0f} MiB",
         f"{b['encrypted']['cores_busy']:.1f}", f"{s['verify']['encrypted_seconds']:.2f} s"],
    ]
    headers = ["take_backup", "median", "dump throughput", "stored", "peak RSS", "cores busy", "verify"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    if markdown:
        table = "\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
                           *("| " + " | ".join(r) + " |" for r in rows)])
    else:
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        table = "\n".join([fmt.format(*headers), fmt.format(*("-" * w for w in widths)),
                           *(fmt.format(*r) for r in rows)])
    goal = s["goal"]
    lines = [
        table, "",
        f"encrypted/unencrypted backup: {s['backup_ratio']:.3f}x (medians; min/min "
        f"{s['backup_ratio_min_over_min']:.3f}x); goal < {1 + goal['max_overhead']:.2f}x: "
        f"{'met' if goal['met'] else 'NOT met'}",
        f"encrypted/unencrypted verify: {s['verify']['ratio']:.3f}x",
        f"floor pg_dump -Fc -Z0 > /dev/null: {s['floor_seconds']['median']:.2f} s",
        f"encryption alone ({SCHEME}): {s['encryption_only']['mib_s']:.0f} MiB/s over "
        f"{s['encryption_only']['bytes'] / MiB:.0f} MiB of compressed dump "
        f"({s['encryption_only']['seconds']:.3f} s)",
    ]
    if markdown:
        lines = lines[:2] + [f"- {line}" for line in lines[2:]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encryption",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=float, default=0.5, help="database size in GiB (default 0.5)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; medians reported (default 7)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.size <= 0:
        parser.error("--repeat must be at least 1 and --size positive")
    started_at = datetime.now(timezone.utc)
    started = time.perf_counter()
    # The KEK must live outside the repository (LocalDataKeyProvider refuses a work tree).
    kek_dir = Path(tempfile.mkdtemp(prefix="bench-kek-"))
    try:
        kek = kek_dir / "kek"
        LocalDataKeyProvider(kek)
        with ephemeral_cluster(SERVER_MAJOR) as source:
            machine = machine_info(source)
            run = bench(source, args.size, args.repeat, kek)
    finally:
        shutil.rmtree(kek_dir, ignore_errors=True)
    machine["tink"] = importlib.metadata.version("tink")
    report = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
        "machine": machine,
        "settings": {"size_gib": args.size, "repeat": args.repeat},
        "result": summarise(run),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(render(report, markdown=False))
    print(f"\nWall time {report['wall_seconds'] / 60:.1f} min; JSON in {args.output}")
    m = machine
    print("\nFor the README:\n")
    print(f"Measured {started_at.date()} with `python -m benchmarks.encryption` on {m['cpus']} cores "
          f"({m['cpu_model']}): PostgreSQL {m['server_version']}, a "
          f"{report['result']['database']['database_bytes'] / GiB:.2f} GiB generated database, one local "
          f"store, medians of {args.repeat} interleaved runs, each in a fresh process.\n")
    print(render(report, markdown=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
