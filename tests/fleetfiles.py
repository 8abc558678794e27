"""Test support: a fleet file pointing at the tests' own PostgreSQL cluster and stores."""

from __future__ import annotations

from pathlib import Path

from platform_orchestration.postgres import LocalCluster


def write_fleet(directory: Path, cluster: LocalCluster, database: str, *, rpo: str = "1h",
                rto: str = "10m", drill_every: str = "1d", password_env: str | None = None,
                vault_credentials: str | None = None) -> Path:
    """One cluster, one database with a policy requiring three local stores.

    The policies are named like the repository's (critical, standard) because
    schedules/*.yaml select databases by those names."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fleet.yaml"
    password = f"\n    password: {{env: {password_env}}}" if password_env else ""
    user = "postgres@"
    if vault_credentials:  # a dynamic login from Vault supplies the user
        user, password = "", f"\n    credentials: {{vault: {vault_credentials}}}"
    path.write_text(f"""\
clusters:
  - {{name: test-pg, cloud: local, region: loopback, role: primary}}
stores:
  - {{name: aws, kind: local, cloud: aws, path: stores/aws}}
  - {{name: azure, kind: local, cloud: azure, path: stores/azure}}
  - {{name: gcp, kind: local, cloud: gcp, path: stores/gcp}}
databases:
  - name: {database}
    cluster: test-pg
    dsn: postgresql://{user}127.0.0.1:{cluster.port}/{database}{password}
    policy: critical
policies:
  - name: critical
    rpo: {rpo}
    stores: [aws, azure, gcp]
    drill: {{every: {drill_every}, rto: {rto}}}
    retention: {{keep_last: 3}}
  - name: standard
    rpo: 1d
    stores: [aws, gcp]
    drill: {{every: 7d, rto: 30m}}
    retention: {{keep_last: 3}}
""")
    return path
