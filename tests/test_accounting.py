"""The accounting invariant on a catalog built to stress it: every manifest row ends in
exactly one of the two tables, once, whatever shares a uri, a content or an image_id,
whatever fails, on a first night and on an incremental one."""

from __future__ import annotations

import collections
import csv
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import duckdb
import pytest

import pipeline
from aisthetics_transforms.records import error_types
from aisthetics_transforms.sample import write_sample_catalog

pytestmark = pytest.mark.slow  # whole-pipeline runs

NIGHTS = ("2026-11-01", "2026-11-02")
HOT_ROWS = 3000  # rows on one "no photo" placeholder uri


class _QuietHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("accounting")
    sample = write_sample_catalog(root / "sample", count=10, broken=True)
    photos = [row["uri"] for row in csv.DictReader(open(sample)) if not row["image_id"].startswith("listing-broken")]
    broken = [row["uri"] for row in csv.DictReader(open(sample)) if row["image_id"].startswith("listing-broken")]
    copy = root / "copy-of-first.jpg"
    shutil.copy(photos[0], copy)  # the same bytes under another uri
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(Path(photos[0]).parent)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    rows = [(f"hot-{i}", photos[1]) for i in range(HOT_ROWS)]
    rows += [(f"photo-{i}-{r}", uri) for i, uri in enumerate(photos) for r in range(3)]
    rows += [("copy", str(copy)), ("http-first", f"{base}/{Path(photos[0]).name}")]
    rows += [(f"http-{i}", f"{base}/{Path(uri).name}") for i, uri in enumerate(photos[2:5])]
    rows += [(f"gone-{i}", f"{base}/no-such-photo.jpg") for i in range(40)]
    rows += [(f"broken-{i}-{r}", uri) for i, uri in enumerate(broken) for r in range(4)]
    rows += [("photo-0-0", photos[3]), ("", ""), ("no-uri", "")]  # a repeated id, and two rows without uri
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri"])
        writer.writerows(rows)
    yield {"root": root, "manifest": manifest, "rows": rows, "photos": photos}
    server.shutdown()
    server.server_close()


def run_night(catalog, output: Path, run_date: str, *extra: str) -> dict:
    argv = [
        f"--manifest={catalog['manifest']}",
        f"--output={output}",
        f"--run_date={run_date}",
        "--direct_running_mode=in_memory",
        "--batch_size=4",
        "--allow_private_hosts",
        *extra,
    ]
    return pipeline.run(argv).summary


def table(output: Path, name: str, run_date: str) -> list[dict]:
    return (
        duckdb.sql(f"SELECT * FROM read_parquet('{output}/{name}/dt={run_date}/*.parquet')")
        .to_arrow_table()
        .to_pylist()
    )


def check_every_row_once(catalog, output: Path, run_date: str, summary: dict) -> tuple[list, list]:
    scores, errors = table(output, "scores", run_date), table(output, "errors", run_date)
    rows = catalog["rows"]
    assert summary["rows"] == len(rows) == len(scores) + len(errors)
    known = error_types()
    assert all(e["error_type"] in known[e["stage"]] for e in errors), {(e["stage"], e["error_type"]) for e in errors}
    assert all(e["uri"] in e["error_message"] for e in errors if e["uri"])  # every message names its uri
    # One score per image_id; a repeated image_id's second row is an error row of its own.
    assert len({r["image_id"] for r in scores}) == len(scores)
    repeated = [e for e in errors if e["error_type"] == "DuplicateImageId"]
    assert [e["image_id"] for e in repeated] == ["photo-0-0"]
    by_id = collections.Counter(r["image_id"] for r in scores + errors)
    expected = collections.Counter(
        image_id or f"{catalog['manifest']}:{line}" for line, (image_id, _) in enumerate(rows, 2)
    )
    assert +by_id == +expected
    return scores, errors


def test_first_night_every_row_once_scores_shared_by_uri_and_content(catalog, tmp_path):
    output = tmp_path / "out"
    summary = run_night(catalog, output, NIGHTS[0])
    scores, errors = check_every_row_once(catalog, output, NIGHTS[0], summary)
    photos = catalog["photos"]
    assert summary["scored"] == len(photos)  # each distinct content inferred once
    assert summary["deduplicated"] == len(scores) - len(photos)
    assert summary["uris"] == len({uri for _, uri in catalog["rows"] if uri})
    hot = {(r["mean_score"], r["content_sha256"]) for r in scores if r["image_id"].startswith("hot-")}
    assert len(hot) == 1 and sum(r["image_id"].startswith("hot-") for r in scores) == HOT_ROWS
    first = {r["image_id"]: r for r in scores if r["image_id"] in ("photo-0-1", "copy", "http-first")}
    assert len({(r["mean_score"], r["content_sha256"]) for r in first.values()}) == 1
    kinds = collections.Counter((e["stage"], e["error_type"]) for e in errors)
    assert kinds[("fetch", "NotFound")] == 40 + 4  # the 404 uri's rows and the deleted photo's
    assert kinds[("manifest", "MissingUri")] == 2
    assert sum(n for (stage, _), n in kinds.items() if stage == "decode") == 8
    assert summary["errors"] == len(errors)
    assert not list(output.glob("_staging/*"))


def test_incremental_night_reuses_every_unchanged_row_and_still_counts_each_once(catalog, tmp_path):
    output = tmp_path / "out"
    run_night(catalog, output, NIGHTS[0])
    summary = run_night(catalog, output, NIGHTS[1], "--incremental")
    scores, errors = check_every_row_once(catalog, output, NIGHTS[1], summary)
    assert summary["scored"] == 0
    assert summary["reused"] == len(scores) and all(r["reused"] for r in scores)
    assert summary["version_checks"] >= len(catalog["photos"])
    before = {r["image_id"]: r for r in table(output, "scores", NIGHTS[0])}
    assert {r["image_id"]: (r["mean_score"], r["scored_at"]) for r in scores} == {
        i: (r["mean_score"], r["scored_at"]) for i, r in before.items()
    }


def test_an_unreadable_file_of_the_earlier_night_only_means_scoring_again(catalog, tmp_path):
    output = tmp_path / "out"
    run_night(catalog, output, NIGHTS[0])
    files = sorted((output / "scores" / f"dt={NIGHTS[0]}").glob("*.parquet"))
    files[0].write_bytes(b"PAR1 not really a Parquet file")
    summary = run_night(catalog, output, NIGHTS[1], "--incremental")
    scores, _ = check_every_row_once(catalog, output, NIGHTS[1], summary)
    assert summary["previous_files_unreadable"] == 1
    assert summary["scored"] > 0  # what the unreadable file held is scored again
    assert summary["scored"] + summary["deduplicated"] + summary["reused"] == len(scores)


def test_a_content_cut_into_parts_for_its_uris_still_reaches_every_row_once(catalog, tmp_path, monkeypatch):
    """The join back to the uris cuts a content claimed by more than CLAIMS_PER_ELEMENT uris
    into parts (contents.ResultsToUris); here one claim a part, so the content under three
    uris (a file, its copy, the same photo over http) is joined in three parts."""
    from aisthetics_transforms import contents

    monkeypatch.setattr(contents, "CLAIMS_PER_ELEMENT", 1)  # the in-memory runner runs here
    output = tmp_path / "out"
    summary = run_night(catalog, output, NIGHTS[0])
    scores, _ = check_every_row_once(catalog, output, NIGHTS[0], summary)
    same = {r["image_id"]: r for r in scores if r["image_id"] in ("photo-0-1", "copy", "http-first")}
    assert len(same) == 3 and len({(r["mean_score"], r["content_sha256"]) for r in same.values()}) == 1
    assert summary["scored"] == len(catalog["photos"])
