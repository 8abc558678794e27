"""Where the barman-cloud tools are, and how the server's user runs them.

barman-cloud (PyPI ``barman[cloud]``) lives in its own virtualenv, ``.venv-barman`` at the
repository root (``make install`` builds it from Debian's ``/usr/bin/python3``), or wherever
``PLATFORM_BARMAN_VENV`` points. Its tools run twice over: by us (base backups, listings,
restores) and by the PostgreSQL server itself (``archive_command``, ``restore_command``), which
runs as ``nobody`` when we are root. A virtualenv whose interpreter or files ``nobody`` cannot
reach (pyenv's Python under /root, a clone in a private directory) is mirrored once into a
world-readable directory, as :mod:`platform_orchestration.postgres.cluster` mirrors server
binaries. Each tool is started as ``<venv python> -m barman.clients.<module>``, so a mirrored
venv works without rewriting its scripts' shebangs.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from platform_orchestration.errors import PlatformError
from platform_orchestration.postgres.server_user import SERVER_USER, running_as_root, setpriv_as_server_user

VENV_ENV = "PLATFORM_BARMAN_VENV"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPOSITORY_ROOT / ".venv-barman"

# barman-cloud-<name> -> its module in barman.clients
_MODULES = {
    "wal-archive": "cloud_walarchive",
    "wal-restore": "cloud_walrestore",
    "backup": "cloud_backup",
    "backup-list": "cloud_backup_list",
    "backup-show": "cloud_backup_show",
    "backup-delete": "cloud_backup_delete",
    "check-wal-archive": "cloud_check_wal_archive",
    "restore": "cloud_restore",
}


class BarmanToolsMissing(PlatformError):
    """The barman-cloud tools are not installed where we look for them."""


@dataclass(frozen=True)
class BarmanTools:
    """A barman-cloud installation: ``python`` is its virtualenv's interpreter."""

    python: Path
    version: str

    def command(self, tool: str) -> list[str]:
        """The argv prefix that runs ``barman-cloud-<tool>``."""
        if tool not in _MODULES:
            raise ValueError(f"unknown barman-cloud tool {tool!r} (known: {', '.join(sorted(_MODULES))})")
        return [str(self.python), "-m", f"barman.clients.{_MODULES[tool]}"]


def _server_user_can_run(python: Path) -> bool:
    probe = subprocess.run(
        [*setpriv_as_server_user(), str(python), "-c", "import barman.clients.cloud_walarchive"],
        capture_output=True, timeout=60,
    )
    return probe.returncode == 0


def _installation_identity(venv: Path) -> str:
    """The venv's path, when it was (re)built and which distributions it holds."""
    try:
        built = (venv / "pyvenv.cfg").stat().st_mtime_ns
    except OSError:
        built = 0
    distributions = sorted(info.name for info in venv.glob("lib*/python3*/site-packages/*.dist-info"))
    return "\n".join([str(venv.resolve()), str(built), *distributions])


def _mirror_for_server_user(venv: Path) -> Path:
    """A world-readable copy of ``venv`` under the temporary directory, made once per venv path
    and installation: a venv rebuilt (its pyvenv.cfg rewritten) or holding other distributions
    gets a new mirror, never the copy of what it held before. Its interpreter symlink must point
    at a Python the server user can run (Debian's)."""
    digest = hashlib.sha256(_installation_identity(venv).encode()).hexdigest()[:12]
    mirror = Path(tempfile.gettempdir()) / f"platform-orchestration-barman-{digest}"
    if not (mirror / "bin" / "python").exists():
        staging = mirror.with_name(mirror.name + f".tmp{os.getpid()}")
        shutil.copytree(venv, staging, symlinks=True)
        for root, dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o444)
        try:
            staging.rename(mirror)
        except OSError:  # another process won the race; its copy is as good as ours
            shutil.rmtree(staging, ignore_errors=True)
    return mirror


def _venv_from_env() -> Path:
    configured = os.environ.get(VENV_ENV)
    return Path(configured) if configured else DEFAULT_VENV


def _installed_version(venv: Path) -> str | None:
    """barman's version from its package metadata in ``venv`` (no process: starting the venv's
    Python to import barman cost about 0.2-0.4 s of every command's start-up); None when there is
    no single readable ``barman-*.dist-info`` with its package in place (then we ask Python)."""
    infos = [info for pattern in ("lib/python3*/site-packages/barman-*.dist-info",
                                  "lib64/python3*/site-packages/barman-*.dist-info")
             for info in venv.glob(pattern)]
    if len({info.resolve() for info in infos}) != 1:
        return None
    info = infos[0]
    if not (info.parent / "barman" / "clients" / "cloud_backup.py").is_file():
        return None  # metadata left behind by a half-removed install: let the import say why
    try:
        with (info / "METADATA").open(encoding="utf-8") as metadata:
            for line in metadata:
                if line.startswith("Version:"):
                    return line.partition(":")[2].strip() or None
                if not line.strip():
                    break  # end of the headers
    except OSError:
        return None
    return None


def _imported_version(venv: Path, python: Path) -> str:
    result = subprocess.run([str(python), "-c", "import barman; print(barman.__version__)"],
                            capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise BarmanToolsMissing(f"barman-cloud is not importable in {venv}: "
                                 f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no output'}")
    return result.stdout.strip()


@functools.cache
def _found(venv: Path) -> BarmanTools:
    python = venv / "bin" / "python"
    if not python.exists():
        raise BarmanToolsMissing(
            f"barman-cloud is not installed: no {python} (run `make install`, which builds {DEFAULT_VENV.name} "
            f"from /usr/bin/python3, or set {VENV_ENV} to a virtualenv with barman[cloud])")
    return BarmanTools(python=python, version=_installed_version(venv) or _imported_version(venv, python))


@functools.cache
def _located(venv: Path) -> BarmanTools:
    found = _found(venv)
    python, version = found.python, found.version
    if running_as_root() and not _server_user_can_run(python):
        mirror = _mirror_for_server_user(venv)
        python = mirror / "bin" / "python"
        if not _server_user_can_run(python):
            raise BarmanToolsMissing(
                f"the server's user {SERVER_USER} cannot run barman-cloud from {venv} nor from its mirror "
                f"{mirror}: build the virtualenv from a Python {SERVER_USER} can run (/usr/bin/python3)")
    return BarmanTools(python=python, version=version)


def barman_tools(*, for_server_user: bool = True) -> BarmanTools:
    """The barman-cloud tools, runnable by us and by the server's user; BarmanToolsMissing if not.

    ``for_server_user=False`` when only we run them (a base backup: barman-cloud-backup runs as
    us, the server never does): the proof that the server's user can run them (a Python process
    as that user, about 0.25 s) is left to what the server runs (archive and restore commands)."""
    venv = _venv_from_env()
    return _located(venv) if for_server_user else _found(venv)
