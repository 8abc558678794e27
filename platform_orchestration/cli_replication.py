"""platform-dr's replication commands (standby clusters: seeding, status, failover drills, the
runbook's promotion and re-pointing), kept apart from cli.py's logical and cli_physical.py's
physical ones; cli.py registers and dispatches them. They call FleetProtection and only format."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from platform_orchestration.protection import FleetProtection

REPLICATION_COMMANDS = ("seed-standby", "replication-status", "drill-failover", "promote-standby")


def add_parsers(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    seed = commands.add_parser("seed-standby", help="seed a standby on this host from its primary and start it streaming")
    seed.add_argument("cluster", help="a cluster with role standby")
    seed.add_argument("--method", choices=("auto", "basebackup", "repository"),
                      help="basebackup (pg_basebackup from the primary), repository (its physical repository), "
                           "auto (the repository when there is one); default: the fleet's standby.seed")
    seed.add_argument("--directory", type=Path, help="where the server goes (default: the fleet's standby.directory)")

    status = commands.add_parser("replication-status",
                                 help="replication of standbys seen from both sides: state, lag, slot (exit 1 on a problem)")
    status.add_argument("cluster", nargs="?", help="one standby (default: every standby)")
    status.add_argument("--json", action="store_true", help="machine-readable output")

    drill = commands.add_parser("drill-failover",
                                help="failover drill: marker on the primary, promote a throwaway copy of the standby, verify")
    drill.add_argument("cluster")

    promote = commands.add_parser("promote-standby",
                                  help="RUNBOOK: promote a standby to primary (its primary must be down or fenced)")
    promote.add_argument("cluster")
    promote.add_argument("--confirm", required=True, metavar="CLUSTER",
                         help="type the standby's name again: nothing happens otherwise")
    promote.add_argument("--repoint-old-primary", type=Path, metavar="DIR",
                         help="then make the old primary (stopped, its data in DIR/data on this host) a standby of "
                              "the new one: pg_rewind where it applies, a re-seed otherwise")
    promote.add_argument("--repoint-method", choices=("auto", "rewind", "reseed"), default="auto")
    promote.add_argument("--old-primary-port", type=int, help="port for the re-pointed old primary (default: its DSN's)")


def _size(count: int | None) -> str:
    from platform_orchestration.fleet.sizes import format_size  # imported with the command, not with --help

    return "unknown" if count is None else format_size(count)


def run(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    if args.command == "seed-standby":
        result = protection.seed_standby(args.cluster, method=args.method, directory=args.directory)
        source = f"base backup {result.backup_id} of the repository" if result.backup_id else "pg_basebackup"
        print(f"seeded standby {result.standby} ({source}) in {result.seconds:.1f}s: PostgreSQL {result.server_version} "
              f"on port {result.port}, data in {result.data_dir}, slot {result.slot}, streaming; archive fallback "
              f"{'on (restore_command)' if result.archive_fallback else 'off (the primary has no repository)'}", file=out)
        if result.phases:
            print("time: " + ", ".join(f"{name} {seconds:.2f}s" for name, seconds in result.phases), file=out)
        return 0

    if args.command == "replication-status":
        names = [args.cluster] if args.cluster else [c.name for c in protection.fleet.standby_clusters()]
        failing, rows = 0, []
        for name in names:
            status = protection.replication_status(name)
            problems = status.problems(protection.replication_objectives(name))
            bad = [p for found in problems.values() for p in found]
            failing += bool(bad)
            rows.append((status, problems, bad))
        if args.json:
            json.dump([{**asdict(s), "problems": p} for s, p, _ in rows], out, indent=2, default=str)
            out.write("\n")
        else:
            for status, _problems, bad in rows:
                print(f"{status.standby} <- {status.primary}: {'ok' if not bad else 'PROBLEM'}", file=out)
                lag_s = "unknown" if status.lag_seconds is None else f"{status.lag_seconds:.1f}s"
                print(f"  state {status.state}, walreceiver {status.receiver_status or '-'}, lag {_size(status.lag_bytes)} "
                      f"/ {lag_s}; primary at {status.primary_lsn or '-'}, standby replayed {status.standby_replay_lsn or '-'}",
                      file=out)
                print(f"  slot {status.slot}: {'active' if status.slot_active else 'inactive' if status.slot_exists else 'missing'}"
                      f", keeps {_size(status.slot_kept_bytes)}", file=out)
                for problem in bad:
                    print(f"  [FAIL] {problem}", file=out)
        return 1 if failing else 0

    if args.command == "drill-failover":
        record = protection.failover_drill(args.cluster)
        verdict = "passed" if record.passed else f"FAILED: {record.failure}"
        rto = f"RTO {record.rto_seconds:.2f}s" if record.rto_seconds is not None else "RTO -"
        rpo = f"RPO {record.rpo_seconds:.2f}s" if record.rpo_seconds is not None else "RPO -"
        print(f"failover drill {record.drill_id} of {record.standby} (primary {record.primary}): marker at "
              f"{record.marker_lsn or '-'} {'on' if record.marker_on_copy else 'NOT on'} the promoted copy, {rto} "
              f"(target {record.rto_target_seconds:.0f}s), {rpo} (target {record.rpo_target_seconds:.0f}s), copy "
              f"{record.copy_seconds or 0:.1f}s: {verdict}", file=out)
        return 0 if record.passed else 1

    if args.command == "promote-standby":
        result = protection.promote_standby(args.cluster, confirm=args.confirm)
        print(f"promoted {result.standby}: timeline {result.timeline}, first write accepted {result.rto_seconds:.2f}s "
              f"after the promote call (replayed up to {result.replayed_lsn}). Now edit the fleet file: "
              f"{result.standby} is the primary.", file=out)
        if args.repoint_old_primary:
            repointed = protection.repoint_old_primary(args.cluster, args.repoint_old_primary,
                                                       port=args.old_primary_port, method=args.repoint_method)
            print(f"re-pointed {repointed.cluster} as a standby of {args.cluster} by {repointed.method} "
                  f"({repointed.reason}) in {repointed.seconds:.1f}s: streaming on port {repointed.port}"
                  + (f"; its old data directory is kept in {repointed.kept_aside}" if repointed.kept_aside else ""),
                  file=out)
        return 0

    raise AssertionError(f"unhandled replication command {args.command}")
