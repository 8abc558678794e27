"""Every failure is one line: what failed, where, why; and the documented exit code.

Run as operators run `platform-dr` (a process, a fleet file), against real servers made to
fail the way they fail on a bad day: a server that is down, a socket directory that does
not exist, a wrong password on a server that asks for one, tools too old for a backup,
Vault and a cloud store that do not answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import SOURCE_DB
from fleetfiles import write_fleet

from platform_orchestration import cli
from platform_orchestration.errors import EXIT_BUG, EXIT_FAILED, EXIT_INVALID
from platform_orchestration.postgres import LocalCluster, ephemeral_cluster
from platform_orchestration.postgres.cluster import free_port
from platform_orchestration.protection import TARGET_PASSWORD_RULE

PASSWORD = "correct horse battery staple"


def platform_dr(fleet: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def assert_one_line(result: subprocess.CompletedProcess[str], exit_code: int, *fragments: str) -> str:
    """The process failed with `exit_code` and said so in exactly one line holding `fragments`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == exit_code, result.stderr
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def fleet(tmp_path: Path, source_cluster: LocalCluster, source_db) -> Path:  # noqa: ANN001
    return write_fleet(tmp_path, source_cluster, SOURCE_DB)


@pytest.fixture
def backed_up(fleet: Path) -> Path:
    result = platform_dr(fleet, "backup", SOURCE_DB)
    assert result.returncode == 0, result.stderr
    return fleet


@pytest.fixture(scope="module")
def password_cluster() -> Iterator[LocalCluster]:
    """A server that asks every connection for a password (scram-sha-256), as production does."""
    with ephemeral_cluster(16) as cluster:
        with psycopg.connect(cluster.connection().dsn, autocommit=True) as conn:
            conn.execute(f"ALTER USER postgres PASSWORD '{PASSWORD}'")
            conn.execute("CREATE DATABASE guarded")
            (cluster.data_dir / "pg_hba.conf").write_text(
                "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")
        yield cluster


def test_a_source_server_that_is_down_fails_the_backup_in_one_line(tmp_path: Path, source_cluster) -> None:  # noqa: ANN001
    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    fleet.write_text(fleet.read_text().replace(f":{source_cluster.port}/", f":{free_port()}/"))

    result = platform_dr(fleet, "backup", SOURCE_DB)

    assert_one_line(result, EXIT_FAILED, f"backup {SOURCE_DB}", "unreachable at host=127.0.0.1", "Connection refused")
    assert not list((tmp_path / "stores").rglob("manifest.json"))


def test_a_target_server_that_is_down_fails_the_restore_in_one_line(backed_up: Path) -> None:
    port = free_port()
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn",
                         f"host=127.0.0.1 port={port} user=postgres dbname=restored")
    assert_one_line(result, EXIT_FAILED, f"restore {SOURCE_DB}", f"port={port}", "cannot connect to")


def test_a_socket_directory_that_does_not_exist_fails_the_restore_in_one_line(backed_up: Path) -> None:
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn",
                         "host=/nonexistent/socket-dir user=postgres dbname=restored")
    assert_one_line(result, EXIT_FAILED, "host=/nonexistent/socket-dir", "cannot connect to")


def test_a_wrong_target_password_fails_the_restore_in_one_line(backed_up: Path, password_cluster: LocalCluster) -> None:
    target = f"host=127.0.0.1 port={password_cluster.port} user=postgres dbname=guarded"
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn", target, env={"PGPASSWORD": "wrong"})
    line = assert_one_line(result, EXIT_FAILED, "password authentication failed", f"port={password_cluster.port}")
    assert "wrong" not in line.replace("wrong password", "")


def test_the_right_target_password_from_pgpassword_restores(backed_up: Path, password_cluster: LocalCluster) -> None:
    target = f"host=127.0.0.1 port={password_cluster.port} user=postgres dbname=guarded"
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn", target, env={"PGPASSWORD": PASSWORD})
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_a_wrong_source_password_fails_the_backup_in_one_line(tmp_path: Path, password_cluster: LocalCluster) -> None:
    fleet = write_fleet(tmp_path, password_cluster, "guarded", password_env="GUARDED_PGPASSWORD")
    result = platform_dr(fleet, "backup", "guarded", env={"GUARDED_PGPASSWORD": "not it"})
    assert_one_line(result, EXIT_FAILED, "backup guarded", "password authentication failed")


def test_a_password_in_the_target_dsn_is_refused_by_the_same_rule_as_the_launchpad(backed_up: Path) -> None:
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn",
                         "host=127.0.0.1 user=postgres dbname=x password=hunter2")
    line = assert_one_line(result, EXIT_INVALID, TARGET_PASSWORD_RULE)
    assert "hunter2" not in line


def test_tools_older_than_the_backup_fail_the_restore_in_one_line(tmp_path: Path, backed_up: Path,
                                                                  target_cluster: LocalCluster) -> None:
    """A backup taken by a newer pg_dump than any installed here (as after a server upgrade
    elsewhere) names what is missing and how to provide it."""
    for manifest in (tmp_path / "stores").rglob("manifest.json"):
        document = json.loads(manifest.read_text())
        document["dump"]["tool_major"] = 99
        manifest.write_text(json.dumps(document))
    result = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn",
                         f"host=127.0.0.1 port={target_cluster.port} user=postgres dbname=never_made")
    assert_one_line(result, EXIT_FAILED, "PostgreSQL 99 or newer", "PLATFORM_PG_BINDIRS")
    with psycopg.connect(target_cluster.connection().dsn) as conn:
        assert not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'never_made'").fetchone()


def test_vault_that_does_not_answer_fails_the_backup_in_one_line(fleet: Path) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    result = platform_dr(fleet, "backup", SOURCE_DB, env={"VAULT_ADDR": address, "VAULT_TOKEN": "s.sekret-token"})
    line = assert_one_line(result, EXIT_FAILED, f"backup {SOURCE_DB}", f"cannot connect to {address}")
    assert "s.sekret-token" not in line


def test_a_cloud_store_that_does_not_answer_fails_in_one_line(tmp_path: Path, fleet: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    text = fleet.read_text().replace(
        "  - {name: gcp, kind: local, cloud: gcp, path: stores/gcp}",
        f"  - name: gcp\n    kind: s3\n    bucket: backups-eu\n    region: eu-west-1\n    endpoint_url: {endpoint}\n"
        "    credentials: {access_key_id: {env: S3_KEY_ID}, secret_access_key: {env: S3_SECRET}}")
    fleet.write_text(text)
    result = platform_dr(fleet, "verify", SOURCE_DB, "--store", "gcp",
                         env={"S3_KEY_ID": "AKIAEXAMPLE", "S3_SECRET": "very-secret-key"})
    line = assert_one_line(result, EXIT_FAILED, f"verify {SOURCE_DB}", "gcp")
    assert "very-secret-key" not in line


def test_an_unexpected_exception_is_one_line_with_a_hint_and_a_traceback_on_debug(
        fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A bug stands in for any exception the code does not expect: here the list command
    meets a ZeroDivisionError deep inside."""
    from platform_orchestration.protection import FleetProtection

    def broken(self, database=None):  # noqa: ANN001, ANN202
        return 1 / 0

    monkeypatch.setattr(FleetProtection, "list_backups", broken)
    assert cli.main(["--fleet", str(fleet), "list", SOURCE_DB]) == EXIT_BUG
    said = capsys.readouterr().err
    assert said.count("\n") == 1 and "Traceback" not in said
    assert f"list {SOURCE_DB}" in said and "ZeroDivisionError" in said and "--debug" in said

    assert cli.main(["--fleet", str(fleet), "--debug", "list", SOURCE_DB]) == EXIT_BUG
    assert "Traceback" in capsys.readouterr().err


def test_with_one_cloud_down_list_and_restore_still_work_from_the_others_and_say_what_was_missed(
        backed_up: Path, source_db, target_cluster: LocalCluster) -> None:  # noqa: ANN001
    endpoint = f"http://127.0.0.1:{free_port()}"
    backed_up.write_text(backed_up.read_text().replace(
        "  - {name: gcp, kind: local, cloud: gcp, path: stores/gcp}",
        f"  - name: gcp\n    kind: s3\n    bucket: backups-eu\n    region: eu-west-1\n    endpoint_url: {endpoint}\n"
        "    credentials: {access_key_id: {env: S3_KEY_ID}, secret_access_key: {env: S3_SECRET}}"))
    env = {"S3_KEY_ID": "AKIAEXAMPLE", "S3_SECRET": "very-secret-key"}

    listed = platform_dr(backed_up, "list", SOURCE_DB, "--json", env=env)
    assert listed.returncode == EXIT_FAILED
    assert {row["store"] for row in json.loads(listed.stdout)} == {"aws", "azure"}
    assert "warning: not listed: backups (if any) in store gcp: the store could not be listed" in listed.stderr

    target = target_cluster.connection(f"one_cloud_down_{free_port()}")
    restored = platform_dr(backed_up, "restore", SOURCE_DB, "--target-dsn", target.dsn, env=env)
    assert restored.returncode == 0, restored.stderr
    assert "from aws" in restored.stdout
    assert ("warning: passed over newer backups (if any) in store gcp: the store could not be listed"
            in restored.stderr)
    assert "very-secret-key" not in restored.stderr
    from pg import fingerprint

    assert fingerprint(target) == fingerprint(source_db)
