"""platform-dr: the break-glass CLI. Works from the fleet file and the stores alone.

In a disaster Dagster may be down too, so this needs no Dagster instance, no
scheduler and no database of its own: it reads the fleet file, talks to PostgreSQL
and to the stores, and shares every line of backup/restore logic with the Dagster layer.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, TextIO

from platform_orchestration.errors import EXIT_BUG, EXIT_INVALID, PlatformError, one_line
from platform_orchestration import cli_physical, cli_replication

if TYPE_CHECKING:
    from platform_orchestration.protection import FleetProtection


def human_bytes(count: float) -> str:
    """
    >>> human_bytes(1536)
    '1.5 KiB'
    >>> human_bytes(3 * 1024**3)
    '3.0 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


class TerminalProgress:
    """Redraws one status line (stage, bytes, rate) on a terminal at most 5 times a second;
    silent when the output is not a terminal, so logs and pipes stay clean."""

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self._out = out
        self._enabled = out.isatty()
        self._stage = ""
        self._stage_started = time.monotonic()
        self._last_draw = 0.0

    def __call__(self, stage: str, done_bytes: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if stage != self._stage:
            self._stage, self._stage_started = stage, now
        elif now - self._last_draw < 0.2:
            return
        self._last_draw = now
        elapsed = max(now - self._stage_started, 1e-6)
        self._out.write(f"\r\x1b[K{stage:<8} {human_bytes(done_bytes):>10}  "
                        f"{human_bytes(done_bytes / elapsed)}/s  {elapsed:5.1f}s")
        self._out.flush()

    def finish(self) -> None:
        if self._enabled and self._stage:
            self._out.write("\r\x1b[K")
            self._out.flush()


def _duration(text: str) -> timedelta:
    from platform_orchestration.fleet.durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lock_options(command: argparse.ArgumentParser, *, override: bool) -> None:
    """One backup, prune or rewrap of a database at a time (a lock on the database itself)."""
    command.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                         help="wait up to SECONDS for another backup, prune or rewrap of the database "
                              "to finish (default: give up at once, exit code 4)")
    if override:
        command.add_argument("--no-lock", action="store_true",
                             help="do not take the database's lock (when the database is down and you know "
                                  "no backup, prune or rewrap of it is running)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="platform-dr",
        description="Break-glass backups and restores of the PostgreSQL fleet, without Dagster.",
    )
    parser.add_argument("--fleet", help="fleet file (default: $PLATFORM_FLEET or deploy/fleet/demo.yaml)")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("validate", help="check the fleet file")

    backup = commands.add_parser("backup", help="take a backup now into every required store")
    backup.add_argument("database")
    _lock_options(backup, override=False)

    listing = commands.add_parser("list", help="backups across all stores, one row per copy")
    listing.add_argument("database", nargs="?")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.add_argument("--physical", action="store_true", help="base backups of physical clusters (DATABASE: a cluster)")

    verify = commands.add_parser("verify", help="re-read a stored backup and check it end to end")
    verify.add_argument("database")
    verify.add_argument("--backup", help="backup id (default: the latest)")
    verify.add_argument("--store", help="store to read from (default: the first holding it)")

    restore = commands.add_parser("restore", help="restore a backup into a PostgreSQL database")
    restore.add_argument("database")
    restore.add_argument("--backup", help="backup id (default: the latest)")
    restore.add_argument("--store", help="store to read from (default: the first holding it)")
    restore.add_argument("--target-dsn", required=True,
                         help="libpq DSN of the database to restore into (password via PGPASSWORD)")
    restore.add_argument("--replace", action="store_true",
                         help="drop and recreate the target database if it is not empty")
    restore.add_argument("--jobs", type=int, default=2, help="parallel pg_restore jobs (default 2)")
    restore.add_argument("--restore-as", metavar="ROLE",
                         help="group role that will own the restored database and objects (SET ROLE)")
    restore.add_argument("--with-globals", action="store_true",
                         help="first create the backup's roles, memberships and role settings on the target "
                              "server (existing roles are kept as they are; no passwords are set)")

    copies = commands.add_parser("copies", help="copy the latest backup into stores missing it")
    copies.add_argument("database")

    drill = commands.add_parser("drill", help="restore the latest backup into a throwaway cluster")
    drill.add_argument("database")
    drill.add_argument("--store", help="store to drill (default: rotate across the policy's stores)")

    prune = commands.add_parser("prune", help="delete backups the retention policy no longer keeps")
    prune.add_argument("database")
    prune.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    prune.add_argument("--sweep-older-than", metavar="DURATION", type=_duration,
                       help="remove leftovers of killed writes idle for longer than this (default: the "
                            "policy's retention.sweep_older_than, 1d; at least 1h)")
    _lock_options(prune, override=True)

    commands.add_parser("status", help="compliance of every database (RPO, copies, drills, encryption)")

    exporter = commands.add_parser("exporter", help="serve Prometheus metrics read from the stores")
    exporter.add_argument("--port", type=int, default=9187, help="port to listen on (default 9187)")
    exporter.add_argument("--address", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    exporter.add_argument("--interval", type=float, default=30.0,
                          help="read the stores at most every this many seconds (default 30)")

    report = commands.add_parser("report", help="write the recoverability report (HTML + JSON) to the stores")
    report.add_argument("--output", metavar="DIR", help="also write report.html and report.json into DIR")

    rewrap = commands.add_parser("rewrap", help="rewrap backup data keys under the newest key version")
    rewrap.add_argument("database", nargs="?", help="one database (default: all)")
    _lock_options(rewrap, override=True)
    cli_physical.add_parsers(commands)
    cli_replication.add_parsers(commands)
    _housekeeping_parsers(commands)
    return parser


def _housekeeping_parsers(commands) -> None:  # noqa: ANN001 - argparse's private subparsers type
    cleanup = commands.add_parser(
        "cleanup", help="stop the throwaway servers and remove the work files of killed drills and restores on "
                        "this machine, and sweep the leftovers of killed writes from every store")
    cleanup.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
    commands.add_parser("rotate-key", help="add a new version of the key-encryption key (the local key file, or "
                                           "Vault transit if the token may); run rewrap after it")


def _cleanup_command(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    report = protection.cleanup(dry_run=args.dry_run)
    print(f"cleanup{' (dry run, nothing removed)' if report.dry_run else ''}:", file=out)
    for line in report.lines():
        print(f"  {line}", file=out)
    for failure in report.failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def _rotate_key_command(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    service, version = protection.rotate_key()
    print(f"{service}: new data keys are wrapped under version {version} from now on; older versions "
          "still unwrap. Rewrap the stored backups under it: platform-dr rewrap", file=out)
    return 0


_HOUSEKEEPING = {"cleanup": _cleanup_command, "rotate-key": _rotate_key_command}


def _imported() -> None:
    """What a command imported lives as long as the process: frozen, the garbage collector
    never walks it again, nor does the interpreter at exit (tens of ms with psycopg loaded).
    The collector, off while the command imported (see main), runs again from here."""
    gc.freeze()
    gc.enable()


def _run(args: argparse.Namespace, out: TextIO) -> int:
    # The core is imported here, per command, not at the top of this module: --help needs none
    # of it, validate only the fleet model, and FleetProtection brings psycopg, zstandard, Tink
    # and every backup module (a few hundred ms that a break-glass command pays only if it uses them).
    from platform_orchestration.fleet import fleet_path_from_env, load_fleet

    _imported()
    fleet_path = args.fleet or str(fleet_path_from_env())
    fleet = load_fleet(fleet_path)
    if args.command == "validate":
        print(f"{fleet_path}: ok ({len(fleet.clusters)} clusters, {len(fleet.stores)} stores, "
              f"{len(fleet.databases)} databases, {len(fleet.policies)} policies)", file=out)
        return 0

    from platform_orchestration.protection import FleetProtection

    _imported()
    # Secrets and data keys as the environment says (Vault when VAULT_ADDR is set); dynamic
    # database logins taken by this command are revoked when it ends.
    with FleetProtection.from_environment(fleet) as protection:
        return _command(args, fleet_path, fleet, protection, out)


def _command(args: argparse.Namespace, fleet_path: str, fleet, protection: FleetProtection,  # noqa: ANN001
             out: TextIO) -> int:
    from platform_orchestration.backups.catalog import describe_grouped  # imported with protection

    progress = TerminalProgress()
    if args.command in _HOUSEKEEPING:
        return _HOUSEKEEPING[args.command](args, protection, out)

    if args.command in cli_physical.PHYSICAL_COMMANDS:
        return cli_physical.run(args, protection, out)
    if args.command in cli_replication.REPLICATION_COMMANDS:
        return cli_replication.run(args, protection, out)
    if args.command == "list" and args.physical:
        return cli_physical.list_physical(protection, args.database, args.json, out)

    if args.command == "backup":
        outcome = protection.backup(args.database, progress, lock_wait=args.wait)
        progress.finish()
        manifest = outcome.manifest
        rate = manifest.dump.raw_bytes / max(outcome.seconds, 1e-6)
        print(manifest.backup_id, file=out)
        print(f"{args.database}: {human_bytes(manifest.dump.raw_bytes)} dumped, "
              f"{human_bytes(manifest.dump.stored_bytes)} stored, {human_bytes(rate)}/s, "
              f"in {', '.join(outcome.stored_in)}", file=sys.stderr)
        for store, reason in outcome.failed_stores.items():
            print(f"warning: no copy in {store}: {reason}", file=sys.stderr)
        return 0 if not outcome.failed_stores else 3

    if args.command == "list":
        listing = protection.list_backups(args.database)
        rows = [
            {"id": b.backup_id, "database": b.manifest.database, "store": b.store.name,
             "created_at": b.manifest.snapshot_worker_time.isoformat(), "size": b.manifest.dump.stored_bytes,
             "raw_size": b.manifest.dump.raw_bytes, "lsn": b.manifest.lsn,
             "server": b.manifest.server.version}
            for b in listing.backups
        ]
        for broken in describe_grouped(listing.unreadable):
            print(f"warning: not listed: {broken}", file=sys.stderr)
        rows.sort(key=lambda r: (r["database"], r["id"], r["store"]))
        if args.json:
            json.dump(rows, out, indent=2)
            out.write("\n")
        else:
            print(f"{'ID':<28} {'DATABASE':<16} {'STORE':<16} {'CREATED_AT':<26} {'SIZE':>10}", file=out)
            for r in rows:
                print(f"{r['id']:<28} {r['database']:<16} {r['store']:<16} "
                      f"{r['created_at'][:19] + 'Z':<26} {human_bytes(r['size']):>10}", file=out)
        # What could be listed is shown; a store that could not be is a failure all the same.
        return 1 if any(broken.unreachable for broken in listing.unreadable) else 0

    if args.command == "verify":
        choice = protection.verify(args.database, args.backup, args.store, progress)
        progress.finish()
        stored = choice.stored
        for broken in describe_grouped(choice.unreadable):
            print(f"warning: {broken}", file=sys.stderr)
        print(f"ok: backup {stored.backup_id} of {args.database} in store {stored.store.name}: "
              f"{human_bytes(stored.manifest.dump.stored_bytes)}, sha256 {stored.manifest.dump.sha256[:16]}..., "
              "archive intact", file=out)
        return 0

    if args.command == "restore":
        from platform_orchestration.protection import restore_target

        target = restore_target(args.target_dsn, os.environ.get("PGPASSWORD"))
        result = protection.restore(args.database, target, backup_id=args.backup, store_name=args.store,
                                    replace=args.replace, jobs=args.jobs, progress=progress,
                                    restore_as=args.restore_as, with_globals=args.with_globals)
        progress.finish()
        for broken in result.passed_over:
            print(f"warning: passed over newer {broken}", file=sys.stderr)
        if result.globals is not None:
            print(result.globals.summary(), file=sys.stderr if result.globals.failures else out)
        print(f"restored backup {result.backup_id} of {result.database} from {result.store} into "
              f"{result.target} in {result.recovery_seconds:.1f}s; verified {result.tables_verified} "
              f"tables, {result.rows_verified} rows", file=out)
        return 0

    if args.command == "copies":
        report = protection.ensure_copies(args.database, progress)
        progress.finish()
        print(f"backup {report.backup_id}: present in {', '.join(report.already_present) or '-'}; "
              f"copied to {', '.join(report.copied) or '-'}", file=out)
        for store, reason in report.failed.items():
            print(f"error: {store}: {reason}", file=sys.stderr)
        return 1 if report.failed else 0

    if args.command == "drill":
        record = protection.drill(args.database, args.store, progress)
        progress.finish()
        for broken in record.passed_over:
            print(f"warning: passed over newer {broken}", file=sys.stderr)
        verdict = "passed" if record.passed else f"FAILED: {record.failure}"
        rto = f"RTO {record.rto_seconds:.1f}s" if record.rto_seconds is not None else "RTO -"
        rpo = f"RPO {record.rpo_seconds:.0f}s" if record.rpo_seconds is not None else "RPO -"
        print(f"drill {record.drill_id} of {args.database} from {record.source_store}, backup "
              f"{record.backup_id}: {rto}, {rpo}: {verdict}", file=out)
        return 0 if record.passed else 1

    if args.command == "prune":
        report = protection.prune(args.database, dry_run=args.dry_run, sweep_older_than=args.sweep_older_than,
                                  lock=not args.no_lock, lock_wait=args.wait)
        retention = report.plan.policy
        print(f"prune {args.database}{' (dry run, nothing deleted)' if report.dry_run else ''}: "
              f"keep_last {retention.keep_last}, daily {retention.daily}, weekly {retention.weekly}, "
              f"monthly {retention.monthly}", file=out)
        for line in report.lines():
            print(f"  {line}", file=out)
        print(f"{'would delete' if report.dry_run else 'deleted'} {report.deleted_count}, "
              f"kept {report.kept_count}, locked {report.locked_count}, "
              f"orphan dumps {'to remove' if report.dry_run else 'removed'} {report.orphans_removed_count} "
              "(copies, across stores)", file=out)
        print(f"leftovers of killed writes {'to remove' if report.dry_run else 'removed'}: "
              f"{report.uploads_discarded_count} incomplete upload(s) ({human_bytes(report.discarded_bytes)}), "
              f"{report.directories_removed_count} empty directory(ies)", file=out)
        print(f"drill records {'to delete' if report.dry_run else 'deleted'}: {report.drills_deleted_count}, "
              f"kept {report.drills_kept_count} (copies, across stores)", file=out)
        for failure in report.failures:
            print(f"error: {failure}", file=sys.stderr)
        return 1 if report.failures else 0

    if args.command == "status":
        failing = 0
        for assessment in protection.assess_fleet():
            failing += not assessment.passed
            print(f"{assessment.database} ({assessment.policy}): "
                  f"{'compliant' if assessment.passed else 'NOT COMPLIANT'}", file=out)
            for finding in assessment.findings:
                print(f"  [{'ok' if finding.passed else 'FAIL'}] {finding.check}: {finding.detail}", file=out)
            for broken in describe_grouped(assessment.unreadable):
                print(f"  [unreadable] {broken}", file=out)
        return 1 if failing else 0

    if args.command == "rewrap":
        report = protection.rewrap_all(args.database, lock=not args.no_lock, lock_wait=args.wait)
        print(report.summary(), file=out)
        return 0 if report.ok else 1

    if args.command == "exporter":
        return _exporter_command(args, protection, out)

    if args.command == "report":
        return _report_command(args, protection, out)

    raise AssertionError(f"unhandled command {args.command}")


def _exporter_command(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    from platform_orchestration.observability.exporter import serve_exporter

    serve_exporter(protection.recoverability, port=args.port, address=args.address,
                   min_interval=args.interval, out=out)
    return 0


def _report_command(args: argparse.Namespace, protection: FleetProtection, out: TextIO) -> int:
    from pathlib import Path

    evidence = protection.record_compliance()
    report = protection.record_report(evidence)
    print(f"compliance {evidence.evidence_id}: {evidence.compliant} of {len(evidence.assessments)} databases "
          f"compliant; report {report.html_key} and {report.json_key} in {', '.join(report.stored_in)}", file=out)
    for location in report.locations:
        print(f"  {location}", file=out)
    for store, reason in report.failed_stores.items():
        print(f"warning: report not written to {store}: {reason}", file=sys.stderr)
    if args.output:
        directory = Path(args.output)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "report.html").write_text(report.html)
        (directory / "report.json").write_text(report.json_text)
        print(f"also written to {directory / 'report.html'} and {directory / 'report.json'}", file=out)
    return 0 if evidence.compliant == len(evidence.assessments) else 1


def _what(args: argparse.Namespace) -> str:
    """The command and the database it was about, for the one-line error."""
    database = getattr(args, "database", None) or getattr(args, "cluster", None)
    return f"{args.command} {database}" if database else args.command


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = _parser().parse_args(argv)
    # Off while the command imports its modules (pydantic, psycopg, Tink...): collections then
    # find nothing to free and cost 10-15 ms of every command's start; `_imported` turns it on,
    # and it is on when main returns, however the command ended.
    gc.disable()
    try:
        return _main(args, out)
    finally:
        gc.enable()


def _main(args: argparse.Namespace, out: TextIO) -> int:
    from platform_orchestration.fleet import FleetError  # after --help, which needs no fleet (see _run)

    try:
        return _run(args, out)
    except FleetError as exc:
        # One line per problem in the file, all of them at once.
        print(f"platform-dr: invalid fleet file:\n{exc}", file=sys.stderr)
        return EXIT_INVALID
    except PlatformError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"platform-dr {_what(args)}: error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\nplatform-dr: interrupted; nothing partial was left visible", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"platform-dr {_what(args)}: unexpected error (a bug, please report it): "
              f"{type(exc).__name__}: {one_line(exc)}; run with --debug for the traceback", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
