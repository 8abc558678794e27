"""platform-dr's physical commands as operators run them (a process, a fleet file, exit codes),
against a real PostgreSQL 16 archiving into a moto S3 server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from physical_support import archived_cluster

pytestmark = pytest.mark.slow

SECRET = "not-a-real-secret-key-0123456789"


def platform_dr(fleet: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEST_S3_KEY_ID": "testing", "TEST_S3_SECRET": SECRET}
    return subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(fleet), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def physical_fleet(tmp_path: Path, bucket: str, endpoint: str, port: int) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""\
clusters:
  - name: pg-a
    cloud: aws
    region: us-east-1
    physical: {{store: aws-s3, policy: gold, dsn: "host=127.0.0.1 port={port} user=postgres dbname=postgres"}}
stores:
  - name: aws-s3
    kind: s3
    bucket: {bucket}
    region: us-east-1
    endpoint_url: {endpoint}
    credentials: {{access_key_id: {{env: TEST_S3_KEY_ID}}, secret_access_key: {{env: TEST_S3_SECRET}}}}
  - {{name: evidence, kind: local, path: evidence}}
databases: []
policies:
  - name: gold
    rpo: 1h
    stores: [evidence]
    drill: {{every: 1d, rto: 10m}}
    retention: {{keep_last: 3}}
    physical: {{base_backup: 1d, wal_max_lag: 5m, pitr_window: 7d}}
""")
    return path


def test_base_backup_list_status_restore_and_drill_from_the_command_line(s3_backend, tmp_path: Path) -> None:
    with archived_cluster(s3_backend, 16) as archived:
        fleet = physical_fleet(tmp_path, archived.spec.bucket, s3_backend.endpoint, archived.cluster.port)

        settings = platform_dr(fleet, "archive-settings", "pg-a", "--credentials-file", "/etc/pg/repo.env")
        assert settings.returncode == 0, settings.stderr
        assert "archive_mode = 'on'" in settings.stdout and "barman.clients.cloud_walarchive" in settings.stdout
        assert ". /etc/pg/repo.env" in settings.stdout and SECRET not in settings.stdout

        backup = platform_dr(fleet, "base-backup", "pg-a")
        assert backup.returncode == 0, backup.stderr
        backup_id = backup.stdout.strip()
        assert "LSN 0/" in backup.stderr and "MiB/s" in backup.stderr and SECRET not in backup.stderr

        rows = json.loads(platform_dr(fleet, "list", "--physical", "--json").stdout)
        assert [(r["id"], r["cluster"], r["store"], r["status"]) for r in rows] == [
            (backup_id, "pg-a", "aws-s3", "DONE")]
        assert rows[0]["stored_bytes"] > 0 and rows[0]["begin_wal"] <= rows[0]["end_wal"]

        status = platform_dr(fleet, "archive-status", "pg-a")
        assert status.returncode == 0, status.stdout + status.stderr
        assert "pg-a: archiving into s3://" in status.stdout

        with psycopg.connect(archived.cluster.connection().dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE cli_probe AS SELECT 42 AS answer")
            conn.execute("SELECT pg_switch_wal()")
        drill = platform_dr(fleet, "drill-pitr", "pg-a")
        assert drill.returncode == 0, drill.stdout + drill.stderr
        assert f"base backup {backup_id}" in drill.stdout and ": passed" in drill.stdout

        restored_dir = tmp_path / "restored"
        restore = platform_dr(fleet, "restore-pitr", "pg-a", "--to", "latest", "--target-dir", str(restored_dir))
        assert restore.returncode == 0, restore.stderr
        port = int(restore.stdout.split("127.0.0.1:")[1].split(",")[0])
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres", autocommit=True) as conn:
                assert conn.execute("SELECT answer FROM cli_probe").fetchall() == [(42,)]
        finally:
            data_dir = restore.stdout.split("data in ")[1].split(" ")[0]
            from platform_orchestration.physical.pitr import _server_install
            subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            _server_install(16).tool("pg_ctl"), "-D", data_dir, "-m", "immediate", "stop"],
                           capture_output=True)

        again = platform_dr(fleet, "restore-pitr", "pg-a", "--to", "latest", "--target-dir", str(restored_dir))
        shutil.rmtree(Path(data_dir).parent, ignore_errors=True)
        assert again.returncode == 2 and "is not empty: a point-in-time restore never writes over" in again.stderr
        # On a step pod, a directory deleted with the pod (here memory) is refused before anything is restored.
        in_memory = Path("/dev/shm") / f"pitr-{tmp_path.name}"
        with pytest.MonkeyPatch.context() as pod:
            pod.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
            on_the_pod = platform_dr(fleet, "restore-pitr", "pg-a", "--to", "latest", "--target-dir", str(in_memory))
        assert on_the_pod.returncode == 2, on_the_pod.stderr
        assert f"target directory {in_memory} is on a memory-backed tmpfs" in on_the_pod.stderr
        assert "per_step_k8s_config.restore_to_point_in_time" in on_the_pod.stderr and not in_memory.exists()

        compliance = platform_dr(fleet, "status-physical")
        assert "[ok] base_backup_within_cadence" in compliance.stdout
        assert "[ok] wal_archive_within_lag" in compliance.stdout
        assert "[ok] pitr_drill_passed_within_cadence" in compliance.stdout
        # Honest: a repository minutes old does not reach back the 7 days the policy asks for.
        assert "[FAIL] pitr_window_covered" in compliance.stdout and compliance.returncode == 1

        prune = platform_dr(fleet, "prune-physical", "pg-a", "--dry-run")
        assert prune.returncode == 0, prune.stderr
        assert "pg-a in aws-s3: window from " in prune.stdout
        assert f"keep {backup_id}; would delete nothing" in prune.stdout
        copies = platform_dr(fleet, "copy-physical", "pg-a")
        assert copies.returncode == 0 and "names no other object store" in copies.stdout

        unknown = platform_dr(fleet, "restore-pitr", "pg-a", "--to", "latest", "--store", "evidence",
                              "--target-dir", str(tmp_path / "other"))
        assert unknown.returncode == 2 and "holds no copy of cluster pg-a's physical repository" in unknown.stderr
