"""What an incremental run reads of the earlier night, without a pipeline: its files' rows
under tonight's model version, one per uri or content, and the reuse-or-score decision
per content. (test_incremental.py and test_incremental_http.py run whole nights.)"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets, layout, storage
from aisthetics_transforms.buckets import first_per_key
from aisthetics_transforms.contents import REUSED, reuse_or_score
from aisthetics_transforms.incremental import (
    PREVIOUS_COLUMNS,
    PreviousNight,
    ReadPreviousFiles,
    find_previous_night,
    read_previous_file,
)
from aisthetics_transforms.records import STATS, ContentClaim, ContentTask, previous_scores, scores_schema

TONIGHT, OTHER = "nima-mobilenet-e563ad91b3d4-litert", "nima-mobilenet-e563ad91b3d4-keras"
SCORED_AT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def earlier(uri: str, sha: str, version: str = TONIGHT, mean: float = 5.0) -> dict:
    return {
        "image_id": f"id-{uri}",
        "uri": uri,
        "mean_score": mean,
        "sd_score": 1.0,
        "predictions": [0.1] * 10,
        "model_version": version,
        "scored_at": SCORED_AT,
        "content_sha256": sha,
        "source_version": None,
        "reused": False,
        "exif_orientation": None,
    }


def write_scores(path, groups: list[list[dict]], schema: pa.Schema = scores_schema()) -> str:
    with pq.ParquetWriter(path, schema) as writer:
        for rows in groups:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
    return str(path)


def test_a_file_gives_its_row_groups_rows_of_tonights_model_only(tmp_path):
    path = write_scores(
        tmp_path / "RUN-scores-0.parquet",
        [
            [earlier("/a.jpg", "a" * 64), earlier("/b.jpg", "b" * 64, OTHER)],
            [earlier("/c.jpg", "c" * 64, OTHER)],
            [earlier("/d.jpg", "d" * 64), earlier("/e.jpg", "e" * 64)],
        ],
    )
    tables = list(read_previous_file(path, TONIGHT))
    assert [t.column("uri").to_pylist() for t in tables] == [["/a.jpg"], ["/d.jpg", "/e.jpg"]]
    assert all(t.schema.names == list(PREVIOUS_COLUMNS) for t in tables)  # image_id and reused are not needed


def test_each_row_group_leaves_the_reader_reduced_to_one_row_per_uri_and_one_per_content(tmp_path):
    a, b = "a" * 64, "b" * 64
    path = write_scores(
        tmp_path / "RUN-scores-0.parquet",
        [
            [earlier("/1.jpg", a), earlier("/1.jpg", a), earlier("/2.jpg", a), earlier("/3.jpg", b)],
            [earlier("/1.jpg", a), earlier("/4.jpg", b, OTHER)],
        ],
    )
    night = PreviousNight("2026-11-27", "RUN", str(tmp_path), [path], 6)
    outputs = list(ReadPreviousFiles(TONIGHT, night).process(path))
    by_tag: dict = {"uri": [], "content": []}
    for output in outputs:
        by_tag[output.tag].append(output.value)
    assert [t.column("uri").to_pylist() for t in by_tag["uri"]] == [["/1.jpg", "/2.jpg", "/3.jpg"], ["/1.jpg"]]
    assert [t.column("content_sha256").to_pylist() for t in by_tag["content"]] == [[a, b], [a]]


def test_a_file_of_an_older_layout_gives_the_columns_it_has(tmp_path):
    schema = pa.schema([f for f in scores_schema() if f.name not in ("exif_orientation", "source_version")])
    rows = [{k: v for k, v in earlier("/a.jpg", "a" * 64).items() if k in schema.names}]
    [table] = read_previous_file(write_scores(tmp_path / "old.parquet", [rows], schema), TONIGHT)
    assert "exif_orientation" not in table.schema.names
    [previous] = previous_scores(table)
    assert previous.source_version is None and previous.score.exif_orientation is None


def test_an_unreadable_or_vanished_file_is_counted_not_fatal(tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 then nothing a Parquet reader wants")
    for path in (broken, tmp_path / "vanished.parquet"):
        [output] = read_previous_file(str(path), TONIGHT)
        assert isinstance(output, TaggedOutput) and output.tag == STATS
        assert output.value == {"previous_files_unreadable": 1}


def test_one_row_per_key_the_first_in_order():
    table = pa.Table.from_pylist(
        [
            earlier("/a.jpg", "x" * 64, mean=1),
            earlier("/b.jpg", "y" * 64, mean=2),
            earlier("/a.jpg", "y" * 64, mean=3),
            earlier("/c.jpg", "x" * 64, mean=4),
        ],
        schema=scores_schema(),
    )
    assert first_per_key(table, "uri").column("mean_score").to_pylist() == [1, 2, 4]
    assert first_per_key(table, "content_sha256").column("mean_score").to_pylist() == [1, 2]
    assert first_per_key(table.slice(0, 1), "uri") == table.slice(0, 1)


def test_a_content_fetched_tonight_is_reused_when_an_earlier_night_scored_it_else_scored():
    sha_a, sha_b, sha_gone = "a" * 64, "b" * 64, "f" * 64
    pieces = [
        buckets.pack(
            pa.Table.from_pylist(
                [earlier("/1.jpg", sha_a, mean=6.0), earlier("/2.jpg", sha_gone)], schema=scores_schema()
            )
        ),
        buckets.pack(pa.Table.from_pylist([earlier("/3.jpg", sha_a, mean=6.0)], schema=scores_schema())),
    ]
    copies = (2, (ContentClaim("/1.jpg", None, None, (0,)), ContentClaim("http://h/1.jpg", None, None, (1,))))
    out = list(reuse_or_score((2, {"wanted": [(sha_a, copies), (sha_b, copies)], "previous": pieces})))
    reused = [o.value for o in out if isinstance(o, TaggedOutput)]
    assert all(o.tag == REUSED for o in out if isinstance(o, TaggedOutput))
    assert [(r.content_sha256, r.score.mean_score, r.reused) for r in reused] == [(sha_a, 6.0, True)]  # once
    assert [o for o in out if not isinstance(o, TaggedOutput)] == [
        ContentTask(sha_b, (("/1.jpg", None), ("http://h/1.jpg", None)))
    ]
    # a content no earlier night scored is scored; contents not fetched tonight are never looked at
    [task] = reuse_or_score((2, {"wanted": [(sha_a, copies)], "previous": []}))
    assert task == ContentTask(sha_a, (("/1.jpg", None), ("http://h/1.jpg", None)))
    assert list(reuse_or_score((2, {"wanted": [], "previous": pieces}))) == []


def test_the_previous_night_is_its_summarys_run_with_its_row_count(tmp_path):
    output = str(tmp_path / "out")
    partition = layout.partition_dir(output, "scores", "2026-11-27")
    files = [
        write_scores(tmp_path / name, [[earlier("/a.jpg", "a" * 64)]])
        for name in ("RUNX-scores-1.parquet", "RUNX-scores-0.parquet")
    ]
    for path in files:
        storage.move([(path, layout.join(partition, path.rsplit("/", 1)[1]))])
    storage.write_atomic(layout.join(partition, "RUNW-scores-0.parquet"), b"PAR1")  # an older run's leftover
    storage.write_atomic(layout.summary_path(output, "2026-11-27"), json.dumps({"run_id": "RUNX", "rows": 42}).encode())
    night = find_previous_night(output, "2026-11-28")
    assert (night.run_date, night.run_id, night.partition, night.rows) == ("2026-11-27", "RUNX", partition, 42)
    assert night.files == [layout.join(partition, f"RUNX-scores-{i}.parquet") for i in (0, 1)]
    assert find_previous_night(output, "2026-11-27") is None
