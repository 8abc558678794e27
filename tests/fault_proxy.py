"""A TCP proxy between an object-store client and its emulator that injects real faults.

Faults happen on the wire, where they happen in production: HTTP 503 answers, a
connection cut in the middle of an upload, the server going away. The client, its
retry logic and our cleanup all run unmodified against them.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    failures_served: int = 0
    connections_cut: int = 0
    connections_accepted: int = 0
    _fail_budget: int = 0
    _fail_status: int = 503
    _cut_after: int | None = None
    _down: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sockets: set[socket.socket] = field(default_factory=set)
    _listener: socket.socket | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._listener = socket.create_server((self.host, self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="fault-proxy").start()
        return self

    def stop(self) -> None:
        self.down()
        if self._listener is not None:
            self._listener.close()

    # --- faults ---------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503) -> None:
        """Answer the next `count` new connections' first request with `status`, then close."""
        with self._lock:
            self._fail_budget, self._fail_status = count, status

    def cut_next_upload_after(self, byte_count: int) -> None:
        """Cut the first connection that sends more than `byte_count` bytes upstream (once)."""
        with self._lock:
            self._cut_after = byte_count

    def down(self) -> None:
        """The server is gone: cut every open connection and refuse new ones."""
        with self._lock:
            self._down = True
            sockets, self._sockets = list(self._sockets), set()
        for sock in sockets:
            _close(sock)

    def up(self) -> None:
        with self._lock:
            self._down = False

    # --- plumbing ---------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.connections_accepted += 1
            down = self._down
            fail = self._fail_budget > 0
            if fail:
                self._fail_budget -= 1
                self.failures_served += 1
            status = self._fail_status
        if down:
            _close(client)
            return
        if fail:
            _read_request_head(client)
            reason = {503: "Service Unavailable", 500: "Internal Server Error"}.get(status, "Error")
            client.sendall(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n"
                           "Retry-After: 0\r\n\r\n".encode())
            _close(client)
            return
        try:
            upstream = socket.create_connection((self.upstream_host, self.upstream_port))
        except OSError:
            _close(client)
            return
        with self._lock:
            self._sockets.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, source: socket.socket, sink: socket.socket, counts_upload: bool) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if counts_upload:
                    sent += len(data)
                    with self._lock:
                        cut = self._cut_after is not None and sent > self._cut_after
                        if cut:
                            self._cut_after = None
                            self.connections_cut += 1
                    if cut:
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _read_request_head(sock: socket.socket) -> None:
    buffer = b""
    sock.settimeout(5)
    try:
        while b"\r\n\r\n" not in buffer and len(buffer) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                return
            buffer += chunk
    except OSError:
        return


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
