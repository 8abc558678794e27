"""platform-dr's physical commands (barman-cloud base backups, WAL archiving, point-in-time
restores, PITR drills), kept apart from cli.py's logical ones; cli.py registers and dispatches
them. Like every command they call FleetProtection and only format."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from platform_orchestration.protection import FleetProtection

PHYSICAL_COMMANDS = ("base-backup", "archive-settings", "archive-status", "restore-pitr", "drill-pitr",
                     "status-physical", "copy-physical", "prune-physical")


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    base = commands.add_parser("base-backup", help="take a physical base backup (barman-cloud-backup) of a cluster")
    base.add_argument("cluster")
    base.add_argument("--jobs", type=int, default=2, help="upload processes (default 2)")

    settings = commands.add_parser("archive-settings",
                                   help="the server settings that archive a cluster's WAL into its repository")
    settings.add_argument("cluster")
    settings.add_argument("--credentials-file", type=Path,
                          help="where the server finds its repository credentials (server_credentials: store)")

    status = commands.add_parser("archive-status", help="WAL archiving of a cluster: lag, failures, missing segments")
    status.add_argument("cluster")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    pitr = commands.add_parser("restore-pitr", help="bring up a NEW cluster at a point in time from a physical repository")
    pitr.add_argument("cluster")
    pitr.add_argument("--to", required=True, metavar="TIME|LSN|latest",
                      help="an ISO time with its zone (2026-12-01T19:36:56Z), an LSN (0/3000060) or latest")
    pitr.add_argument("--store", help="store holding the repository or a copy of it (default: the repository's)")
    pitr.add_argument("--target-dir", required=True, type=Path, help="a new or empty directory for the new cluster")
    pitr.add_argument("--port", type=int, help="port for the new cluster (default: a free one)")

    drill = commands.add_parser("drill-pitr", help="PITR drill: marker, archive, restore to just after it, verify")
    drill.add_argument("cluster")
    drill.add_argument("--store", help="restore from this store (default: the next one in rotation)")

    copy = commands.add_parser("copy-physical",
                               help="copy a cluster's physical repository to its policy's other object stores")
    copy.add_argument("cluster")
    copy.add_argument("--store", help="only this copy store (default: every one)")
    copy.add_argument("--verify", action="store_true",
                      help="first re-read every object of the copy against its recorded SHA-256; "
                           "copy again what changed")
    copy.add_argument("--json", action="store_true", help="machine-readable output")

    prune = commands.add_parser("prune-physical",
                                help="delete base backups and WAL older than the policy's pitr_window, in every store")
    prune.add_argument("cluster")
    prune.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    prune.add_argument("--json", action="store_true", help="machine-readable output")

    commands.add_parser("status-physical", help="physical compliance of every physical cluster")


def _human_bytes(count: float | None) -> str:
    from platform_orchestration.cli import human_bytes

    return "-" if count is None else human_bytes(count)


def list_physical(protection: FleetProtection, cluster: str | None, as_json: bool, out: TextIO) -> int:
    """``platform-dr list --physical [CLUSTER]``: base backups of physical clusters."""
    listing = protection.list_base_backups(cluster)
    rows = []
    for name, backups in listing.items():
        repository = protection.physical_repository(name)
        for b in backups:
            rows.append({"id": b.backup_id, "cluster": name, "store": repository.store, "status": b.status,
                         "begin_time": b.begin_time.isoformat(), "end_time": b.end_time.isoformat(),
                         "begin_lsn": b.begin_lsn, "end_lsn": b.end_lsn, "begin_wal": b.begin_wal,
                         "end_wal": b.end_wal, "timeline": b.timeline, "cluster_bytes": b.cluster_bytes,
                         "stored_bytes": b.stored_bytes, "server_version": b.server_version,
                         "repository": repository.url, "server_name": repository.server_name})
    if as_json:
        json.dump(rows, out, indent=2)
        out.write("\n")
        return 0
    print(f"{'ID':<17} {'CLUSTER':<16} {'STORE':<12} {'STATUS':<7} {'ENDED':<21} {'LSN RANGE':<23} "
          f"{'SIZE':>10} {'STORED':>10}", file=out)
    for r in rows:
        print(f"{r['id']:<17} {r['cluster']:<16} {r['store']:<12} {r['status']:<7} {r['end_time'][:19] + 'Z':<21} "
              f"{r['begin_lsn'] + '-' + r['end_lsn']:<23} {_human_bytes(r['cluster_bytes']):>10} "
              f"{_human_bytes(r['stored_bytes']):>10}", file=out)
    return 0


def run(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    from platform_orchestration.physical.pitr import RecoveryTarget

    if args.command == "base-backup":
        outcome = protection.base_backup(args.cluster, jobs=args.jobs)
        b = outcome.backup
        print(b.backup_id, file=out)
        print(f"{args.cluster}: base backup {b.backup_id} ({b.backup_name}) in {outcome.repository}: LSN "
              f"{b.begin_lsn}-{b.end_lsn}, WAL {b.begin_wal}-{b.end_wal}, {_human_bytes(b.cluster_bytes)} cluster, "
              f"{_human_bytes(b.stored_bytes)} stored, {outcome.seconds:.1f}s, {outcome.throughput_mib_s:.1f} MiB/s",
              file=sys.stderr)
        return 0

    if args.command == "archive-settings":
        for name, value in protection.physical_settings(args.cluster, args.credentials_file).items():
            quoted = value.replace("'", "''")
            print(f"{name} = '{quoted}'", file=out)
        return 0

    if args.command == "archive-status":
        status = protection.archive_status(args.cluster)
        policy = protection.physical_repository(args.cluster).policy
        problems = status.problems(policy.wal_max_lag) if policy else []
        if args.json:
            json.dump({**asdict(status), "problems": problems}, out, indent=2, default=str)
            out.write("\n")
        else:
            print(f"{args.cluster}: archiving into {status.repository}: {'ok' if not problems else 'PROBLEM'}", file=out)
            print(f"  current WAL {status.current_wal}; last archived {status.last_archived_wal or '-'} at "
                  f"{status.last_archived_at or '-'}; {status.archived_count} archived, {status.failed_count} failed",
                  file=out)
            print(f"  repository: {status.segments_in_store} segment(s), {status.oldest_in_store or '-'} .. "
                  f"{status.newest_in_store or '-'}; {status.pending_segments} waiting; lag {status.lag_seconds:.0f}s",
                  file=out)
            for problem in problems:
                print(f"  [FAIL] {problem}", file=out)
        return 1 if problems else 0

    if args.command == "restore-pitr":
        result = protection.restore_pitr(args.cluster, RecoveryTarget.parse(args.to), args.target_dir,
                                         port=args.port, store_name=args.store)
        print(f"restored cluster {result.cluster} to {result.target} from base backup {result.backup_id} "
              f"({result.repository}): replayed to LSN {result.reached_lsn}, last commit "
              f"{result.last_replayed_commit or '-'}; RTO {result.rto_seconds:.1f}s (restore {result.restore_seconds:.1f}s, "
              f"recovery {result.recovery_seconds:.1f}s)", file=out)
        print(f"running: PostgreSQL {result.server_version} on 127.0.0.1:{result.port}, data in {result.data_dir} "
              f"(stop it with pg_ctl -D {result.data_dir} stop)", file=out)
        return 0

    if args.command == "copy-physical":
        return _copy_physical(args, protection, out)

    if args.command == "prune-physical":
        return _prune_physical(args, protection, out)

    if args.command == "drill-pitr":
        record = protection.pitr_drill(args.cluster, args.store)
        verdict = "passed" if record.passed else f"FAILED: {record.failure}"
        rto = f"RTO {record.rto_seconds:.1f}s" if record.rto_seconds is not None else "RTO -"
        rpo = f"RPO {record.rpo_seconds:.0f}s" if record.rpo_seconds is not None else "RPO -"
        print(f"PITR drill {record.drill_id} of {args.cluster} from {record.source_store}, base backup "
              f"{record.backup_id or '-'}: to {record.target_time.isoformat() if record.target_time else '-'}, "
              f"reached {record.reached_lsn or '-'}, {rto}, {rpo}: {verdict}", file=out)
        return 0 if record.passed else 1

    if args.command == "status-physical":
        failing = 0
        for cluster in protection.fleet.physical_clusters():
            assessment = protection.assess_cluster(cluster.name)
            failing += not assessment.passed
            print(f"{cluster.name} ({assessment.policy}, physical): "
                  f"{'compliant' if assessment.passed else 'NOT COMPLIANT'}", file=out)
            for finding in assessment.findings:
                print(f"  [{'ok' if finding.passed else 'FAIL'}] {finding.check}: {finding.detail}", file=out)
        return 1 if failing else 0

    raise AssertionError(f"unhandled physical command {args.command}")


def _copy_physical(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    outcomes, failures = protection.copy_physical(args.cluster, args.store, verify=args.verify)
    policy = protection.physical_repository(args.cluster).policy
    allowed = policy.allowed_copy_lag if policy else None
    lagging = [o for o in outcomes if allowed is not None and o.lag.problems(allowed)]
    if args.json:
        json.dump({"copies": [{**asdict(o), "copied": len(o.copied)} for o in outcomes], "failures": failures},
                  out, indent=2, default=str)
        out.write("\n")
    else:
        for o in outcomes:
            lag = o.lag
            print(f"{o.cluster}: copy in {o.destination_store}: {len(o.copied)} object(s) copied "
                  f"({_human_bytes(o.copied_bytes)}, SHA-256 verified), {o.already_present} already there, "
                  f"{o.seconds:.1f}s; lag {lag.lag_seconds:.0f}s ({lag.segments_behind} segment(s), "
                  f"{lag.backups_behind} base backup(s) behind), newest WAL {lag.newest_wal_copy or '-'}, "
                  f"newest base backup {lag.newest_backup_copy or '-'}", file=out)
            if o.skipped_unfinished:
                print(f"  not copied, not finished by barman: {', '.join(o.skipped_unfinished)}", file=out)
            for problem in o.corrupted:
                print(f"  [REPAIRED] {problem}", file=out)
            for problem in (o.lag.problems(allowed) if allowed is not None else []):
                print(f"  [FAIL] {problem}", file=out)
        for store, reason in failures.items():
            print(f"{args.cluster}: copy in {store}: FAILED: {reason}", file=out)
        if not outcomes and not failures:
            print(f"{args.cluster}: the policy names no other object store to copy the repository to", file=out)
    return 1 if failures or lagging else 0


def _prune_physical(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    plans = protection.prune_physical(args.cluster, dry_run=args.dry_run)
    if args.json:
        json.dump([asdict(plan) for plan in plans], out, indent=2, default=str)
        out.write("\n")
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    for plan in plans:
        print(f"{args.cluster} in {plan.store}: window from {plan.window_start.isoformat(timespec='seconds')}; "
              f"keep {', '.join(plan.keep) or 'none'}; {verb} {', '.join(plan.delete) or 'nothing'}"
              + (f" and {len(plan.wal_to_delete)} WAL file(s) before {plan.wal_to_delete[-1][:24]}"
                 if plan.wal_to_delete else "")
              + ("" if args.dry_run else f" ({plan.method})"), file=out)
        if plan.kept_for_drill:
            print(f"  kept {plan.protected}: the latest passed PITR drill restored it from {plan.store}", file=out)
        for note in plan.notes:
            print(f"  {note}", file=out)
    return 0
