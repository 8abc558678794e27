"""The fleet's replication fields: a standby names its primary and streams as its policy's
`replication` section asks; every mistake is one located message (as in test_fleet.py)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_fleet import load_errors

from platform_orchestration.fleet import load_fleet

# Lines 1-7: a store, a policy with replication objectives, one without, no databases.
HEAD = """\
stores:
  - {name: aws-s3, kind: s3, bucket: pg-physical}
policies:
  - {name: gold, rpo: 1h, stores: [aws-s3], drill: {every: 1d, rto: 15m}, retention: {keep_last: 7}, replication: {max_lag_bytes: 16MiB, max_lag: 30s, failover_rto: 5m, max_slot_wal: 1GiB}}
  - {name: plain, rpo: 1h, stores: [aws-s3], drill: {every: 1d, rto: 15m}, retention: {keep_last: 7}}
databases: []
clusters:
  - {name: pg-aws, cloud: aws, region: eu-west-1}
"""


def write_fleet(directory: Path, *parts: str) -> Path:
    """The parts as written (test_fleet's helper dedents each part, which would move these)."""
    path = directory / "fleet.yaml"
    path.write_text("".join(parts), encoding="utf-8")
    return path


def standby(**fields: str) -> str:
    values = {"name": "pg-azure", "cloud": "azure", "replicates": "pg-aws", "policy": "gold",
              "primary_dsn": '"host=10.0.0.5 user=postgres"', **fields}
    extra = "".join(f"      {key}: {value}\n" for key, value in fields.items()
                    if key not in ("name", "cloud", "replicates", "policy", "primary_dsn"))
    return (f"  - name: {values['name']}\n    cloud: {values['cloud']}\n    region: westeurope\n    role: standby\n"
            f"    replicates: {values['replicates']}\n    standby:\n      policy: {values['policy']}\n"
            f"      dsn: host=10.1.0.5 user=postgres\n      primary_conninfo: host=10.0.0.5 user=replicator\n"
            f"      replication_password: {{env: REPL_PASSWORD}}\n"
            + (f"      primary_dsn: {values['primary_dsn']}\n" if values["primary_dsn"] else "") + extra)


def test_a_standby_names_its_primary_slot_and_objectives(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet(tmp_path, HEAD, standby()), environ={})
    cluster = fleet.cluster("pg-azure")
    assert [c.name for c in fleet.standby_clusters()] == ["pg-azure"]
    assert (cluster.role, cluster.replicates, cluster.replication_slot) == ("standby", "pg-aws", "pg_azure")
    assert cluster.standby.replication_password.describe() == "env:REPL_PASSWORD"
    replication = fleet.policy("gold").replication
    assert (replication.max_lag_bytes, replication.max_lag, replication.failover_rto, replication.max_slot_wal) == (
        16 * 2**20, timedelta(seconds=30), timedelta(minutes=5), 2**30)
    assert fleet.policy("plain").replication is None


def test_a_standby_of_an_unknown_cluster_of_itself_or_of_a_standby_is_refused(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, standby(replicates="pg-gcp"), standby(name="pg-self", replicates="pg-self"),
                       standby(name="pg-cascade", replicates="pg-azure", slot="other"))
    assert load_errors(path) == [
        f"{path}:13: clusters[1].replicates: unknown cluster 'pg-gcp' (known: pg-aws, pg-azure, pg-cascade, pg-self)",
        f"{path}:24: clusters[2].replicates: a standby cannot replicate itself",
        f"{path}:35: clusters[3].replicates: cluster 'pg-azure' is itself a standby: a standby replicates a "
        "primary (cascading replication is not supported)"]


def test_a_standby_in_its_primarys_cloud_needs_same_cloud_ok(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, standby(cloud="aws"))
    assert load_errors(path) == [
        f"{path}:13: clusters[1].replicates: cluster 'pg-aws' is in the same cloud (aws): a standby is for another "
        "cloud's failure; set standby.same_cloud_ok: true if this is meant"]
    load_fleet(write_fleet(tmp_path, HEAD, standby(cloud="aws", same_cloud_ok="true")), environ={})


def test_role_replicates_and_standby_go_together(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, "  - {name: pg-b, cloud: azure, region: westeurope, role: standby}\n"
                       "  - {name: pg-c, cloud: azure, region: westeurope, replicates: pg-aws}\n")
    assert load_errors(path) == [
        f"{path}:9: clusters[1]: a cluster with role standby needs replicates and standby (the primary it "
        "replicates, and how it streams from it)",
        f"{path}:10: clusters[2]: replicates only apply to a cluster with role standby (this one is primary)"]


def test_policy_login_slot_and_repository_seed_are_checked(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, standby(policy="plain", primary_dsn="", seed="repository"),
                       standby(name="pg-gcp", cloud="gcp", slot="pg_azure"))
    errors = load_errors(path)
    assert errors == [
        f"{path}:14: clusters[1].standby: no primary_dsn, and cluster 'pg-aws' has no physical section whose dsn "
        "could serve: say how the platform logs in to the primary (primary_dsn)",
        f"{path}:15: clusters[1].standby.policy: policy 'plain' has no replication section "
        "(max_lag_bytes, max_lag, failover_rto, max_slot_wal)",
        f"{path}:19: clusters[1].standby.seed: cluster 'pg-aws' has no physical repository to seed from "
        "(use basebackup or auto)",
        f"{path}:25: clusters[2].standby: replication slot 'pg_azure' on 'pg-aws' is already another standby's "
        "(first used at line 14)"]


def test_no_password_in_a_standby_dsn_and_a_slot_smaller_than_the_lag_is_refused(tmp_path: Path) -> None:
    head = HEAD.replace("max_slot_wal: 1GiB", "max_slot_wal: 1MiB")
    path = write_fleet(tmp_path, head, standby(primary_dsn='"host=10.0.0.5 user=postgres password=hunter22"'))
    errors = load_errors(path)
    assert any("policies[0].replication: max_slot_wal (1MiB) must be at least max_lag_bytes (16MiB)" in e for e in errors)
    assert any("clusters[1].standby.primary_dsn: a password must not be written in the fleet file" in e for e in errors)
    assert not any("hunter22" in e for e in errors)
