"""A TCP relay that limits the bandwidth from a server to its clients, standing for the network
between a restore or a verify and a cloud object store.

The emulators (moto server, Azurite) answer over loopback at memory speed: there the download
costs almost nothing and a verify is all CPU. A cloud store is read at what the link gives (a
single S3 GET stream: typically 50-200 MB/s); through this relay, both our command and its
baseline read at the same limited rate, so the ratio says what a user downloading over a
network would see. One token bucket for all connections, in a process of its own (its CPU is
not ours)."""

from __future__ import annotations

import argparse
import socket
import threading
import time

_CHUNK = 64 * 1024


class _Bucket:
    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def take(self, size: int) -> None:
        """Wait until `size` more bytes may pass."""
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + size / self._rate
        if start > now:
            time.sleep(start - now)


def _pump(source: socket.socket, sink: socket.socket, bucket: _Bucket | None) -> None:
    try:
        while data := source.recv(_CHUNK):
            if bucket is not None:
                bucket.take(len(data))
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for side in (source, sink):
            try:
                side.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen_port: int, target_port: int, rate: float) -> None:
    bucket = _Bucket(rate)
    listener = socket.create_server(("127.0.0.1", listen_port))
    while True:
        client, _ = listener.accept()
        server = socket.create_connection(("127.0.0.1", target_port))
        threading.Thread(target=_pump, args=(client, server, None), daemon=True).start()
        threading.Thread(target=_pump, args=(server, client, bucket), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.link", description=__doc__.split("\n\n")[0])
    parser.add_argument("listen_port", type=int)
    parser.add_argument("target_port", type=int)
    parser.add_argument("--mb-per-second", type=float, default=100.0)
    args = parser.parse_args()
    serve(args.listen_port, args.target_port, args.mb_per_second * 1e6)


if __name__ == "__main__":
    main()
