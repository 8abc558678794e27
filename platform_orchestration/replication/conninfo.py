"""``primary_conninfo`` without a password in it: the password goes to a libpq password file that
only the server's user can read (0600, its directory 0700), and the conninfo names that file.

``primary_conninfo`` is readable with ``SHOW`` by monitoring roles and lands in
``postgresql.auto.conf``, which base backups copy: a password there would travel everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from platform_orchestration.postgres.server_user import chown_to_server_user

_DROPPED = ("password", "passfile", "dbname", "replication", "application_name")


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def passfile_for(base_dir: Path) -> Path:
    """Where a local standby in ``base_dir`` keeps its replication password (beside, never in, its data directory:
    a base backup of the standby must not carry it)."""
    return base_dir / "replication" / "pgpass"


def write_passfile(path: Path, stream_dsn: str, password: str) -> Path:
    """A libpq password file holding ``password`` for ``stream_dsn``'s host, port and user (any
    database, ``replication`` included), readable by the server's user only."""
    parts = conninfo_to_dict(stream_dsn)
    host = parts.get("host") or parts.get("hostaddr") or "localhost"
    line = ":".join(_pgpass_field(str(v)) for v in (host, parts.get("port") or "5432", "*",
                                                     parts.get("user") or "postgres", password))
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    chown_to_server_user(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(line + "\n")
    os.chmod(path, 0o600)
    chown_to_server_user(path)
    return path


def primary_conninfo(stream_dsn: str, application_name: str, passfile: Path | None) -> str:
    """The standby's ``primary_conninfo``: ``stream_dsn``'s connection fields, the standby's
    ``application_name`` (how pg_stat_replication names it) and ``passfile``; never a password."""
    parts = {k: v for k, v in conninfo_to_dict(stream_dsn).items() if k not in _DROPPED}
    parts["application_name"] = application_name
    if passfile is not None:
        parts["passfile"] = str(passfile)
    return make_conninfo(**parts)
