"""A consistent view of one database, shared with pg_dump through an exported snapshot.

Row counts, the LSN and pg_dump's data all come from the same MVCC snapshot, so the
counts recorded in the manifest are exactly what a correct restore must contain.
The exporting transaction stays open until the dump is finished: an exported
snapshot is only importable while its transaction lives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from platform_orchestration.postgres.connection import PgConnection

_USER_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp%%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2
"""


@dataclass(frozen=True)
class SnapshotFacts:
    snapshot_id: str
    snapshot_at: datetime
    lsn: str
    server_version: str
    server_version_num: int
    system_identifier: str
    database_bytes: int


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """Ordinary tables outside system schemas and not owned by extensions (pg_dump's view)."""
    return [(r[0], r[1]) for r in conn.execute(_USER_TABLES).fetchall()]


def count_rows(conn: psycopg.Connection, known: Mapping[str, int] | None = None) -> dict[str, int]:
    """Every ordinary table's exact row count (partitions one by one; a partitioned parent,
    relkind 'p', has no rows of its own and is not listed, so no row is counted twice),
    keyed "schema.table". Tables in `known` (counted already, e.g. as soon as a restore had
    loaded them) are taken from it, not counted again; a name in `known` that is not a
    table here is left out.

    Row-level security is switched off for the transaction (call this inside one), as
    pg_dump does: a policy must never hide rows from a count, so a login that a policy
    would apply to gets an error naming the table instead of a smaller number."""
    conn.execute("SET LOCAL row_security = off")
    known = known or {}
    counts: dict[str, int] = {}
    for schema, table in user_tables(conn):
        name = f"{schema}.{table}"
        counts[name] = known[name] if name in known else count_table_rows(conn, schema, table)
    return counts


def count_table_rows(conn: psycopg.Connection, schema: str, table: str) -> int:
    """One table's exact row count (row-level security must be off: see `count_rows`)."""
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
    return int(conn.execute(query).fetchone()[0])


class ExportedSnapshot:
    """Context manager: opens a REPEATABLE READ transaction and exports its snapshot."""

    def __init__(self, connection: PgConnection) -> None:
        self._connection = connection
        self._conn: psycopg.Connection | None = None

    def __enter__(self) -> ExportedSnapshot:
        self._conn = self._connection.connect(application_name="platform-orchestration-backup")
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        row = self._conn.execute(
            """SELECT pg_export_snapshot(), now(),
                      CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                           ELSE pg_current_wal_lsn() END::text,
                      current_setting('server_version'),
                      current_setting('server_version_num')::int,
                      (SELECT system_identifier::text FROM pg_control_system()),
                      pg_database_size(current_database())"""
        ).fetchone()
        self.facts = SnapshotFacts(*row)
        return self

    def count_rows(self) -> dict[str, int]:
        assert self._conn is not None
        return count_rows(self._conn)

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
