"""What a PostgreSQL server and one of its databases look like right now (read-only probes)."""

from __future__ import annotations

from dataclasses import dataclass

from platform_orchestration.postgres.connection import PgConnection

# A probe answers "is it up, and what is it": it should not wait as long as real work may.
PROBE_CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class ServerObservation:
    version: str
    in_recovery: bool

    @property
    def role(self) -> str:
        return "standby" if self.in_recovery else "primary"


@dataclass(frozen=True)
class DatabaseObservation:
    server_version: str
    size_bytes: int
    tables: int


def observe_server(connection: PgConnection) -> ServerObservation:
    """Version and recovery state; raises DatabaseUnavailable when the server cannot be reached."""
    with connection.connect(connect_timeout=PROBE_CONNECT_TIMEOUT_SECONDS) as conn:
        version, in_recovery = conn.execute(
            "SELECT current_setting('server_version'), pg_is_in_recovery()").fetchone()
    return ServerObservation(version, bool(in_recovery))


def observe_database(connection: PgConnection) -> DatabaseObservation:
    """Size and number of user tables of the connection's database."""
    with connection.connect(connect_timeout=PROBE_CONNECT_TIMEOUT_SECONDS) as conn:
        version, size, tables = conn.execute(
            """SELECT current_setting('server_version'), pg_database_size(current_database()),
                      (SELECT count(*) FROM pg_stat_user_tables)""").fetchone()
    return DatabaseObservation(version, int(size), int(tables))
