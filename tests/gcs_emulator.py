"""A real GCS JSON API on loopback for tests: gcp-storage-emulator in a subprocess.

Test modules import the fixture by name::

    from gcs_emulator import gcs  # noqa: F401  (pytest fixture)

    def test_something(gcs):
        bucket, host = gcs
        gcs.upload_bytes("dir/a.txt", b"hi")   # gs://BUCKET/dir/a.txt

While the fixture is active ``os.environ`` points every Google Cloud Storage client
in this process and its children (Beam's FileSystems, DirectRunner workers,
``python -m pipeline`` subprocesses) at the emulator; it is restored afterwards.

``counting_proxy(gcs.host)`` puts a recording reverse proxy on loopback in front of it,
for tests that count the requests a client makes (set STORAGE_EMULATOR_HOST to the
proxy's host while it runs). The emulator answers an ``objects.list`` in one response, in
no particular order, and ignores ``maxResults``, ``pageToken``, ``startOffset`` and
``endOffset``; the proxy pages its answer as GCS does (names in order, at most 1,000 a
page, or ``maxResults``; a ``nextPageToken`` while more remain; the offsets applied), so
that the requests counted are the ones GCS would bill. The emulator also ignores an
upload's ``ifGenerationMatch``: the proxy answers 412 where the precondition does not hold,
as GCS does (checked and written under one lock, so two such uploads cannot both pass).

Credentials. With no Google credentials on the machine, Beam's
``apache_beam.internal.gcp.auth._Credentials`` calls ``google.auth.default()`` under
``retry.with_exponential_backoff(num_retries=4, initial_delay_secs=2)``: each failure
is retried after ~2, 4, 8, 16 s (fuzzed), so every process that first touches ``gs://``
waits ~25 s before it falls back to anonymous access, and ``--no_auth`` does not
reach that code. Making the lookup fail faster does not help (pointing
``GCE_METADATA_HOST`` at a closed loopback port measured 38 s: the back-off is what
costs). Instead the fixture makes the lookup succeed at once:
``GOOGLE_APPLICATION_CREDENTIALS`` names an ``authorized_user`` file whose access token
carries a far-future ``expiry``, so google-auth treats it as valid and never refreshes
it (no request to oauth2.googleapis.com). The emulator ignores the bearer token. It
also keeps real credentials of a developer's machine out of the tests.
Measured: first ``gs://`` write in a fresh process 24.7 s without it, 2.1 s with it
(mostly imports).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple, Optional
from urllib.parse import parse_qs, quote, urlsplit

import pytest

# A valid GCS bucket name (3-63 chars): the DataflowRunner rejects e.g. "b" as a
# staging bucket and would then try to create a default bucket of its own.
BUCKET = "aisthetics-test"
PROJECT = "aisthetics-offline"  # also a valid project id, for GOOGLE_CLOUD_PROJECT
START_TIMEOUT = 30.0

FAKE_AUTHORIZED_USER = {
    "type": "authorized_user",
    "client_id": "gcs-emulator",
    "client_secret": "gcs-emulator",
    "refresh_token": "gcs-emulator",
    "token": "gcs-emulator-token",
    "expiry": "2999-01-01T00:00:00Z",
}


class GcsEmulator(NamedTuple):
    """``(bucket, host)``, plus helpers that talk to the emulator directly."""

    bucket: str
    host: str  # http://127.0.0.1:PORT, the value of STORAGE_EMULATOR_HOST

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name.lstrip('/')}"

    def client(self):
        """A google-cloud-storage client for the emulator (anonymous)."""
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.host),
        )

    def _blob(self, name: str):
        return self.client().bucket(self.bucket).blob(name)

    def upload_bytes(self, name: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        self._blob(name).upload_from_string(data, content_type=content_type)
        return self.uri(name)

    def upload_file(self, name: str, path: str | os.PathLike) -> str:
        self._blob(name).upload_from_filename(str(path))
        return self.uri(name)

    def download_bytes(self, name: str) -> bytes:
        if name.startswith("gs://"):
            bucket, _, name = name[len("gs://") :].partition("/")
            assert bucket == self.bucket, f"{bucket!r} is not the emulator's bucket {self.bucket!r}"
        return self._blob(name).download_as_bytes()

    def list_names(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client().list_blobs(self.bucket, prefix=prefix or None))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_ready(proc: subprocess.Popen, host: str, bucket: str, log: Path) -> None:
    url = f"{host}/storage/v1/b/{bucket}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"gcp-storage-emulator did not answer {url} within {START_TIMEOUT}s:\n{log.read_text()}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gcs(tmp_path_factory) -> GcsEmulator:
    """Start gcp-storage-emulator on a free loopback port with one bucket; point the
    environment at it (see the module docstring); yield ``GcsEmulator(bucket, host)``."""
    if importlib.util.find_spec("gcp_storage_emulator") is None:  # a failure, never a skip
        pytest.fail("gcp-storage-emulator is a test extra: pip install -e '.[test]'")
    workdir = tmp_path_factory.mktemp("gcs-emulator")
    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "gcp_storage_emulator",
        "start",
        "--host=127.0.0.1",
        f"--port={port}",
        "--in-memory",
        f"--default-bucket={BUCKET}",
    ]
    with _serving(cmd, host, workdir) as emulator:
        yield emulator


@contextmanager
def seeded_emulator(objects: Mapping[str, bytes], workdir: Path) -> Iterator[GcsEmulator]:
    """A gcp-storage-emulator whose bucket already holds ``objects`` (name -> bytes), for
    catalogs of tens of thousands of objects: the emulator rewrites the metadata of all its
    objects at every upload, so uploading them one by one takes time that grows with the
    square of their number. Here the emulator's own code (its object resources, checksums
    and store) writes them to a data directory once, and the emulator is then started on
    it, as after a restart. The environment points at it while the context is open."""
    from gcp_storage_emulator.handlers import buckets as emulator_buckets
    from gcp_storage_emulator.handlers import objects as emulator_objects
    from gcp_storage_emulator.storage import Storage

    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    data = workdir / "gcs-data"
    store = Storage(data_dir=str(data))
    write_all = store._write_config_to_file
    emulator_buckets.create_bucket(BUCKET, store)
    store._write_config_to_file = lambda: None  # once at the end, not per object
    for name, content in objects.items():
        resource = emulator_objects._make_object_resource(
            host, BUCKET, name, "application/octet-stream", str(len(content))
        )
        store.create_file(BUCKET, name, content, emulator_objects._checksums(content, resource))
    write_all()
    cmd = [sys.executable, "-m", "gcp_storage_emulator", "-d", str(data), "start", "--host=127.0.0.1", f"--port={port}"]
    with _serving(cmd, host, workdir) as emulator:
        yield emulator


@contextmanager
def _serving(cmd: list[str], host: str, workdir: Path) -> Iterator[GcsEmulator]:
    """Run the emulator ``cmd`` until it answers at ``host``; point the environment at it (and
    at credentials that need no request, see the module doc) while the context is open."""
    adc = workdir / "application_default_credentials.json"
    adc.write_text(json.dumps(FAKE_AUTHORIZED_USER))
    log = workdir / "emulator.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    env = {"STORAGE_EMULATOR_HOST": host, "GOOGLE_APPLICATION_CREDENTIALS": str(adc), "GOOGLE_CLOUD_PROJECT": PROJECT}
    saved = {key: os.environ.get(key) for key in env}
    try:
        _wait_until_ready(proc, host, BUCKET, log)
        os.environ.update(env)
        yield GcsEmulator(BUCKET, host)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _stop(proc)


class CountingProxy(NamedTuple):
    host: str  # http://127.0.0.1:PORT, for STORAGE_EMULATOR_HOST
    requests: list  # (method, path with query) of every request forwarded, in order


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_LISTING = re.compile(r"^/storage/v1/b/[^/]+/o$")
_UPLOAD = re.compile(r"^/upload/storage/v1/b/([^/]+)/o$")


def _precondition_fails(upstream, method: str, path: str, body: Optional[bytes]) -> bool:
    """Whether an upload's ``ifGenerationMatch`` does not hold (0: the object must not exist;
    G: its generation must be G), which GCS answers with 412 and the emulator ignores."""
    parts = urlsplit(path)
    wanted = parse_qs(parts.query).get("ifGenerationMatch", [None])[0]
    found = _UPLOAD.match(parts.path)
    if method != "POST" or wanted is None or found is None:
        return False
    name = parse_qs(parts.query).get("name", [None])[0]
    if name is None and body:  # a multipart upload names its object in its JSON part
        meta = re.search(rb'\{.*?"name"\s*:\s*"((?:[^"\\]|\\.)*)".*?\}', body, re.S)
        name = json.loads(b'"' + meta.group(1) + b'"') if meta else None
    conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
    try:
        conn.request("GET", f"/storage/v1/b/{found.group(1)}/o/{quote(name or '', safe='')}")
        response = conn.getresponse()
        current = json.loads(response.read()).get("generation") if response.status == 200 else None
    finally:
        conn.close()
    return (current is not None) if wanted == "0" else current != wanted


GCS_PAGE = 1_000  # objects per objects.list response, at most


def paged_listing(path: str, body: bytes) -> bytes:
    """The emulator's whole answer to an objects.list request, as the page GCS would give."""
    query = parse_qs(urlsplit(path).query)
    arg = lambda name: query.get(name, [None])[0]
    answer = json.loads(body)
    items = sorted(answer.get("items") or [], key=lambda item: item["name"])
    after, start, end = arg("pageToken"), arg("startOffset"), arg("endOffset")
    items = [
        item
        for item in items
        if (after is None or item["name"] > after)
        and (start is None or item["name"] >= start)
        and (end is None or item["name"] < end)
    ]
    size = min(int(arg("maxResults") or GCS_PAGE), GCS_PAGE)
    answer["items"] = items[:size]
    answer.pop("nextPageToken", None)
    if len(items) > size:
        answer["nextPageToken"] = items[size - 1]["name"]
    return json.dumps(answer).encode()


@contextmanager
def counting_proxy(target: str) -> Iterator[CountingProxy]:
    """A reverse proxy on 127.0.0.1 that forwards each request to ``target`` (the
    emulator's host) and records it: what a GCS client is billed for, counted."""
    upstream = urlsplit(target)
    seen: list = []
    writes_lock = threading.Lock()

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            seen.append((self.command, self.path))
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            with writes_lock:  # a precondition's check and the write it guards, as one
                if _precondition_fails(upstream, self.command, self.path, body):
                    self.send_response(412, "Precondition Failed")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self._answer(upstream, body, headers)

        def _answer(self, upstream, body, headers):
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            finally:
                conn.close()
            if self.command == "GET" and response.status == 200 and _LISTING.match(urlsplit(self.path).path):
                data = paged_listing(self.path, data)
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield CountingProxy(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
