"""Unique image ids: every image_id once, in row buckets, and each row bucket's distinct uris.

Rows never ride inside an image's element. They wait in row buckets (Arrow tables hashed
by image_id, see ``buckets``) until the join stage; what travels per image is small:

    refs tables   --UniqueImageIds-->  row buckets (b, rows) + uri requests (uri, b)
    uri requests  --plan_uris.PlanFetches-->  one UriTask (or outcome) per uri
    claims  --contents.DedupeContent-->  one ContentTask per content
    content results + claims  --contents.ResultsToUris-->  (row buckets, UriOutcome) per uri

However many rows share an image_id, a bucket receives at most one of them per piece a
bundle sends (:class:`SplitById`); the others are error tables at once. A uri named by
millions of rows is one request per row bucket that holds its rows.
"""

from __future__ import annotations

from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.pvalue import AsSingleton, TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.counters import MANIFEST_ERRORS, counter
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import (
    ERRORS,
    errors_schema,
)

ROWS = "rows"  # (row bucket, packed rows): one row per image_id
URIS = "uris"  # tables of (uri, bucket): the distinct uris of each row bucket
ERROR_ROWS_PER_TABLE = 50_000  # DuplicateImageId rows per errors table (one Parquet row group)
_DUPLICATES = counter(MANIFEST_ERRORS)


class SplitById(buckets.SplitByBucket):
    """SplitByBucket by image_id that sends on only the first row of each image_id of a piece:
    the others are DuplicateImageId error tables (``ERRORS``) at once, so however many rows
    share an image_id (a manifest without ids, one uri on many rows), a bucket receives at
    most one of them per piece."""

    def __init__(self, files: list, keep_columns: tuple):
        super().__init__("image_id")
        self.files = files
        self.keep_columns = keep_columns

    def _flush(self, bucket: int):
        firsts, errors = first_of_each_id(self._take(bucket), self.files, self.keep_columns)
        yield bucket, buckets.pack(firsts)
        for table in errors:
            yield TaggedOutput(ERRORS, table)


def _with_position(table: pa.Table) -> pa.Table:
    """Refs tables without a manifest position (``--images``: paths are unique) get one."""
    if "manifest_file" in table.column_names:
        return table
    table = table.append_column("manifest_file", pa.array(np.zeros(table.num_rows, np.int32)))
    return table.append_column("manifest_line", pa.array(np.arange(table.num_rows, dtype=np.int64)))


def first_of_each_id(table: pa.Table, files: list, keep_columns: tuple) -> tuple[pa.Table, list[pa.Table]]:
    """(the earliest row of each image_id in manifest order, with its position; error tables
    of the other rows, DuplicateImageId, in pieces of at most ERROR_ROWS_PER_TABLE)."""
    table = table.take(
        pc.sort_indices(
            table, [("image_id", "ascending"), ("manifest_file", "ascending"), ("manifest_line", "ascending")]
        )
    )
    ids = table.column("image_id")
    repeated = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows > 1:
        repeated[1:] = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    if not repeated.any():
        return table, []
    # each repeated row's first row: the last non-repeated position at or before it
    first_of = np.maximum.accumulate(np.where(repeated, 0, np.arange(table.num_rows)))
    dups = np.flatnonzero(repeated)
    inc(_DUPLICATES, len(dups))
    errors = [
        duplicate_errors(table, dups[start : start + ERROR_ROWS_PER_TABLE], first_of, files, keep_columns)
        for start in range(0, len(dups), ERROR_ROWS_PER_TABLE)
    ]
    return table.filter(pa.array(~repeated)), errors


def duplicate_errors(table: pa.Table, dups: np.ndarray, first_of: np.ndarray, files: list, keep_columns: tuple):
    """The errors table of the rows ``dups`` of ``table``, each a repeat of row ``first_of[i]``."""
    file_of, line_of = (table.column(name).to_numpy() for name in ("manifest_file", "manifest_line"))
    where = lambda i: files[int(file_of[i])].where(int(line_of[i]))
    rows = table.take(dups)
    messages = [
        f"{where(i)}: image_id {image_id!r} (uri {uri}) is already used at {where(first_of[i])}; "
        "only the first row of an image_id is scored"
        for i, image_id, uri in zip(
            dups.tolist(), rows.column("image_id").to_pylist(), rows.column("uri").to_pylist(), strict=True
        )
    ]
    n = rows.num_rows
    columns = {
        "image_id": rows.column("image_id"),
        "uri": rows.column("uri"),
        "stage": pa.array(["manifest"] * n, pa.string()),
        "error_type": pa.array(["DuplicateImageId"] * n, pa.string()),
        "error_message": pa.array(messages, pa.string()),
        **{name: rows.column(name) for name in keep_columns},
    }
    schema = errors_schema(keep_columns)
    return pa.table([columns[field.name] for field in schema], schema=schema)


def keep_first_of_each_id(element, files: list, keep_columns: tuple):
    """(bucket, refs tables) -> one table of the earliest row of each image_id in manifest
    order; the other rows of an image_id become error tables (``ERRORS``)."""
    _, tables = element
    table = buckets.concat(tables)
    if table is None:
        return
    firsts, errors = first_of_each_id(table, files, keep_columns)
    yield firsts.drop_columns(["manifest_file", "manifest_line"])
    for errors_table in errors:
        yield TaggedOutput(ERRORS, errors_table)


def keep_first_rows(element, files: list, keep_columns: tuple):
    """(bucket, refs pieces) -> the bucket's rows, one per image_id (main, packed), its
    distinct uris (``URIS``: with what their rows declare, see :func:`uri_requests`) and an
    error row for each repeated image_id (``ERRORS``)."""
    bucket = element[0]
    for item in keep_first_of_each_id(element, files, keep_columns):
        if isinstance(item, TaggedOutput):
            yield item
            continue
        yield bucket, buckets.pack(item)
        yield TaggedOutput(URIS, uri_requests(item, bucket))


def uri_requests(rows: pa.Table, bucket: int) -> pa.Table:
    """One row per distinct uri of a row bucket: ``(uri, bucket)``, and with declared
    versions (``--version_column``) the least and greatest value its rows declare and how
    many of them declare none, so that however many rows name a uri, the uri's request
    says in three values whether they agree."""
    if "declared_version" not in rows.column_names:
        uris = pc.unique(rows.column("uri"))
        return pa.table({"uri": uris, "bucket": pa.array(np.full(len(uris), bucket, np.int32))})
    per_uri = rows.group_by("uri").aggregate(
        [
            ("declared_version", "min"),
            ("declared_version", "max"),
            ("declared_version", "count", pc.CountOptions(mode="only_null")),
        ]
    )
    return pa.table(
        {
            "uri": per_uri.column("uri"),
            "bucket": pa.array(np.full(per_uri.num_rows, bucket, np.int32)),
            "declared_min": per_uri.column("declared_version_min"),
            "declared_max": per_uri.column("declared_version_max"),
            "declared_nulls": per_uri.column("declared_version_count"),
        }
    )


class UniqueImageIds(beam.PTransform):
    """Refs tables -> ``{ROWS: (bucket, packed rows), URIS: tables of (uri, bucket), ERRORS and
    "final": error tables of the rows that repeat an image_id (found in a piece, found in a
    bucket), "row_count": the number of rows read}``. An image_id is a key of the output
    tables, so a repeated one is an error row (the first in manifest order is kept). The
    bucket count follows ``estimated_rows`` (the manifest's, from its size) when given, else
    the count of the rows read."""

    def __init__(self, files: list, keep_columns: tuple, estimated_rows: Optional[int] = None):
        super().__init__()
        self.files = files
        self.keep_columns = keep_columns
        self.estimated_rows = estimated_rows

    def expand(self, tables):
        tables = tables | "Position" >> beam.Map(_with_position)
        # no default: a manifest without tables has no count, and nothing that asks for one
        row_count = (
            tables
            | "RowsOf" >> beam.Map(lambda t: t.num_rows)
            | "CountRows" >> beam.CombineGlobally(sum).without_defaults()
        )
        # With the manifest's estimated size the rows are split as they are read; a count of
        # them would have to wait for every row, held by a runner that holds what it waits on.
        n: int | AsSingleton = (
            buckets.bucket_count(self.estimated_rows)
            if self.estimated_rows is not None
            else AsSingleton(row_count | "RowBuckets" >> beam.Map(buckets.bucket_count))
        )
        by_id = tables | "ById" >> beam.ParDo(SplitById(self.files, self.keep_columns), n).with_outputs(
            ERRORS, main="pieces"
        )
        kept = (
            by_id.pieces
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirst"
            >> beam.FlatMap(keep_first_rows, self.files, self.keep_columns).with_outputs(URIS, ERRORS, main=ROWS)
        )
        # the duplicates found in a piece, and those of a bucket ("final"): each written where made
        return {
            ROWS: kept[ROWS],
            URIS: kept[URIS],
            ERRORS: by_id[ERRORS],
            "final": kept[ERRORS],
            "row_count": row_count,
        }
