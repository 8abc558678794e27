"""Test support: the real Debian Prometheus, Pushgateway and Alertmanager on loopback, and a
small real HTTP server standing for a Slack-compatible webhook.

Each server gets a free port and a temporary directory of its own and is stopped with
SIGTERM when its context ends. `make test` installs the Debian packages (as root).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from platform_orchestration.postgres.cluster import free_port

PROMETHEUS = "/usr/bin/prometheus"
PUSHGATEWAY = "/usr/bin/prometheus-pushgateway"
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
PROMTOOL = "/usr/bin/promtool"


def require(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(f"{binary} is not installed (make test installs the Debian package as root)")


def get_json(url: str, timeout: float = 10) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def get_text(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up:\n{log.read_text()[-2000:]}") from None
            time.sleep(0.2)


@contextlib.contextmanager
def _server(argv: list[str], directory: Path, ready_path: str, port: int) -> Iterator[str]:
    require(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url + ready_path, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def alertmanager(directory: Path) -> Iterator[str]:
    """Alertmanager with one route to a receiver that sends nothing on: alerts posted to its
    API v2 are kept, deduplicated by label set, and listed by GET /api/v2/alerts."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "alertmanager.yml"
    config.write_text("route:\n  receiver: nowhere\n  group_wait: 1h\nreceivers:\n  - name: nowhere\n")
    port = free_port()
    with _server([ALERTMANAGER, f"--config.file={config}", f"--storage.path={directory / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                 directory, "/-/ready", port) as url:
        yield url


@contextlib.contextmanager
def pushgateway(directory: Path) -> Iterator[str]:
    port = free_port()
    with _server([PUSHGATEWAY, f"--web.listen-address=127.0.0.1:{port}"], directory, "/-/ready", port) as url:
        yield url


@contextlib.contextmanager
def prometheus(directory: Path, targets: dict[str, str], rule_files: tuple[Path, ...] = (),
               honor_labels: frozenset[str] = frozenset()) -> Iterator[str]:
    """Prometheus scraping each `targets` job (name -> host:port) every second."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = "".join(
        f"  - job_name: {name}\n    scrape_interval: 1s\n"
        + ("    honor_labels: true\n" if name in honor_labels else "")
        + f"    static_configs:\n      - targets: ['{target}']\n"
        for name, target in targets.items())
    rules = "".join(f"  - {shutil.copy(path, directory / path.name)}\n" for path in rule_files)
    config = directory / "prometheus.yml"
    config.write_text("global:\n  evaluation_interval: 1s\n"
                      + (f"rule_files:\n{rules}" if rules else "") + f"scrape_configs:\n{jobs}")
    port = free_port()
    with _server([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={directory / 'data'}",
                  f"--web.listen-address=127.0.0.1:{port}"], directory, "/-/ready", port) as url:
        yield url


def query(prometheus_url: str, promql: str) -> list[dict]:
    data = get_json(f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert data["status"] == "success", data
    return data["data"]["result"]


def wait_for_query(prometheus_url: str, promql: str, timeout: float = 30) -> list[dict]:
    """The query's result once it is not empty (scrapes and rule evaluations take a second or two)."""
    deadline = time.monotonic() + timeout
    while True:
        result = query(prometheus_url, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def alerts_in(alertmanager_url: str) -> list[dict]:
    return get_json(f"{alertmanager_url}/api/v2/alerts")  # type: ignore[return-value]


@dataclass
class WebhookServer:
    """A real HTTP server taking Slack-style posts: it records each JSON body and answers with
    the next status of `statuses` (then 200), so a test can make it fail a few times first, or
    503 to everything while `down`."""

    statuses: list[int] = field(default_factory=list)
    received: list[dict] = field(default_factory=list)
    attempts: int = 0
    down: bool = False  # answer 503 to everything while set

    def __post_init__(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.attempts += 1
                status = 503 if hook.down else hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.append(json.loads(body))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok" if status == 200 else b"try later")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/secret-token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
