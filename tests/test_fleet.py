"""The fleet file: the demo loads, and each kind of mistake gives one clear, located message."""

from __future__ import annotations

import doctest
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from platform_orchestration.fleet import (
    FleetError,
    SecretRef,
    UnknownNameError,
    durations,
    fleet_path_from_env,
    format_duration,
    load_fleet,
    parse_duration,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
DEMO_FLEET = REPOSITORY_ROOT / "deploy" / "fleet" / "demo.yaml"

# Lines 1-3 of fleets whose tests are about databases; those tests count lines from 4.
HEAD = """\
clusters: [{name: pg-a, cloud: aws, region: eu-west-1}]
stores: [{name: aws-eu, kind: local, path: stores/aws}]
policies: [{name: standard, rpo: 1h, stores: [aws-eu], drill: {every: 1d, rto: 15m}, retention: {keep_last: 7}}]
"""


def write_fleet(directory: Path, *parts: str) -> Path:
    """Write the dedented ``parts``, one after the other, to ``directory/fleet.yaml``."""
    path = directory / "fleet.yaml"
    path.write_text("".join(textwrap.dedent(part) for part in parts), encoding="utf-8")
    return path


def load_errors(path: Path) -> list[str]:
    with pytest.raises(FleetError) as raised:
        load_fleet(path, environ={})
    return raised.value.errors


# --- the demo fleet -----------------------------------------------------------------------------


def test_demo_fleet_loads_and_its_references_resolve() -> None:
    fleet = load_fleet(DEMO_FLEET, environ={})

    assert [database.name for database in fleet.databases] == ["orders", "inventory", "customers"]
    assert [store.cloud for store in fleet.stores_for("orders")] == ["aws", "azure", "gcp"]
    assert [store.name for store in fleet.stores_for("inventory")] == ["aws-eu", "gcp-eu"]
    assert fleet.policy_for("customers").name == "critical"
    assert fleet.cluster_for("customers").region == "westeurope"
    assert fleet.database("orders").dsn == "postgresql://postgres@127.0.0.1:55432/orders"
    assert fleet.policy("standard").drill.every == timedelta(days=7)
    assert fleet.store("aws-eu").path == REPOSITORY_ROOT / "var" / "demo" / "stores" / "aws-eu"
    assert fleet.source == DEMO_FLEET


def test_demo_fleet_is_the_default_and_platform_fleet_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLATFORM_FLEET", raising=False)
    assert fleet_path_from_env() == DEMO_FLEET

    monkeypatch.setenv("PLATFORM_FLEET", "/etc/fleet.yaml")
    assert fleet_path_from_env() == Path("/etc/fleet.yaml")


def test_full_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (REPOSITORY_ROOT / "docs" / "fleet.md").read_text(encoding="utf-8")
    example = docs.split("## Full example")[1].split("```yaml\n")[1].split("```")[0]
    fleet = load_fleet(write_fleet(tmp_path, example), environ={})
    assert [store.kind for store in fleet.stores_for("orders")] == ["s3", "azure", "gcs"]


def test_lookup_of_an_unknown_name_lists_the_known_ones() -> None:
    fleet = load_fleet(DEMO_FLEET, environ={})
    with pytest.raises(UnknownNameError) as raised:
        fleet.database("payments")
    assert str(raised.value) == "unknown database 'payments' (known: customers, inventory, orders)"


# --- paths, secrets, interpolation --------------------------------------------------------------


def test_relative_local_store_path_is_resolved_against_the_fleet_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write_fleet(tmp_path / "conf", HEAD, "databases: []\n")
    assert load_fleet(path).store("aws-eu").path == tmp_path / "conf" / "stores" / "aws"


def test_interpolation_uses_the_environment_then_the_default(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        databases:
          - {name: a, cluster: pg-a, policy: standard, dsn: "host=${PGHOST} port=${PGPORT:-5432}"}
        """)
    fleet = load_fleet(path, environ={"PGHOST": "db.internal"})
    assert fleet.database("a").dsn == "host=db.internal port=5432"


def test_missing_environment_variable_names_the_line(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        databases:
          - name: orders
            cluster: pg-a
            dsn: postgresql://backup@${PGHOST}/orders
            policy: standard
        """)
    assert load_errors(path) == [
        f"{path}:7: databases[0].dsn: environment variable PGHOST is not set "
        "(write ${PGHOST:-default} to give a default)"
    ]


def test_secret_reference_describes_where_the_secret_lives_never_its_value() -> None:
    assert SecretRef(env="ORDERS_PGPASSWORD").describe() == "env:ORDERS_PGPASSWORD"
    assert SecretRef(vault="secret/data/gcs", key="json").describe() == "vault:secret/data/gcs#json"


# --- one clear error per mistake ----------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert load_errors(tmp_path / "nope.yaml") == [f"fleet file not found: {tmp_path / 'nope.yaml'}"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters:
          - name: pg-a
            cloud: [aws
          region: eu-west-1
        """)
    [error] = load_errors(path)
    assert error.startswith(f"{path}:4: YAML syntax error: expected ',' or ']'")


def test_empty_file(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, "# nothing yet\n")
    assert load_errors(path) == [
        f"{path}: the fleet file is empty; expected a mapping with clusters, stores, databases and policies"
    ]


def test_wrong_type(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters: []
        stores: [{name: aws-eu, kind: local, path: s}]
        databases: []
        policies:
          - name: standard
            rpo: 1h
            stores: [aws-eu]
            drill: {every: 1d, rto: 15m}
            retention:
              keep_last: many
        """)
    assert load_errors(path) == [
        f"{path}:10: policies[0].retention.keep_last: expected a whole number, got 'many'"
    ]


def test_retention_sweep_age_defaults_to_a_day_and_refuses_less_than_an_hour(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet(tmp_path, HEAD, "databases: []\n"), environ={})
    assert fleet.policy("standard").retention.sweep_older_than == timedelta(days=1)

    path = write_fleet(tmp_path, """\
        clusters: []
        stores: [{name: aws-eu, kind: local, path: s}]
        databases: []
        policies:
          - name: standard
            rpo: 1h
            stores: [aws-eu]
            drill: {every: 1d, rto: 15m}
            retention: {keep_last: 7, sweep_older_than: 10m}
        """)
    assert load_errors(path) == [
        f"{path}:9: policies[0].retention.sweep_older_than: expected at least 1h: a sweep must never "
        "touch a backup or copy still being written, got 10m"
    ]


def test_bad_duration(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters: []
        stores: [{name: aws-eu, kind: local, path: s}]
        databases: []
        policies:
          - name: standard
            rpo: soon
            stores: [aws-eu]
            drill: {every: 1d, rto: 15m}
            retention: {keep_last: 7}
        """)
    assert load_errors(path) == [
        f"{path}:6: policies[0].rpo: expected a duration like 30m, 6h, 1d or 2w, got 'soon'"
    ]


def test_unknown_field_lists_the_allowed_ones(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
            colour: blue
        stores: []
        databases: []
        policies: []
        """)
    assert load_errors(path) == [
        f"{path}:5: clusters[0].colour: unknown field 'colour' (allowed: name, cloud, region, role, physical, replicates, standby, expected_size)"
    ]


def test_bad_store_kind(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters: []
        databases: []
        policies: []
        stores:
          - name: archive
            kind: ftp
        """)
    assert load_errors(path) == [f"{path}:6: stores[0].kind: expected one of local, s3, azure, gcs, got 'ftp'"]


def test_duplicate_names_point_at_the_first_definition(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        stores: []
        databases: []
        policies: []
        clusters:
          - name: pg-a
            cloud: aws
            region: eu-west-1
          - name: pg-a
            cloud: azure
            region: westeurope
        """)
    assert load_errors(path) == [
        f"{path}:8: clusters[1].name: duplicate cluster name 'pg-a' (first defined at line 5)"
    ]


@pytest.mark.parametrize(
    ("cluster", "policy", "expected"),
    [
        ("pg-z", "standard", "7: databases[0].cluster: unknown cluster 'pg-z' (known: pg-a)"),
        ("pg-a", "gold", "8: databases[0].policy: unknown policy 'gold' (known: standard)"),
    ],
)
def test_unknown_database_reference(tmp_path: Path, cluster: str, policy: str, expected: str) -> None:
    path = write_fleet(tmp_path, HEAD, f"""\
        databases:
          - name: orders
            dsn: postgresql://backup@127.0.0.1/orders
            cluster: {cluster}
            policy: {policy}
        """)
    assert load_errors(path) == [f"{path}:{expected}"]


def test_unknown_store_in_policy(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters: []
        stores: [{name: aws-eu, kind: local, path: s}]
        databases: []
        policies:
          - name: standard
            rpo: 1h
            stores:
              - aws-eu
              - gcp-eu
            drill: {every: 1d, rto: 15m}
            retention: {keep_last: 7}
        """)
    assert load_errors(path) == [f"{path}:9: policies[0].stores[1]: unknown store 'gcp-eu' (known: aws-eu)"]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://backup:hunter2@127.0.0.1/orders",
        "host=127.0.0.1 user=backup password=hunter2 dbname=orders",
    ],
)
def test_password_in_dsn_is_refused(tmp_path: Path, dsn: str) -> None:
    path = write_fleet(tmp_path, HEAD, f"""\
        databases:
          - name: orders
            cluster: pg-a
            dsn: "{dsn}"
            policy: standard
        """)
    errors = load_errors(path)
    assert errors == [
        f"{path}:7: databases[0].dsn: a password must not be written in the fleet file; "
        "use `password: {env: ...}` or a Vault reference"
    ]
    assert "hunter2" not in str(errors)


def test_dsn_and_connection_together_are_refused(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        databases:
          - name: orders
            cluster: pg-a
            dsn: postgresql://backup@127.0.0.1/orders
            connection: {vault: database/creds/orders}
            policy: standard
        """)
    assert load_errors(path) == [f"{path}:8: databases[0].connection: give either dsn or connection, not both"]


def test_every_error_is_reported_at_once_in_line_order(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, HEAD, """\
        databases:
          - name: orders
            cluster: pg-z
            dsn: postgresql://backup@127.0.0.1/orders
            policy: gold
        """)
    assert [error.split(": ")[0] for error in load_errors(path)] == [f"{path}:6", f"{path}:8"]


# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("1h30m", timedelta(minutes=90)), ("2w", timedelta(weeks=2)), (3600, timedelta(hours=1))],
)
def test_parse_duration(text: str | int, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "5 parsecs", "30m1h", "", "0s", "-5m"])
def test_parse_duration_refuses_non_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 30m, 6h, 1d or 2w"):
        parse_duration(text)


@pytest.mark.parametrize(("seconds", "expected"), [(5400, "1h30m"), (86400 * 8, "1w1d"), (45, "45s")])
def test_format_duration_round_trips(seconds: int, expected: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == expected
    assert parse_duration(expected) == timedelta(seconds=seconds)


def test_duration_doctests() -> None:
    assert doctest.testmod(durations).failed == 0


def test_dynamic_credentials_must_be_a_vault_login_with_a_userless_dsn(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, """\
        clusters: [{name: pg, cloud: aws, region: eu-west-1}]
        stores: [{name: aws-eu, kind: local, path: s}]
        databases:
          - name: orders
            cluster: pg
            dsn: postgresql://127.0.0.1:5432/orders
            credentials: {vault: database/creds/orders-backup}
            policy: standard
          - name: billing
            cluster: pg
            dsn: postgresql://backup@127.0.0.1:5432/billing
            credentials: {vault: database/creds/billing-backup}
            policy: standard
          - name: audit
            cluster: pg
            dsn: postgresql://127.0.0.1:5432/audit
            credentials: {env: AUDIT_LOGIN}
            policy: standard
        policies:
          - {name: standard, rpo: 1h, stores: [aws-eu], drill: {every: 1d, rto: 15m}, retention: {keep_last: 3}}
        """)
    assert load_errors(path) == [
        f"{path}:12: databases[1].credentials: the dsn must not name a user: credentials supply it",
        f"{path}:17: databases[2].credentials: credentials must be a Vault database login: "
        "{vault: database/creds/ROLE}",
    ]
