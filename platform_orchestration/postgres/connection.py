"""How to reach one database: a DSN without secrets, plus a password kept apart.

The password travels to libpq tools through the PGPASSWORD environment variable and to
psycopg as a keyword argument, never on a command line or in a printed DSN, because
command lines show up in `ps`, in logs and in Dagster's run metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from psycopg.conninfo import conninfo_to_dict, make_conninfo


@dataclass(frozen=True)
class PgConnection:
    dsn: str
    password: str | None = field(default=None, repr=False)

    @property
    def dbname(self) -> str:
        return str(conninfo_to_dict(self.dsn).get("dbname", ""))

    @classmethod
    def from_dsn(cls, dsn: str, password: str | None = None) -> PgConnection:
        """Split any password out of `dsn` (e.g. a DSN read from a secret) so it never
        reaches a command line."""
        parts = conninfo_to_dict(dsn)
        embedded = parts.pop("password", None)
        return cls(make_conninfo(**parts), password if password is not None else embedded)

    def for_database(self, dbname: str) -> PgConnection:
        """The same server and credentials, another database (maintenance work)."""
        return PgConnection(make_conninfo(self.dsn, dbname=dbname), self.password)

    def display(self) -> str:
        """A DSN safe to print: host, port, user and database only."""
        parts = conninfo_to_dict(self.dsn)
        shown = {k: parts[k] for k in ("host", "port", "user", "dbname") if k in parts}
        return make_conninfo(**shown)

    def psycopg_kwargs(self) -> dict[str, str]:
        return {"password": self.password} if self.password else {}

    def tool_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: inherits ours, adds the password."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env
