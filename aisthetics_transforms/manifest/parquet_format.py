"""Parquet manifests, one row group at a time.

Row groups are the unit of work: their row counts are in the footer, so each row
group's first row number is known before any of it is read. Batches whose needed
columns are all valid UTF-8 strings go through Arrow in bulk; the others (numbers, a
string column holding invalid UTF-8...) row by row, so a bad value is an error row.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa

from aisthetics_transforms.manifest.spec import (
    ManifestError,
    ManifestSpec,
    RowBuilder,
    check_columns,
    plain_rows,
)

ROWS_PER_BATCH = 50_000


def open_parquet(path: str, stream, spec: ManifestSpec):
    """The ``pyarrow.parquet.ParquetFile`` at ``stream``, its columns checked against the spec."""
    import pyarrow.parquet as pq  # only Parquet manifests pay for the import

    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
    check_columns(path, spec, list(parquet.schema_arrow.names))
    return parquet


def row_group_starts(parquet) -> list[int]:
    """The row number (from 1) of each row group's first row, from the footer."""
    metadata = parquet.metadata
    counts = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    return (1 + np.concatenate([[0], np.cumsum(counts)[:-1]])).astype(int).tolist() if counts else []


def parquet_rows(parquet, builder: RowBuilder, row_group: int | None = None, first_row: int = 1) -> Iterator:
    """The rows of one row group (or of all) as refs tables, ImageRefs and error rows."""
    present = set(parquet.schema_arrow.names)
    columns = [c for c in builder.spec.used_columns() if c in present]
    number = first_row
    batches = parquet.iter_batches(
        batch_size=ROWS_PER_BATCH, columns=columns, row_groups=None if row_group is None else [row_group]
    )
    for batch in batches:
        values = {c: batch.column(c) for c in columns}
        if all(_is_valid_string(v) for v in values.values()):
            refs, others = plain_rows(values, np.arange(number, number + batch.num_rows), builder)
            yield refs
            rows: Iterable[tuple[int, dict]] = [
                (i, {c: values[c][i].as_py() for c in columns}) for i in others.tolist()
            ]
        else:
            # Invalid UTF-8 read as bytes: the builder makes that row an InvalidEncoding error.
            readable = pa.table({c: v.cast(pa.large_binary()) if _is_text(v.type) else v for c, v in values.items()})
            rows = enumerate(readable.to_pylist())
        for i, row in rows:
            yield builder.build(row, number + i)
        number += batch.num_rows
        builder.reached(number - 1)


def _is_text(arrow_type) -> bool:
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _is_valid_string(values: pa.Array) -> bool:
    if not pa.types.is_string(values.type):
        return False
    try:
        values.validate(full=True)  # Parquet readers do not check that strings are UTF-8
    except pa.ArrowInvalid:
        return False
    return True
