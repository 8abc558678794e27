"""Cluster-wide objects ("globals"): roles, their memberships and settings, tablespaces.

pg_dump leaves them out: they belong to the server, not to one database. A backup keeps
them beside its dump as `pg_dumpall --globals-only --no-role-passwords`, which reads
`pg_roles` instead of `pg_authid`, so any login that may run pg_dump may run it, and no
password (not even a hash) is ever stored.

Applying them to a restore target adds what is missing and changes nothing that exists:

- a role that already exists on the target is **kept as it is**: its CREATE, ALTER (its
  attributes, its settings) and COMMENT statements are skipped, so a DR site's own roles,
  passwords and settings win;
- the **connecting role** is never created, altered or granted anything, so applying the
  globals cannot demote or re-shape the login doing the restore (the source's backup login
  may be a plain user where the target's is a superuser of the same name);
- memberships (GRANT role TO member) are granted, which only adds; nothing is revoked;
- a tablespace that exists is kept; a new one is created only where its directory exists;
- passwords are never set (the script has none; any PASSWORD clause is removed anyway).

Statements run through psql with ON_ERROR_STOP off, one by one: a statement that fails
(a missing tablespace directory, a grantor that does not exist, no CREATEROLE) is
reported with the server's error and the rest goes on. Only a failure to run psql or to
connect is an error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from platform_orchestration.errors import PlatformError, one_line
from platform_orchestration.ownership import leased_work_directory
from platform_orchestration.postgres.binaries import PgInstall
from platform_orchestration.postgres.connection import PgConnection


class GlobalsError(PlatformError):
    """pg_dumpall or psql could not run, or could not connect; the message names the
    database, the server and the cause."""


def dump_globals(connection: PgConnection, tools: PgInstall) -> bytes:
    """The server's globals as pg_dumpall's SQL script, without role passwords.

    pg_dumpall connects to `connection`'s own database (`--database`), the one the login is
    known to reach, rather than to `postgres`, which a backup login may not be allowed into."""
    command = [tools.tool("pg_dumpall"), "--globals-only", "--no-role-passwords", "--no-sync",
               f"--dbname={connection.dsn}"]
    if connection.dbname:  # else libpq's default (the user's name), as for pg_dump
        command.append(f"--database={connection.dbname}")
    try:
        result = subprocess.run(command, capture_output=True, env=connection.tool_env(), timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GlobalsError(f"globals of {connection.dbname} at {connection.display()}: pg_dumpall "
                           f"{tools.version} could not run: {one_line(exc)}") from None
    if result.returncode != 0:
        raise GlobalsError(f"globals of {connection.dbname} at {connection.display()}: pg_dumpall "
                           f"{tools.version} exited with {result.returncode}: "
                           f"{one_line(result.stderr.decode(errors='replace'))}")
    return result.stdout


@dataclass(frozen=True)
class GlobalsApplied:
    """What applying a backup's globals to a server did."""

    roles_created: tuple[str, ...]
    roles_kept: tuple[str, ...]      # existed already: left exactly as they were
    tablespaces_kept: tuple[str, ...]
    skipped_connecting_role: str     # never created, altered or granted to
    statements_run: int
    failures: tuple[str, ...]        # one line each: the statement and the server's error

    def summary(self) -> str:
        """One line for a person: what was created, kept, and what failed.

        >>> GlobalsApplied(("app",), ("postgres",), (), "postgres", 7, ()).summary()
        'globals: 1 roles created, 1 kept as they were, 0 of 7 statements failed'
        """
        line = (f"globals: {len(self.roles_created)} roles created, {len(self.roles_kept)} kept as "
                f"they were, {len(self.failures)} of {self.statements_run} statements failed")
        return line + (f" ({'; '.join(self.failures[:3])}{'; ...' if len(self.failures) > 3 else ''})"
                       if self.failures else "")


_IDENT = r'(?:"(?:[^"]|"")*"|[^\s;,"()]+)'
_ROLE_SUBJECT = re.compile(rf"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE|SECURITY LABEL FOR {_IDENT} ON ROLE)"
                           rf"\s+({_IDENT})", re.IGNORECASE)
_TABLESPACE_SUBJECT = re.compile(rf"^(?:CREATE|ALTER|COMMENT ON|SECURITY LABEL FOR {_IDENT} ON)\s+TABLESPACE"
                                 rf"\s+({_IDENT})|^(?:GRANT|REVOKE)\b.*?\bON TABLESPACE\s+({_IDENT})",
                                 re.IGNORECASE | re.DOTALL)
_GRANTEE = re.compile(rf"^GRANT\b.*?\bTO\s+({_IDENT})", re.IGNORECASE | re.DOTALL)
_PASSWORD = re.compile(r"\s+(?:ENCRYPTED\s+)?PASSWORD\s+(?:'(?:[^']|'')*'|NULL)", re.IGNORECASE)
_PSQL_ERROR = re.compile(r"^psql:.*?:(\d+): (?:ERROR|FATAL):\s+(.*)$")


def _unquote(identifier: str) -> str:
    """pg_dumpall quotes an identifier only when it must (fmtId).

    >>> _unquote('"Weird ""Name"" x"'), _unquote("app_reader")
    ('Weird "Name" x', 'app_reader')
    """
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier


def split_statements(script: str) -> Iterator[str]:
    """pg_dumpall's script as statements (SQL up to a `;` outside quotes) and psql meta-commands
    (a backslash line), comments and blank lines left out.

    >>> list(split_statements("-- c\\n\\\\restrict k\\nCOMMENT ON ROLE a IS 'x;\\ny';\\nSET a = 1;\\n"))
    ['\\\\restrict k', "COMMENT ON ROLE a IS 'x;\\ny';", 'SET a = 1;']
    """
    current: list[str] = []
    quote = ""
    for line in script.splitlines():
        if not current and not quote:
            stripped = line.strip()
            if not stripped or stripped.startswith("--"):
                continue
            if stripped.startswith("\\"):
                yield stripped
                continue
        current.append(line)
        for char in line:
            if quote:
                if char == quote:
                    quote = ""  # a doubled quote closes and reopens: same state in the end
            elif char in ("'", '"'):
                quote = char
        if not quote and line.rstrip().endswith(";"):
            yield "\n".join(current).strip()
            current = []
    if current:
        yield "\n".join(current).strip()


@dataclass(frozen=True)
class _Plan:
    statements: tuple[str, ...]
    roles_to_create: tuple[str, ...]
    roles_kept: tuple[str, ...]
    tablespaces_kept: tuple[str, ...]


def plan_globals(script: str, connecting_role: str, existing_roles: set[str],
                 existing_tablespaces: set[str]) -> _Plan:
    """The statements of `script` to run on a server where `existing_roles` and
    `existing_tablespaces` exist and `connecting_role` is logged in (see the module's rules)."""
    keep: list[str] = []
    to_create: list[str] = []
    kept: set[str] = set()
    kept_tablespaces: set[str] = set()
    for statement in split_statements(script):
        if (match := _ROLE_SUBJECT.match(statement)) is not None:
            role = _unquote(match.group(1))
            if role == connecting_role:
                continue
            if role in existing_roles:
                kept.add(role)
                continue
            if statement.upper().startswith("CREATE ROLE"):
                to_create.append(role)
            statement = _PASSWORD.sub("", statement)
        elif (match := _TABLESPACE_SUBJECT.match(statement)) is not None:
            name = _unquote(match.group(1) or match.group(2))
            if name in existing_tablespaces:
                kept_tablespaces.add(name)
                continue
        if (grant := _GRANTEE.match(statement)) is not None and _unquote(grant.group(1)) == connecting_role:
            continue
        keep.append(statement)
    return _Plan(tuple(keep), tuple(to_create), tuple(sorted(kept)), tuple(sorted(kept_tablespaces)))


def apply_globals(script: bytes, connection: PgConnection, tools: PgInstall) -> GlobalsApplied:
    """Apply a globals script (from `dump_globals`) to the server of `connection`, through
    any database of it that `connection` names, under the module's rules."""
    where = f"applying globals to the server of {connection.display()}"
    try:
        with psycopg.connect(connection.dsn, autocommit=True, **connection.psycopg_kwargs()) as conn:
            me = str(conn.execute("SELECT current_user").fetchone()[0])
            roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
            tablespaces = {r[0] for r in conn.execute("SELECT spcname FROM pg_tablespace").fetchall()}
    except psycopg.Error as exc:
        raise GlobalsError(f"{where}: {one_line(exc)}") from None
    plan = plan_globals(script.decode(), me, roles, tablespaces)
    failures = _run_psql(plan.statements, connection, tools, where)
    try:
        with psycopg.connect(connection.dsn, autocommit=True, **connection.psycopg_kwargs()) as conn:
            now = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    except psycopg.Error as exc:
        raise GlobalsError(f"{where}: {one_line(exc)}") from None
    sql_statements = sum(1 for s in plan.statements if not s.startswith("\\"))
    return GlobalsApplied(
        roles_created=tuple(r for r in plan.roles_to_create if r in now), roles_kept=plan.roles_kept,
        tablespaces_kept=plan.tablespaces_kept, skipped_connecting_role=me,
        statements_run=sql_statements, failures=failures,
    )


def _short(statement: str, limit: int = 100) -> str:
    flat = " ".join(statement.split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def _run_psql(statements: tuple[str, ...], connection: PgConnection, tools: PgInstall,
              where: str) -> tuple[str, ...]:
    """Run `statements` with psql, errors tolerated; returns one line per failed statement."""
    lines_of: list[tuple[int, str]] = []  # (last line in the file, statement)
    text: list[str] = []
    line = 0
    for statement in statements:
        text.append(statement)
        line += statement.count("\n") + 1
        lines_of.append((line, statement))
    work = leased_work_directory("restore-globals-")  # reaped if this process is killed
    path = work / "globals.sql"
    try:
        path.write_text("\n".join(text) + "\n")
        result = subprocess.run(
            [tools.tool("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=0", f"--file={path}",
             f"--dbname={connection.dsn}"],
            capture_output=True, text=True, env=connection.tool_env(), timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise GlobalsError(f"{where}: psql {tools.version} could not run: {one_line(exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if result.returncode != 0:  # with ON_ERROR_STOP off: could not connect, or lost the connection
        raise GlobalsError(f"{where}: psql {tools.version} exited with {result.returncode}: "
                           f"{one_line(result.stderr)}")
    failures = []
    for message in result.stderr.splitlines():
        if (match := _PSQL_ERROR.match(message)) is None:
            continue
        at = int(match.group(1))
        statement = next((s for end, s in lines_of if end >= at), "")
        failures.append(f"{_short(statement)}: {match.group(2).strip()}")
    return tuple(failures)
