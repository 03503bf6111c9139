"""Manifest pieces: a file cut into parts read in parallel (a Parquet row group, a byte range
of JSON Lines, a whole CSV or compressed file), and one piece read into refs tables and error rows."""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa

from aisthetics_transforms import records
from aisthetics_transforms.console import one_line
from aisthetics_transforms.manifest.csv_format import csv_items, csv_rows
from aisthetics_transforms.manifest.files import (
    JSONL_RANGE_BYTES,
    ROWS_PER_TABLE,
    open_manifest,
    split_compression,
)
from aisthetics_transforms.manifest.jsonl_format import (
    check_json_lines,
    check_sampled_columns,
    jsonl_lines,
    jsonl_rows,
)
from aisthetics_transforms.manifest.parquet_format import (
    open_parquet,
    parquet_rows,
    row_group_starts,
)
from aisthetics_transforms.manifest.spec import (
    ManifestError,
    ManifestFile,
    ManifestSpec,
    RowBuilder,
    printable,
)
from aisthetics_transforms.records import ImageRef


class ManifestSplit(NamedTuple):
    """One work item: a whole file, a byte range of an uncompressed JSON Lines file, or
    one Parquet row group."""

    file: ManifestFile
    byte_range: tuple[int, int] | None = None  # JSON Lines: [start, stop)
    row_group: int | None = None  # Parquet
    first_row: int = 1  # Parquet: the number of the row group's first row

    def where(self) -> str:
        """Where the piece starts: the image_id of its error row when it cannot be read."""
        if self.row_group is not None:
            return self.file.where(self.first_row)
        if self.byte_range is not None:
            return self.file.where(self.byte_range[0])
        return self.file.path


def plan_splits(file: ManifestFile, spec: ManifestSpec, jsonl_range_bytes: int = JSONL_RANGE_BYTES) -> Iterator:
    """The pieces ``file`` is read in, or one error row when it cannot be read at all
    (not Parquet, a needed column missing, a JSON array...)."""
    split = ManifestSplit(file)
    try:
        compressed = bool(split_compression(file.path)[1])
        if file.format == "parquet" and not compressed:
            with open_manifest(file.path) as stream:
                starts = row_group_starts(open_parquet(file.path, stream, spec))
            for row_group, first_row in enumerate(starts):
                yield ManifestSplit(file, row_group=row_group, first_row=first_row)
            return
        if file.format == "jsonl":
            with open_manifest(file.path) as stream:
                check_json_lines(file.path, stream)
            if file.unit == "byte":
                for start in range(0, file.size, jsonl_range_bytes):
                    yield ManifestSplit(file, byte_range=(start, min(start + jsonl_range_bytes, file.size)))
                return
        yield split
    except Exception as exc:  # whatever it is, it is this file's problem, not the night's
        yield _stopped(split, spec, None, exc)


def _split_items(split: ManifestSplit, spec: ManifestSpec, builder: RowBuilder) -> Iterator:
    file = split.file
    with open_manifest(file.path) as stream:
        if file.format == "csv":
            yield from csv_items(stream, builder)
        elif file.format == "jsonl":
            yield from jsonl_rows(jsonl_lines(stream, file.unit, split.byte_range), builder)
        else:
            parquet = open_parquet(file.path, stream, spec)
            yield from parquet_rows(parquet, builder, split.row_group, split.first_row)


def read_split(split: ManifestSplit, spec: ManifestSpec) -> Iterator:
    """The rows of one piece as refs tables and its bad rows as error rows. A file that
    stops being readable part way ends in one error row saying where; the rows read
    before it are kept."""
    file = split.file
    builder = RowBuilder(file, spec, empty_is_null=file.format == "csv")
    schema = records.refs_schema(spec.carried_columns)
    refs: list[ImageRef] = []
    try:
        for item in _split_items(split, spec, builder):
            if isinstance(item, ImageRef):
                refs.append(item)
                if len(refs) >= ROWS_PER_TABLE:
                    collected, refs = refs, []
                    yield records.refs_table(collected, spec.carried_columns, file.number)
            elif isinstance(item, pa.Table):
                column = pa.array(np.full(item.num_rows, file.number, np.int32))
                yield item.append_column("manifest_file", column).select(schema.names).cast(schema)
            else:
                yield item
    except Exception as exc:  # a truncated .gz, an I/O error, a corrupt Parquet page...
        collected, refs = refs, []
        if collected:
            yield records.refs_table(collected, spec.carried_columns, file.number)
        yield _stopped(split, spec, builder.position, exc)
    if refs:
        yield records.refs_table(refs, spec.carried_columns, file.number)


def _stopped(split: ManifestSplit, spec: ManifestSpec, position: int | None, exc: Exception) -> dict:
    """The error row of a piece whose reading failed after ``position`` (None: before any row)."""
    file = split.file
    if isinstance(exc, ManifestError):  # the file as a whole: a missing column, a JSON array...
        error_type, message = "InvalidFile", f"{one_line(exc)}; none of its rows are read"
    elif position is None:
        offset = split.byte_range[0] if split.byte_range is not None else split.first_row
        start = "its start" if split.where() == file.path else file.describe(offset)
        error_type = "UnreadableFile"
        message = f"manifest {file.path} cannot be read from {start}: {one_line(exc, with_type=True)}"
    else:
        error_type = "UnreadableFile"
        message = (
            f"manifest {file.path}: reading stopped after {file.describe(position)} (rows up to "
            f"there are kept): {one_line(exc, with_type=True)}"
        )
    ref = ImageRef(printable(split.where()), "", {c: None for c in spec.carried_columns})
    return records.error_row(ref, "manifest", error_type, printable(message))


def check_manifest_file(file: ManifestFile, spec: ManifestSpec) -> None:
    """Fail fast, before a job starts, when ``file`` lacks the uri, a renamed id or a kept
    column (for JSON Lines: in its first rows), is a JSON document instead of JSON
    Lines, or cannot be read at all."""
    try:
        with open_manifest(file.path) as stream:
            if file.format == "parquet":
                open_parquet(file.path, stream, spec)
            elif file.format == "csv":
                for _ in csv_rows(stream, RowBuilder(file, spec)):
                    break  # reading the header is what checks the columns
            else:
                check_json_lines(file.path, stream)
        if file.format == "jsonl":
            with open_manifest(file.path) as stream:
                check_sampled_columns(file.path, spec, jsonl_lines(stream, "line"))
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"manifest {file.path} cannot be read: {one_line(exc, with_type=True)}") from exc
