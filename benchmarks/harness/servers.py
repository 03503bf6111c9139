"""Loopback stand-ins for a CDN: images served from memory, and hosts that never answer.

Only 127.0.0.0/8 addresses are used. The image server is made cheap on purpose (whole responses
prepared in memory, one send per request, keep-alive): a CDN costs the pipeline none of its CPU,
and on a 2-core machine every millisecond the server spends is taken from the pipeline. It counts
what it did, including its own CPU time, so a report can say what it cost.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable


class ImageServer(ThreadingHTTPServer):
    """Serves ``files`` (url path -> bytes) on 127.0.0.1, each answer after ``latency`` s, with a
    strong ETag (as a CDN gives), to GET and HEAD. Paths in ``busy`` are answered 429 with
    ``Retry-After: 3600``.

    Counts, since the last :meth:`reset`: requests, bytes sent, the most requests in flight at once,
    connections, and the CPU seconds its threads used."""

    daemon_threads = True
    request_queue_size = 128  # the default 5 makes a burst of new connections wait for SYN retries

    def __init__(self, files: dict[str, bytes], latency: float = 0.0, host: str = "127.0.0.1", busy=()):
        self.responses = {path: _response(body) for path, body in files.items()}
        self.responses.update({path: _BUSY for path in busy})
        self.latency = latency
        self.lock = threading.Lock()
        self.in_flight = 0
        self.reset()
        super().__init__((host, 0), _ImageHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @classmethod
    def of_files(cls, paths: Iterable[str], latency: float = 0.0) -> ImageServer:
        """Every file read once into memory, served at ``/NAME``."""
        return cls({f"/{Path(p).name}": Path(p).read_bytes() for p in paths}, latency)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{Path(path).name}"

    def reset(self) -> None:
        with self.lock:
            self.per_path: Counter = Counter()  # requests per url path
            self.counts = {
                "requests": 0,
                "heads": 0,
                "bytes_sent": 0,
                "most_in_flight": 0,
                "connections": 0,
                "cpu_s": 0.0,
                "not_found": 0,
            }

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.counts)

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-answer is the client's business, not a benchmark failure


def _response(body: bytes) -> bytes:
    etag = hashlib.sha256(body).hexdigest()[:20]
    head = f'HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nETag: "{etag}"\r\nContent-Length: {len(body)}\r\n\r\n'
    return head.encode() + body


_BUSY = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3600\r\nContent-Length: 0\r\n\r\n"


class _ImageHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: fetch threads reuse their connections
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def handle(self):
        started = time.thread_time()  # this connection's thread: its CPU is the server's cost
        try:
            super().handle()
        finally:
            with self.server.lock:
                self.server.counts["connections"] += 1
                self.server.counts["cpu_s"] += time.thread_time() - started

    def do_GET(self):
        self._answer(with_body=True)

    def do_HEAD(self):
        self._answer(with_body=False)

    def _answer(self, with_body: bool):
        server = self.server
        with server.lock:
            server.in_flight += 1
            server.counts["requests"] += 1
            server.counts["heads"] += not with_body
            server.per_path[self.path.split("?", 1)[0]] += 1
            server.counts["most_in_flight"] = max(server.counts["most_in_flight"], server.in_flight)
        sent = 0
        try:
            if server.latency:
                time.sleep(server.latency)
            response = server.responses.get(self.path.split("?", 1)[0])
            if response is None:
                with server.lock:
                    server.counts["not_found"] += 1
                self.send_error(404)
                return
            if not with_body:
                response = response[: response.index(b"\r\n\r\n") + 4]
            self.wfile.write(response)
            sent = len(response)
        finally:
            with server.lock:
                server.in_flight -= 1
                server.counts["bytes_sent"] += sent


class SilentHosts:
    """``count`` hosts (127.0.0.2, 127.0.0.3, ...) that accept every connection and never answer:
    a dead CDN edge, not a refused port (which fails at once). Connections are held until
    :meth:`reset` or :meth:`close`."""

    def __init__(self, count: int):
        self.listeners = [socket.create_server((f"127.0.0.{2 + i}", 0), backlog=64) for i in range(count)]
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.closed = threading.Event()
        for listener in self.listeners:
            listener.settimeout(0.2)
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def uris(self, count: int | None = None) -> list[str]:
        """``count`` uris (default: one per host), spread over the hosts in turn."""
        hosts = [s.getsockname()[:2] for s in self.listeners]
        return [
            f"http://{hosts[i % len(hosts)][0]}:{hosts[i % len(hosts)][1]}/never-answers-{i}.jpg"
            for i in range(len(hosts) if count is None else count)
        ]

    def _accept(self, listener: socket.socket) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.held.append(conn)
                self.accepted += 1

    def reset(self) -> int:
        """Drop the held connections; returns how many were accepted since the last reset."""
        with self.lock:
            for conn in self.held:
                conn.close()
            self.held.clear()
            accepted, self.accepted = self.accepted, 0
        return accepted

    def close(self) -> None:
        self.closed.set()
        self.reset()
        for listener in self.listeners:
            listener.close()


class OversizeServer(ThreadingHTTPServer):
    """Bodies a fetch must refuse as TooLarge: ``/declared-N`` declares a 10 GB Content-Length
    (and sends a little), ``/streamed-N`` streams ``streamed_bytes`` with no Content-Length."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, streamed_bytes: int, host: str = "127.0.0.1"):
        self.streamed_bytes = streamed_bytes
        super().__init__((host, 0), _OversizeHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def uris(self, count: int) -> list[str]:
        host, port = self.server_address[:2]
        kinds = ("declared", "streamed")
        return [f"http://{host}:{port}/{kinds[i % 2]}-{i}.jpg" for i in range(count)]

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        pass  # the client hangs up once it has seen too much: that is the point


class _OversizeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a body without a length ends when the connection closes

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if self.path.startswith("/declared-"):
            self.send_header("Content-Length", str(10 * 2**30))
            self.end_headers()
            self.wfile.write(b"\xff\xd8" + b"\0" * 65536)
            return
        self.end_headers()
        chunk = b"\0" * 2**18
        for _ in range(self.server.streamed_bytes // len(chunk)):
            self.wfile.write(chunk)
