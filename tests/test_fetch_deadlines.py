"""Deadlines that hold: raw-socket servers on 127.0.0.1 that answer too slowly in every
way a read timeout cannot catch (each byte arrives well within it), and a report whose
thumbnails must finish, interpreter exit included, within their budget."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchError, FetchLimits

pytestmark = pytest.mark.slow  # real servers that hold each fetch until a deadline of seconds passes

DEADLINE = 2.0
MARGIN = 0.75  # thread scheduling on a busy 2-core machine
# read_timeout well above every gap the servers leave, so only the deadline can end a fetch.
LIMITS = FetchLimits(
    deadline=DEADLINE, read_timeout=5, connect_timeout=2, retries=3, backoff=0.05, allow_private_hosts=True
)
DRIP = 0.1  # seconds between two bytes


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _drip(conn: socket.socket, data: bytes, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(DRIP):
            return
        conn.sendall(data[i : i + 1])


def dribble_status_line(conn, stop):
    _drip(conn, b"HTTP/1.1 200 " + b"O" * 10_000, stop)


def dribble_headers(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
    _drip(conn, b"X-Slow: " + b"a" * 10_000, stop)


def flood_continue(conn, stop):
    while not stop.wait(DRIP):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


def stall(conn, stop):
    stop.wait(30)


def dribble_tls_record(conn, stop):
    # A TLS handshake record header announcing 16 KB, then its bytes one at a time:
    # the client's handshake waits for the whole record.
    conn.sendall(b"\x16\x03\x03\x40\x00")
    _drip(conn, b"\x02" * 16_384, stop)


class RawServer:
    """Accepts connections on 127.0.0.1 and runs ``behave(conn, stop)`` for each, after
    reading the request head (not for TLS, whose client speaks first in binary)."""

    def __init__(self, behave, read_request=True):
        self.behave, self.read_request = behave, read_request
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn:
            try:
                if self.read_request:
                    self.requests.append(_read_request(conn))
                self.behave(conn, self.stop)
            except OSError:
                pass  # the client hung up: what the deadline is for

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(behave, read_request=True):
        servers.append(RawServer(behave, read_request))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _timed_failure(call):
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        call()
    return info.value, time.monotonic() - started


@pytest.mark.parametrize("behave", [dribble_status_line, dribble_headers, flood_continue, stall])
def test_a_fetch_ends_at_its_deadline_whatever_the_server_dribbles(raw_server, behave):
    server = raw_server(behave)
    uri = f"http://127.0.0.1:{server.port}/image.jpg"
    err, elapsed = _timed_failure(lambda: fetch.fetch_image(uri, LIMITS))
    assert err.error_type == "DeadlineExceeded", str(err)
    assert elapsed <= DEADLINE + MARGIN, f"{behave.__name__}: {elapsed:.2f}s"
    assert uri in str(err) and "deadline" in str(err)
    assert len(server.requests) == 1  # no retry after the deadline


def test_a_tls_handshake_ends_at_the_deadline(raw_server):
    server = raw_server(dribble_tls_record, read_request=False)
    uri = f"https://127.0.0.1:{server.port}/image.jpg"
    err, elapsed = _timed_failure(lambda: fetch.fetch_image(uri, LIMITS))
    assert err.error_type == "DeadlineExceeded", str(err)
    assert elapsed <= DEADLINE + MARGIN


@pytest.mark.parametrize("behave", [dribble_headers, stall, flood_continue])
def test_a_version_check_ends_at_its_deadline_and_says_it_failed(raw_server, behave):
    server = raw_server(behave)
    uri = f"http://127.0.0.1:{server.port}/image.jpg"
    started = time.monotonic()
    version = fetch.check_version(uri, LIMITS)
    elapsed = time.monotonic() - started
    assert elapsed <= DEADLINE + MARGIN, f"{behave.__name__}: {elapsed:.2f}s"
    assert version.value is None
    assert version.failed and "DeadlineExceeded" in version.failed and uri in version.failed
    assert version.error_type == "DeadlineExceeded" and version.settles_the_fetch
    assert server.requests and server.requests[0].startswith(b"HEAD /image.jpg ")


def test_retries_and_back_off_stay_inside_the_deadline(raw_server):
    def broken(conn, stop):
        conn.sendall(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")

    server = raw_server(broken)
    limits = FetchLimits(deadline=1.0, retries=50, backoff=0.2, allow_private_hosts=True)
    err, elapsed = _timed_failure(lambda: fetch.fetch_image(f"http://127.0.0.1:{server.port}/x.jpg", limits))
    assert err.error_type == "DeadlineExceeded" and "503" in str(err)
    assert elapsed <= 1.0 + MARGIN
    assert 2 <= len(server.requests) < 51


def test_a_version_check_without_a_signal_is_not_a_failure(raw_server):
    def plain(conn, stop):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")

    def tagged(conn, stop):
        conn.sendall(b'HTTP/1.1 200 OK\r\nETag: "v1"\r\nContent-Length: 3\r\n\r\n')

    def gone(conn, stop):
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    plain_uri, tagged_uri, gone_uri = (f"http://127.0.0.1:{raw_server(b).port}/a.jpg" for b in (plain, tagged, gone))
    assert fetch.check_version(plain_uri, LIMITS) == (None, None, None, None)  # no signal: fetch and hash
    assert fetch.check_version(tagged_uri, LIMITS).value == 'etag="v1"'
    failed = fetch.check_version(gone_uri, LIMITS)
    assert failed.value is None and "NotFound" in failed.failed and gone_uri in failed.failed
    assert failed.error_type == "NotFound" and failed.settles_the_fetch


def test_thumbnails_finish_within_their_budget_including_interpreter_exit(raw_server, tmp_path):
    """The report's thumbnails of servers that never answer: the command, exit included,
    takes the budget, not the fetch deadline (nor the threads' join at exit)."""
    server = raw_server(stall)
    uris = [f"http://127.0.0.1:{server.port}/{i}.jpg" for i in range(12)]
    budget = 2.0
    code = f"""
import json, time
from aisthetics_transforms import report
from aisthetics_transforms.fetch import FetchLimits
limits = FetchLimits(deadline=20, read_timeout=20, retries=0, allow_private_hosts=True)
started = time.time()
found = report.fetch_thumbnails({uris!r}, limits, workers=4, budget_s={budget})
print(json.dumps({{"started": started, "problems": sorted({{t.problem for t in found.values()}})}}), flush=True)
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    out, err = proc.communicate(timeout=60)
    exited = time.time()
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["problems"] in (["Timeout"], ["DeadlineExceeded", "Timeout"], ["DeadlineExceeded"])
    # Margin: the interpreter's own teardown of the report's imports (duckdb, numpy...)
    # takes ~1.3 s on a busy 2-core machine; a thread joined at exit would take the
    # fetch deadline, 20 s.
    assert exited - result["started"] <= budget + 3.0, f"took {exited - result['started']:.1f}s against {budget}s"
