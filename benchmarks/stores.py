"""Cross-cloud copies and fan-out, measured against plain SDK transfers in the same run.

    python -m benchmarks.stores [--mib 256] [--repeat 3]

Against local emulators of the three clouds (moto server, Azurite, the GCS emulator, as
in `make demo-clouds`), with one incompressible object standing for a compressed dump:

* copy: `copy_backup` from S3 to Azure (streamed source -> target, SHA-256 checked on the
  way, read back, manifest) against the plain SDK way: boto3 `download_file` to a local
  file, then azure `upload_blob` of that file (both SDK-managed, parallel transfers);
* fan-out: the same stream written to S3, Azure and GCS at once (`FanOutWriter`, as a
  backup does) against writing it to S3 alone.

Each measured operation runs in a freshly spawned process; its peak RSS (VmHWM) is
reported. The emulators share the machine's two cores with us, so the absolute rates
are the emulators' (moto in particular is pure Python); the ratios are what to read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

MiB = 1024 * 1024
CHUNK = MiB
BUCKET = "bench-stores"
KEY = "backups/bench/obj/dump.pgdump.zst"


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _stores(ports: dict[str, int], suffix: str = "") -> dict:
    from platform_orchestration import emulators
    from platform_orchestration.fleet import AzureStoreSpec, GcsStoreSpec, S3StoreSpec
    from platform_orchestration.stores import open_store

    class Env:
        def resolve(self, ref):  # noqa: ANN001, ANN202 - the benchmark's fixed credentials
            return {"KEY_ID": "bench", "SECRET": "bench-secret", "AZ": emulators.AZURITE_KEY}[ref.env]

    specs = {
        "s3": S3StoreSpec(name=f"s3{suffix}", bucket=BUCKET + suffix, region="eu-west-1",
                          endpoint_url=f"http://127.0.0.1:{ports['s3']}",
                          credentials={"access_key_id": {"env": "KEY_ID"}, "secret_access_key": {"env": "SECRET"}}),
        "azure": AzureStoreSpec(name=f"azure{suffix}", container=BUCKET + suffix,
                                account_url=f"http://127.0.0.1:{ports['azure']}/{emulators.AZURITE_ACCOUNT}",
                                credentials={"account_key": {"env": "AZ"}}),
        "gcs": GcsStoreSpec(name=f"gcs{suffix}", bucket=BUCKET + suffix, project="bench",
                            endpoint_url=f"http://127.0.0.1:{ports['gcs']}"),
    }
    return {kind: open_store(spec, Env()) for kind, spec in specs.items()}


def _object_chunks(mib: int):
    # Incompressible, like a compressed dump; deterministic so every contender moves the same bytes.
    seed = hashlib.sha256(b"bench").digest()
    block = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(CHUNK // 32))
    for index in range(mib):
        yield block[index % 7:] + block[: index % 7]


# --- measured operations, each in a fresh process --------------------------------------------

def op_copy_ours(ports: dict[str, int], mib: int) -> dict:
    from platform_orchestration.backups.catalog import find_backup
    from platform_orchestration.backups.copy import copy_backup

    stores = _stores(ports)
    source = find_backup([stores["s3"]], "bench")
    stores["azure"].delete(source.manifest.dump_key)
    stores["azure"].delete(source.manifest.manifest_key)
    started = time.perf_counter()
    copy_backup(source, stores["azure"])
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": _peak_rss_bytes()}


def op_copy_sdk(ports: dict[str, int], mib: int) -> dict:
    import boto3
    from azure.storage.blob import BlobServiceClient

    from platform_orchestration import emulators

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="eu-west-1",
                      aws_access_key_id="bench", aws_secret_access_key="bench-secret")
    azure = BlobServiceClient(f"http://127.0.0.1:{ports['azure']}/{emulators.AZURITE_ACCOUNT}",
                              credential={"account_name": emulators.AZURITE_ACCOUNT,
                                          "account_key": emulators.AZURITE_KEY})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "object"
        s3.download_file(BUCKET, KEY, str(path))
        with open(path, "rb") as data:
            azure.get_blob_client(BUCKET, "sdk-copy/object").upload_blob(data, overwrite=True, max_concurrency=2)
    return {"seconds": time.perf_counter() - started, "peak_rss_bytes": _peak_rss_bytes()}


def op_write(ports: dict[str, int], mib: int, kinds: tuple[str, ...]) -> dict:
    from platform_orchestration.storage.fanout import FanOutWriter

    stores = _stores(ports)
    targets = [stores[kind] for kind in kinds]
    started = time.perf_counter()
    writer = FanOutWriter(targets, f"fanout/{'-'.join(kinds)}")
    for chunk in _object_chunks(mib):
        writer.write(chunk)
    committed = writer.commit()
    elapsed = time.perf_counter() - started
    assert len(committed) == len(targets), writer.failed
    return {"seconds": elapsed, "peak_rss_bytes": _peak_rss_bytes()}


def _in_fresh_process(function, *args) -> dict:  # noqa: ANN001
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _seed_source(ports: dict[str, int], mib: int) -> None:
    """One backup-shaped object (dump + manifest) in S3 for the copies to start from."""
    import boto3
    from azure.storage.blob import BlobServiceClient
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from platform_orchestration import emulators
    from platform_orchestration.backups.manifest import (
        BackupManifest,
        DumpInfo,
        ServerInfo,
    )
    from platform_orchestration.storage import write_bytes

    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="eu-west-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench-secret").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    BlobServiceClient(f"http://127.0.0.1:{ports['azure']}/{emulators.AZURITE_ACCOUNT}",
                      credential={"account_name": emulators.AZURITE_ACCOUNT,
                                  "account_key": emulators.AZURITE_KEY}).create_container(BUCKET)
    gcs.Client(project="bench", credentials=AnonymousCredentials(),
               client_options={"api_endpoint": f"http://127.0.0.1:{ports['gcs']}"}).create_bucket(BUCKET)
    s3 = _stores(ports)["s3"]
    digest, size = hashlib.sha256(), 0
    with s3.open_writer(KEY) as writer:
        for chunk in _object_chunks(mib):
            digest.update(chunk)
            size += len(chunk)
            writer.write(chunk)
        writer.commit()
    now = datetime.now(timezone.utc)
    manifest = BackupManifest(
        backup_id="obj", database="bench", cluster="bench", policy="bench", started_at=now, finished_at=now,
        snapshot_at=now, lsn="0/0", server=ServerInfo(version="16", version_num=160000, system_identifier="0"),
        dump=DumpInfo(tool="synthetic", tool_major=16, compression_level=1, raw_bytes=size, stored_bytes=size,
                      sha256=digest.hexdigest()),
        row_counts={}, produced_by="benchmarks.stores")
    write_bytes(s3, manifest.manifest_key, manifest.in_store("s3", now).to_json())


def main() -> None:
    from platform_orchestration import emulators

    parser = argparse.ArgumentParser(prog="python -m benchmarks.stores")
    parser.add_argument("--mib", type=int, default=256, help="object size in MiB (default 256)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from platform_orchestration.postgres.cluster import free_port

    ports = {"s3": free_port(), "azure": free_port(), "gcs": free_port()}
    scratch = Path(tempfile.mkdtemp(prefix="bench-stores-"))
    running = [emulators.moto_server(ports["s3"]), emulators.azurite(ports["azure"]),
               emulators.gcs_emulator(ports["gcs"])]
    for emulator in running:
        emulator.start(scratch / "logs")
    try:
        _seed_source(ports, args.mib)
        samples: dict[str, list[dict]] = {"copy_ours": [], "copy_sdk": [], "write_s3": [], "write_azure": [],
                                          "write_gcs": [], "fanout_3": []}
        for round_number in range(args.repeat):
            print(f"round {round_number + 1}/{args.repeat}", flush=True)
            samples["copy_ours"].append(_in_fresh_process(op_copy_ours, ports, args.mib))
            samples["copy_sdk"].append(_in_fresh_process(op_copy_sdk, ports, args.mib))
            for kind in ("s3", "azure", "gcs"):
                samples[f"write_{kind}"].append(_in_fresh_process(op_write, ports, args.mib, (kind,)))
            samples["fanout_3"].append(_in_fresh_process(op_write, ports, args.mib, ("s3", "azure", "gcs")))
        median = {name: statistics.median(s["seconds"] for s in runs) for name, runs in samples.items()}
        rss = {name: max(s["peak_rss_bytes"] for s in runs) for name, runs in samples.items()}
        result = {"mib": args.mib, "repeat": args.repeat, "median_seconds": median, "peak_rss_bytes": rss,
                  "copy_ratio_vs_sdk": median["copy_ours"] / median["copy_sdk"],
                  "fanout_ratio_vs_one": median["fanout_3"] / median["write_s3"],
                  "fanout_ratio_vs_slowest_one": median["fanout_3"] / max(
                      median["write_s3"], median["write_azure"], median["write_gcs"]),
                  "fanout_ratio_vs_sum_of_three": median["fanout_3"] / (
                      median["write_s3"] + median["write_azure"] + median["write_gcs"])}
        out = Path("var/bench/stores.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        mb = args.mib
        print(f"\n| operation ({mb} MiB, medians of {args.repeat}) | seconds | MiB/s | peak RSS |")
        print("|---|---|---|---|")
        names = {"copy_ours": "copy_backup S3 -> Azure (streamed, verified)",
                 "copy_sdk": "SDK download_file S3 + upload_blob Azure",
                 "write_s3": "write to S3 alone", "write_azure": "write to Azure alone",
                 "write_gcs": "write to GCS alone", "fanout_3": "fan-out to S3 + Azure + GCS"}
        for name, label in names.items():
            print(f"| {label} | {median[name]:.1f} | {mb / median[name]:.0f} | {rss[name] / MiB:.0f} MiB |")
        print(f"\ncopy ours/SDK: {result['copy_ratio_vs_sdk']:.2f}x (goal < 1.0); "
              f"fan-out 3 stores / S3 alone: {result['fanout_ratio_vs_one']:.2f}x (goal <= 1.3), "
              f"/ slowest single store: {result['fanout_ratio_vs_slowest_one']:.2f}x, "
              f"/ the three one after another: {result['fanout_ratio_vs_sum_of_three']:.2f}x; "
              f"peak RSS max {max(rss.values()) / MiB:.0f} MiB (goal < 200)")
    finally:
        for emulator in running:
            emulator.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
