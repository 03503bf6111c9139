"""What each host gets from one process (``fetch.hosts``), against real servers on 127.0.0.1:
a breaker for a host that does not answer, a request rate, a server's Retry-After held for
the whole host, and a User-Agent naming the tool."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aisthetics_transforms.fetch import DEFAULT_LIMITS, FetchError, FetchLimits, fetch_bytes
from aisthetics_transforms.fetch.hosts import HOSTS
from aisthetics_transforms.fetch.limits import DEFAULT_USER_AGENT

BODY = b"image bytes" * 100
SILENT_DEADLINE = 1.0
MARGIN = 0.75  # thread scheduling on a busy 2-core machine


def limits(**fields) -> FetchLimits:
    return FetchLimits(allow_private_hosts=True, backoff=0.02, connect_timeout=2, read_timeout=5, **fields)


class Recording(ThreadingHTTPServer):
    """Answers every GET with BODY (or 429 + Retry-After on /busy...); records each request's
    path, start time and User-Agent. While ``mute`` is set it accepts and never answers."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, float, str]] = []
        self.lock = threading.Lock()
        self.mute = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _, _ in self.seen]

    def close(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.server.mute.is_set():
            self.server.stopping.wait(10)
            self.close_connection = True
            return
        with self.server.lock:
            self.server.seen.append((self.path, time.monotonic(), self.headers.get("User-Agent", "")))
        if self.path.startswith("/busy"):
            status, body, headers = 429, b"later", [("Retry-After", "3600")]
        elif self.path.startswith("/missing"):
            status, body, headers = 404, b"no", []
        else:
            status, body, headers = 200, BODY, []
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    srv = Recording()
    yield srv
    srv.close()


class Silent:
    """A host that accepts every connection and never answers; counts the connections."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.listener.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(conn)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def close(self):
        self.stop.set()
        for conn in self.held:
            conn.close()
        self.listener.close()


@pytest.fixture
def silent():
    host = Silent()
    yield host
    host.close()


def _fetch_all(uris, fetch_limits, threads=16):
    """Each uri's bytes or its FetchError, fetched on ``threads`` threads as the fetch stage does."""

    def one(uri):
        try:
            return fetch_bytes(uri, fetch_limits)
        except FetchError as err:
            return err

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, uris))


def test_a_host_that_never_answers_costs_one_deadline_not_one_per_uri(silent):
    uris = [f"http://{silent.host}/photo-{i}.jpg" for i in range(120)]
    start = time.monotonic()
    results = _fetch_all(uris, limits(deadline=SILENT_DEADLINE))
    took = time.monotonic() - start
    # without the breaker: 120 uris / 4 connections x 1 s = 30 s
    assert took < SILENT_DEADLINE + MARGIN, took
    types = [r.error_type for r in results]
    assert set(types) <= {"DeadlineExceeded", "HostUnavailable"}
    # only the first wave (as many as there are threads) waited its deadline
    assert types.count("HostUnavailable") >= len(uris) - 16
    unavailable = next(r for r in results if r.error_type == "HostUnavailable")
    assert silent.host in str(unavailable) and "tripped by: deadline of 1s" in str(unavailable)
    # a connection per slot; none once one of them got no answer
    assert len(silent.held) <= DEFAULT_LIMITS.max_connections_per_host
    assert HOSTS.take_tripped() == [silent.host]
    assert HOSTS.take_tripped() == []  # counted once


def test_a_refused_port_trips_after_a_few_attempts():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    uris = [f"http://127.0.0.1:{port}/photo-{i}.jpg" for i in range(50)]
    results = _fetch_all(uris, limits(deadline=5), threads=1)
    # the first uri's own attempts tripped the breaker; every later uri fails without one
    assert results[0].error_type == "ConnectionFailed" and "the host's breaker is now open" in str(results[0])
    assert {r.error_type for r in results[1:]} == {"HostUnavailable"}
    assert "connection failed" in str(results[-1]) and f"127.0.0.1:{port}" in str(results[-1])


def test_the_breaker_can_be_turned_off(silent):
    uris = [f"http://{silent.host}/photo-{i}.jpg" for i in range(8)]
    results = _fetch_all(uris, limits(deadline=0.5, breaker_failures=0))
    assert {r.error_type for r in results} == {"DeadlineExceeded"}
    assert HOSTS.take_tripped() == []


def test_a_host_that_answers_with_errors_is_not_tripped(server):
    results = _fetch_all([server.url(f"/missing/{i}") for i in range(20)], limits(deadline=5), threads=4)
    assert {r.error_type for r in results} == {"NotFound"}
    assert len(server.paths()) == 20


def test_a_tripped_host_is_probed_after_its_cooldown_and_used_again_once_it_answers(server):
    fetch_limits = limits(deadline=0.5, breaker_cooldown=0.3)
    server.mute.set()
    results = _fetch_all([server.url(f"/a-{i}") for i in range(12)], fetch_limits)
    assert "HostUnavailable" in {r.error_type for r in results}
    server.mute.clear()  # the host answers again, but during the cooldown it is not asked
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/during-cooldown"), fetch_limits)
    assert info.value.error_type == "HostUnavailable" and server.paths() == []
    time.sleep(0.35)
    # then one probe gets an answer, and the host is used again
    assert fetch_bytes(server.url("/probe"), fetch_limits) == BODY
    assert _fetch_all([server.url(f"/b-{i}") for i in range(6)], fetch_limits) == [BODY] * 6
    assert server.paths()[0] == "/probe"


def test_a_request_rate_per_host_spaces_the_requests(server):
    per_second = 20.0
    results = _fetch_all(
        [server.url(f"/photo-{i}") for i in range(11)], limits(max_requests_per_second_per_host=per_second)
    )
    assert results == [BODY] * 11
    starts = sorted(at for _, at, _ in server.seen)
    assert starts[-1] - starts[0] >= 10 / per_second * 0.95


def test_a_long_retry_after_ends_the_uri_at_once_and_holds_its_host(server):
    fetch_limits = limits(deadline=5)
    start = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_bytes(server.url("/busy/1"), fetch_limits)
    assert info.value.error_type == "HttpError" and "retry after 3600s" in str(info.value)
    # another uri of the host is not requested at all: the host asked for an hour's quiet
    with pytest.raises(FetchError) as other:
        fetch_bytes(server.url("/fine/2"), fetch_limits)
    assert other.value.error_type == "HttpError" and "asked (Retry-After)" in str(other.value)
    assert time.monotonic() - start < 1
    assert server.paths() == ["/busy/1"]


def test_requests_name_the_tool_or_the_user_agent_given(server):
    fetch_bytes(server.url("/default"), limits())
    fetch_bytes(server.url("/custom"), limits(user_agent="acme-catalog-scoring (ops@example.com)"))
    agents = {path: agent for path, _, agent in server.seen}
    assert agents["/default"] == DEFAULT_USER_AGENT and DEFAULT_USER_AGENT.startswith("aisthetics/")
    assert agents["/custom"] == "acme-catalog-scoring (ops@example.com)"
