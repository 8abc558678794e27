"""Local stand-ins for the three clouds' object stores, for `make demo-clouds`.

moto server (S3), Azurite (Azure Blob) and the GCS emulator are real servers that the
real SDKs talk to over HTTP, so the demo exercises exactly the code paths production
uses; only the endpoint differs. Each runs as a child process on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
AZURITE_MAIN = REPOSITORY_ROOT / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
# Azurite's published development account: a well-known key, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")


class EmulatorError(RuntimeError):
    pass


@dataclass
class Emulator:
    name: str
    command: list[str]
    port: int
    ready_path: str
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log_dir: Path) -> Emulator:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"{self.name}.log", "w")  # noqa: SIM115 - lives as long as the process
        self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmulatorError(f"{self.name} exited with {self.process.returncode}; "
                                    f"see {log_dir / (self.name + '.log')}")
            try:
                urllib.request.urlopen(self.endpoint + self.ready_path, timeout=1)
                return self
            except urllib.error.HTTPError:
                return self  # it answers: an error status still means it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise EmulatorError(f"{self.name} did not answer on {self.endpoint} within 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def moto_server(port: int) -> Emulator:
    return Emulator("moto-s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    port, "/moto-api/")


def azurite(port: int, data_dir: Path | None = None) -> Emulator:
    """Azurite in memory, or keeping its data in `data_dir`."""
    node = shutil.which("node")
    if node is None or not AZURITE_MAIN.exists():
        raise EmulatorError("Azurite is not installed: run `npm ci` (make does) in the repository")
    storage = ["--inMemoryPersistence"]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        storage = ["--location", str(data_dir)]
    return Emulator("azurite", [node, str(AZURITE_MAIN), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                                *storage, "--disableTelemetry", "--silent", "--skipApiVersionCheck"],
                    port, f"/{AZURITE_ACCOUNT}?comp=list")


def gcs_emulator(port: int) -> Emulator:
    executable = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) \
        or shutil.which("gcp-storage-emulator")
    if executable is None:
        raise EmulatorError("gcp-storage-emulator is not installed (it comes with the test extras)")
    return Emulator("gcs", [executable, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                    port, "/")
