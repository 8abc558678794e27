"""`make demo`: the whole protection flow on the embedded default, with figures.

Starts (or reuses) two local PostgreSQL clusters standing for AWS and Azure, plus one
for Dagster's own storage, seeds sample databases, runs the `protection_flow` job for
every database through a real Dagster instance (PostgreSQL-backed, like production),
and prints what happened: backups, sizes, throughput, copies per store, drills with
RTO/RPO, and the asset checks' verdicts. The clusters keep running for `make ui`;
`make demo-stop` stops them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from platform_orchestration.cli import human_bytes
from platform_orchestration.errors import PlatformError
from platform_orchestration.postgres.cluster import LocalCluster, local_cluster

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = REPOSITORY_ROOT / "var" / "demo"
DEMO_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml"


@dataclass(frozen=True)
class DemoServer:
    name: str
    port_env: str
    default_port: int
    major: int
    databases: tuple[str, ...]

    @property
    def port(self) -> int:
        return int(os.environ.get(self.port_env) or self.default_port)

    def cluster(self) -> LocalCluster:
        return local_cluster(DEMO_DIR / "clusters" / self.name, self.port, min_major=self.major)


# Two majors on purpose: each backup must pick a pg_dump at least as new as its server,
# and each drill a server at least as new as the backup's.
SERVERS = (
    DemoServer("pg-aws-eu", "DEMO_PG_AWS_PORT", 55432, 16, ("orders", "inventory")),
    DemoServer("pg-azure-eu", "DEMO_PG_AZURE_PORT", 55433, 18, ("customers",)),
    DemoServer("dagster-storage", "DEMO_PG_DAGSTER_PORT", 55434, 16, ("dagster",)),
)

SEED_SQL = {
    "orders": """
        CREATE TABLE customers_ref (id bigint PRIMARY KEY, email text NOT NULL UNIQUE);
        INSERT INTO customers_ref SELECT g, 'customer' || g || '@example.com' FROM generate_series(1, 20000) g;
        CREATE TABLE orders (
            id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers_ref(id),
            placed_at timestamptz NOT NULL, status text NOT NULL, total numeric(12,2) NOT NULL,
            details jsonb);
        INSERT INTO orders (customer_id, placed_at, status, total, details)
        SELECT 1 + g % 20000, now() - (g || ' minutes')::interval,
               (ARRAY['placed','paid','shipped','delivered'])[1 + g % 4], (g % 50000) / 100.0,
               jsonb_build_object('channel', (ARRAY['web','app','store'])[1 + g % 3], 'items', g % 7 + 1)
        FROM generate_series(1, 300000) g;
        CREATE INDEX orders_customer ON orders (customer_id);
        CREATE TABLE "order items" (order_id bigint REFERENCES orders(id), sku text, qty int);
        INSERT INTO "order items" SELECT 1 + g % 300000, 'SKU-' || (g % 5000), 1 + g % 5
        FROM generate_series(1, 400000) g;
    """,
    "inventory": """
        CREATE SCHEMA warehouse;
        CREATE TABLE warehouse.stock (sku text PRIMARY KEY, site text, on_hand int, updated_at timestamptz);
        INSERT INTO warehouse.stock SELECT 'SKU-' || g, (ARRAY['lyon','porto','gdansk'])[1 + g % 3],
               g % 900, now() - (g || ' seconds')::interval FROM generate_series(0, 49999) g;
        CREATE VIEW warehouse.low_stock AS SELECT * FROM warehouse.stock WHERE on_hand < 10;
    """,
    "customers": """
        CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text,
                                country char(2), created_at timestamptz DEFAULT now(), avatar bytea);
        INSERT INTO customers (name, country, avatar)
        SELECT 'Client ' || g || ' ' || chr(233) || chr(252), (ARRAY['FR','DE','PT','PL','CA'])[1 + g % 5],
               decode(md5(g::text), 'hex') FROM generate_series(1, 100000) g;
    """,
}


class DemoPortTaken(PlatformError):
    """A demo server's port answers, but not for this checkout's server."""


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_servers(out=sys.stdout) -> None:  # noqa: ANN001
    for server in SERVERS:
        cluster = server.cluster()
        # Another checkout's demo (or any server) on the port: say so, rather than pg_ctl's log.
        if not cluster.is_running() and _answers(server.port):
            raise DemoPortTaken(
                f"demo server {server.name}: port {server.port} is taken by another process (another checkout's "
                f"`make demo`? run `make demo-stop` there), or move this demo with {server.port_env}=PORT")
        fresh = not cluster.is_initialised()
        cluster.ensure_running()
        print(f"  {server.name:<16} PostgreSQL {cluster.install.version:<6} 127.0.0.1:{server.port}"
              f"{'  (new)' if fresh else ''}", file=out)
        admin = cluster.connection("postgres")
        with psycopg.connect(admin.dsn, autocommit=True) as conn:
            existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
            for database in server.databases:
                if database in existing:
                    continue
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
                if database in SEED_SQL:
                    with psycopg.connect(cluster.connection(database).dsn, autocommit=True) as db:
                        db.execute(SEED_SQL[database])
                        db.execute("ANALYZE")


def stop_servers() -> None:
    for server in SERVERS:
        cluster = server.cluster()
        if cluster.is_initialised():
            cluster.stop()
            print(f"  stopped {server.name}")


def prepare_dagster_home() -> Path:
    """A Dagster instance whose run and event storage is PostgreSQL, as in production."""
    home = DEMO_DIR / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    dagster_port = next(s.port for s in SERVERS if s.name == "dagster-storage")
    (home / "dagster.yaml").write_text(f"""\
# Written by `make demo`: the demo instance keeps its runs and events in PostgreSQL.
storage:
  postgres:
    postgres_db:
      hostname: 127.0.0.1
      port: {dagster_port}
      username: postgres
      db_name: dagster
      scheme: postgresql+psycopg2
telemetry:
  enabled: false
""")
    return home


# The report below says what happened; Dagster's step-by-step console log would bury it.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def run_protection_flow(fleet_file: Path = DEMO_FLEET, out=sys.stdout) -> bool:  # noqa: ANN001, C901
    import dagster as dg

    from platform_orchestration.definitions import build_definitions

    definitions = build_definitions(fleet_file)
    job = definitions.resolve_job_def("protection_flow")
    all_ok = True
    with dg.DagsterInstance.get() as instance:
        fleet = definitions.resources["fleet"].load()  # type: ignore[union-attr]
        for database in fleet.databases:
            started = time.monotonic()
            result = job.execute_in_process(partition_key=database.name, instance=instance,
                                            raise_on_error=False, run_config=_QUIET)
            elapsed = time.monotonic() - started
            materialized = {
                event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
                for event in result.get_asset_materialization_events()
            }
            print(f"\n{database.name}  (cluster {database.cluster}, policy {database.policy}) "
                  f"run {result.run_id[:8]} {'succeeded' if result.success else 'FAILED'} in {elapsed:.1f}s",
                  file=out)
            backup = materialized.get("backups")
            if backup:
                m = {k: v.value for k, v in backup.items()}
                print(f"  backup   {m['backup_id']}  {human_bytes(m['raw_bytes'])} dumped -> "
                      f"{human_bytes(m['stored_bytes'])} stored (x{m['compression_ratio']}), "
                      f"{m['throughput_mib_s']} MiB/s, {m['tables']} tables / {m['rows']} rows, "
                      f"{m['dump_tool']}", file=out)
                print(f"  stores   written in one pass to: {m['stored_in']}", file=out)
                print(f"  crypto   {m['encryption']}", file=out)
            copies = materialized.get("backup_copies")
            if copies:
                m = {k: v.value for k, v in copies.items()}
                print(f"  copies   {m['verified_copies']} verified (already present: {m['already_present']}; "
                      f"copied now: {m['copied_now']})", file=out)
            drill = materialized.get("restore_drills")
            if drill:
                m = {k: v.value for k, v in drill.items()}
                print(f"  drill    from {m['source_store']}: RTO {m['rto_seconds']}s "
                      f"(target {m['rto_target_seconds']:.0f}s), RPO {m['rpo_seconds']}s, "
                      f"{m['rows_verified']} rows verified", file=out)
                if m.get("passed_over", "none") != "none":
                    print(f"  warning  the drill passed over newer {m['passed_over']}", file=out)
            all_ok &= _print_checks_and_errors(result, out) and result.success
        report = materialized.get("compliance_report") if fleet.databases else None
        if report:
            m = {k: v.value for k, v in report.items()}
            print(f"\ncompliance: {m['compliant_databases']} compliant, {m['non_compliant_databases']} not; "
                  f"evidence {m['evidence_key']} in {m['evidence_stores']}", file=out)
            if "report" in m:
                print(f"report: {m['report']}", file=out)
    return all_ok


def _metadata(event) -> dict:  # noqa: ANN001 - a DagsterEvent of a materialization
    return {k: v.value for k, v in event.step_materialization_data.materialization.metadata.items()}


def _print_checks_and_errors(result, out) -> bool:  # noqa: ANN001 - an ExecuteInProcessResult, a text stream
    """Each check's verdict and each failed step's error, one line each; whether every check passed."""
    passed = True
    for evaluation in result.get_asset_check_evaluations():
        verdict = "pass" if evaluation.passed else "FAIL"
        print(f"  check    [{verdict}] {evaluation.check_name}: {evaluation.description or ''}", file=out)
        passed &= evaluation.passed
    for event in result.all_events:
        if event.is_step_failure:
            print(f"  error    {event.step_key}: {event.step_failure_data.error.message.strip()}", file=out)
    return passed


def run_drill_rounds(fleet_file: Path, rounds: int, out=sys.stdout) -> bool:  # noqa: ANN001
    """More drills per database: each restores from the next store, so every cloud is proven."""
    import dagster as dg

    from platform_orchestration.definitions import build_definitions

    definitions = build_definitions(fleet_file)
    job = definitions.resolve_job_def("run_restore_drills")
    ok = True
    with dg.DagsterInstance.get() as instance:
        fleet = definitions.resources["fleet"].load()  # type: ignore[union-attr]
        for round_number in range(rounds):
            for database in fleet.databases:
                result = job.execute_in_process(partition_key=database.name, instance=instance,
                                                raise_on_error=False, run_config=_QUIET)
                ok &= result.success
                for event in result.get_asset_materialization_events():
                    m = _metadata(event)
                    print(f"  drill {round_number + 2}  {database.name:<10} from {m['source_store']:<11} "
                          f"RTO {m['rto_seconds']}s, RPO {m['rpo_seconds']}s, {m['rows_verified']} rows verified",
                          file=out)
                if not result.success:
                    print(f"  drill {round_number + 2}  {database.name:<10} FAILED (see the run in the UI)", file=out)
    return ok


DEMO_CLOUDS_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo-clouds.yaml"
DEMO_REPLICA_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo-replica.yaml"
DEMO_PHYSICAL_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo-physical.yaml"


def run_physical_drill(out=sys.stdout) -> bool:  # noqa: ANN001
    """Physical protection of one cluster: WAL archived by barman-cloud into the demo's S3 (a
    moto server started for it), a base backup and a PITR drill, both as Dagster runs. The
    cluster and the S3 server live for this part only (the repository is in moto's memory)."""
    import boto3
    import dagster as dg

    from platform_orchestration import emulators
    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.physical.settings import apply_archiving
    from platform_orchestration.physical.tools import barman_tools
    from platform_orchestration.postgres import ephemeral_cluster
    from platform_orchestration.postgres.cluster import free_port

    started = time.monotonic()
    os.environ.setdefault("DEMO_AWS_ACCESS_KEY_ID", "demo-access-key")
    os.environ.setdefault("DEMO_AWS_SECRET_ACCESS_KEY", "demo-secret-key")
    s3 = emulators.moto_server(int(os.environ.setdefault("DEMO_PHYSICAL_S3_PORT", str(free_port()))))
    s3.start(DEMO_DIR / "logs")
    try:
        boto3.client("s3", endpoint_url=s3.endpoint, region_name="eu-west-1",
                     aws_access_key_id=os.environ["DEMO_AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["DEMO_AWS_SECRET_ACCESS_KEY"]).create_bucket(
            Bucket="demo-pg-physical", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        with ephemeral_cluster(16) as cluster:
            os.environ["DEMO_PG_PHYSICAL_PORT"] = str(cluster.port)
            with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
                conn.execute("CREATE TABLE payments (id bigint PRIMARY KEY, amount numeric(12,2), paid_at timestamptz)")
                conn.execute("INSERT INTO payments SELECT g, (g % 90000) / 100.0, now() - g * interval '1 second' "
                             "FROM generate_series(1, 100000) g")
            definitions = build_definitions(DEMO_PHYSICAL_FLEET)
            with definitions.resources["fleet"].protection() as protection:  # type: ignore[union-attr]
                repository = protection.physical_repository("pg-physical")
            apply_archiving(cluster, barman_tools(), repository)
            print(f"  pg-physical      PostgreSQL {cluster.install.version:<6} 127.0.0.1:{cluster.port}, archiving "
                  f"WAL (barman-cloud-wal-archive) into {repository.describe()}", file=out)
            ok = True
            with dg.DagsterInstance.get() as instance:
                for job_name in ("take_base_backups", "run_pitr_drills"):
                    result = definitions.resolve_job_def(job_name).execute_in_process(
                        partition_key="pg-physical", instance=instance, raise_on_error=False, run_config=_QUIET)
                    ok &= result.success
                    for event in result.get_asset_materialization_events():
                        m = _metadata(event)
                        asset = event.asset_key.to_user_string()
                        if asset == "physical_base_backups":
                            print(f"  base     {m['backup_id']}  LSN {m['begin_lsn']}-{m['end_lsn']}, "
                                  f"{human_bytes(m['cluster_bytes'])} cluster -> {human_bytes(m['stored_bytes'])} "
                                  f"stored, {m['seconds']}s, {m['throughput_mib_s']} MiB/s", file=out)
                        elif asset == "pitr_drills":
                            print(f"  pitr     drill {m['drill_id']} from {m['source_store']}: to {m['target_time']}, "
                                  f"reached LSN {m['reached_lsn']}, marker back and nothing after it; "
                                  f"RTO {m['rto_seconds']}s (target {m['rto_target_seconds']:.0f}s), "
                                  f"RPO {m['rpo_seconds']}s", file=out)
                    _print_checks_and_errors(result, out)
    finally:
        s3.stop()
    print(f"  ({time.monotonic() - started:.0f}s for the physical part; pitr_window_covered fails until the "
          "repository is as old as the policy's pitr_window: honest on a repository minutes old)", file=out)
    return ok




def run_failover_drill(out=sys.stdout) -> bool:  # noqa: ANN001
    """A standby of a throwaway primary (both local, on free ports), seeded with pg_basebackup
    through a slot, replication observed from both sides, and a failover drill on a throwaway
    copy of the standby: the jobs of jobs/replication.yaml as Dagster runs. Both servers and the
    standby's directory are stopped and removed after it."""
    import shutil
    import secrets as token

    import dagster as dg

    from platform_orchestration.definitions import build_definitions
    from platform_orchestration.postgres import ephemeral_cluster
    from platform_orchestration.postgres.cluster import free_port

    started = time.monotonic()
    standby_dir = DEMO_DIR / "replica" / "standby"
    standby_port = free_port()
    os.environ["DEMO_PG_STANDBY_PORT"] = str(standby_port)
    os.environ["DEMO_REPLICATION_PASSWORD"] = password = token.token_hex(16)
    ok = True
    with ephemeral_cluster(16) as primary:
        os.environ["DEMO_PG_REPLICA_PRIMARY_PORT"] = str(primary.port)
        standby = local_cluster(standby_dir, standby_port, primary.install.major)
        standby = LocalCluster(standby.base_dir, standby_port, standby.install)
        try:
            with psycopg.connect(primary.connection().dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE replicator REPLICATION LOGIN PASSWORD {}").format(sql.Literal(password)))
                conn.execute("CREATE TABLE shipments (id bigint PRIMARY KEY, sent_at timestamptz)")
                conn.execute("INSERT INTO shipments SELECT g, now() - g * interval '1 minute' "
                             "FROM generate_series(1, 50000) g")
            hba = primary.data_dir / "pg_hba.conf"
            hba.write_text("host replication replicator 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
            with psycopg.connect(primary.connection().dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_reload_conf()")
            definitions = build_definitions(DEMO_REPLICA_FLEET)
            print(f"  pg-replica-primary PostgreSQL {primary.install.version} 127.0.0.1:{primary.port} (aws), "
                  f"standby pg-replica-standby 127.0.0.1:{standby_port} (azure)", file=out)
            seed = {**_QUIET, "ops": {"standby_clusters": {"config": {"seed": True}}}}
            with dg.DagsterInstance.get() as instance:
                for job_name, config in (("seed_standby", seed), ("observe_replication", _QUIET),
                                         ("run_failover_drills", _QUIET)):
                    result = definitions.resolve_job_def(job_name).execute_in_process(
                        partition_key="pg-replica-standby", instance=instance, raise_on_error=False,
                        run_config=config)
                    ok &= result.success
                    for event in result.get_asset_materialization_events():
                        m = _metadata(event)
                        asset = event.asset_key.to_user_string()
                        if asset == "standby_clusters" and "seed_seconds" in m:
                            print(f"  seed     pg_basebackup through slot {m.get('slot')}: {m['seed_seconds']}s, "
                                  "streaming", file=out)
                        elif asset == "replication_lag":
                            print(f"  lag      {m['state']}: {m['lag_bytes']} bytes, {m['lag_seconds']}s behind; "
                                  f"slot keeps {m['slot_kept']}", file=out)
                        elif asset == "failover_drills":
                            print(f"  failover drill {m['drill_id']}: marker at {m['marker_lsn']} on the promoted "
                                  f"copy: {m['marker_on_copy']}; RTO {m['rto_seconds']}s (target "
                                  f"{m['rto_target_seconds']:.0f}s), RPO {m['rpo_seconds']}s (target "
                                  f"{m['rpo_target_seconds']:.0f}s), copy {m['copy_seconds']}s", file=out)
                    _print_checks_and_errors(result, out)
        finally:
            try:
                standby.stop()
            finally:
                shutil.rmtree(standby.base_dir, ignore_errors=True)
                shutil.rmtree(standby_dir.parent, ignore_errors=True)
    print(f"  ({time.monotonic() - started:.0f}s for the replica part; both servers are stopped and removed)", file=out)
    return ok


def run_in_three_clouds() -> bool:
    """The same flow with the stores in "AWS", "Azure" and "GCP": their local emulators."""
    import boto3
    from azure.storage.blob import BlobServiceClient
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    from platform_orchestration import emulators

    ports = {name: int(os.environ.setdefault(env, str(default))) for name, env, default in
             (("s3", "DEMO_S3_PORT", 25500), ("azure", "DEMO_AZURE_PORT", 25501), ("gcs", "DEMO_GCS_PORT", 25502))}
    os.environ.setdefault("DEMO_AWS_ACCESS_KEY_ID", "demo-access-key")
    os.environ.setdefault("DEMO_AWS_SECRET_ACCESS_KEY", "demo-secret-key")
    os.environ.setdefault("DEMO_AZURE_STORAGE_KEY", emulators.AZURITE_KEY)
    running = [
        emulators.moto_server(ports["s3"]),
        emulators.azurite(ports["azure"]),
        emulators.gcs_emulator(ports["gcs"]),
    ]
    started: list[emulators.Emulator] = []
    try:
        print("\nObject stores (local emulators of the three clouds):")
        for emulator in running:
            started.append(emulator.start(DEMO_DIR / "logs"))
            print(f"  {emulator.name:<8} {emulator.endpoint}")
        # Buckets are infrastructure (provisioned by IaC in production); the demo makes its own.
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{ports['s3']}", region_name="eu-west-1",
                     aws_access_key_id=os.environ["DEMO_AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=os.environ["DEMO_AWS_SECRET_ACCESS_KEY"]).create_bucket(
            Bucket="demo-pg-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        BlobServiceClient(f"http://127.0.0.1:{ports['azure']}/{emulators.AZURITE_ACCOUNT}",
                          credential={"account_name": emulators.AZURITE_ACCOUNT,
                                      "account_key": emulators.AZURITE_KEY}).create_container("demo-pg-backups")
        gcs.Client(project="demo-project", credentials=AnonymousCredentials(),
                   client_options={"api_endpoint": f"http://127.0.0.1:{ports['gcs']}"}).create_bucket(
            "demo-pg-backups")

        print(f"\nRunning protection_flow for every database of "
              f"{DEMO_CLOUDS_FLEET.relative_to(REPOSITORY_ROOT)}")
        ok = run_protection_flow(DEMO_CLOUDS_FLEET)
        print("\nTwo more drill rounds, so each database is restored from every cloud in turn:")
        ok &= run_drill_rounds(DEMO_CLOUDS_FLEET, rounds=2)
        return ok
    finally:
        for emulator in started:
            emulator.stop()


def show_rollout_plan(fleet_file: Path = DEMO_FLEET, out=sys.stdout) -> bool:  # noqa: ANN001
    """A dry-run plan of the platform's own rollout across the demo fleet's Kubernetes clusters,
    offline: the waves, and per cluster what its overlay renders for the rollout to apply (no
    cluster needed; the diff against what runs comes from the rollout job's dry run)."""
    from platform_orchestration.errors import PlatformError
    from platform_orchestration.fleet import load_fleet
    from platform_orchestration.rollout.engine import RolloutRequest, find_kubectl, offline_plan, render_overlay
    from platform_orchestration.rollout.plans import load_plans, plans_path_from_env

    try:
        fleet = load_fleet(fleet_file)
        plan = load_plans(plans_path_from_env(), fleet)["platform_dr"]
        request = RolloutRequest(plan=plan.name, revision="demo-rev-2",
                                 overlay=str(REPOSITORY_ROOT / "deploy" / "kustomize" / "overlays" / "{cloud}"))
        kubectl = find_kubectl()
        lines = offline_plan(plan, request, lambda overlay: render_overlay(overlay, kubectl))
    except PlatformError as exc:
        print(f"rollout plan: {exc}", file=out)
        return False
    for line in lines:
        print(line.replace(str(REPOSITORY_ROOT) + "/", ""), file=out)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m platform_orchestration.demo")
    parser.add_argument("action", nargs="?", default="run", choices=["run", "clouds", "servers", "stop", "rollout"])
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop_servers()
        return 0
    if args.action == "rollout":
        return 0 if show_rollout_plan() else 1
    print("Local PostgreSQL servers:")
    try:
        start_servers()
    except DemoPortTaken as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("DAGSTER_HOME", str(prepare_dagster_home()))
    os.environ["PLATFORM_FLEET"] = str(DEMO_FLEET)
    if args.action == "servers":
        return 0
    if args.action == "clouds":
        ok = run_in_three_clouds()
        print("\nThe emulators are stopped again (their data goes with them); the backups and")
        print("drills above ran through the same S3, Azure and GCS code as production.")
        return 0 if ok else 1
    print(f"\nRunning protection_flow for every database of {DEMO_FLEET.relative_to(REPOSITORY_ROOT)} "
          f"(Dagster instance: {os.environ['DAGSTER_HOME']})")
    ok = run_protection_flow()
    print(f"\nPhysical protection (barman-cloud) of one cluster, {DEMO_PHYSICAL_FLEET.relative_to(REPOSITORY_ROOT)}:")
    ok &= run_physical_drill()
    print(f"\nA standby in another cloud and one failover drill, {DEMO_REPLICA_FLEET.relative_to(REPOSITORY_ROOT)}:")
    ok &= run_failover_drill()
    print("\nA dry-run plan of rolling the platform out across the demo fleet's Kubernetes clusters "
          "(deploy/rollout/plans.yaml; offline, no cluster: the job `rollout_platform_dr` with dry_run "
          "shows each server's diff):")
    ok = show_rollout_plan() and ok
    print("\nBrowse it: `make ui`, then open http://127.0.0.1:3000 (asset graph, runs, checks).")
    print("Break-glass CLI: `.venv/bin/platform-dr list` / `verify orders` / `status`.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
