"""Join stage: a row bucket's rows + what became of their uris -> tables of score rows and error rows.

Each uri's UriOutcome is sent to every row bucket that holds rows of it (one per bucket,
however many rows), packed with the others bound for that bucket into Arrow tables
(:class:`BucketOutcomes`): the outcome of a uri spread over many buckets is a row in a
few tables, not an element per bucket. Each row bucket (one row per image_id, see
``unique_ids.UniqueImageIds``) then meets its outcome tables, and every row takes its uri's
score or failure, with Arrow. A row without an outcome would be a wiring bug: it fails
loudly rather than vanish.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.bundles import in_global_window
from aisthetics_transforms.records import ERRORS, UriOutcome, errors_schema, scores_schema

_SCORE_FIELDS = ("mean_score", "sd_score", "predictions", "model_version", "scored_at", "exif_orientation")
OUTCOMES_SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("content_sha256", pa.string()),
        ("source_version", pa.string()),
        *[(name, scores_schema().field(name).type) for name in _SCORE_FIELDS],
        ("reused", pa.bool_()),
        ("stage", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
    ]
)


def outcomes_table(outcomes: Iterable[UriOutcome]) -> pa.Table:
    """UriOutcomes -> a table of OUTCOMES_SCHEMA, one row per uri."""
    outcomes = list(outcomes)
    scores = [o.score for o in outcomes]
    failures = [o.failure for o in outcomes]
    columns = {
        "uri": [o.uri for o in outcomes],
        "content_sha256": [o.content_sha256 for o in outcomes],
        "source_version": [o.source_version for o in outcomes],
        **{name: [None if s is None else getattr(s, name) for s in scores] for name in _SCORE_FIELDS},
        "reused": [o.reused for o in outcomes],
        "stage": [None if f is None else f.stage for f in failures],
        "error_type": [None if f is None else f.error_type for f in failures],
        "error_message": [None if f is None else f.message for f in failures],
    }
    return pa.table(columns, schema=OUTCOMES_SCHEMA)


class BucketOutcomes(beam.DoFn):
    """Lists of ``(row buckets, UriOutcome)`` -> ``(row bucket, packed outcomes table)``: each outcome
    goes to each of its buckets, gathered per bucket within a bundle into pieces of up to
    ``piece_rows`` outcomes, holding at most ``held_rows`` in all. Each outcome becomes a
    table row once; a bucket's piece takes its rows from that table."""

    def __init__(self, piece_rows: int = 5_000, held_rows: int = 100_000):
        self.piece_rows = piece_rows
        self.held_rows = held_rows

    def start_bundle(self):
        self._reset()

    def process(self, outcomes: list[tuple[tuple, UriOutcome]]):
        for row_buckets, outcome in outcomes:
            index = len(self._outcomes)
            self._outcomes.append(outcome)
            for bucket in row_buckets:
                held = self._held[bucket]
                held.append(index)
                self._total += 1
                if len(held) >= self.piece_rows:
                    yield self._flush(bucket)
        # A single-bucket flush leaves its outcomes in _outcomes (other buckets point at them):
        # bound those as well as the pending bucket entries.
        if self._total >= self.held_rows or len(self._outcomes) >= self.held_rows:
            yield from self._flush_all()

    def finish_bundle(self):
        yield from in_global_window(list(self._flush_all()))

    def _reset(self):
        self._outcomes: list[UriOutcome] = []
        self._table = outcomes_table([])  # the first rows of _outcomes, as a table
        self._held: dict[int, list[int]] = defaultdict(list)  # bucket -> indices into _outcomes
        self._total = 0

    def _flush_all(self):
        for bucket in list(self._held):
            yield self._flush(bucket)
        self._reset()

    def _flush(self, bucket: int) -> tuple[int, bytes]:
        indices = self._held.pop(bucket)
        self._total -= len(indices)
        if self._table.num_rows < len(self._outcomes):
            more = outcomes_table(self._outcomes[self._table.num_rows :])
            self._table = pa.concat_tables([self._table, more])
        return bucket, buckets.pack(self._table.take(indices))


def _split(table: pa.Table, failed: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """(the rows not ``failed``, the rows ``failed``); no copy when one side is all of them, as
    on most nights."""
    if not failed.any():
        return table, table.slice(0, 0)
    if failed.all():
        return table.slice(0, 0), table
    return table.filter(pa.array(~failed)), table.filter(pa.array(failed))


def join_rows(rows: pa.Table, outcomes: pa.Table, keep_columns: Sequence[str]) -> tuple[pa.Table, pa.Table]:
    """(score rows, error rows) for ``rows`` (image_id, uri, kept columns), each taking the
    outcome of its uri (``outcomes``: one row per uri)."""
    if pc.count_distinct(outcomes.column("uri")).as_py() != outcomes.num_rows:
        raise RuntimeError("a uri has two outcomes in one row bucket")
    index = pc.index_in(rows.column("uri"), value_set=outcomes.column("uri"))
    if index.null_count:
        missing = rows.filter(pc.is_null(index)).column("uri")[0].as_py()
        raise RuntimeError(f"no outcome for uri {missing!r} ({index.null_count} rows)")
    matched = outcomes.take(index)
    failed = pc.is_valid(matched.column("stage")).to_numpy(zero_copy_only=False)
    (scored, failures), (scored_rows, failed_rows) = _split(matched, failed), _split(rows, failed)
    schema = scores_schema(keep_columns)
    columns = {
        "image_id": scored_rows.column("image_id"),
        "uri": scored_rows.column("uri"),
        **{name: scored.column(name) for name in _SCORE_FIELDS},
        **{name: scored_rows.column(name) for name in keep_columns},
        "content_sha256": scored.column("content_sha256"),
        "source_version": scored.column("source_version"),
        "reused": scored.column("reused"),
        "declared_version": (
            scored_rows.column("declared_version")
            if "declared_version" in scored_rows.column_names
            else pa.nulls(scored_rows.num_rows, pa.string())
        ),
    }
    scores = pa.table([columns[f.name] for f in schema], schema=schema)
    schema = errors_schema(keep_columns)
    columns = {
        "image_id": failed_rows.column("image_id"),
        "uri": failed_rows.column("uri"),
        **{name: failures.column(name) for name in ("stage", "error_type", "error_message")},
        **{name: failed_rows.column(name) for name in keep_columns},
    }
    errors = pa.table([columns[f.name] for f in schema], schema=schema)
    return scores, errors


def join_bucket(element, keep_columns: tuple):
    """(row bucket, {"rows": [packed rows], "outcomes": [packed outcomes]}) -> a table of
    score rows (main) and a table of error rows (``ERRORS``), each when not empty."""
    _, sides = element
    rows = buckets.concat(sides["rows"])
    if rows is None:
        return
    outcomes = buckets.concat(sides["outcomes"])
    scores, errors = join_rows(rows, outcomes if outcomes is not None else outcomes_table([]), keep_columns)
    if scores.num_rows:
        yield scores
    if errors.num_rows:
        yield TaggedOutput(ERRORS, errors)


class JoinRows(beam.PTransform):
    """``{"rows": (bucket, packed rows), "outcomes": lists of (row buckets, UriOutcome)}`` -> tables
    of score rows (``scores``) and of error rows (``errors``)."""

    def __init__(self, keep_columns: tuple):
        super().__init__()
        self.keep_columns = keep_columns

    def expand(self, inputs):
        outcomes = inputs["outcomes"] | "OutcomesByBucket" >> beam.ParDo(BucketOutcomes())
        return (
            {"rows": inputs["rows"], "outcomes": outcomes}
            | "ByRowBucket" >> beam.CoGroupByKey()
            | "TakeOutcomes" >> beam.FlatMap(join_bucket, self.keep_columns).with_outputs(ERRORS, main="scores")
        )
