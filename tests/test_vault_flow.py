"""The whole protection flow with Vault as the only source of secrets and keys: a real
OpenBao dev server issuing dynamic PostgreSQL logins and transit data keys, the Dagster
job run end to end, and every place a secret could leak scanned for the values used."""

from __future__ import annotations

import itertools

import dagster as dg
import psycopg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet
from pg import fingerprint
from vault_server import postgres_engine_role

from platform_orchestration.backups.catalog import list_backups
from platform_orchestration.crypto.vault_transit import VaultTransitKeys
from platform_orchestration.definitions import build_definitions
from platform_orchestration.fleet import load_fleet
from platform_orchestration.postgres.connection import PgConnection
from platform_orchestration.protection import FleetProtection
from platform_orchestration.secrets.vault import VaultSecretProvider

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
_numbers = itertools.count(1)


@pytest.fixture
def vault_env(vault_server, source_cluster, source_db, monkeypatch):
    """Transit and the database engine on fresh mounts; the process configured for Vault."""
    admin = vault_server.admin()
    suffix = next(_numbers)
    transit, database = f"transit-flow-{suffix}", f"database-flow-{suffix}"
    admin.sys.enable_secrets_engine("transit", path=transit)
    admin.secrets.transit.create_key(name="backups", key_type="aes256-gcm96", mount_point=transit)
    # What a backup login needs (read every table and sequence, and the cluster's identity)
    # is granted to a group role once; each dynamic login only joins it, so revoking the
    # lease can drop the login without privileges of its own in the way. BYPASSRLS is a role
    # attribute, not inherited: pg_dump refuses a table with row-level security without it.
    # Large objects are not covered by pg_read_all_data: each needs its own grant.
    with psycopg.connect(source_cluster.connection().dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'platform_backup'").fetchone():
            conn.execute("CREATE ROLE platform_backup NOLOGIN; GRANT pg_read_all_data TO platform_backup; "
                         "GRANT EXECUTE ON FUNCTION pg_control_system() TO platform_backup")
    with psycopg.connect(source_db.dsn, autocommit=True) as conn:
        for (oid,) in conn.execute("SELECT oid FROM pg_largeobject_metadata").fetchall():
            conn.execute(f"GRANT SELECT ON LARGE OBJECT {int(oid)} TO platform_backup")
    creds = postgres_engine_role(vault_server, database, source_cluster.port, "backup", [
        "CREATE ROLE \"{{name}}\" WITH LOGIN BYPASSRLS PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' "
        "IN ROLE platform_backup;"])
    monkeypatch.setenv("VAULT_ADDR", vault_server.address)
    monkeypatch.setenv("VAULT_TOKEN", vault_server.root_token)
    monkeypatch.setenv("VAULT_TRANSIT_MOUNT", transit)
    monkeypatch.setenv("VAULT_TRANSIT_KEY", "backups")
    return creds


def _dynamic_roles(cluster) -> list[str]:
    with psycopg.connect(cluster.connection().dsn) as conn:
        return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%'")]


def test_flow_uses_dynamic_logins_and_transit_keys_and_leaks_nothing(
        tmp_path, vault_env, vault_server, source_cluster, source_db, target_cluster, monkeypatch, capfd):
    seen: list[str] = [vault_server.root_token]
    real_login, real_new_key = VaultSecretProvider.database_login, VaultTransitKeys.new_data_key

    def spying_login(self, path):  # noqa: ANN001, ANN202 - records what Vault handed out
        login = real_login(self, path)
        seen.append(login.password)
        return login

    def spying_new_key(self):  # noqa: ANN001, ANN202
        key = real_new_key(self)
        seen.extend([key.plaintext.hex(), key.plaintext.hex().upper()])
        return key

    monkeypatch.setattr(VaultSecretProvider, "database_login", spying_login)
    monkeypatch.setattr(VaultTransitKeys, "new_data_key", spying_new_key)
    fleet_file = write_fleet(tmp_path, source_cluster, SOURCE_DB, vault_credentials=vault_env)

    with dg.instance_for_test(overrides={"telemetry": {"enabled": False}}) as instance:
        result = build_definitions(fleet_file).resolve_job_def("protection_flow").execute_in_process(
            partition_key=SOURCE_DB, instance=instance, run_config=QUIET, raise_on_error=False)
        recorded = "".join(dg.serialize_value(e) for e in instance.all_logs(result.run_id))
        recorded += dg.serialize_value(instance.get_run_by_id(result.run_id))

    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["dynamic_credentials_used"] and checks["backups_encrypted"], checks
    assert len(seen) > 3  # the token, at least one dynamic password and one data key
    assert _dynamic_roles(source_cluster) == []  # every login was revoked when its step ended

    stores = FleetProtection(load_fleet(fleet_file)).stores_for(SOURCE_DB)
    [stored] = list_backups(stores[0], SOURCE_DB)
    assert stored.manifest.credentials == "dynamic"
    assert stored.manifest.encryption.key_service.startswith("vault transit key backups")
    assert stored.manifest.encryption.wrapped_key.startswith("vault:v1:")

    captured = capfd.readouterr()
    evidence = "".join(p.read_bytes().decode("latin-1") for p in (tmp_path / "stores").rglob("*") if p.is_file())
    for secret in seen:
        for where, text in {"event log and run record": recorded, "stdout": captured.out,
                            "stderr": captured.err, "stores": evidence}.items():
            assert secret not in text, f"a secret reached the {where}"

    # Break-glass restore with the same Vault: the data key unwraps through transit, and
    # pg_restore runs as a dynamic login that the database engine issues on the target.
    restorer_path = _restorer_role(vault_server, target_cluster)
    with FleetProtection.from_environment(load_fleet(fleet_file)) as protection:
        username, password, _lease = protection.secrets.database_login(restorer_path)
        target = PgConnection(f"host=127.0.0.1 port={target_cluster.port} dbname=restored_with_vault "
                              f"user={username}", password)
        result = protection.restore(SOURCE_DB, target, restore_as="platform_restore")
        assert result.tables_verified > 0
        assert fingerprint(target_cluster.connection("restored_with_vault")) == fingerprint(source_db)
    assert _dynamic_roles(target_cluster) == []  # the restorer's lease was revoked too


def _restorer_role(vault_server, target_cluster) -> str:
    """A database-engine role on the target: a login that may create the database it restores
    into and restores as the group role `platform_restore`, which owns the database and
    everything in it, so the login owns nothing and can be dropped when its lease ends. BYPASSRLS
    lets it count the rows of a table with forced row-level security when verifying."""
    with psycopg.connect(target_cluster.connection().dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'platform_restore'").fetchone():
            conn.execute("CREATE ROLE platform_restore NOLOGIN")
    return postgres_engine_role(vault_server, f"database-restore-{next(_numbers)}", target_cluster.port, "restorer", [
        "CREATE ROLE \"{{name}}\" WITH LOGIN CREATEDB BYPASSRLS PASSWORD '{{password}}' VALID UNTIL '{{expiration}}' "
        "IN ROLE platform_restore;"])
