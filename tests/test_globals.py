"""Cluster-wide objects (roles, memberships, role settings) backed up beside every dump with
pg_dumpall, and applied to a fresh PostgreSQL server only when a restore asks for them."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

import psycopg
import pytest
from conftest import SOURCE_DB, make_stores
from pg import fingerprint, flip_byte
from psycopg import sql
from psycopg.conninfo import make_conninfo

from platform_orchestration.backups.catalog import find_backup, list_backups
from platform_orchestration.backups.copy import ensure_copies
from platform_orchestration.backups.integrity import BackupCorrupt, globals_sql, verify_stored_backup
from platform_orchestration.backups.manifest import BackupManifest
from platform_orchestration.backups.restore import RestoreRefused, restore_backup
from platform_orchestration.backups.retention import prune_database
from platform_orchestration.backups.take import take_backup
from platform_orchestration.crypto.local_keys import LocalDataKeyProvider
from platform_orchestration.fleet.model import RetentionPolicy
from platform_orchestration.postgres import PgConnection, ephemeral_cluster
from platform_orchestration.postgres.globals import plan_globals
from platform_orchestration.storage import read_bytes, write_bytes

APP_READER_PASSWORD = "app-reader-password-5d0c9e1f"


def _roles(cluster) -> dict[str, dict]:
    """Every role of the cluster: its attributes, whether it has a password, its settings
    and the roles it is a member of."""
    with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT a.rolname, a.rolcanlogin, a.rolcreatedb, a.rolsuper, a.rolpassword IS NOT NULL,
                      (SELECT setconfig FROM pg_db_role_setting WHERE setrole = a.oid AND setdatabase = 0),
                      ARRAY(SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                            WHERE m.member = a.oid ORDER BY 1)
               FROM pg_authid a WHERE a.rolname NOT LIKE 'pg\\_%'""").fetchall()
    return {name: {"login": login, "createdb": createdb, "superuser": superuser, "password": password,
                   "settings": settings, "member_of": member_of}
            for name, login, createdb, superuser, password, settings, member_of in rows}


@pytest.fixture(scope="module")
def source_with_roles(source_cluster, source_db):
    """The seeded source, on a server with a login `app_reader` in the group `readers`."""
    with psycopg.connect(source_cluster.connection().dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app_reader'").fetchone():
            conn.execute("CREATE ROLE readers NOLOGIN")
            conn.execute(sql.SQL("CREATE ROLE app_reader LOGIN PASSWORD {} IN ROLE readers").format(
                sql.Literal(APP_READER_PASSWORD)))
            conn.execute("ALTER ROLE app_reader SET work_mem = '8MB'")
    return source_db


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> LocalDataKeyProvider:
    return LocalDataKeyProvider(tmp_path_factory.mktemp("globals-kek") / "kek")


@pytest.fixture(scope="module")
def dr_site(tmp_path_factory, source_with_roles, keys):
    """An encrypted backup of the source restored into a fresh cluster three times: without
    globals, with globals, and with globals by a login that may not create roles. The fresh
    cluster already has its own `readers` (CREATEDB, its own setting), which must stay."""
    stores = make_stores(tmp_path_factory.mktemp("globals"))
    manifest = take_backup(database=SOURCE_DB, cluster="test-cluster", policy="gold",
                           connection=source_with_roles, stores=stores, keys=keys).manifest
    stored = find_backup(stores, SOURCE_DB)
    with ephemeral_cluster(16) as cluster:
        with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE readers NOLOGIN CREATEDB")
            conn.execute("ALTER ROLE readers SET statement_timeout = '5s'")
            # No CREATEROLE; BYPASSRLS since the seed forces row-level security on a table.
            conn.execute("CREATE ROLE limited_restorer LOGIN CREATEDB BYPASSRLS")
        before = _roles(cluster)
        without = restore_backup(stored, cluster.connection("without_globals"), keys=keys)
        after_without = _roles(cluster)
        limited_login = PgConnection(make_conninfo(cluster.connection("by_limited_login").dsn,
                                                   user="limited_restorer"))
        limited = restore_backup(stored, limited_login, keys=keys, with_globals=True)
        after_limited = _roles(cluster)
        with_globals = restore_backup(stored, cluster.connection("with_globals"), keys=keys, with_globals=True)
        yield SimpleNamespace(
            manifest=manifest, stores=stores, cluster=cluster, before=before, without=without,
            after_without=after_without, limited=limited, after_limited=after_limited,
            with_globals=with_globals, after=_roles(cluster),
        )


@pytest.mark.slow
def test_globals_are_stored_beside_the_dump_in_every_store_without_any_password(dr_site, keys):
    manifest = dr_site.manifest
    assert manifest.globals is not None and manifest.globals.tool.startswith("pg_dumpall 16.")
    for store in dr_site.stores:
        stored = read_bytes(store, manifest.globals_key)
        assert len(stored) == manifest.globals.stored_bytes
        assert hashlib.sha256(stored).hexdigest() == manifest.globals.sha256
        assert b"app_reader" not in stored  # encrypted like the dump
        script = globals_sql(store, manifest, keys).decode()
        assert "CREATE ROLE app_reader;" in script
        assert "GRANT readers TO app_reader" in script
        assert "ALTER ROLE app_reader SET work_mem TO '8MB';" in script
        assert APP_READER_PASSWORD not in script and "PASSWORD" not in script and "SCRAM" not in script


@pytest.mark.slow
def test_a_restore_without_globals_brings_no_roles(dr_site):
    assert dr_site.without.globals is None
    assert "app_reader" not in dr_site.after_without
    assert dr_site.after_without == dr_site.before


@pytest.mark.slow
def test_a_restore_with_globals_brings_roles_memberships_and_settings_but_no_password(dr_site, source_db):
    app_reader = dr_site.after["app_reader"]

    assert app_reader["login"] and app_reader["member_of"] == ["readers"]
    assert app_reader["settings"] == ["work_mem=8MB"]
    assert app_reader["password"] is False  # a login, but nobody's password came along
    assert "app_reader" in dr_site.with_globals.globals.roles_created
    assert dr_site.with_globals.globals.failures == ()
    assert fingerprint(dr_site.cluster.connection("with_globals")) == fingerprint(source_db)


@pytest.mark.slow
def test_existing_roles_and_the_connecting_role_are_left_as_they_were(dr_site):
    applied = dr_site.with_globals.globals

    assert "readers" in applied.roles_kept and "postgres" not in applied.roles_kept
    assert applied.skipped_connecting_role == "postgres"
    readers = dr_site.after["readers"]
    assert readers["createdb"] and readers["settings"] == ["statement_timeout=5s"]  # the DR site's own
    assert dr_site.after["postgres"] == dr_site.before["postgres"]


@pytest.mark.slow
def test_globals_a_login_may_not_apply_are_reported_and_the_restore_goes_on(dr_site):
    applied = dr_site.limited.globals

    assert applied.skipped_connecting_role == "limited_restorer"
    assert applied.roles_created == ()
    failed = [f for f in applied.failures if f.startswith("CREATE ROLE app_reader;")]
    assert failed and "permission denied to create role" in failed[0]
    assert "app_reader" not in dr_site.after_limited
    assert dr_site.limited.tables_verified > 0 and dr_site.limited.target_action == "created"
    assert "statements failed" in applied.summary()


def test_a_tampered_globals_object_fails_verification_naming_it(backup, stores, tmp_path, target_db):
    keys = LocalDataKeyProvider(tmp_path / "kek")
    manifest = backup(stores, keys=keys).manifest
    aws, azure, _ = stores
    flip_byte(aws.path_for(manifest.globals_key))

    with pytest.raises(BackupCorrupt, match=f"store aws: globals object {manifest.globals_key}: checksum mismatch"):
        verify_stored_backup(aws, manifest, keys=keys)
    # With the manifest fixed up to match, the AEAD still notices.
    path = azure.path_for(manifest.globals_key)
    flip_byte(path, 60)
    data = path.read_bytes()
    fixed = manifest.model_copy(update={"globals": manifest.globals.model_copy(
        update={"sha256": hashlib.sha256(data).hexdigest(), "stored_bytes": len(data)})})
    write_bytes(azure, manifest.manifest_key, fixed.to_json())
    with pytest.raises(BackupCorrupt, match=f"store azure: globals object {manifest.globals_key}: "
                                            "encrypted dump failed authentication"):
        verify_stored_backup(azure, fixed, keys=keys)
    with pytest.raises(BackupCorrupt, match="globals object"):
        restore_backup(find_backup(stores, SOURCE_DB, store_name="azure"), target_db, keys=keys, with_globals=True)
    with psycopg.connect(target_db.for_database("postgres").dsn) as conn:  # nothing was touched
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target_db.dbname,)).fetchone() is None
    verify_stored_backup(stores[2], manifest, keys=keys)  # the third copy is intact


def test_the_globals_and_the_dump_ciphertexts_cannot_stand_in_for_each_other(backup, stores, tmp_path):
    keys = LocalDataKeyProvider(tmp_path / "kek")
    manifest = backup(stores, keys=keys).manifest
    aws, azure, _ = stores
    dump, globals_ = read_bytes(aws, manifest.dump_key), read_bytes(aws, manifest.globals_key)

    write_bytes(aws, manifest.dump_key, globals_)
    as_dump = manifest.model_copy(update={"dump": manifest.dump.model_copy(
        update={"sha256": manifest.globals.sha256, "stored_bytes": manifest.globals.stored_bytes})})
    with pytest.raises(BackupCorrupt, match="store aws: encrypted dump failed authentication"):
        verify_stored_backup(aws, as_dump, keys=keys)

    write_bytes(azure, manifest.globals_key, dump)
    as_globals = manifest.model_copy(update={"globals": manifest.globals.model_copy(
        update={"sha256": manifest.dump.sha256, "stored_bytes": manifest.dump.stored_bytes})})
    with pytest.raises(BackupCorrupt, match="globals object .* failed authentication"):
        globals_sql(azure, as_globals, keys)


def test_copies_carry_the_globals_object(backup, stores):
    manifest = backup(stores).manifest
    aws, _, gcp = stores
    for key in (manifest.manifest_key, manifest.globals_key, manifest.dump_key):
        gcp.delete(key)

    assert ensure_copies(SOURCE_DB, stores).copied == ("gcp",)

    assert read_bytes(gcp, manifest.globals_key) == read_bytes(aws, manifest.globals_key)
    verify_stored_backup(gcp, find_backup([gcp], SOURCE_DB).manifest)


def test_pruning_deletes_the_globals_object_with_its_backup(backup, stores):
    old, new = backup(stores).manifest, backup(stores).manifest

    prune_database(SOURCE_DB, stores, RetentionPolicy(keep_last=1), now=datetime.now(UTC))

    for store in stores:
        assert [info.key for info in store.list(f"backups/{SOURCE_DB}/")] == [
            new.dump_key, new.globals_key, new.manifest_key]
    assert old.backup_id != new.backup_id


def test_a_backup_from_before_globals_still_loads_and_verifies_but_refuses_with_globals(backup, stores, target_db):
    manifest = backup(stores).manifest
    aws = stores[0]
    aws.delete(manifest.globals_key)
    older = manifest.model_copy(update={"globals": None})
    write_bytes(aws, manifest.manifest_key, older.to_json())
    assert b"globals" not in read_bytes(aws, manifest.manifest_key)  # as written before globals existed

    [listed] = list_backups(aws, SOURCE_DB)
    assert listed.manifest.globals is None
    verify_stored_backup(aws, listed.manifest)
    with pytest.raises(RestoreRefused, match="with globals: the backup has none"):
        restore_backup(listed, target_db, with_globals=True)
    assert BackupManifest.from_json(older.to_json(), "test") == older


def test_the_globals_plan_adds_what_is_missing_and_changes_nothing_that_exists():
    script = '''
--
\\restrict abc
SET default_transaction_read_only = off;
CREATE ROLE "Weird ""Name""";
ALTER ROLE "Weird ""Name""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN;
CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';
COMMENT ON ROLE app IS 'it''s
two lines; really';
CREATE ROLE backup;
ALTER ROLE backup WITH NOSUPERUSER LOGIN;
CREATE ROLE existing;
ALTER ROLE existing WITH SUPERUSER;
ALTER ROLE existing SET work_mem TO '1GB';
GRANT existing TO app WITH INHERIT TRUE GRANTED BY postgres;
GRANT app TO backup WITH INHERIT TRUE GRANTED BY postgres;
CREATE TABLESPACE fast OWNER app LOCATION '/ssd';
CREATE TABLESPACE slow OWNER app LOCATION '/hdd';
\\unrestrict abc
'''
    plan = plan_globals(script, connecting_role="backup", existing_roles={"existing", "backup", "postgres"},
                        existing_tablespaces={"slow"})

    assert plan.roles_to_create == ('Weird "Name"', "app")
    assert plan.roles_kept == ("existing",) and plan.tablespaces_kept == ("slow",)
    assert plan.statements == (
        "\\restrict abc",
        "SET default_transaction_read_only = off;",
        'CREATE ROLE "Weird ""Name""";',
        'ALTER ROLE "Weird ""Name""" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN;',
        "CREATE ROLE app;",
        "ALTER ROLE app WITH NOSUPERUSER LOGIN;",
        "COMMENT ON ROLE app IS 'it''s\ntwo lines; really';",
        "GRANT existing TO app WITH INHERIT TRUE GRANTED BY postgres;",
        "CREATE TABLESPACE fast OWNER app LOCATION '/ssd';",
        "\\unrestrict abc",
    )


def test_platform_dr_restore_with_globals_creates_the_roles_and_says_so(tmp_path, source_with_roles, source_cluster,
                                                                        target_cluster, fresh_name):
    import subprocess
    import sys

    from fleetfiles import write_fleet

    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)

    def platform_dr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet), *args],
                              capture_output=True, text=True, timeout=300)

    assert platform_dr("backup", SOURCE_DB).returncode == 0
    target = target_cluster.connection(fresh_name("cli_globals"))
    restored = platform_dr("restore", SOURCE_DB, "--target-dsn", target.dsn, "--with-globals")

    assert restored.returncode == 0, restored.stderr
    assert "globals: " in restored.stdout and "roles created" in restored.stdout
    assert {"app_reader", "readers"} <= set(_roles(target_cluster))
    assert APP_READER_PASSWORD not in restored.stdout + restored.stderr
