"""The server's own user. initdb and postgres refuse to run as root, so when we are root (CI,
containers) a server we start runs as the unprivileged `nobody`, and so do the tools that write
its files (pg_basebackup into its data directory, barman-cloud as its archive_command), and the
files it reads are handed to it. Not root, everything runs as we do and nothing changes hands."""

from __future__ import annotations

import os
import pwd
from collections.abc import Sequence
from pathlib import Path

SERVER_USER = "nobody"


def running_as_root() -> bool:
    return os.geteuid() == 0


def setpriv_as_server_user(*, reset_env: bool = True) -> list[str]:
    """The `setpriv` prefix that runs a command as the server's user (its environment cleared
    unless `reset_env` is False)."""
    return ["setpriv", f"--reuid={SERVER_USER}", "--regid=nogroup", "--clear-groups",
            *(["--reset-env"] if reset_env else [])]


def as_server_user(command: Sequence[str]) -> list[str]:
    """``command`` run as the server's user when we are root (files it writes are then the server's)."""
    return [*setpriv_as_server_user(), *command] if running_as_root() else list(command)


def chown_to_server_user(path: Path) -> None:
    """Give `path` (itself only) to the server's user, when we are root."""
    if running_as_root():
        user = pwd.getpwnam(SERVER_USER)
        os.chown(path, user.pw_uid, user.pw_gid)


def hand_to_server_user(path: Path) -> None:
    """Give `path` and everything below it to the server's user, when we are root."""
    if not running_as_root():
        return
    user = pwd.getpwnam(SERVER_USER)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), user.pw_uid, user.pw_gid)
    os.chown(path, user.pw_uid, user.pw_gid)
