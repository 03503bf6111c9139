"""The write stage: one Parquet file per bundle in row groups, the counts each file reports,
summary.json from those counts, and a night published with an empty file for an empty table."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from aisthetics_transforms import layout, storage
from aisthetics_transforms.publish import RunInfo
from aisthetics_transforms.records import STAGES, errors_schema, scores_schema
from aisthetics_transforms.write import WriteParquetFiles, WriteTables, file_counts, sum_counts, summarize

DATE = "2026-11-28"
KEEP = ("category",)
SCORED_AT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def score_rows(ids: list[str], reused: bool = False) -> pa.Table:
    rows = [
        {
            "image_id": i,
            "uri": f"/catalog/{i}.jpg",
            "mean_score": 5.0,
            "sd_score": 1.5,
            "predictions": [0.1] * 10,
            "model_version": "nima-test",
            "scored_at": SCORED_AT,
            "category": "shoes",
            "content_sha256": f"{n:064x}",
            "source_version": None,
            "reused": reused,
            "exif_orientation": None,
        }
        for n, i in enumerate(ids)
    ]
    return pa.Table.from_pylist(rows, schema=scores_schema(KEEP))


def error_dict(image_id: str, stage: str) -> dict:
    return {
        "image_id": image_id,
        "uri": f"/catalog/{image_id}.jpg",
        "stage": stage,
        "error_type": "NotFound",
        "error_message": f"/catalog/{image_id}.jpg: gone",
        "category": None,
    }


def write_bundle(writer: WriteParquetFiles, items) -> list:
    """One bundle through the DoFn as Beam drives it; the elements it emits."""
    writer.start_bundle()
    for item in items:
        assert list(writer.process(item) or ()) == []  # files are announced only once complete
    return list(writer.finish_bundle() or ())


def scores_writer(tmp_path, rows: int) -> WriteParquetFiles:
    schema = scores_schema(KEEP)
    return WriteParquetFiles(str(tmp_path / "scores"), "RUNID-scores", "scores", schema, row_group_rows=rows)


# --- WriteParquetFiles --------------------------------------------------------------------------


def test_a_bundle_is_one_file_in_row_groups_of_at_least_the_given_rows(tmp_path):
    tables = [score_rows([f"t{t}-r{r}" for r in range(t % 4 + 1)], reused=t % 3 == 0) for t in range(12)]
    emitted = write_bundle(scores_writer(tmp_path, rows=5), tables)
    [announced] = [value.value for value in emitted]
    assert announced["table"] == "scores"
    assert announced["path"].startswith(str(tmp_path / "scores" / "RUNID-scores-"))
    parquet = pq.ParquetFile(announced["path"])
    assert parquet.schema_arrow == scores_schema(KEEP)
    groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
    biggest_input = max(t.num_rows for t in tables)
    assert len(groups) > 1
    assert all(5 <= n < 5 + biggest_input for n in groups[:-1]) and 0 < groups[-1] < 5 + biggest_input
    written = parquet.read()
    assert written.column("image_id").to_pylist() == [i for t in tables for i in t.column("image_id").to_pylist()]
    assert announced["counts"] == sum_counts(file_counts(t) for t in tables)


def test_error_rows_as_dicts_and_tables_land_in_one_file_with_their_counts(tmp_path):
    schema = errors_schema(KEEP)
    writer = WriteParquetFiles(str(tmp_path / "errors"), "RUNID-errors", "errors", schema, row_group_rows=3)
    table = pa.Table.from_pylist([error_dict("t1", "decode"), error_dict("t2", "fetch")], schema=errors_schema(KEEP))
    items = [error_dict("d1", "manifest"), table, error_dict("d2", "fetch"), error_dict("d3", "fetch")]
    [announced] = [value.value for value in write_bundle(writer, items)]
    written = pq.read_table(announced["path"])
    assert written.schema == errors_schema(KEEP)
    assert sorted(written.column("image_id").to_pylist()) == ["d1", "d2", "d3", "t1", "t2"]
    assert announced["counts"] == {"errors_manifest": 1, "errors_fetch": 3, "errors_decode": 1}


def test_each_bundle_writes_a_file_of_its_own_and_an_empty_bundle_none(tmp_path):
    writer = scores_writer(tmp_path, rows=100)
    first = write_bundle(writer, [score_rows(["a"])])
    assert write_bundle(writer, []) == []
    second = write_bundle(writer, [score_rows(["b", "c"])])
    paths = [first[0].value["path"], second[0].value["path"]]
    assert paths[0] != paths[1]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == sorted(p.rsplit("/", 1)[1] for p in paths)
    assert [pq.read_table(p).num_rows for p in paths] == [1, 2]


# --- counts and the summary ---------------------------------------------------------------------


def test_file_counts_of_score_tables_error_tables_and_one_error_row():
    scores = pa.concat_tables([score_rows(["a", "b", "c"]), score_rows(["d"], reused=True)])
    assert file_counts(scores) == {"reused": 1, "fresh_rows": 3}
    assert file_counts(score_rows([])) == {"reused": 0, "fresh_rows": 0}
    errors = pa.Table.from_pylist(
        [error_dict("a", "fetch"), error_dict("b", "decode"), error_dict("c", "fetch")], schema=errors_schema(KEEP)
    )
    assert file_counts(errors) == {"errors_fetch": 2, "errors_decode": 1}
    assert file_counts(error_dict("a", "manifest")) == {"errors_manifest": 1}


def test_sum_counts_adds_every_key_of_every_dict():
    assert sum_counts(iter([{"uris": 2, "fetched": 1}, {}, {"uris": 3, "inferred": 4}])) == {
        "uris": 5,
        "fetched": 1,
        "inferred": 4,
    }
    assert sum_counts([]) == {}


def run_info(tmp_path, **changes) -> RunInfo:
    run = RunInfo.new(str(tmp_path / "out"), DATE, "nima-test", "manifest.csv", keep_columns=KEEP)
    return dataclasses.replace(run, **changes)


def test_the_summary_accounts_for_every_row_from_the_files_counts(tmp_path):
    files = [
        {"counts": {"fresh_rows": 7, "reused": 2}},
        {"counts": {"fresh_rows": 1}},
        {"counts": {"errors_fetch": 2, "errors_manifest": 1}},
        {"counts": {"errors_fetch": 1}},
    ]
    stats = {"inferred": 5, "uris": 12, "fetched": 9, "version_checks": 3}
    run = run_info(tmp_path, previous_partition="/out/scores/dt=2026-11-27")
    summary = summarize(files, stats, run)
    assert (summary["rows"], summary["scored"], summary["deduplicated"], summary["reused"], summary["errors"]) == (
        14,
        5,
        3,
        2,
        4,
    )
    assert summary["rows"] == summary["scored"] + summary["deduplicated"] + summary["reused"] + summary["errors"]
    assert summary["errors_by_stage"] == {stage: {"fetch": 3, "manifest": 1}.get(stage, 0) for stage in STAGES}
    assert (summary["uris"], summary["fetched"], summary["version_checks"], summary["version_checks_failed"]) == (
        12,
        9,
        3,
        0,
    )
    assert (summary["run_id"], summary["run_date"], summary["source"], summary["started_at"]) == (
        run.run_id,
        DATE,
        "manifest.csv",
        run.started_at,
    )
    assert summary["incremental_from"] == "/out/scores/dt=2026-11-27" and "incremental_reason" not in summary
    json.dumps(summary)  # it is written as summary.json


def test_the_summary_says_why_an_incremental_run_reused_nothing(tmp_path):
    summary = summarize([], {}, run_info(tmp_path, incremental_reason="no night published before 2026-11-28"))
    assert summary["incremental_reason"] == "no night published before 2026-11-28"
    assert summary["incremental_from"] is None
    assert (summary["rows"], summary["scored"], summary["errors"]) == (0, 0, 0)


# --- WriteTables: the stage in a pipeline -------------------------------------------------------


def test_a_night_without_error_rows_publishes_an_empty_errors_file_with_its_schema(tmp_path):
    run = run_info(tmp_path)
    tables = [score_rows(["a", "b"]), score_rows(["c"], reused=True)]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = {
            "scores": p | "Scores" >> beam.Create(tables),
            "errors": p | "Errors" >> beam.Create([]),
            "stats": p | "Stats" >> beam.Create([{"inferred": 1}, {"inferred": 1, "uris": 3}]),
        } | WriteTables(run)
    summary = layout.read_summary(run.output, DATE)
    assert summary["run_id"] == run.run_id
    assert (summary["rows"], summary["scored"], summary["deduplicated"], summary["reused"], summary["errors"]) == (
        3,
        2,
        0,
        1,
        0,
    )
    scores = [pq.read_table(path) for path in layout.night_files(run.output, "scores", DATE)]
    assert sorted(i for t in scores for i in t.column("image_id").to_pylist()) == ["a", "b", "c"]
    [empty] = layout.night_files(run.output, "errors", DATE)
    table = pq.read_table(empty)
    assert table.num_rows == 0 and table.schema == errors_schema(KEEP)
    assert not storage.list_tree(layout.join(run.output, layout.STAGING))
