"""The unique-ids stage's plain functions for rows: the first row of each image_id, and pieces
that carry one row per image_id however many share it (contents: test_contents.py; one
task per uri: test_plan_uris.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.manifest import ManifestFile
from aisthetics_transforms.progress import TALLY
from aisthetics_transforms.records import (
    ERRORS,
    ImageRef,
    Score,
    errors_schema,
    refs_table,
)
from aisthetics_transforms.unique_ids import (
    keep_first_of_each_id,
)

SCORED_AT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
SCORE = Score(5.5, 1.25, (0.1,) * 10, "nima-test", SCORED_AT, None)


# --- keep_first_of_each_id ----------------------------------------------------------------------

FILES = [ManifestFile(0, "/m/a.csv", 100, "csv", "line"), ManifestFile(1, "/m/b.jsonl", 100, "jsonl", "byte")]
KEEP = ("category",)


def refs_piece(file_index: int, *rows: tuple[str, str, str, int]) -> bytes:
    """A packed refs table of manifest file ``file_index``: (image_id, uri, category, line)."""
    path = FILES[file_index].path
    refs = [ImageRef(i, uri, {"category": category}, f"{path}:{line}") for i, uri, category, line in rows]
    return buckets.pack(refs_table(refs, KEEP, manifest_file=file_index))


def test_the_first_row_of_each_id_in_manifest_order_is_kept_and_the_others_are_error_rows():
    pieces = [
        refs_piece(1, ("x", "/b-x.jpg", "late", 40), ("y", "/b-y.jpg", "only", 80)),
        refs_piece(0, ("x", "/a-x-second.jpg", "second", 9), ("z", "/a-z.jpg", "z", 2), ("x", "/a-x.jpg", "first", 3)),
    ]
    TALLY.clear()
    outputs = list(keep_first_of_each_id((6, pieces), FILES, KEEP))
    [kept] = [o for o in outputs if isinstance(o, pa.Table)]
    tables = [o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == ERRORS]
    assert len(outputs) == 1 + len(tables)
    assert all(t.schema == errors_schema(KEEP) for t in tables)  # tables, never a dict per row
    errors = [row for t in tables for row in t.to_pylist()]
    assert kept.schema.names == ["image_id", "uri", "category"]  # the manifest position is not carried on
    assert sorted(kept.to_pylist(), key=lambda r: r["image_id"]) == [
        {"image_id": "x", "uri": "/a-x.jpg", "category": "first"},
        {"image_id": "y", "uri": "/b-y.jpg", "category": "only"},
        {"image_id": "z", "uri": "/a-z.jpg", "category": "z"},
    ]
    assert sorted(errors, key=lambda e: e["uri"]) == [
        {
            "image_id": "x",
            "uri": "/a-x-second.jpg",
            "stage": "manifest",
            "error_type": "DuplicateImageId",
            "category": "second",
            "error_message": "/m/a.csv:9: image_id 'x' (uri /a-x-second.jpg) is already used at "
            "/m/a.csv:3; only the first row of an image_id is scored",
        },
        {
            "image_id": "x",
            "uri": "/b-x.jpg",
            "stage": "manifest",
            "error_type": "DuplicateImageId",
            "category": "late",
            "error_message": "/m/b.jsonl:byte 40: image_id 'x' (uri /b-x.jpg) is already used at "
            "/m/a.csv:3; only the first row of an image_id is scored",
        },
    ]
    assert TALLY.snapshot()["manifest_errors"] == len(errors)  # counted, for the progress line


def test_a_bucket_of_distinct_ids_is_passed_on_whole():
    pieces = [refs_piece(0, ("b", "/b.jpg", "1", 2), ("a", "/a.jpg", "2", 3)), refs_piece(1, ("c", "/c.jpg", None, 0))]
    [kept] = keep_first_of_each_id((0, pieces), FILES, KEEP)
    assert sorted(kept.column("image_id").to_pylist()) == ["a", "b", "c"]
    assert kept.num_rows == 3


def test_a_piece_sends_on_one_row_per_id_however_many_rows_share_it():
    """The rows of one image_id (a manifest without ids, one uri on many rows) are cut down
    where a bundle splits them into pieces: one row goes on, the others are error tables at
    once, never a Python object per row held for its key."""
    from aisthetics_transforms.unique_ids import ERROR_ROWS_PER_TABLE, SplitById

    Tagged = TaggedOutput

    rows = [("/p.jpg", "/p.jpg", "c", line) for line in range(1, 120_001)]
    split = SplitById(FILES, KEEP)
    split.start_bundle()
    outputs = list(split.process(buckets.unpack(refs_piece(0, *rows)), 7))
    outputs += [o.value if not isinstance(o, Tagged) else Tagged(o.tag, o.value.value) for o in split.finish_bundle()]
    pieces = [o for o in outputs if not isinstance(o, Tagged)]
    errors = [o.value for o in outputs if isinstance(o, Tagged)]
    sent = [buckets.unpack(packed) for _, packed in pieces]
    assert sum(t.num_rows for t in sent) == len(pieces)  # one row a piece
    assert sum(t.num_rows for t in errors) == 120_000 - len(pieces)
    assert all(t.num_rows <= ERROR_ROWS_PER_TABLE for t in errors)
    # the final dedupe keeps the first of them, line 1
    [kept, *final_errors] = keep_first_of_each_id((0, [buckets.pack(t) for t in sent]), FILES, KEEP)
    assert kept.to_pylist() == [{"image_id": "/p.jpg", "uri": "/p.jpg", "category": "c"}]
    assert sum(e.value.num_rows for e in final_errors) == len(pieces) - 1
