"""The fetch stage's DoFn: one UriTask -> a claim on its content, or its outcome; threads
that hand results on as they finish, so a dead host costs one thread one deadline."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from aisthetics_transforms.fetch import FetchLimits, check_version
from aisthetics_transforms.fetch.transform import FetchImages
from aisthetics_transforms.records import OUTCOMES, STATS, PreviousScore, Score, UriTask

PAYLOAD = bytes(range(256)) * 40
LIMITS = FetchLimits(backoff=0.05, connect_timeout=2, read_timeout=5, deadline=10, allow_private_hosts=True)
SCORE = Score(5.0, 1.5, (0.1,) * 10, "nima-test", None)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.active = self.most_active = 0
        self.requests: list[tuple[str, str]] = []  # (method, path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        """404 for /missing, 405 under /nohead/ (a server that refuses HEAD), else an ETag."""
        with self.server.lock:
            self.server.requests.append(("HEAD", self.path))
        status = 404 if self.path == "/missing" else 405 if self.path.startswith("/nohead/") else 200
        self.send_response(status)
        if status == 200:
            self.send_header("ETag", '"tonight"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        server = self.server
        with server.lock:
            server.requests.append(("GET", self.path))
        if self.path.startswith("/slow/"):
            with server.lock:
                server.active += 1
                server.most_active = max(server.most_active, server.active)
            try:
                time.sleep(0.05)
            finally:
                with server.lock:
                    server.active -= 1
        status, body = (404, b"nope") if self.path == "/missing" else (200, self.path.encode() + PAYLOAD)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def base(server):
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def dead_host():
    """A host that accepts connections and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_COLLECTED: dict = {}  # the in-process runner calls _collect in this process


def _collect(item, name: str) -> None:
    _COLLECTED.setdefault(name, []).append(item)


def run_fetch(tasks, limits=LIMITS, threads=4):
    """(claims, outcomes, stats) of FetchImages over ``tasks`` (given in lists of 3), as plain lists."""
    _COLLECTED.clear()
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outputs = (
            p
            | beam.Create([tasks[i : i + 3] for i in range(0, len(tasks), 3)], reshuffle=False)
            | beam.ParDo(FetchImages(limits, threads)).with_outputs(OUTCOMES, STATS, main="claims")
        )
        for name, pcoll in (("claims", outputs.claims), ("outcomes", outputs[OUTCOMES]), ("stats", outputs[STATS])):
            _ = pcoll | f"Collect{name}" >> beam.Map(_collect, name)
    outcomes = [outcome for listed in _COLLECTED.get("outcomes", []) for outcome in listed]
    return _COLLECTED.get("claims", []), outcomes, _COLLECTED.get("stats", [])


def test_every_uri_ends_as_one_claim_or_one_outcome_naming_its_row_buckets(base, tmp_path):
    local, unchanged, touched, changed = (tmp_path / f"{n}.jpg" for n in ("local", "unchanged", "touched", "changed"))
    for path in (local, unchanged, touched, changed):
        path.write_bytes(path.name.encode() + PAYLOAD)

    def previous_of(path, data):
        return PreviousScore(sha(data), check_version(str(path)).value, SCORE)

    before = {p: previous_of(p, p.name.encode() + PAYLOAD) for p in (unchanged, touched, changed)}
    # Same size and mtime, other bytes: the version says unchanged, so the bytes are not read.
    info = os.stat(unchanged)
    unchanged.write_bytes(b"X" * info.st_size)
    os.utime(unchanged, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.utime(touched, ns=(1, 1))  # a new mtime, the same bytes: hashed, not scored again
    changed.write_bytes(b"new " + PAYLOAD)
    tasks = [
        UriTask(f"{base}/ok/a", (0,)),
        UriTask(str(local), (1, 2)),
        UriTask(f"{base}/missing", (0, 2)),
        UriTask("", (3,)),
        *[UriTask(str(p), (4,), before[p]) for p in (unchanged, touched, changed)],
    ]
    claims, outcomes, stats = run_fetch(tasks)

    assert sorted((s, c.uri, c.buckets) for s, c in claims) == sorted(
        [
            (sha(b"/ok/a" + PAYLOAD), f"{base}/ok/a", (0,)),
            (sha(b"local.jpg" + PAYLOAD), str(local), (1, 2)),
            (sha(b"new " + PAYLOAD), str(changed), (4,)),
        ]
    )
    # One outcome per uri, naming every row bucket its rows are in.
    summary = sorted(
        (row_buckets, o.uri, o.failure.error_type if o.failure else None, o.reused, o.content_sha256)
        for row_buckets, o in outcomes
    )
    assert summary == sorted(
        [
            ((0, 2), f"{base}/missing", "NotFound", False, None),
            ((3,), "", "InvalidUri", False, None),
            ((4,), str(unchanged), None, True, before[unchanged].content_sha256),
            ((4,), str(touched), None, True, before[touched].content_sha256),
        ]
    )
    touched_outcome = next(o for _, o in outcomes if o.uri == str(touched))
    assert touched_outcome.source_version == check_version(str(touched)).value != before[touched].source_version
    assert all(o.score == SCORE for _, o in outcomes if o.reused)
    totals = {}
    for counts in stats:
        for key, n in counts.items():
            totals[key] = totals.get(key, 0) + n
    assert totals == {
        "uris": 7,
        "fetched": 4,
        "fetch_errors": 2,
        "version_checks": 3,
        "uris_unchanged": 1,
        "uris_same_content": 1,
    }


# One thread takes 30 slow requests one after another (seconds): the slow set.
@pytest.mark.parametrize("threads", [pytest.param(1, marks=pytest.mark.slow), 4])
def test_threads_fetch_at_once_and_every_uri_comes_out_once(server, base, threads):
    tasks = [UriTask(f"{base}/slow/{threads}/{i}", (i % 3,)) for i in range(30)]
    with server.lock:
        server.most_active = 0
    claims, outcomes, _ = run_fetch(tasks, threads=threads)
    assert not outcomes
    assert sorted((c.uri, s) for s, c in claims) == sorted(
        (t.uri, sha(t.uri[len(base) :].encode() + PAYLOAD)) for t in tasks
    )
    assert server.most_active == threads


@pytest.mark.slow  # a silent host, waited on until the deadline
def test_a_dead_host_holds_one_thread_for_one_deadline_not_the_window(base, dead_host):
    """Four uris of a host that never answers, spread among forty slow ones: results leave
    as they finish, so they add about one deadline to the run, not one per dead uri."""
    deadline = 2.0
    limits = FetchLimits(
        connect_timeout=1,
        read_timeout=deadline,
        deadline=deadline,
        retries=0,
        allow_private_hosts=True,
        max_connections_per_host=16,
    )
    tasks = [UriTask(f"{base}/slow/dead/{i}", (0,)) for i in range(40)]
    started = time.monotonic()
    run_fetch(tasks, limits=limits, threads=8)
    alive_only = time.monotonic() - started
    for i in range(4):
        tasks.insert(i * 10, UriTask(f"{dead_host}/photo-{i}.jpg", (1,)))
    started = time.monotonic()
    claims, outcomes, _ = run_fetch(tasks, limits=limits, threads=8)
    with_dead = time.monotonic() - started
    assert len(claims) == 40
    assert sorted(o.failure.error_type for _, o in outcomes) == ["DeadlineExceeded"] * 4
    assert with_dead - alive_only < 1.5 * deadline, (alive_only, with_dead)


def test_a_failed_check_fetches_only_when_the_fetch_could_find_otherwise(server, base):
    """A check that found the object missing is its failure (no GET after the HEAD); a
    server that refuses HEAD is fetched with GET. Both checks are counted as failed."""
    earlier = PreviousScore(sha(b"old"), 'etag="last night"', SCORE)
    with server.lock:
        server.requests.clear()
    claims, outcomes, stats = run_fetch(
        [UriTask(f"{base}/missing", (0,), earlier), UriTask(f"{base}/nohead/a", (1,), earlier)]
    )
    assert sorted(server.requests) == [("GET", "/nohead/a"), ("HEAD", "/missing"), ("HEAD", "/nohead/a")]
    [(row_buckets, missing)] = outcomes
    assert (row_buckets, missing.uri, missing.failure.error_type) == ((0,), f"{base}/missing", "NotFound")
    assert (
        missing.failure.message.startswith("version check failed (NotFound)") and "/missing" in missing.failure.message
    )
    assert [(c.uri, s) for s, c in claims] == [(f"{base}/nohead/a", sha(b"/nohead/a" + PAYLOAD))]
    totals = {}
    for counts in stats:
        for key, n in counts.items():
            totals[key] = totals.get(key, 0) + n
    assert totals == {"uris": 2, "version_checks": 2, "version_checks_failed": 2, "fetch_errors": 1, "fetched": 1}


@pytest.mark.slow  # a silent host, waited on until the deadline
def test_a_dead_host_of_an_earlier_night_costs_one_deadline_not_a_check_and_a_fetch(dead_host):
    deadline = 2.0
    limits = FetchLimits(
        connect_timeout=1, read_timeout=deadline, deadline=deadline, retries=0, allow_private_hosts=True
    )
    earlier = PreviousScore(sha(b"old"), 'etag="last night"', SCORE)
    started = time.monotonic()
    claims, outcomes, _ = run_fetch([UriTask(f"{dead_host}/photo.jpg", (0,), earlier)], limits=limits)
    took = time.monotonic() - started
    assert not claims
    [(_, outcome)] = outcomes
    assert outcome.failure.error_type in ("DeadlineExceeded", "Timeout")
    assert outcome.failure.message.startswith("version check failed")
    assert took < 1.5 * deadline, took


@pytest.mark.slow  # a silent host, waited on until the deadline
def test_many_uris_of_a_dead_host_cost_one_deadline_and_are_counted_as_one_host_tripped(base, dead_host):
    """120 uris of a host that never answers among 40 good ones: the host's breaker trips
    after its first requests go unanswered, so its other uris fail at once (HostUnavailable,
    naming the host), each still an outcome of its own."""
    deadline = 2.0
    limits = FetchLimits(connect_timeout=1, read_timeout=deadline, deadline=deadline, allow_private_hosts=True)
    good = [UriTask(f"{base}/slow/tripped/{i}", (0,)) for i in range(40)]
    dead = [UriTask(f"{dead_host}/photo-{i}.jpg", (1,)) for i in range(120)]
    started = time.monotonic()
    claims, outcomes, stats = run_fetch([*dead[:60], *good, *dead[60:]], limits=limits, threads=16)
    took = time.monotonic() - started
    assert len(claims) == 40 and len(outcomes) == 120
    types = [o.failure.error_type for _, o in outcomes]
    assert set(types) == {"DeadlineExceeded", "HostUnavailable"} and types.count("HostUnavailable") >= 100
    host = dead_host.removeprefix("http://")
    assert all(host in o.failure.message for _, o in outcomes if o.failure.error_type == "HostUnavailable")
    assert sum(counts.get("hosts_tripped", 0) for counts in stats) == 1
    assert took < 1.5 * deadline + 2, took  # 120 x 2 s / 4 connections = 60 s without the breaker


class _Endless(ThreadingHTTPServer):
    """Answers every GET with 12 MiB and no Content-Length (ended by closing the connection)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _EndlessHandler)


class _EndlessHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(48):
                self.wfile.write(b"x" * 2**18)
        except OSError:
            pass


def test_a_body_refused_part_way_frees_its_buffer_at_once():
    """Bodies that end TooLarge leave nothing behind, even with the garbage collector off:
    what the fetch stage keeps of each (its Examined) holds no frame of the read, and the
    memory a body of unknown length was read into goes back to the system (resident pages)."""
    import gc
    import resource
    import tracemalloc

    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()

    from aisthetics_transforms.fetch.transform import examine_uri

    server = _Endless()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    limits = FetchLimits(allow_private_hosts=True, max_bytes=8 * 2**20, deadline=20)
    kept = []
    gc.disable()
    tracemalloc.start()
    before = resident()
    try:
        for i in range(6):
            kept.append(examine_uri(UriTask(f"http://127.0.0.1:{server.server_address[1]}/{i}", (0,)), limits))
        held, _ = tracemalloc.get_traced_memory()
        grown = resident() - before
    finally:
        tracemalloc.stop()
        gc.enable()
        server.shutdown()
        server.server_close()
    assert [found.failure.error_type for found in kept] == ["TooLarge"] * 6
    assert held < 2**20, f"{held / 2**20:.1f} MiB still held after 6 bodies refused at 8 MiB"
    assert grown < 16 * 2**20, f"{grown / 2**20:.1f} MiB more resident after 6 bodies refused at 8 MiB"
