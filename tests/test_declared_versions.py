"""Declared versions (``--version_column``) over a real HTTP server on loopback that counts
every request: an unchanged declaration costs the image host nothing, a changed one is
fetched and scored again, an empty one falls back to a version check, and the audit
(``--verify_declared_fraction``) finds a declaration that does not hold."""

from __future__ import annotations

import csv
import hashlib
import threading
from pathlib import Path

import pytest
from test_incremental_http import PhotoServer, Resource, read_rows, strong_etag

import pipeline
from pipeline.options import OptionsError

pytestmark = pytest.mark.slow  # whole-pipeline runs
NIGHTS = ["2026-11-26", "2026-11-27", "2026-11-28"]


@pytest.fixture(scope="module")
def server():
    srv = PhotoServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri", "updated_at"])
        writer.writerows(rows)
    return path


def night(manifest: Path, output: Path, run_date: str, *extra: str) -> dict:
    return pipeline.run(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--run_date={run_date}",
            "--incremental",
            "--version_column=updated_at",
            "--fetch_deadline=10",
            "--allow_private_hosts",
            *extra,
        ]
    ).summary


@pytest.fixture(scope="module")
def nights(server, photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("declared")
    body = [p.read_bytes() for p in photos]
    for i in range(4):
        server.serve(f"/p{i}.jpg", Resource(body[i], etag=strong_etag(body[i])))
    uris = [server.url(f"/p{i}.jpg") for i in range(4)]
    output = root / "out"
    first = [
        ("a", uris[0], "v1"),
        ("b", uris[1], "v1"),
        ("c", uris[2], ""),
        ("d", uris[3], "v1"),
        ("d2", uris[3], "v1"),
    ]
    summaries, requests = [], []

    def run(rows, run_date, *extra):
        server.take_counts()
        summaries.append(night(write_manifest(root / f"m-{run_date}.csv", rows), output, run_date, *extra))
        requests.append(server.take_counts())

    run(first, NIGHTS[0])
    # Night 2: p1's bytes change and its row says so; p3's bytes change too, but its rows keep
    # declaring v1 (a stale declaration); p2 still declares nothing.
    server.serve("/p1.jpg", Resource(body[4], etag=strong_etag(body[4])))
    server.serve("/p3.jpg", Resource(body[4], etag=strong_etag(body[4])))
    second = [
        ("a", uris[0], "v1"),
        ("b", uris[1], "v2"),
        ("c", uris[2], ""),
        ("d", uris[3], "v1"),
        ("d2", uris[3], "v1"),
    ]
    run(second, NIGHTS[1])
    # Night 3: the same declarations, every declared-unchanged uri audited.
    run(second, NIGHTS[2], "--verify_declared_fraction=1")
    return {"output": output, "summaries": summaries, "requests": requests, "body": body}


def test_the_first_night_records_each_rows_declared_version(nights):
    rows = read_rows(nights["output"], "scores", NIGHTS[0])
    assert {i: r["declared_version"] for i, r in rows.items()} == {
        "a": "v1",
        "b": "v1",
        "c": None,
        "d": "v1",
        "d2": "v1",
    }
    assert nights["summaries"][0]["declared_unchanged"] == 0


def test_an_unchanged_declaration_costs_the_host_no_request_and_a_changed_one_is_scored_again(nights):
    second, requests = nights["summaries"][1], nights["requests"][1]
    assert requests["/p0.jpg"] == {"GET": 0, "HEAD": 0}  # declared v1 again: not asked at all
    assert requests["/p3.jpg"] == {"GET": 0, "HEAD": 0}  # two rows, one uri, both v1
    assert requests["/p1.jpg"] == {"GET": 2, "HEAD": 0}  # v1 -> v2: fetched at once, then read to score
    assert requests["/p2.jpg"] == {"GET": 0, "HEAD": 1}  # no declaration: the ETag check
    assert (second["rows"], second["scored"], second["reused"], second["errors"]) == (5, 1, 4, 0)
    assert (second["declared_unchanged"], second["declared_audited"], second["version_checks"]) == (2, 0, 1)
    assert second["uris"] == 4
    rows = read_rows(nights["output"], "scores", NIGHTS[1])
    assert not rows["b"]["reused"] and rows["b"]["declared_version"] == "v2"
    assert rows["b"]["content_sha256"] == hashlib.sha256(nights["body"][4]).hexdigest()
    # the stale declaration keeps the stale score: what the user vouched for
    before = read_rows(nights["output"], "scores", NIGHTS[0])
    assert rows["d"]["reused"] and rows["d"]["content_sha256"] == before["d"]["content_sha256"]


def test_the_audit_checks_the_declarations_for_real_and_counts_the_one_that_lies(nights):
    third, requests = nights["summaries"][2], nights["requests"][2]
    assert (third["declared_unchanged"], third["declared_audited"], third["declared_mismatches"]) == (3, 3, 1)
    assert requests["/p0.jpg"] == {"GET": 0, "HEAD": 1}  # audited: its ETag still matches
    # audited: changed, so fetched; its new bytes are those p1 got last night, so that score is
    # taken (by content) rather than inferred again
    assert requests["/p3.jpg"] == {"GET": 1, "HEAD": 1}
    rows = read_rows(nights["output"], "scores", NIGHTS[2])
    assert rows["d"]["content_sha256"] == hashlib.sha256(nights["body"][4]).hexdigest()
    assert rows["d"]["scored_at"] == read_rows(nights["output"], "scores", NIGHTS[1])["b"]["scored_at"]
    assert rows["d2"]["content_sha256"] == rows["d"]["content_sha256"]
    assert rows["a"]["reused"] and third["scored"] == 0


def test_a_version_column_missing_from_the_manifest_stops_the_run_in_one_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image_id,uri\na,/x.jpg\n")
    with pytest.raises(Exception) as info:
        pipeline.run([f"--manifest={manifest}", f"--output={tmp_path}/out", "--version_column=etag"])
    assert "'etag' not found" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(OptionsError) as bad:
        pipeline.run([f"--images={tmp_path}/*.jpg", f"--output={tmp_path}/o", "--version_column=etag"])
    assert "--version_column needs a --manifest" in str(bad.value)
