"""Nightly mode: incremental reuse, deduplication, idempotent reruns, and a killed run."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import sample_photo_paths
from PIL import Image

import pipeline
from aisthetics_transforms.incremental import find_previous_night
from aisthetics_transforms.sample import write_sample_catalog

NIGHTS = ["2026-11-26", "2026-11-27", "2026-11-28"]
pytestmark = pytest.mark.slow  # whole-pipeline runs, and a killed subprocess


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri"])
        writer.writerows(rows)
    return path


def night(manifest: Path, output: Path, run_date: str, *extra: str) -> dict:
    argv = [f"--manifest={manifest}", f"--output={output}", f"--run_date={run_date}", "--direct_running_mode=in_memory"]
    return pipeline.run([*argv, "--incremental", *extra]).summary


def scores(output: Path, run_date: str) -> dict[str, dict]:
    rows = (
        duckdb.sql(f"SELECT * FROM read_parquet('{output}/scores/dt={run_date}/*.parquet') ORDER BY image_id")
        .to_arrow_table()
        .to_pylist()
    )
    assert len(rows) == len({r["image_id"] for r in rows}), "duplicate image_id rows"
    return {r["image_id"]: r for r in rows}


def partition_digest(output: Path, run_date: str) -> dict[str, str]:
    found = {}
    for table in ("scores", "errors", "runs"):
        for path in sorted((output / table / f"dt={run_date}").iterdir()):
            found[f"{table}/{path.name}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, photos):
    """Five photos copied into the catalog's own folder (night 3 changes them), a byte copy
    of the first under another name, and a second row for the second photo's file."""
    root = tmp_path_factory.mktemp("nightly")
    images = root / "images"
    images.mkdir()
    files = []
    for i, photo in enumerate(photos):
        files.append(images / f"photo-{i}.jpg")
        shutil.copy(photo, files[-1])
    shutil.copy(files[0], images / "copy-of-photo-0.jpg")  # same bytes, another file
    rows = [(p.stem, str(p)) for p in sorted(images.glob("*.jpg"))]
    rows.append(("same-file-again", str(files[1])))  # a second row for one file
    return {"root": root, "images": images, "rows": rows}


@pytest.fixture(scope="module")
def nights(catalog):
    """Three nights: 1 from scratch, 2 unchanged, 3 with one image changed in place and one added."""
    root, images, rows = catalog["root"], catalog["images"], catalog["rows"]
    output = root / "out"
    manifest = write_manifest(root / "manifest.csv", rows)
    first = night(manifest, output, NIGHTS[0])
    second = night(manifest, output, NIGHTS[1])

    os.utime(images / "photo-4.jpg", ns=(1, 1))  # touched: new mtime, same bytes
    changed = images / "photo-3.jpg"
    Image.open(io.BytesIO(changed.read_bytes())).save(changed, quality=70)  # changed in place
    # Another seed than the photos': a new content, not one of theirs again.
    added = str(sample_photo_paths(root / "sample", 1, (800, 600), seed=99)[0])
    third_manifest = write_manifest(root / "manifest-3.csv", rows + [("added", added)])
    third = night(third_manifest, output, NIGHTS[2])
    return {"output": output, "manifest": third_manifest, "summaries": [first, second, third], "n": len(rows)}


def test_night_one_scores_every_row_and_infers_each_content_once(nights):
    first = nights["summaries"][0]
    n = nights["n"]
    # 6 files, one of them listed twice, one a byte copy of another: 5 distinct contents.
    assert (first["rows"], first["scored"], first["deduplicated"], first["reused"], first["errors"]) == (n, 5, 2, 0, 0)
    assert first["incremental_from"] is None
    assert first["incremental_reason"].startswith("no night published under ")  # said, not silent
    rows = scores(nights["output"], NIGHTS[0])
    assert len(rows) == n and not any(r["reused"] for r in rows.values())
    assert rows["photo-0"]["content_sha256"] == rows["copy-of-photo-0"]["content_sha256"]
    assert rows["photo-0"]["mean_score"] == rows["copy-of-photo-0"]["mean_score"]
    assert rows["same-file-again"]["predictions"] == rows["photo-1"]["predictions"]


def test_night_two_unchanged_infers_nothing_and_writes_everything(nights):
    second = nights["summaries"][1]
    assert second["incremental_from"].endswith(f"dt={NIGHTS[0]}") and "incremental_reason" not in second
    assert (second["rows"], second["scored"], second["reused"], second["errors"]) == (nights["n"], 0, nights["n"], 0)
    before, after = scores(nights["output"], NIGHTS[0]), scores(nights["output"], NIGHTS[1])
    assert set(before) == set(after)
    for image_id, row in after.items():
        assert row["reused"] is True
        for column in ("mean_score", "sd_score", "predictions", "scored_at", "content_sha256", "model_version"):
            assert row[column] == before[image_id][column], (image_id, column)


def test_night_three_infers_exactly_the_changed_and_the_new(nights):
    third = nights["summaries"][2]
    assert third["incremental_from"].endswith(f"dt={NIGHTS[1]}")
    assert third["rows"] == nights["n"] + 1
    assert third["scored"] == 2  # photo-3 changed in place, "added" is new
    assert third["reused"] == nights["n"] - 1  # the touched photo-4 is matched by its content
    rows = scores(nights["output"], NIGHTS[2])
    fresh = sorted(i for i, r in rows.items() if not r["reused"])
    assert fresh == ["added", "photo-3"]
    previous = scores(nights["output"], NIGHTS[1])
    assert rows["photo-3"]["content_sha256"] != previous["photo-3"]["content_sha256"]
    assert rows["photo-4"]["reused"] and rows["photo-4"]["source_version"] != previous["photo-4"]["source_version"]


def test_rerunning_night_three_gives_the_same_rows(nights):
    output = nights["output"]
    before = scores(output, NIGHTS[2])
    again = night(nights["manifest"], output, NIGHTS[2])
    after = scores(output, NIGHTS[2])
    assert (again["rows"], again["scored"], again["reused"]) == (nights["n"] + 1, 2, nights["n"] - 1)
    assert set(after) == set(before)
    for image_id, row in after.items():
        for column in ("mean_score", "sd_score", "predictions", "content_sha256", "reused", "uri"):
            assert row[column] == before[image_id][column], (image_id, column)
    assert len(list((output / "runs" / f"dt={NIGHTS[2]}").iterdir())) == 1
    assert not (output / "_staging").exists()


def test_a_different_model_version_reuses_nothing(nights, tmp_path):
    output = tmp_path / "out"
    for table in ("scores", "runs"):
        shutil.copytree(nights["output"] / table / f"dt={NIGHTS[0]}", output / table / f"dt={NIGHTS[0]}")
    summary = night(nights["manifest"], output, NIGHTS[1], "--engine=keras")
    assert summary["model_version"].endswith("-keras")
    assert summary["reused"] == 0
    assert summary["scored"] + summary["deduplicated"] == summary["rows"]


def test_previous_partition_is_the_newest_strictly_earlier_one(nights):
    output = str(nights["output"])
    assert find_previous_night(output, NIGHTS[0]) is None
    assert find_previous_night(output, NIGHTS[2]).run_date == NIGHTS[1]
    assert find_previous_night(output, "2027-01-01").run_date == NIGHTS[2]


def test_a_run_killed_mid_write_leaves_the_date_intact(nights, tmp_path):
    output = nights["output"]
    intact = partition_digest(output, NIGHTS[2])
    # A bigger manifest so the run is still writing when it is killed.
    sample = write_sample_catalog(tmp_path / "big", count=160, broken=False)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"--manifest={sample}",
            f"--output={output}",
            f"--run_date={NIGHTS[2]}",
            "--direct_running_mode=multi_processing",
            "--direct_num_workers=2",
            "--batch_size=4",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    staged = None
    while time.monotonic() < deadline and proc.poll() is None:
        staged = next((p for p in output.glob("_staging/*/scores/**/*") if p.is_file()), None)
        if staged is not None:
            break
        time.sleep(0.05)
    assert staged is not None, "the run never started writing"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert partition_digest(output, NIGHTS[2]) == intact
    killed = {p.name for p in output.glob("_staging/*")}
    assert killed  # what the killed run left behind
    # The next run of that date publishes cleanly. The killed run's staging is young, so it
    # stays: a later run removes it once it is older than --staging_ttl_hours.
    night(nights["manifest"], output, NIGHTS[2])
    assert {p.name for p in output.glob("_staging/*")} == killed
    assert len(scores(output, NIGHTS[2])) == nights["n"] + 1


def test_a_manifest_without_rows_publishes_an_empty_night_and_a_later_night_reuses_it(tmp_path, catalog):
    """No row means no counts from any stage and no bucket count worth a join: the night
    is still published whole, empty, and an incremental night after it starts from it."""
    empty, output = write_manifest(tmp_path / "empty.csv", []), tmp_path / "out"
    summary = night(empty, output, NIGHTS[0])
    assert (summary["rows"], summary["scored"], summary["errors"], summary["uris"]) == (0, 0, 0, 0)
    assert scores(output, NIGHTS[0]) == {}
    assert (output / "runs" / f"dt={NIGHTS[0]}" / "summary.json").is_file()
    summary = night(empty, output, NIGHTS[1])
    assert summary["rows"] == 0 and summary["incremental_from"].endswith(f"dt={NIGHTS[0]}")
    summary = night(write_manifest(tmp_path / "one.csv", catalog["rows"][:1]), output, NIGHTS[2])
    assert (summary["rows"], summary["scored"], summary["reused"]) == (1, 1, 0)
    summary = night(empty, output, "2026-11-29")  # the earlier night's rows are read; none is asked for
    assert (summary["rows"], summary["errors"]) == (0, 0) and summary["incremental_from"].endswith(f"dt={NIGHTS[2]}")
    assert scores(output, "2026-11-29") == {}
