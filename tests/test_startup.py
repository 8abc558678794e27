"""A quiet, quick start: no preview-warning noise, and each CLI command imports only what it uses."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import dagster as dg
from conftest import SOURCE_DB
from fleetfiles import write_fleet

from platform_orchestration.definitions import REPOSITORY_ROOT, build_definitions

DEMO_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml"

# Top-level modules a command may import only when it uses them (google.protobuf comes with
# Tink, so the Google SDK is named by its own packages).
CLOUD_AND_VAULT = {"boto3", "botocore", "azure", "google.cloud", "google.auth", "hvac"}
BACKUP_LIBRARIES = {"psycopg", "zstandard", "tink", "cryptography"}
# What a restore does not run: taking, pruning or drilling backups, physical backups, standbys
# (beyond FleetProtection's own part), recoverability figures and the report.
NOT_RESTORING = {
    "platform_orchestration.backups.take", "platform_orchestration.backups.retention",
    "platform_orchestration.backups.drill", "platform_orchestration.physical",
    "platform_orchestration.replication.seed", "platform_orchestration.replication.drill",
    "platform_orchestration.observability", "platform_orchestration.reporting",
}


def _imported_by(*argv: str) -> set[str]:
    """Run `platform-dr ARGV` in a fresh interpreter; the modules it had imported when it ended."""
    probe = (
        "import json, sys\n"
        "from platform_orchestration import cli\n"
        "try:\n"
        f"    code = cli.main({list(argv)!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print(json.dumps([code, sorted(sys.modules)]), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, modules = json.loads(result.stderr.strip().splitlines()[-1])
    assert code == 0, result.stderr
    return set(modules)


def test_building_the_definitions_emits_no_preview_warning_and_silences_nothing_else():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_definitions(DEMO_FLEET)
        warnings.warn("a preview feature used elsewhere", dg.PreviewWarning, stacklevel=1)
    previews = [str(w.message) for w in caught if issubclass(w.category, dg.PreviewWarning)]
    assert previews == ["a preview feature used elsewhere"]
    assert not [w for w in caught if issubclass(w.category, dg.BetaWarning)]


def test_validate_prints_nothing_on_stderr():
    result = subprocess.run([sys.executable, "-m", "platform_orchestration.cli", "--fleet", str(DEMO_FLEET),
                             "validate"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{DEMO_FLEET}: ok")
    assert result.stderr == ""


def test_the_garbage_collector_is_off_only_while_a_command_imports():
    """Off for the imports (collections there find nothing to free), on again for the
    command's work (a restore runs for hours), and as it was once main returns."""
    probe = (
        "import gc, json, sys\n"
        "from platform_orchestration import cli\n"
        "on_after_imports = []\n"
        "mark = cli._imported\n"
        "def marking():\n"
        "    mark()\n"
        "    on_after_imports.append(gc.isenabled())\n"
        "cli._imported = marking\n"
        "during_imports = []\n"
        "def watch(phase, info):\n"
        "    if phase == 'start' and 'pydantic' in sys.modules and not on_after_imports:\n"
        "        during_imports.append(info['generation'])\n"
        "gc.callbacks.append(watch)\n"
        f"code = cli.main(['--fleet', {str(DEMO_FLEET)!r}, 'validate'])\n"
        "print(json.dumps([code, on_after_imports, gc.isenabled(), during_imports]), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    code, on_after_imports, after, during_imports = json.loads(result.stderr.strip().splitlines()[-1])
    assert code == 0 and on_after_imports == [True] and after is True
    assert during_imports == []  # no collection while pydantic and the fleet model were imported


def test_help_imports_none_of_the_core():
    imported = _imported_by("--help")
    assert not imported & {"dagster", "pydantic", "yaml", *BACKUP_LIBRARIES, *CLOUD_AND_VAULT}
    assert "platform_orchestration.fleet" not in imported


def test_validate_imports_the_fleet_model_alone():
    imported = _imported_by("--fleet", str(DEMO_FLEET), "validate")
    assert {"pydantic", "yaml", "platform_orchestration.fleet"} <= imported
    assert not imported & {"dagster", *BACKUP_LIBRARIES, *CLOUD_AND_VAULT}
    assert "platform_orchestration.protection" not in imported


def test_a_backup_to_local_stores_imports_no_cloud_sdk_vault_or_dagster(tmp_path, source_cluster, source_db):
    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    imported = _imported_by("--fleet", str(fleet), "backup", SOURCE_DB)
    assert BACKUP_LIBRARIES <= imported
    assert not imported & {"dagster", *CLOUD_AND_VAULT}


def test_verify_loads_no_postgres_driver_and_restore_only_what_restoring_uses(tmp_path, source_cluster, source_db,
                                                                              target_db):
    # A break-glass verify or restore starts at once: what it does not run, it does not import
    # (at ~0.15 s psycopg alone is a noticeable part of a small restore's wall time).
    fleet = write_fleet(tmp_path, source_cluster, SOURCE_DB)
    _imported_by("--fleet", str(fleet), "backup", SOURCE_DB)

    verified = _imported_by("--fleet", str(fleet), "verify", SOURCE_DB)
    assert {"zstandard", "tink", "platform_orchestration.backups.integrity"} <= verified
    assert not verified & {"psycopg", "dagster", *CLOUD_AND_VAULT, *NOT_RESTORING,
                           "platform_orchestration.backups.restore"}

    restored = _imported_by("--fleet", str(fleet), "restore", SOURCE_DB, "--target-dsn", target_db.dsn)
    assert {"psycopg", "platform_orchestration.backups.restore"} <= restored
    assert not restored & {"dagster", *CLOUD_AND_VAULT, *NOT_RESTORING}
    with target_db.connect() as conn:  # it did restore
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] > 0


def test_the_demo_names_a_port_another_server_holds_and_how_to_free_it(monkeypatch, capsys):
    # As when a second checkout runs `make demo` while the first one's servers still run.
    import socket

    from platform_orchestration import demo

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        monkeypatch.setenv("DEMO_PG_AWS_PORT", str(port))
        assert demo.main(["servers"]) == 2
    error = capsys.readouterr().err
    assert f"demo server pg-aws-eu: port {port} is taken by another process" in error
    assert "`make demo-stop`" in error and "DEMO_PG_AWS_PORT=PORT" in error
