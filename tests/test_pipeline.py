"""The pipeline end to end on the local runner: real photos, broken files and a loopback
HTTP server; every manifest row must land in exactly one table."""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from test_scoring import png_declaring

import pipeline
from aisthetics_transforms.model import DEFAULT_WEIGHTS_SHA256

pytestmark = pytest.mark.slow  # whole-pipeline runs

RUN_DATE = "2026-11-28"
FETCH_DEADLINE = 3.0
MAX_BYTES = 2_000_000


class _CatalogServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, photo: bytes):
        super().__init__(("127.0.0.1", 0), _CatalogHandler)
        self.photo = photo
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()


class _CatalogHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits[self.path] = n = server.hits.get(self.path, 0) + 1
        if self.path == "/photo.jpg":
            self._reply(200, server.photo)
        elif self.path == "/flaky.jpg":
            self._reply(503 if n == 1 else 200, b"busy" if n == 1 else server.photo)
        elif self.path == "/stalled.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(len(server.photo)))
            self.end_headers()
            self.wfile.write(server.photo[:100])
            self.wfile.flush()
            server.stopping.wait(30)
            self.close_connection = True
        elif self.path == "/huge.jpg":
            self.send_response(200)
            self.send_header("Content-Length", str(10 * MAX_BYTES))
            self.end_headers()
            try:
                while not server.stopping.is_set():
                    self.wfile.write(b"\xff" * 65536)
            except OSError:
                pass
            self.close_connection = True
        else:
            self._reply(404, b"not here")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, photos):
    """A manifest of good photos, broken files and http URIs, with the outcome each row should get."""
    root = tmp_path_factory.mktemp("catalog")
    server = _CatalogServer(photos[0].read_bytes())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    rows: list[dict] = []  # image_id, uri, category, expect=(table, stage, error_type), local

    def add(image_id, uri, expect, local=None):
        rows.append(
            {"image_id": image_id, "uri": uri, "category": f"cat-{len(rows) % 3}", "expect": expect, "local": local}
        )

    for i, photo in enumerate(photos):
        add(f"photo-{i}", str(photo), ("scores",), photo)
    files = {
        "empty": b"",
        "truncated": photos[1].read_bytes()[:4000],
        "random": np.random.default_rng(7).bytes(5000),
        "html": b"<!doctype html><html><body>Moved</body></html>",
        "bomb": png_declaring(60000, 60000),
    }
    for name, data in files.items():
        (root / f"{name}.jpg").write_bytes(data)
    add("empty", str(root / "empty.jpg"), ("errors", "decode", "EmptyImage"))
    add("truncated", str(root / "truncated.jpg"), ("errors", "decode", "CorruptImage"))
    add("random", str(root / "random.jpg"), ("errors", "decode", "UnsupportedFormat"))
    add("html", str(root / "html.jpg"), ("errors", "decode", "UnsupportedFormat"))
    add("bomb", str(root / "bomb.jpg"), ("errors", "decode", "ImageTooLarge"))
    add("missing", str(root / "missing.jpg"), ("errors", "fetch", "NotFound"))
    add("http-ok", f"{base}/photo.jpg", ("scores",), photos[0])
    add("http-flaky", f"{base}/flaky.jpg", ("scores",), photos[0])
    add("http-404", f"{base}/gone.jpg", ("errors", "fetch", "NotFound"))
    add("http-stalled", f"{base}/stalled.jpg", ("errors", "fetch", "DeadlineExceeded"))
    add("http-huge", f"{base}/huge.jpg", ("errors", "fetch", "TooLarge"))
    add("no-uri", "", ("errors", "manifest", "MissingUri"))

    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "uri", "category"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image_id", "uri", "category")} for r in rows)
    yield {"manifest": manifest, "rows": rows, "root": root, "server": server}
    server.stopping.set()
    server.shutdown()
    server.server_close()


def run_pipeline(manifest: Path, output: Path, *extra: str):
    return pipeline.run(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--run_date={RUN_DATE}",
            "--keep_columns=category",
            "--batch_size=4",
            f"--fetch_deadline={FETCH_DEADLINE}",
            "--fetch_timeout=2",
            "--allow_private_hosts",  # the catalog's server is on 127.0.0.1
            f"--max_image_bytes={MAX_BYTES}",
            *extra,
        ]
    )


def read_table(output: Path, table: str) -> list[dict]:
    query = f"SELECT * FROM read_parquet('{output}/{table}/*/*.parquet', hive_partitioning=true) ORDER BY image_id"
    return duckdb.sql(query).to_arrow_table().to_pylist()


def counter(result, name: str) -> int:
    found = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed or 0 for c in found)


@pytest.fixture(scope="module")
def first_run(catalog, tmp_path_factory):
    output = tmp_path_factory.mktemp("tables")
    started = time.monotonic()
    outcome = run_pipeline(
        catalog["manifest"], output, "--direct_running_mode=multi_processing", "--direct_num_workers=2"
    )
    return {"output": output, "outcome": outcome, "seconds": time.monotonic() - started}


def test_every_manifest_row_lands_in_exactly_one_table(catalog, first_run):
    scores = read_table(first_run["output"], "scores")
    errors = read_table(first_run["output"], "errors")
    expected = {r["image_id"]: r["expect"] for r in catalog["rows"]}
    score_ids = [r["image_id"] for r in scores]
    error_ids = [r["image_id"] for r in errors]
    # The manifest row without a uri is identified by its file and line.
    error_ids = ["no-uri" if i == f"{catalog['manifest']}:{len(catalog['rows']) + 1}" else i for i in error_ids]
    assert len(score_ids) == len(set(score_ids)) and len(error_ids) == len(set(error_ids))
    assert set(score_ids) | set(error_ids) == set(expected)
    assert not set(score_ids) & set(error_ids)
    assert sorted(score_ids) == sorted(i for i, e in expected.items() if e[0] == "scores")
    for row, image_id in zip(errors, error_ids):
        _, stage, error_type = expected[image_id]
        assert (row["stage"], row["error_type"]) == (stage, error_type), row
        assert row["error_message"], row
        assert row["dt"].isoformat() == RUN_DATE
    categories = {r["image_id"]: r["category"] for r in catalog["rows"]}
    assert all(r["category"] == categories[r["image_id"]] for r in scores)


def test_scores_equal_predict_for_the_same_files(catalog, first_run, litert_model):
    scores = {r["image_id"]: r for r in read_table(first_run["output"], "scores")}
    for row in catalog["rows"]:
        if row["expect"] != ("scores",):
            continue
        scored = scores[row["image_id"]]
        [reference] = litert_model.predict(images=str(row["local"]), augmented=True)
        assert scored["uri"] == row["uri"]
        assert scored["mean_score"] == pytest.approx(reference["mean_score_prediction"], abs=1e-6)
        assert scored["sd_score"] == pytest.approx(reference["sd_score_prediction"], abs=1e-6)
        np.testing.assert_allclose(scored["predictions"], reference["predictions"], atol=1e-6)
        assert scored["model_version"] == f"nima-mobilenet-{DEFAULT_WEIGHTS_SHA256[:12]}-litert"
        assert scored["scored_at"].tzinfo is not None


def test_summary_counts_and_stage_counters(catalog, first_run):
    summary = first_run["outcome"].summary
    on_disk = json.loads((first_run["output"] / "runs" / f"dt={RUN_DATE}" / "summary.json").read_text())
    assert summary == on_disk
    expected = [r["expect"] for r in catalog["rows"]]
    assert summary["rows"] == len(expected)
    # The two http photos have the same bytes as a local one: inferred once for three rows.
    scored_rows = [r for r in catalog["rows"] if r["expect"] == ("scores",)]
    contents = {hashlib.sha256(Path(r["local"]).read_bytes()).hexdigest() for r in scored_rows}
    assert summary["scored"] == len(contents) == len(scored_rows) - 2
    assert summary["deduplicated"] == 2
    assert summary["reused"] == 0
    assert summary["errors"] == sum(e[0] == "errors" for e in expected)
    for stage in ("manifest", "fetch", "decode", "score"):
        assert summary["errors_by_stage"][stage] == sum(e[0] == "errors" and e[1] == stage for e in expected)
    result = first_run["outcome"].result
    assert counter(result, "manifest_rows") == len(expected)
    assert counter(result, "scored") == summary["scored"]
    assert counter(result, "fetch_errors") == summary["errors_by_stage"]["fetch"]
    assert counter(result, "decode_errors") == summary["errors_by_stage"]["decode"]
    assert not list(first_run["output"].glob("_staging/*"))
    # Every metric of the run is in the one namespace, under a name aisthetics_transforms.counters declares.
    from aisthetics_transforms import counters

    declared = {value for name, value in vars(counters).items() if name.isupper() and name != "NAMESPACE"}
    metrics = result.metrics().query(MetricsFilter())
    ours = [
        m.key.metric
        for kind in ("counters", "distributions")
        for m in metrics[kind]
        if m.key.metric.namespace == "aisthetics"
    ]
    assert {m.name for m in ours} <= declared and {"manifest_rows", "scored", "rows_written"} <= {m.name for m in ours}


def test_model_loads_once_per_worker_process(first_run):
    result = first_run["outcome"].result
    loads = counter(result, "model_loads")
    # Two worker processes, batches of at most 4: far more batches than loads.
    assert 1 <= loads <= 2
    assert counter(result, "scored") > 2 * loads


def test_a_stalled_server_is_bounded_by_the_deadline(catalog, first_run):
    # The server sends 100 bytes, then stalls for 30 s per attempt. The deadline, not the
    # read timeout (2 s) or the server giving up, is what ended the fetch.
    assert first_run["seconds"] < 120
    [stalled] = [r for r in catalog["rows"] if r["image_id"] == "http-stalled"]
    [row] = [r for r in read_table(first_run["output"], "errors") if r["image_id"] == "http-stalled"]
    assert (row["uri"], row["stage"], row["error_type"]) == (stalled["uri"], "fetch", "DeadlineExceeded")
    assert f"deadline of {FETCH_DEADLINE:g}s" in row["error_message"] and stalled["uri"] in row["error_message"]
    assert row["category"] == stalled["category"]
    assert catalog["server"].hits["/stalled.jpg"] >= 1


def test_rerunning_a_date_replaces_it(catalog, first_run, tmp_path):
    output = first_run["output"]
    before = sorted(p.name for p in (output / "scores" / f"dt={RUN_DATE}").iterdir())
    outcome = run_pipeline(catalog["manifest"], output, "--direct_running_mode=in_memory")
    after = sorted(p.name for p in (output / "scores" / f"dt={RUN_DATE}").iterdir())
    assert not set(before) & set(after)
    scores = read_table(output, "scores")
    assert outcome.summary["scored"] == first_run["outcome"].summary["scored"]
    assert len(scores) == outcome.summary["scored"] + outcome.summary["deduplicated"]
    assert len({r["image_id"] for r in scores}) == len(scores)
    assert len(read_table(output, "errors")) == outcome.summary["errors"]
