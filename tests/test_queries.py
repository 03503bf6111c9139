"""The README's example DuckDB queries (aisthetics_transforms.queries), run against a
two-night output: synthetic Parquet with exact expected numbers, and a real pipeline run."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import pipeline
from aisthetics_transforms import queries
from aisthetics_transforms.records import errors_schema, scores_schema
from aisthetics_transforms.sample import write_sample_catalog

NIGHT_A, NIGHT_B = "2026-11-27", "2026-11-28"


def write_night(
    output: Path,
    run_date: str,
    scores: list[dict],
    errors: list[dict] = (),
    summary: dict | None = None,
    keep: tuple = ("category",),
    files: int = 2,
) -> None:
    """One night with the pipeline's exact schemas, split over ``files`` Parquet files
    like Beam's shards. Missing columns get plausible values."""
    when = dt.datetime(2026, 11, 27, 3, 0, tzinfo=dt.UTC)
    full = []
    for row in scores:
        full.append(
            {
                "uri": f"/catalog/{row['image_id']}.jpg",
                "sd_score": 1.5,
                "predictions": [0.1] * 10,
                "model_version": "nima-mobilenet-test-litert",
                "scored_at": when,
                "content_sha256": f"sha-{row['image_id']}",
                "source_version": "size=1;mtime_ns=1",
                "reused": False,
                **{k: None for k in keep},
                **row,
            }
        )
    error_rows = [
        {"uri": f"/catalog/{e['image_id']}.jpg", "error_message": "it broke", **{k: None for k in keep}, **e}
        for e in errors
    ]
    for table, rows, schema in (("scores", full, scores_schema(keep)), ("errors", error_rows, errors_schema(keep))):
        folder = output / table / f"dt={run_date}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(files):
            part = rows[i::files]
            pq.write_table(pa.Table.from_pylist(part, schema=schema), folder / f"run-{i:05d}-of-{files:05d}.parquet")
    runs = output / "runs" / f"dt={run_date}"  # a night is published by its summary
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "summary.json").write_text(json.dumps({"run_date": run_date, **(summary or {})}))


def synthetic_two_nights(output: Path) -> Path:
    """Night A: a1..a5. Night B: a1 up 0.5 and a3 down 2.0 (both re-encoded), a4 gone,
    a6 and a7 new. The expected numbers in the tests below follow from these."""
    write_night(
        output,
        NIGHT_A,
        [
            {"image_id": "a1", "mean_score": 4.0, "category": "shoes"},
            {"image_id": "a2", "mean_score": 5.0, "category": "shoes"},
            {"image_id": "a3", "mean_score": 6.0, "category": "bags"},
            {"image_id": "a4", "mean_score": 7.0, "category": "bags"},
            {"image_id": "a5", "mean_score": 5.5, "category": "shoes"},
        ],
        [
            {"image_id": "e1", "stage": "fetch", "error_type": "NotFound"},
            {"image_id": "e2", "stage": "fetch", "error_type": "NotFound"},
            {"image_id": "e3", "stage": "decode", "error_type": "CorruptImage"},
        ],
        {
            "rows": 8,
            "scored": 5,
            "reused": 0,
            "deduplicated": 0,
            "errors": 3,
            "model_version": "nima-mobilenet-test-litert",
            "errors_by_stage": {"manifest": 0, "fetch": 2, "decode": 1, "score": 0},
        },
    )
    write_night(
        output,
        NIGHT_B,
        [
            {"image_id": "a1", "mean_score": 4.5, "category": "shoes", "content_sha256": "sha-a1-v2"},
            {"image_id": "a2", "mean_score": 5.0, "category": "shoes", "reused": True},
            {"image_id": "a3", "mean_score": 4.0, "category": "bags", "content_sha256": "sha-a3-v2"},
            {"image_id": "a5", "mean_score": 5.5, "category": "shoes", "reused": True},
            {"image_id": "a6", "mean_score": 8.0, "category": "bags"},
            {"image_id": "a7", "mean_score": 3.5, "category": "bags"},
        ],
        [
            {"image_id": "e1", "stage": "fetch", "error_type": "NotFound"},
            {"image_id": "e4", "stage": "manifest", "error_type": "MissingUri"},
            {"image_id": "e5", "stage": "fetch", "error_type": "Timeout"},
        ],
        {
            "rows": 9,
            "scored": 4,
            "reused": 2,
            "deduplicated": 0,
            "errors": 3,
            "model_version": "nima-mobilenet-test-litert",
            "errors_by_stage": {"manifest": 1, "fetch": 2, "decode": 0, "score": 0},
        },
    )
    return output


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return synthetic_two_nights(tmp_path_factory.mktemp("synthetic") / "out")


A, B = dt.date.fromisoformat(NIGHT_A), dt.date.fromisoformat(NIGHT_B)


def test_score_distribution_per_night(synthetic):
    assert queries.distribution_per_night(str(synthetic)) == [
        # [4, 5, 5.5, 6, 7]: p10 and p90 interpolate between neighbours
        {"dt": A, "images": 5, "mean": 5.5, "p10": 4.4, "median": 5.5, "p90": 6.6},
        # [3.5, 4, 4.5, 5, 5.5, 8]
        {"dt": B, "images": 6, "mean": 5.083, "p10": 3.75, "median": 4.75, "p90": 6.75},
    ]


def test_histogram_per_night(synthetic):
    rows = queries.histogram_per_night(str(synthetic))
    assert [(r["dt"], r["bucket"], r["images"]) for r in rows] == [
        (A, 4.0, 1),
        (A, 5.0, 1),
        (A, 5.5, 1),
        (A, 6.0, 1),
        (A, 7.0, 1),
        (B, 3.5, 1),
        (B, 4.0, 1),
        (B, 4.5, 1),
        (B, 5.0, 1),
        (B, 5.5, 1),
        (B, 8.0, 1),
    ]


def test_per_kept_column(synthetic):
    assert queries.per_column(str(synthetic), NIGHT_B, "category") == [
        {"category": "bags", "images": 3, "mean": 5.167, "median": 4.0, "worst": 3.5, "best": 8.0},
        {"category": "shoes", "images": 3, "mean": 5.0, "median": 5.0, "worst": 4.5, "best": 5.5},
    ]


def test_worst_images(synthetic):
    rows = queries.worst_images(str(synthetic), NIGHT_B, n=2)
    assert [(r["image_id"], r["mean_score"]) for r in rows] == [("a7", 3.5), ("a3", 4.0)]
    assert rows[0]["uri"] == "/catalog/a7.jpg" and rows[0]["sd_score"] == 1.5


def test_biggest_movers_between_two_nights(synthetic):
    rows = queries.biggest_movers(str(synthetic), NIGHT_A, NIGHT_B, n=10)
    assert [(r["image_id"], r["before"], r["after"], r["delta"], r["content_changed"]) for r in rows] == [
        ("a3", 6.0, 4.0, -2.0, True),
        ("a1", 4.0, 4.5, 0.5, True),
        ("a2", 5.0, 5.0, 0.0, False),
        ("a5", 5.5, 5.5, 0.0, False),
    ]  # a4 (gone) and a6, a7 (new) are on one night only
    assert [r["image_id"] for r in queries.biggest_movers(str(synthetic), NIGHT_A, NIGHT_B, n=1)] == ["a3"]


def test_error_counts_by_stage_and_type(synthetic):
    rows = queries.errors_by_stage_and_type(str(synthetic))
    assert [(r["dt"], r["stage"], r["error_type"], r["errors"]) for r in rows] == [
        (A, "fetch", "NotFound", 2),
        (A, "decode", "CorruptImage", 1),
        (B, "fetch", "NotFound", 1),
        (B, "fetch", "Timeout", 1),
        (B, "manifest", "MissingUri", 1),
    ]


def test_run_summaries_as_a_table(synthetic):
    rows = queries.runs(str(synthetic))
    assert [(r["dt"], r["rows"], r["scored"], r["reused"], r["errors"]) for r in rows] == [
        (A, 8, 5, 0, 3),
        (B, 9, 4, 2, 3),
    ]


def test_nights_with_different_kept_columns_read_together(synthetic, tmp_path):
    output = tmp_path / "out"
    shutil.copytree(synthetic, output)
    write_night(output, "2026-11-29", [{"image_id": "a1", "mean_score": 6.0}], keep=(), files=1)
    assert [r["images"] for r in queries.distribution_per_night(str(output))] == [5, 6, 1]
    assert queries.per_column(str(output), "2026-11-29")[0]["category"] is None
    assert queries.per_column(str(output), NIGHT_B)[0]["category"] == "bags"


def test_the_readme_text_is_what_runs(synthetic):
    text = queries.example_sql("worst_images", "OUT")
    assert "read_parquet('OUT/scores/*/*.parquet', hive_partitioning = true, union_by_name = true)" in text
    assert "$night" in text and "$n" in text
    # A path with a quote stays one SQL string.
    assert "read_parquet('it''s/scores/*/*.parquet'" in queries.example_sql("worst_images", "it's")
    # The documented form, with literals in place of the parameters, gives the same rows.
    literal = text.replace("'OUT/", f"'{synthetic}/").replace("$night", f"DATE '{NIGHT_B}'").replace("$n", "2")
    assert [r[0] for r in duckdb.sql(literal).fetchall()] == ["a7", "a3"]


# ---------------------------------------------------------------------------
# The same queries on what the real pipeline writes


_NIGHTS: dict = {}  # test_report imports this fixture too: build the nights once per session


@pytest.fixture(scope="session")
def pipeline_nights(tmp_path_factory):
    if "nights" not in _NIGHTS:
        _NIGHTS["nights"] = _run_two_nights(tmp_path_factory.mktemp("pipeline-nights"))
    return _NIGHTS["nights"]


MOVER = "listing-00001"  # re-encoded before night B: its score moves
DELETED = "listing-00003"  # its file deleted before night B, its row kept: a fetch error row
DROPPED = "listing-00004"  # left the manifest before night B
RESTORED = "missing"  # a missing file on night A, there on night B


def _run_two_nights(root: Path) -> dict:
    """Two nights of the real pipeline on real photos (the sample catalog, made from the
    photos scikit-learn ships, so this never skips). Night B: listing-00001 re-encoded
    (its score moves), listing-00004 dropped from the manifest, listing-00003's file
    deleted (its row stays: an error row), the file `missing` pointed at put there (scored
    now), listing-00005 new, incremental reuse of the rest. Both nights keep `category`
    and have a broken file and a missing one."""
    catalog = write_sample_catalog(root / "catalog", count=7, broken=False)
    rows = [(r["image_id"], r["uri"], r["category"]) for r in csv.DictReader(open(catalog))]
    images = Path(rows[0][1]).parent
    (images / "broken.jpg").write_text("<html>not a photo</html>")
    # Spares for the report's thumbnail placeholders (test_report damages them later).
    shutil.copy(rows[0][1], images / "spare-unreachable.jpg")
    shutil.copy(rows[6][1], images / "spare-undecodable.jpg")

    def manifest(name, manifest_rows):
        path = root / name
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_id", "uri", "category"])
            writer.writerows(manifest_rows)
        return path

    broken = [("broken", str(images / "broken.jpg"), "misc"), ("missing", str(images / "missing.jpg"), "misc")]
    output = root / "out"
    common = ["--keep_columns=category", "--direct_running_mode=in_memory", "--batch_size=4"]
    first = pipeline.run(
        [f"--manifest={manifest('a.csv', rows[:5] + broken)}", f"--output={output}", f"--run_date={NIGHT_A}", *common]
    ).summary

    Image.open(rows[1][1]).save(rows[1][1], quality=25)  # changed in place
    Path(rows[3][1]).unlink()  # deleted; its row stays in the manifest
    shutil.copy(rows[4][1], images / "missing.jpg")  # the file night A missed is there now
    spares = [
        ("spare-unreachable", str(images / "spare-unreachable.jpg"), "misc"),
        ("spare-undecodable", str(images / "spare-undecodable.jpg"), "misc"),
    ]
    night_b = rows[:4] + [rows[5]] + spares + broken
    second = pipeline.run(
        [
            f"--manifest={manifest('b.csv', night_b)}",
            f"--output={output}",
            f"--run_date={NIGHT_B}",
            "--incremental",
            *common,
        ]
    ).summary
    return {"output": output, "images": images, "summaries": {NIGHT_A: first, NIGHT_B: second}}


def _table(output: Path, table: str, night: str) -> list[dict]:
    return pq.read_table(output / table / f"dt={night}").to_pylist()


@pytest.mark.slow  # two nights of the real pipeline
def test_queries_on_a_real_pipeline_output(pipeline_nights):
    output, summaries = pipeline_nights["output"], pipeline_nights["summaries"]
    a, b = (_table(output, "scores", n) for n in (NIGHT_A, NIGHT_B))
    assert summaries[NIGHT_B]["reused"] >= 3 and summaries[NIGHT_B]["scored"] >= 2

    per_night = queries.distribution_per_night(str(output))
    assert [(r["dt"], r["images"]) for r in per_night] == [(A, len(a)), (B, len(b))]
    assert [r["images"] for r in per_night] == [
        summaries[n]["rows"] - summaries[n]["errors"] for n in (NIGHT_A, NIGHT_B)
    ]
    assert per_night[1]["mean"] == pytest.approx(sum(r["mean_score"] for r in b) / len(b), abs=5e-4)

    movers = queries.biggest_movers(str(output), NIGHT_A, NIGHT_B, n=10)
    before = {r["image_id"]: r["mean_score"] for r in a}
    after = {r["image_id"]: r["mean_score"] for r in b}
    assert sorted(m["image_id"] for m in movers) == sorted(set(before) & set(after))
    assert movers[0]["image_id"] == MOVER and movers[0]["content_changed"] is True
    assert movers[0]["delta"] == pytest.approx(after[MOVER] - before[MOVER])
    assert abs(movers[0]["delta"]) > 0.01
    assert all(m["delta"] == 0 and m["content_changed"] is False for m in movers[1:])  # reused unchanged

    worst = queries.worst_images(str(output), NIGHT_B, n=3)
    assert [w["mean_score"] for w in worst] == sorted(after.values())[:3]

    by_category = {r["category"]: r["images"] for r in queries.per_column(str(output), NIGHT_B)}
    assert by_category == {c: sum(r["category"] == c for r in b) for c in {r["category"] for r in b}}

    errors = queries.errors_by_stage_and_type(str(output))
    for night, day in ((NIGHT_A, A), (NIGHT_B, B)):
        assert {(r["stage"], r["error_type"]): r["errors"] for r in errors if r["dt"] == day} == {
            ("decode", "UnsupportedFormat"): 1,
            ("fetch", "NotFound"): 1,
        }
        stages = summaries[night]["errors_by_stage"]
        assert {s: c for s, c in stages.items() if c} == {"decode": 1, "fetch": 1}

    not_found = {
        night: [e["image_id"] for e in _table(output, "errors", night) if e["error_type"] == "NotFound"]
        for night in (NIGHT_A, NIGHT_B)
    }
    assert not_found == {NIGHT_A: [RESTORED], NIGHT_B: [DELETED]}
    assert DELETED in before and RESTORED in after and DROPPED in before and DROPPED not in after

    runs = queries.runs(str(output))
    assert [(r["rows"], r["scored"], r["reused"], r["deduplicated"], r["errors"]) for r in runs] == [
        tuple(summaries[n][k] for k in ("rows", "scored", "reused", "deduplicated", "errors"))
        for n in (NIGHT_A, NIGHT_B)
    ]
