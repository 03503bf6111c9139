"""The join stage: every row of a row bucket takes the outcome of its uri, a score or a
failure, into one of the two tables; a row without an outcome, or a uri with two, is a
wiring bug that must fail loudly rather than lose or double rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.join import OUTCOMES_SCHEMA, BucketOutcomes, join_bucket, join_rows, outcomes_table
from aisthetics_transforms.records import ERRORS, Failure, Score, UriOutcome, errors_schema, scores_schema

KEEP = ("category", "brand")
SCORED_AT = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)


def score(mean: float) -> Score:
    return Score(mean, 1.25, tuple(i / 45 for i in range(10)), "nima-test", SCORED_AT, None)


OUTCOMES = {
    "/shared.jpg": UriOutcome("/shared.jpg", "aa" * 32, "size=1;mtime=2.0", score(5.5)),
    "/reused.jpg": UriOutcome("/reused.jpg", "bb" * 32, None, score(4.25)._replace(exif_orientation=6), reused=True),
    "/gone.jpg": UriOutcome("/gone.jpg", failure=Failure("fetch", "NotFound", "/gone.jpg: no such file")),
    "/broken.jpg": UriOutcome(
        "/broken.jpg", "cc" * 32, None, failure=Failure("decode", "CorruptImage", "/broken.jpg: truncated JPEG")
    ),
}
# (image_id, uri, category, brand): three rows share one uri, one row per failing uri
ROWS = [
    ("a", "/shared.jpg", "shoes", None),
    ("b", "/gone.jpg", None, "Acme"),
    ("c", "/shared.jpg", "hats", "Acme"),
    ("d", "/reused.jpg", "bags", ""),
    ("e", "/broken.jpg", "shoes", "Zed"),
    ("f", "/shared.jpg", None, None),
]


def rows_table(rows=ROWS, keep=KEEP) -> pa.Table:
    columns = ["image_id", "uri", *keep]
    return pa.table(
        {name: [row[i] for row in rows] for i, name in enumerate(columns)},
        schema=pa.schema([(name, pa.string()) for name in columns]),
    )


def test_every_row_takes_its_uris_outcome_into_exactly_one_table():
    scores, errors = join_rows(rows_table(), outcomes_table(OUTCOMES.values()), KEEP)
    assert scores.schema == scores_schema(KEEP) and errors.schema == errors_schema(KEEP)
    scored, failed = scores.to_pylist(), errors.to_pylist()
    assert sorted(r["image_id"] for r in scored + failed) == [row[0] for row in ROWS]
    by_row = {row[0]: row for row in ROWS}
    for got in scored:
        outcome = OUTCOMES[got["uri"]]
        assert got["uri"] == by_row[got["image_id"]][1]
        for field in ("mean_score", "sd_score", "model_version", "scored_at", "exif_orientation"):
            assert got[field] == getattr(outcome.score, field), (got["image_id"], field)
        assert got["predictions"] == pytest.approx(outcome.score.predictions)
        assert (got["content_sha256"], got["source_version"], got["reused"]) == (
            outcome.content_sha256,
            outcome.source_version,
            outcome.reused,
        )
    assert sorted(r["image_id"] for r in scored) == ["a", "c", "d", "f"]


def test_failures_go_to_the_errors_table_with_their_stage_type_and_message():
    _, errors = join_rows(rows_table(), outcomes_table(OUTCOMES.values()), KEEP)
    failed = {r["image_id"]: r for r in errors.to_pylist()}
    assert sorted(failed) == ["b", "e"]
    for image_id, row in failed.items():
        failure = OUTCOMES[row["uri"]].failure
        assert (row["stage"], row["error_type"], row["error_message"]) == (
            failure.stage,
            failure.error_type,
            failure.message,
        ), image_id


def test_kept_columns_are_carried_from_each_row_nulls_and_empty_strings_alike():
    scores, errors = join_rows(rows_table(), outcomes_table(OUTCOMES.values()), KEEP)
    for got in scores.to_pylist() + errors.to_pylist():
        [row] = [row for row in ROWS if row[0] == got["image_id"]]
        assert (got["category"], got["brand"]) == row[2:], got["image_id"]


def test_without_kept_columns_the_tables_have_only_their_own():
    rows = rows_table([row[:2] for row in ROWS], keep=())
    scores, errors = join_rows(rows, outcomes_table(OUTCOMES.values()), ())
    assert scores.schema == scores_schema() and errors.schema == errors_schema()
    assert scores.num_rows + errors.num_rows == len(ROWS)


def test_a_row_whose_uri_has_no_outcome_fails_loudly():
    outcomes = outcomes_table(o for uri, o in OUTCOMES.items() if uri != "/gone.jpg")
    with pytest.raises(RuntimeError, match=r"no outcome for uri '/gone.jpg' \(1 rows\)"):
        join_rows(rows_table(), outcomes, KEEP)


def test_a_uri_with_two_outcomes_fails_loudly():
    twice = [*OUTCOMES.values(), OUTCOMES["/shared.jpg"]._replace(score=score(9.0))]
    with pytest.raises(RuntimeError, match="a uri has two outcomes"):
        join_rows(rows_table(), outcomes_table(twice), KEEP)


def test_outcomes_of_uris_no_row_names_are_ignored():
    extra = UriOutcome("/elsewhere.jpg", "dd" * 32, None, score(7.0))
    scores, errors = join_rows(rows_table(), outcomes_table([*OUTCOMES.values(), extra]), KEEP)
    assert "/elsewhere.jpg" not in scores.column("uri").to_pylist() + errors.column("uri").to_pylist()
    assert scores.num_rows + errors.num_rows == len(ROWS)


def test_a_bucket_gives_a_score_table_and_a_tagged_error_table_each_only_when_not_empty():
    pieces = [buckets.pack(rows_table(ROWS[:3])), buckets.pack(rows_table(ROWS[3:]))]
    outcomes = list(OUTCOMES.values())
    packed = [buckets.pack(outcomes_table(outcomes[:2])), buckets.pack(outcomes_table(outcomes[2:]))]
    outputs = list(join_bucket((7, {"rows": pieces, "outcomes": packed}), KEEP))
    scores, errors = outputs
    assert isinstance(scores, pa.Table) and scores.num_rows == 4
    assert isinstance(errors, TaggedOutput) and errors.tag == ERRORS and errors.value.num_rows == 2

    only_scored = [buckets.pack(rows_table([ROWS[0]]))]
    [alone] = join_bucket((7, {"rows": only_scored, "outcomes": packed}), KEEP)
    assert isinstance(alone, pa.Table) and alone.column("image_id").to_pylist() == ["a"]
    only_failed = [buckets.pack(rows_table([ROWS[1], ROWS[4]]))]
    [failed] = join_bucket((7, {"rows": only_failed, "outcomes": packed}), KEEP)
    assert isinstance(failed, TaggedOutput) and failed.value.column("image_id").to_pylist() == ["b", "e"]
    assert failed.value.column("stage").to_pylist() == ["fetch", "decode"]
    # A bucket only outcomes reached (its rows are elsewhere) writes nothing.
    assert list(join_bucket((7, {"rows": [], "outcomes": packed}), KEEP)) == []


def test_outcomes_reach_each_of_their_row_buckets_packed_in_bounded_pieces():
    """One outcome per uri, told which row buckets hold its rows, becomes a row of an
    outcomes table for each of them; a bundle holds a bounded number before it emits."""
    outcomes = list(OUTCOMES.values())
    fn = BucketOutcomes(piece_rows=2, held_rows=5)
    fn.start_bundle()
    listed = [((i % 3, 7), o) for i, o in enumerate(outcomes)]
    emitted = [out for i in range(0, len(listed), 2) for out in fn.process(listed[i : i + 2])]
    emitted += [wv.value for wv in fn.finish_bundle()]
    tables: dict[int, list] = {}
    for bucket, piece in emitted:
        table = buckets.unpack(piece)
        assert table.schema == OUTCOMES_SCHEMA and table.num_rows <= 2
        tables.setdefault(bucket, []).extend(table.column("uri").to_pylist())
    assert sorted(tables[7]) == sorted(o.uri for o in outcomes)
    for bucket in range(3):
        assert sorted(tables.get(bucket, [])) == sorted(o.uri for i, o in enumerate(outcomes) if i % 3 == bucket)


def test_outcomes_of_buckets_flushed_one_at_a_time_are_not_held_beyond_the_bound():
    """Each bucket's piece leaves at ``piece_rows``; the outcomes behind those pieces must go
    too, or a bundle of a few buckets would keep every outcome it saw."""
    fn = BucketOutcomes(piece_rows=2, held_rows=6)
    fn.start_bundle()
    outcomes = list(OUTCOMES.values()) * 5
    emitted = []
    for outcome in outcomes:
        emitted += fn.process([((0,), outcome)])
        assert len(fn._outcomes) < 6
    emitted += [wv.value for wv in fn.finish_bundle()]
    assert sum(buckets.unpack(piece).num_rows for _, piece in emitted) == len(outcomes)
