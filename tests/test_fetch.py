"""Fetch stage against a real HTTP server on 127.0.0.1 and real local files."""

from __future__ import annotations

import collections
import hashlib
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchError, FetchLimits, fetch_bytes

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


# Small waits so failures and retries are quick; the deadline tests set their own.
def loopback(**fields) -> FetchLimits:
    """Limits for servers on 127.0.0.1, which the address guard refuses by default."""
    return FetchLimits(allow_private_hosts=True, **fields)


FAST = loopback(backoff=0.05, connect_timeout=2, read_timeout=5, deadline=10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits = collections.Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.active = 0  # /slow/ requests being served now
        self.most_active = 0

    def enter_slow(self) -> None:
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)

    def leave_slow(self) -> None:
        with self.lock:
            self.active -= 1

    def hit(self, path: str) -> int:
        with self.lock:
            self.hits[path] += 1
            return self.hits[path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the session's pool is exercised

    def log_message(self, *args):
        pass

    def _send(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self._send(302, headers=[("Location", location)])

    def do_GET(self):
        path = self.path
        n = self.server.hit(path)
        stopping = self.server.stopping
        if path.startswith("/ok/"):
            self._send(200, PAYLOAD, [("Content-Type", "application/octet-stream")])
        elif path.startswith("/slow/"):
            # A distant server: each answer takes 50 ms; how many wait at once is recorded.
            self.server.enter_slow()
            try:
                time.sleep(0.05)
                self._send(200, path.encode() + PAYLOAD)
            finally:
                self.server.leave_slow()
        elif path == "/missing":
            self._send(404, b"nope")
        elif path.startswith("/flaky503/"):
            if n == 1:
                self._send(503, b"busy")
            else:
                self._send(200, PAYLOAD)
        elif path.startswith("/always503/"):
            self._send(503, b"busy")
        elif path.startswith("/ratelimited/"):
            if n == 1:
                self._send(429, b"slow down", [("Retry-After", "1")])
            else:
                self._send(200, PAYLOAD)
        elif path.startswith("/retry-after-hour/"):
            self._send(429, b"come back later", [("Retry-After", "3600")])
        elif path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            stopping.wait(10)
            self.close_connection = True
        elif path == "/late-stall":
            # The first bytes come just before the deadline, then nothing.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            if not stopping.wait(1.5):
                self.wfile.write(b"x" * 10)
                self.wfile.flush()
                stopping.wait(10)
            self.close_connection = True
        elif path == "/dribble":
            # One byte every 0.3 s: never silent for a whole read_timeout.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            try:
                while not stopping.wait(0.3):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:
                pass
            self.close_connection = True
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"y" * 16384
            try:
                while not stopping.is_set():
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
            self.close_connection = True
        elif path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(b"z" * 1000)
            self.close_connection = True
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/to-ftp":
            self._redirect("ftp://127.0.0.1/image.jpg")
        elif path == "/loop/a":
            self._redirect("/loop/b")
        elif path == "/loop/b":
            self._redirect("/loop/a")
        elif path == "/moved":
            self._redirect("/ok/target")
        else:
            self._send(500, b"unknown test path")


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def base(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def session():
    s = fetch.make_http_session(FAST)
    yield s
    s.close()


def _unique(prefix):
    return f"{prefix}/{uuid.uuid4().hex}"


def _fails(error_type, uri, limits=FAST, session=None):
    with pytest.raises(FetchError) as info:
        fetch_bytes(uri, limits, session)
    assert info.value.error_type == error_type, str(info.value)
    return info.value


# --- HTTP -------------------------------------------------------------------


def test_http_ok(base, session):
    assert fetch_bytes(f"{base}/ok/a", FAST, session) == PAYLOAD
    assert fetch_bytes(f"{base}/ok/b", FAST, session) == PAYLOAD  # pooled connection reused


def test_http_ok_without_a_session(base):
    assert fetch_bytes(f"{base}/ok/c", FAST) == PAYLOAD


def test_http_404(base, session):
    err = _fails("NotFound", f"{base}/missing", session=session)
    assert "HTTP 404 Not Found" in str(err) and f"{base}/missing" in str(err)


def test_http_503_then_200_is_retried(server, base, session):
    path = _unique("/flaky503")
    assert fetch_bytes(base + path, FAST, session) == PAYLOAD
    assert server.hits[path] == 2


def test_http_503_forever_gives_up_after_retries(server, base, session):
    path = _unique("/always503")
    err = _fails("HttpError", base + path, session=session)
    assert "HTTP 503" in str(err) and "4 attempts" in str(err)
    assert server.hits[path] == FAST.retries + 1


@pytest.mark.slow  # waits out a one-second Retry-After
def test_http_429_honours_retry_after(server, base, session):
    path = _unique("/ratelimited")
    start = time.monotonic()
    assert fetch_bytes(base + path, FAST, session) == PAYLOAD
    assert time.monotonic() - start >= 0.95
    assert server.hits[path] == 2


def test_http_retry_after_past_the_deadline_fails_at_once(server, base, session):
    path = _unique("/retry-after-hour")
    start = time.monotonic()
    err = _fails("HttpError", base + path, loopback(deadline=5), session)
    assert time.monotonic() - start < 1
    assert "429" in str(err) and "retry after 3600s, past the deadline" in str(err)
    assert server.hits[path] == 1


@pytest.mark.slow  # a server held until the deadline
def test_http_stalled_body_stops_at_the_deadline(base, session):
    limits = loopback(deadline=2, read_timeout=15)
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bytes(f"{base}/stall", limits, session)
    assert info.value.error_type in ("Timeout", "DeadlineExceeded")
    assert time.monotonic() - start < 2 + 0.75


@pytest.mark.slow  # a server held until the deadline
def test_http_body_stalling_late_stops_at_the_deadline(base, session):
    # A read that starts just before the deadline must not get a full read_timeout.
    limits = loopback(deadline=2, read_timeout=15)
    start = time.monotonic()
    _fails("DeadlineExceeded", f"{base}/late-stall", limits, session)
    assert time.monotonic() - start < 2 + 0.5


@pytest.mark.slow  # a server held until the deadline
def test_http_dribbled_body_stops_at_the_deadline(base, session):
    limits = loopback(deadline=2, read_timeout=1)
    start = time.monotonic()
    err = _fails("DeadlineExceeded", f"{base}/dribble", limits, session)
    assert time.monotonic() - start < 2 + 0.75
    assert f"{base}/dribble" in str(err)


def test_http_endless_body_is_cut_at_max_bytes(base, session):
    limits = loopback(max_bytes=200_000, deadline=10)
    start = time.monotonic()
    err = _fails("TooLarge", f"{base}/endless", limits, session)
    assert time.monotonic() - start < 2
    assert "200000 bytes (max_bytes)" in str(err)


def test_http_huge_content_length_refused_before_reading(base, session):
    start = time.monotonic()
    err = _fails("TooLarge", f"{base}/huge", FAST, session)
    assert time.monotonic() - start < 1
    assert "Content-Length 1000000000000" in str(err)


def test_http_redirect_to_file_refused(base, session):
    err = _fails("RedirectRefused", f"{base}/to-file", session=session)
    assert "file:///etc/passwd" in str(err)


def test_http_redirect_to_ftp_refused(base, session):
    _fails("RedirectRefused", f"{base}/to-ftp", session=session)


def test_http_redirect_loop(base, session):
    err = _fails("TooManyRedirects", f"{base}/loop/a", session=session)
    assert "loop" in str(err)


def test_http_redirect_followed(server, base, session):
    assert fetch_bytes(f"{base}/moved", FAST, session) == PAYLOAD
    assert server.hits["/ok/target"] >= 1


def test_http_connection_refused_is_quick():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    err = _fails("ConnectionFailed", f"http://127.0.0.1:{port}/image.jpg")
    assert time.monotonic() - start < 2
    assert f"127.0.0.1:{port}" in str(err)


# --- local files and other uris ----------------------------------------------


def test_local_file(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(PAYLOAD)
    assert fetch_bytes(str(path)) == PAYLOAD
    assert fetch_bytes(path.as_uri()) == PAYLOAD  # file:// is accepted too


def test_local_file_too_large(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(PAYLOAD)
    err = _fails("TooLarge", str(path), loopback(max_bytes=1000))
    assert "1000 bytes (max_bytes)" in str(err) and str(path) in str(err)


def test_local_missing(tmp_path):
    err = _fails("NotFound", str(tmp_path / "nope.jpg"))
    assert "nope.jpg" in str(err)


def test_local_directory(tmp_path):
    _fails("IsADirectory", str(tmp_path))


@pytest.mark.parametrize("uri", ["", "   ", None, 42])
def test_invalid_uri(uri):
    _fails("InvalidUri", uri)


def test_unsupported_scheme():
    err = _fails("UnsupportedScheme", "ftp://example.com/a.jpg")
    assert "ftp://example.com/a.jpg" in str(err)


@pytest.mark.parametrize(
    "uri, error_type",
    [
        ("gs://", "InvalidUri"),
        ("gs://bucket-only", "InvalidUri"),
        ("gs://bucket/folder/", "IsADirectory"),
    ],
)
def test_malformed_gcs_uri_refused_without_contacting_gcs(uri, error_type):
    start = time.monotonic()
    _fails(error_type, uri)
    assert time.monotonic() - start < 1


def test_refetch_returns_only_the_bytes_that_were_hashed(tmp_path):
    first = tmp_path / "first.jpg"
    first.write_bytes(PAYLOAD)
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    assert fetch.refetch(str(first), sha, None) == PAYLOAD
    assert fetch.refetch(first.as_uri(), sha, None) == PAYLOAD
    first.write_bytes(b"rewritten since it was fetched")
    with pytest.raises(FetchError) as info:
        fetch.refetch(str(first), sha, None)
    assert info.value.error_type == "ChangedDuringRun" and str(first) in str(info.value)
    first.unlink()
    with pytest.raises(FetchError) as info:
        fetch.refetch(str(first), sha, None)
    assert info.value.error_type == "NotFound"
