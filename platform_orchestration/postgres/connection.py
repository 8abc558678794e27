"""How to reach one database: a DSN without secrets, plus a password kept apart.

The password travels to libpq tools through the PGPASSWORD environment variable and to
psycopg as a keyword argument, never on a command line or in a printed DSN, because
command lines show up in `ps`, in logs and in Dagster's run metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from platform_orchestration.errors import PlatformError, one_line

if TYPE_CHECKING:
    import psycopg

# libpq waits for ever by default; a server that does not answer must fail a step, not hang it.
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10


def conninfo_to_dict(dsn: str, **overrides: Any) -> dict[str, Any]:
    """libpq's reading of a DSN (psycopg's parser; psycopg.ProgrammingError if it does not parse).

    psycopg (about 0.15 s to import) is loaded on the first call, not with this module: the
    commands that only read stores (list, verify) hold PgConnection values and never connect."""
    from psycopg.conninfo import conninfo_to_dict as parse

    return parse(dsn, **overrides)


def make_conninfo(conninfo: str = "", **overrides: Any) -> str:
    """A DSN from `conninfo` with `overrides` applied (psycopg's, loaded on first use)."""
    from psycopg.conninfo import make_conninfo as make

    return make(conninfo, **overrides)


class DatabaseUnavailable(PlatformError):
    """A PostgreSQL server could not be reached, or refused the login (down, wrong address,
    missing socket directory, wrong password, no such database)."""


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

    def connect(self, *, autocommit: bool = False, **options: Any) -> psycopg.Connection:
        """A psycopg connection; failing to connect raises DatabaseUnavailable naming the
        server (host, port, user, database) and libpq's reason on one line."""
        if "connect_timeout" not in conninfo_to_dict(self.dsn):
            options.setdefault("connect_timeout", DEFAULT_CONNECT_TIMEOUT_SECONDS)
        import psycopg

        try:
            return psycopg.connect(self.dsn, autocommit=autocommit, **self.psycopg_kwargs(), **options)
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to {self.display()}: {one_line(exc)}") from None

    def psycopg_kwargs(self) -> dict[str, str]:
        return {"password": self.password} if self.password else {}

    def tool_env(self) -> dict[str, str]:
        """Environment for pg_dump/pg_restore/psql: inherits ours, adds the password."""
        env = dict(os.environ)
        if self.password:
            env["PGPASSWORD"] = self.password
        return env
