"""Nightly mode over http: which validators spare the GET, which spare only the inference.

A real HTTP server on loopback serves the sample photos in three ways, and a second server
refuses HEAD (405); both count GET and HEAD per path:

- ``/etag.jpg``: a strong ETag on GET and on HEAD (200);
- ``/lastmod.jpg``: only Last-Modified and Content-Length;
- ``/none.jpg``: no validators at all (the bytes must be fetched and hashed);
- ``/photo.jpg`` on the HEAD-refusing server: a strong ETag on GET, 405 on HEAD.

Night 1 scores from scratch, night 2 is unchanged (nothing inferred; GET only where no
validator answers HEAD), night 3 changes the bytes (and ETag) of ``/etag.jpg`` and the
bytes of ``/none.jpg``: exactly those two are inferred again.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import duckdb
import numpy as np
import pytest

import aisthetics_transforms
import pipeline

NIGHTS = ["2026-11-26", "2026-11-27", "2026-11-28"]
pytestmark = pytest.mark.slow  # whole-pipeline runs
LAST_MODIFIED = "Wed, 25 Nov 2026 08:00:00 GMT"


@dataclass
class Resource:
    body: bytes
    etag: Optional[str] = None
    last_modified: Optional[str] = None


class PhotoServer(ThreadingHTTPServer):
    """Serves ``resources`` (path -> Resource) and counts requests per (method, path)."""

    daemon_threads = True

    def __init__(self, head_allowed: bool = True):
        super().__init__(("127.0.0.1", 0), _PhotoHandler)
        self.head_allowed = head_allowed
        self.resources: dict[str, Resource] = {}
        self.counts: Counter = Counter()
        self.lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve(self, path: str, resource: Resource) -> None:
        with self.lock:
            self.resources[path] = resource

    def take_counts(self) -> dict[str, dict[str, int]]:
        """{path: {"GET": n, "HEAD": n}} since the last call; resets the counts."""
        with self.lock:
            counts, self.counts = self.counts, Counter()
        return {path: {"GET": counts[("GET", path)], "HEAD": counts[("HEAD", path)]} for path in self.resources}


class _PhotoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the fetch stage's pooled session expects

    def log_message(self, *args):
        pass

    def _count(self, method: str) -> Optional[Resource]:
        with self.server.lock:
            self.server.counts[(method, self.path)] += 1
            return self.server.resources.get(self.path)

    def _empty(self, status: int, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _head(self, resource: Resource) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(resource.body)))
        if resource.etag:
            self.send_header("ETag", resource.etag)
        if resource.last_modified:
            self.send_header("Last-Modified", resource.last_modified)
        self.end_headers()

    def do_GET(self):
        resource = self._count("GET")
        if resource is None:
            return self._empty(404)
        self._head(resource)
        self.wfile.write(resource.body)

    def do_HEAD(self):
        resource = self._count("HEAD")
        if not self.server.head_allowed:
            return self._empty(405, Allow="GET")
        if resource is None:
            return self._empty(404)
        self._head(resource)


def strong_etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


@pytest.fixture(scope="module")
def servers():
    main, no_head = PhotoServer(), PhotoServer(head_allowed=False)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (main, no_head)]
    for t in threads:
        t.start()
    yield {"main": main, "no_head": no_head}
    for s in (main, no_head):
        s.shutdown()
        s.server_close()
    for t in threads:
        t.join(timeout=5)


def night(manifest: Path, output: Path, run_date: str) -> dict:
    return pipeline.run(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--run_date={run_date}",
            "--direct_running_mode=in_memory",
            "--incremental",
            "--fetch_deadline=10",
            "--fetch_timeout=5",
            "--allow_private_hosts",
        ]
    ).summary


def read_rows(output: Path, table: str, run_date: str) -> dict[str, dict]:
    files = sorted((output / table / f"dt={run_date}").glob("*.parquet"))
    if not files:
        return {}
    listed = ", ".join(f"'{f}'" for f in files)
    rows = duckdb.sql(f"SELECT * FROM read_parquet([{listed}])").to_arrow_table().to_pylist()
    assert len(rows) == len({r["image_id"] for r in rows}), "duplicate image_id rows"
    return {r["image_id"]: r for r in rows}


@pytest.fixture(scope="module")
def nights(servers, photos, tmp_path_factory):
    """Three nights over the same manifest; the request counts each night saw."""
    main, no_head = servers["main"], servers["no_head"]
    root = tmp_path_factory.mktemp("nightly-http")
    body = [p.read_bytes() for p in photos]
    # Nights 1-2 use three contents (photos 0, 1, 2); photos 3 and 4 are new on night 3.
    main.serve("/etag.jpg", Resource(body[0], etag=strong_etag(body[0])))
    main.serve("/lastmod.jpg", Resource(body[1], last_modified=LAST_MODIFIED))
    main.serve("/none.jpg", Resource(body[2]))
    no_head.serve("/photo.jpg", Resource(body[0], etag=strong_etag(body[0])))
    local = root / "local-photo-1.jpg"
    shutil.copy(photos[1], local)
    rows = [
        ("http-etag", main.url("/etag.jpg")),
        ("http-lastmod", main.url("/lastmod.jpg")),
        ("http-none", main.url("/none.jpg")),
        ("http-head405", no_head.url("/photo.jpg")),
        ("local", str(local)),
    ]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri"])
        writer.writerows(rows)
    output = root / "out"

    summaries, requests = [], []

    def run(run_date: str) -> None:
        main.take_counts(), no_head.take_counts()
        summaries.append(night(manifest, output, run_date))
        requests.append({"main": main.take_counts(), "no_head": no_head.take_counts()})

    run(NIGHTS[0])
    run(NIGHTS[1])
    main.serve("/etag.jpg", Resource(body[3], etag=strong_etag(body[3])))
    main.serve("/none.jpg", Resource(body[4]))
    run(NIGHTS[2])
    return {
        "output": output,
        "summaries": summaries,
        "requests": requests,
        "n": len(rows),
        "new_photos": {"http-etag": photos[3], "http-none": photos[4]},
        "bodies": body,
        "etags": {"first": strong_etag(body[0]), "changed": strong_etag(body[3])},
    }


def test_night_one_fetches_everything_once_reads_each_content_once_more_and_checks_nothing(nights):
    first = nights["summaries"][0]
    # 5 rows, 3 distinct contents: /photo.jpg = /etag.jpg, the local file = /lastmod.jpg.
    assert (first["rows"], first["scored"], first["deduplicated"], first["reused"], first["errors"]) == (5, 3, 2, 0, 0)
    assert first["incremental_from"] is None
    requests = nights["requests"][0]
    # Every uri is fetched once to hash it; decode then reads each content to score once
    # more, from a local file where it has one (photo 1), else from one of its uris.
    assert requests["main"]["/lastmod.jpg"] == {"GET": 1, "HEAD": 0}
    assert requests["main"]["/none.jpg"] == {"GET": 2, "HEAD": 0}
    same_content = [requests["main"]["/etag.jpg"], requests["no_head"]["/photo.jpg"]]
    assert sorted(r["GET"] for r in same_content) == [1, 2] and {r["HEAD"] for r in same_content} == {0}
    rows = read_rows(nights["output"], "scores", NIGHTS[0])
    assert rows["http-etag"]["source_version"] == f"etag={nights['etags']['first']}"
    length = len(nights["bodies"][1])
    assert rows["http-lastmod"]["source_version"] == f"last-modified={LAST_MODIFIED};length={length}"
    assert rows["http-none"]["source_version"] is None


def test_night_two_unchanged_infers_nothing_and_gets_only_what_has_no_validator(nights):
    second = nights["summaries"][1]
    assert second["incremental_from"].endswith(f"dt={NIGHTS[0]}")
    assert (second["rows"], second["scored"], second["reused"], second["errors"]) == (5, 0, 5, 0)
    requests = nights["requests"][1]
    # ETag and Last-Modified answer the HEAD: the bytes are not fetched at all.
    assert requests["main"]["/etag.jpg"] == {"GET": 0, "HEAD": 1}
    assert requests["main"]["/lastmod.jpg"] == {"GET": 0, "HEAD": 1}
    # No validator last night, so no HEAD tonight: fetched and hashed, then matched by
    # content; still no inference.
    assert requests["main"]["/none.jpg"] == {"GET": 1, "HEAD": 0}
    # HEAD refused with 405: a plain fallback to GET + hash, not an error.
    assert requests["no_head"]["/photo.jpg"] == {"GET": 1, "HEAD": 1}
    assert read_rows(nights["output"], "errors", NIGHTS[1]) == {}

    before = read_rows(nights["output"], "scores", NIGHTS[0])
    after = read_rows(nights["output"], "scores", NIGHTS[1])
    assert set(after) == set(before)
    for image_id, row in after.items():
        assert row["reused"] is True, image_id
        for column in ("mean_score", "sd_score", "predictions", "scored_at", "content_sha256", "model_version"):
            assert row[column] == before[image_id][column], (image_id, column)


def test_night_three_infers_exactly_the_two_changed_photos(nights):
    third = nights["summaries"][2]
    assert third["incremental_from"].endswith(f"dt={NIGHTS[1]}")
    assert (third["rows"], third["scored"], third["deduplicated"], third["reused"], third["errors"]) == (5, 2, 0, 3, 0)
    requests = nights["requests"][2]
    assert requests["main"]["/etag.jpg"] == {"GET": 2, "HEAD": 1}  # new ETag: fetched, then read to score
    assert requests["main"]["/lastmod.jpg"] == {"GET": 0, "HEAD": 1}
    assert requests["main"]["/none.jpg"] == {"GET": 2, "HEAD": 0}
    assert requests["no_head"]["/photo.jpg"] == {"GET": 1, "HEAD": 1}

    rows = read_rows(nights["output"], "scores", NIGHTS[2])
    previous = read_rows(nights["output"], "scores", NIGHTS[1])
    assert sorted(i for i, r in rows.items() if not r["reused"]) == ["http-etag", "http-none"]
    assert rows["http-etag"]["source_version"] == f"etag={nights['etags']['changed']}"
    model = aisthetics_transforms.get_aisthetics_model()
    for image_id, path in nights["new_photos"].items():
        row = rows[image_id]
        assert row["content_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert row["content_sha256"] != previous[image_id]["content_sha256"]
        assert row["model_version"] == model.model_version
        [reference] = model.predict(images=str(path), augmented=True)
        assert row["mean_score"] == pytest.approx(reference["mean_score_prediction"], abs=1e-6)
        assert row["sd_score"] == pytest.approx(reference["sd_score_prediction"], abs=1e-6)
        np.testing.assert_allclose(row["predictions"], reference["predictions"], atol=1e-6)
    for image_id in ("http-lastmod", "http-head405", "local"):
        assert rows[image_id]["scored_at"] == previous[image_id]["scored_at"], image_id
