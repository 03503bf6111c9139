"""Address and path guards, the per-host connection limit, the byte budget and the error
types, against real servers on 127.0.0.1 and real files."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FETCH_ERROR_TYPES, FetchError, FetchLimits
from aisthetics_transforms.fetch.guards import BYTES_IN_FLIGHT, address_problem

REPO = Path(__file__).resolve().parents[1]
SECRET = b"SECRET-BODY-BYTES"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body_size=1000, delay=0.0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.body = bytes(range(256)) * (body_size // 256) + b"\x00" * (body_size % 256)
        self.delay = delay
        self.lock = threading.Lock()
        self.active = self.most_active = self.hits = 0

    @property
    def base(self):
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits += 1
            server.active += 1
            server.most_active = max(server.most_active, server.active)
        time.sleep(server.delay)
        if self.path.startswith("/to/"):
            status, body, extra = 302, b"", [("Location", self.path[len("/to/") :])]
        elif self.path == "/secret-500":
            status, body, extra = 500, SECRET, []
        else:
            status, body, extra = 200, server.body, []
        self.send_response(status)
        for name, value in extra:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        # A request stops counting as active before its answer leaves (end_headers sends
        # it): counted after, the client could read it, free its slot and send the next
        # request before this thread had said it was done.
        with server.lock:
            server.active -= 1
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture
def start_server():
    servers = []

    def start(**kwargs):
        server = _Server(**kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _error(uri, limits=FetchLimits()) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetch.fetch_image(uri, limits)
    assert info.value.error_type in FETCH_ERROR_TYPES
    return info.value


# --- addresses ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address, private, never",
    [
        ("169.254.169.254", False, True),
        ("169.254.1.1", False, True),
        ("fe80::1", False, True),
        ("fd00:ec2::254", False, True),
        ("::ffff:169.254.169.254", False, True),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", False, True),  # NAT64 of 169.254.169.254
        ("0.0.0.0", False, True),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.1.2.3", True, False),
        ("172.31.255.1", True, False),
        ("192.168.0.10", True, False),
        ("100.64.0.1", True, False),
        ("fd12:3456::1", True, False),
        ("93.184.215.14", False, False),
        ("2606:4700::1111", False, False),
    ],
)
def test_address_classes(address, private, never):
    ip = ipaddress.ip_address(address)
    refused_by_default = address_problem(ip, allow_private=False)
    refused_with_flag = address_problem(ip, allow_private=True)
    assert bool(refused_by_default) == (private or never)
    assert bool(refused_with_flag) == never
    if private:
        assert "--allow_private_hosts" in refused_by_default


def test_refused_hosts_are_never_connected_to(start_server):
    """In a fresh interpreter, an audit hook records every socket connect: link-local,
    metadata, private and loopback hosts (names, literals, redirect targets) are refused
    before any connection is attempted; only the allowed loopback server is reached."""
    server = start_server()
    port = server.server_address[1]
    code = f"""
import json, sys
connects = []
sys.addaudithook(lambda event, args: connects.append(str(args[1])) if event == "socket.connect" else None)
from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchError, FetchLimits
default, loopback_ok = FetchLimits(retries=0), FetchLimits(retries=0, allow_private_hosts=True)
cases = [
    ("http://169.254.169.254/computeMetadata/v1/", loopback_ok),
    ("http://metadata.google.internal/computeMetadata/v1/", loopback_ok),
    ("http://[fe80::1]/a.jpg", loopback_ok),
    ("http://[fd00:ec2::254]/latest/meta-data/", loopback_ok),
    ("http://[::ffff:169.254.169.254]/latest/", loopback_ok),
    ("http://10.0.0.1/a.jpg", default),
    ("http://192.168.1.1/a.jpg", default),
    ("http://127.0.0.1:{port}/a.jpg", default),
    ("http://localhost:{port}/a.jpg", default),
    ("http://127.0.0.1:{port}/to/http://169.254.169.254/latest/meta-data/", loopback_ok),
    ("http://127.0.0.1:{port}/to/http://metadata/computeMetadata/v1/", loopback_ok),
]
outcomes = []
for uri, limits in cases:
    try:
        fetch.fetch_image(uri, limits)
        outcomes.append([uri, "fetched", ""])
    except FetchError as err:
        outcomes.append([uri, err.error_type, str(err)])
    outcomes.append([uri, "check", fetch.check_version(uri, limits).failed or ""])
print(json.dumps({{"outcomes": outcomes, "connects": connects}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    fetched = [o for o in result["outcomes"] if o[1] != "check"]
    checked = [o for o in result["outcomes"] if o[1] == "check"]
    assert [o[1] for o in fetched] == ["AddressRefused"] * len(fetched), fetched
    for uri, _, message in fetched:
        assert uri.split("/to/")[0] in message
    assert all("AddressRefused" in message for _, _, message in checked), checked
    assert all("--allow_private_hosts" in m for u, _, m in fetched if "10.0.0.1" in u or "localhost" in u)
    # Only the two redirecting requests (and their HEADs) reached a server: ours.
    assert result["connects"] and set(result["connects"]) == {f"('127.0.0.1', {port})"}, result["connects"]
    assert server.hits == 4


def test_allowed_loopback_is_fetched_from_the_address_that_was_checked(start_server):
    server = start_server()
    limits = FetchLimits(allow_private_hosts=True)
    fetched = fetch.fetch_image(f"http://localhost:{server.server_address[1]}/a.jpg", limits)
    assert fetched.data == server.body and type(fetched.data) is bytes


def test_a_session_used_directly_is_guarded_too(start_server):
    server = start_server()
    with fetch.make_http_session(FetchLimits()) as session:
        with pytest.raises(FetchError) as info:
            session.get(f"{server.base}/a.jpg", timeout=5)
    assert info.value.error_type == "AddressRefused"
    assert server.hits == 0
    with pytest.raises(FetchError) as info:  # a plain Session is swapped for a guarded one
        fetch.fetch_image(f"{server.base}/a.jpg", FetchLimits(), requests.Session())
    assert info.value.error_type == "AddressRefused"


@pytest.mark.parametrize("target", ["/proc/self/environ", "/sys/kernel/hostname", "/dev/zero"])
def test_pseudo_files_are_refused_even_through_a_symlink(tmp_path, target):
    link = tmp_path / "innocent.jpg"
    link.symlink_to(target)
    for uri in (target, f"file://{target}", str(link), link.as_uri()):
        err = _error(uri)
        assert err.error_type == "PathRefused" and uri in str(err) and target.split("/")[1] in str(err)
        assert "SHELL" not in str(err) and "PATH=" not in str(err)
        failed = fetch.check_version(uri).failed
        assert failed and "PathRefused" in failed


# --- per-host connections ------------------------------------------------------


@pytest.mark.slow  # 48 requests to servers that take 0.15 s each
def test_requests_to_one_host_are_limited_process_wide(start_server):
    slow_a, slow_b = start_server(delay=0.15), start_server(delay=0.15)
    limits = FetchLimits(allow_private_hosts=True, max_connections_per_host=3)
    sessions = fetch.ThreadSessions(limits)
    errors = []

    def fetch_some(server, n):
        for i in range(n):
            try:
                fetch.fetch_image(f"{server.base}/{threading.get_ident()}/{i}.jpg", limits, sessions.get())
            except FetchError as err:
                errors.append(err)

    threads = [threading.Thread(target=fetch_some, args=(server, 3)) for server in (slow_a, slow_b) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    sessions.close()
    assert not errors
    assert (slow_a.most_active, slow_b.most_active) == (3, 3)  # never more, and each host has its own 3
    assert slow_a.hits == slow_b.hits == 24


def test_each_redirect_hop_takes_a_slot_of_its_own_host(start_server):
    first, second = start_server(delay=0.1), start_server(delay=0.1)
    limits = FetchLimits(allow_private_hosts=True, max_connections_per_host=2)
    fetched = []
    threads = [
        threading.Thread(
            target=lambda i=i: fetched.append(fetch.fetch_image(f"{first.base}/to/{second.base}/{i}.jpg", limits))
        )
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(fetched) == 8 and all(f.data == second.body for f in fetched)
    assert (first.most_active, second.most_active) == (2, 2)
    assert first.hits == second.hits == 8


@pytest.mark.slow  # servers held until the deadline
def test_waiting_for_a_host_slot_counts_against_the_deadline(start_server):
    slow = start_server(delay=3.0)
    limits = FetchLimits(allow_private_hosts=True, max_connections_per_host=1, deadline=1.0, retries=0)
    blocker = threading.Thread(target=fetch.fetch_image, args=(f"{slow.base}/first.jpg", replace(limits, deadline=5)))
    blocker.start()
    time.sleep(0.3)  # the first fetch holds the only slot
    started = time.monotonic()
    err = _error(f"{slow.base}/second.jpg", limits)
    assert time.monotonic() - started <= 1.0 + 0.5
    assert err.error_type == "DeadlineExceeded" and "max_connections_per_host" in str(err)
    blocker.join(10)
    assert slow.hits == 1


# --- bytes in flight -------------------------------------------------------------


def test_bodies_in_flight_stay_within_the_byte_budget(start_server):
    server = start_server(body_size=3 * 2**20, delay=0.05)
    limits = FetchLimits(
        allow_private_hosts=True, max_bytes=4 * 2**20, max_bytes_in_flight=8 * 2**20, max_connections_per_host=16
    )
    sessions = fetch.ThreadSessions(limits)
    digests, errors = [], []
    BYTES_IN_FLIGHT.peak = BYTES_IN_FLIGHT.in_use

    def fetch_some(t):
        for i in range(3):
            try:
                data = fetch.fetch_image(f"{server.base}/{t}/{i}.jpg", limits, sessions.get()).data
                digests.append(hashlib.sha256(data).hexdigest())
            except FetchError as err:
                errors.append(err)

    threads = [threading.Thread(target=fetch_some, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    sessions.close()
    assert not errors
    assert digests == [hashlib.sha256(server.body).hexdigest()] * 24
    assert 6 * 2**20 <= BYTES_IN_FLIGHT.peak <= 8 * 2**20  # two bodies at once, never three


@pytest.mark.slow  # a subprocess measures its peak memory over 300 MB of bodies
def test_many_large_bodies_peak_at_the_budget_not_their_sum(start_server):
    """30 bodies of 10 MB on 16 threads: the bytes Python holds at once (tracemalloc's
    peak, which the allocator's caching does not blur) stay near the 40 MiB budget, not
    16 bodies (160 MB, or twice that joined from chunks); one body is held once."""
    server = start_server(body_size=10 * 2**20)
    code = f"""
import hashlib, json, threading, tracemalloc
from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchLimits
limits = FetchLimits(allow_private_hosts=True, max_bytes=12 * 2**20, max_bytes_in_flight=40 * 2**20,
                     max_connections_per_host=16)
sessions = fetch.ThreadSessions(limits)
fetch.fetch_image("{server.base}/warm.jpg", limits, sessions.get())
tracemalloc.start()
digest = hashlib.sha256(fetch.fetch_image("{server.base}/one.jpg", limits, sessions.get()).data).hexdigest()
one = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
sizes = []
def work(t):
    for i in range(t, 30, 16):
        sizes.append(len(fetch.fetch_image(f"{server.base}/{{i}}.jpg", limits, sessions.get()).data))
threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({{"one_mb": one / 2**20, "many_mb": tracemalloc.get_traced_memory()[1] / 2**20,
                  "sizes": sorted(set(sizes)), "count": len(sizes), "digest": digest}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["digest"] == hashlib.sha256(server.body).hexdigest()
    assert (result["sizes"], result["count"]) == ([len(server.body)], 30)
    assert result["one_mb"] <= 10 * 1.05 + 1, result  # held once, not joined from chunks into a copy
    # The budget, plus results on their way back to their threads (released from the
    # budget, not yet dropped): measured ~62 MB; unbounded it is 160 MB or more.
    assert result["many_mb"] <= 40 + 40, result


def test_the_budget_must_hold_one_image_at_the_cap():
    with pytest.raises(ValueError, match="max_bytes_in_flight"):
        FetchLimits(max_bytes=100, max_bytes_in_flight=99)


# --- error types -------------------------------------------------------------------


def test_error_types_are_stable_tags_and_messages_hold_no_body_bytes(start_server, tmp_path):
    server = start_server()
    loopback = FetchLimits(allow_private_hosts=True, retries=0)
    (tmp_path / "dir.jpg").mkdir()
    os.mkfifo(tmp_path / "pipe.jpg")
    cases = {
        f"{server.base}/secret-500": ("HttpError", loopback),
        str(tmp_path / "dir.jpg"): ("IsADirectory", FetchLimits()),
        str(tmp_path / "pipe.jpg"): ("NotAFile", FetchLimits()),
        "s3://bucket/a.jpg": ("UnsupportedScheme", FetchLimits()),
        "http://[::1/a.jpg": ("InvalidUri", loopback),
        f"{server.base}/to/ftp://example.com/a.jpg": ("RedirectRefused", loopback),
    }
    for uri, (error_type, limits) in cases.items():
        err = _error(uri, limits)
        assert err.error_type == error_type, (uri, str(err))
        assert SECRET.decode() not in str(err)
    with pytest.raises(ValueError):
        FetchError("OSError", "a library's class name is no error type")
    assert len(set(FETCH_ERROR_TYPES)) == len(FETCH_ERROR_TYPES)
    assert all(t[0].isupper() and t.isalnum() for t in FETCH_ERROR_TYPES)
