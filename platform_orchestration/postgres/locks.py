"""One backup, prune or rewrap of a database at a time: a PostgreSQL advisory lock on the database.

Two schedule ticks, a retried run, a CLI command beside a Dagster run, on one machine or several:
whoever wants to back up, prune or rewrap a database first takes a *session-level advisory
lock* on that database's own server, ``pg_try_advisory_lock(LOCK_CLASS_ID, objid)`` with
``objid`` a stable hash of the fleet's name for the database, on a connection of its own
held open for the whole operation. PostgreSQL releases it when that session ends, so a
killed process (``kill -9``, an evicted pod) never leaves a stale lock behind, and nothing
outside the database has to be trusted or cleaned up.

The lock's session announces itself in ``application_name`` (operation, start time, host and
pid), which every login can read in ``pg_stat_activity``; a loser names the holder from it,
plus the client address and connection time where its privileges show them. Advisory locks
live in the server the connection reaches: fleet entries that reach one database through
different servers (primary and a replica) are not serialised against each other.

Plain Python over psycopg: nothing here knows of fleets, stores or Dagster.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType

import psycopg

from platform_orchestration.errors import Busy, PlatformError, one_line
from platform_orchestration.postgres.connection import PgConnection

__all__ = [
    "LOCK_CLASS_ID",
    "DatabaseBusy",
    "DatabaseLock",
    "LockHolder",
    "LockUnavailable",
    "lock_object_id",
]

LOCK_CLASS_ID = 0x706F7263  # "porc": this product's advisory-lock namespace (first key of the pair)
"""The first key of every advisory lock this product takes; other software's locks use other
class ids, so they never collide with ours."""

POLL_SECONDS = 0.2
_APPLICATION_NAME_BYTES = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1


class DatabaseBusy(Busy):
    """Another backup, prune or rewrap of the database holds its lock; nothing was changed."""

    def __init__(self, message: str, holders: tuple[LockHolder, ...] = ()) -> None:
        super().__init__(message)
        self.holders = holders


class LockUnavailable(PlatformError):
    """The database's lock could not be taken because the database cannot be reached."""


def lock_object_id(database: str) -> int:
    """The second key of `database`'s lock: the same on every machine and Python version
    (not ``hash()``), a positive int4 so that pg_locks shows it as written.

    >>> lock_object_id("orders") == lock_object_id("orders") != lock_object_id("customers")
    True
    """
    return int.from_bytes(hashlib.sha256(database.encode()).digest()[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True)
class LockHolder:
    """The session holding a database's lock, as far as the asking login may see it."""

    pid: int
    application_name: str
    user: str | None
    client: str | None  # address or host name; None when not visible to the asking login
    connected_at: datetime | None  # likewise

    def describe(self) -> str:
        """e.g. ``'backup lock 2026-11-29T13:57Z pod-7:412 platform-orchestration' (server pid 9,
        user backup, client 10.0.0.5, connected 2026-11-29T13:57:02Z)``."""
        facts = [f"server pid {self.pid}"]
        if self.user:
            facts.append(f"user {self.user}")
        facts.append(f"client {self.client}" if self.client else "client not visible to this login")
        if self.connected_at is not None:
            facts.append("connected " + _iso(self.connected_at))
        name = repr(self.application_name) if self.application_name else "a session with no application_name"
        return f"{name} ({', '.join(facts)})"


_HOLDERS = """
SELECT l.pid, coalesce(a.application_name, ''), a.usename,
       coalesce(host(a.client_addr), a.client_hostname,
                CASE WHEN a.backend_start IS NOT NULL AND a.client_port = -1 THEN 'local socket' END),
       a.backend_start
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(classid)s AND l.objid = %(objid)s
"""


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def lock_application_name(operation: str, since: datetime, host: str | None = None,
                          pid: int | None = None) -> str:
    """What the lock's session calls itself: the facts a loser needs first, since PostgreSQL
    keeps only 63 bytes and other logins see nothing else of the session.

    >>> lock_application_name("backup", datetime(2026, 11, 29, 13, 57, tzinfo=timezone.utc), "pod-7", 412)
    'backup lock 2026-11-29T13:57Z pod-7:412 platform-orchestration'
    """
    host = host if host is not None else socket.gethostname()
    pid = pid if pid is not None else os.getpid()
    name = f"{operation} lock {since.astimezone(timezone.utc):%Y-%m-%dT%H:%MZ} {host}:{pid} platform-orchestration"
    return name.encode()[:_APPLICATION_NAME_BYTES].decode(errors="ignore")


class DatabaseLock:
    """``with DatabaseLock(connection, "orders", "backup", wait=30):`` runs its body holding
    the database's lock, or raises :class:`DatabaseBusy` (after `wait` seconds of trying) or
    :class:`LockUnavailable` (the database cannot be reached), having changed nothing.

    `connection` reaches the database itself (the source of the backup); `database` is the
    fleet's name for it, which makes the lock's key; `operation` (``backup``, ``prune``,
    ``rewrap``) is what a loser is told. The lock is held by a connection of its own,
    released on exit, and by PostgreSQL when this process dies.
    """

    def __init__(self, connection: PgConnection, database: str, operation: str, *, wait: float = 0.0,
                 poll_seconds: float = POLL_SECONDS, connect_timeout: int = 10) -> None:
        if wait < 0:
            raise ValueError(f"wait must be zero or more seconds, got {wait}")
        self.connection = connection
        self.database = database
        self.operation = operation
        self.wait = wait
        self.poll_seconds = poll_seconds
        self.connect_timeout = connect_timeout
        self.key = {"classid": LOCK_CLASS_ID, "objid": lock_object_id(database)}
        self._session: psycopg.Connection | None = None

    def __enter__(self) -> DatabaseLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._session is not None

    def acquire(self) -> None:
        if self._session is not None:
            raise RuntimeError(f"the {self.operation} lock of {self.database} is already held here")
        session = self._connect()
        try:
            deadline = time.monotonic() + self.wait
            while not self._try(session):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._busy(self._holders(session))
                time.sleep(min(self.poll_seconds, remaining))
        except BaseException:
            session.close()
            raise
        self._session = session

    def release(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        try:
            session.execute("SELECT pg_advisory_unlock(%(classid)s, %(objid)s)", self.key)
        except psycopg.Error:
            pass  # the session is gone, and the lock with it
        finally:
            session.close()

    # --- internals ---------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        name = lock_application_name(self.operation, datetime.now(timezone.utc))
        try:
            session = psycopg.connect(
                self.connection.dsn, autocommit=True, application_name=name,
                connect_timeout=self.connect_timeout,
                # A half-open connection (a peer gone without a word) is noticed within minutes
                # on both sides, so the server frees the lock of a vanished holder.
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
                **self.connection.psycopg_kwargs())
        except psycopg.Error as exc:
            raise LockUnavailable(
                f"{self.operation} of {self.database}: cannot take the database's lock, the database "
                f"is unreachable at {self.connection.display()}: {one_line(exc, 300)}") from None
        try:
            if session.info.server_version >= 140000:
                # The session idles for the whole operation: a server-wide idle_session_timeout
                # must not end it (and drop the lock) half-way.
                session.execute("SET idle_session_timeout = 0")
        except psycopg.Error as exc:
            session.close()
            raise LockUnavailable(f"{self.operation} of {self.database}: preparing the lock's session "
                                  f"failed: {one_line(exc, 300)}") from None
        return session

    def _try(self, session: psycopg.Connection) -> bool:
        try:
            row = session.execute("SELECT pg_try_advisory_lock(%(classid)s, %(objid)s)", self.key).fetchone()
        except psycopg.Error as exc:
            raise LockUnavailable(f"{self.operation} of {self.database}: taking the database's lock "
                                  f"failed: {one_line(exc, 300)}") from None
        return bool(row and row[0])

    def _holders(self, session: psycopg.Connection) -> tuple[LockHolder, ...]:
        try:
            rows = session.execute(_HOLDERS, self.key).fetchall()
        except psycopg.Error:
            return ()  # naming the holder is a courtesy; the refusal stands without it
        return tuple(LockHolder(pid, name, user, client, since) for pid, name, user, client, since in rows)

    def _busy(self, holders: tuple[LockHolder, ...]) -> DatabaseBusy:
        held_by = "; ".join(h.describe() for h in holders) or "a session that has just released it"
        waited = f" after waiting {self.wait:g}s" if self.wait else ""
        return DatabaseBusy(
            f"{self.operation} of {self.database} refused{waited}: another backup, prune or rewrap "
            f"of {self.database} holds its lock: {held_by}; nothing was changed, try again once it "
            "has finished", holders)
