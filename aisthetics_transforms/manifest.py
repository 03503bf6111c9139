"""Manifest stage: manifest files (CSV with a header, JSON Lines, Parquet) -> refs tables.

A manifest is a path or glob, local or ``gs://``, read through Beam's ``FileSystems``.
Every row becomes either a row of a refs table (:func:`records.refs_schema`) or an
error row of stage ``manifest`` (missing uri, broken JSON, malformed CSV, invalid
UTF-8...), so each row is accounted for. Problems the user has to fix on the command
line (no file matches, the uri column or a kept column is missing from the first file,
an unknown format, a JSON array instead of JSON Lines) raise :class:`ManifestError`
before the job starts. A later file of a glob with such a problem, or one that cannot be
read to its end (a truncated ``.gz``, an I/O error), is an error row naming the file and
where reading stopped; the rows read before stay.

Files are read in parallel pieces (:class:`ManifestSplit`), planned on workers: a
Parquet file by row group, an uncompressed JSON Lines file by byte range
(:data:`JSONL_RANGE_BYTES`), a CSV or compressed file whole (see ``manifest_csv``).
The format readers live in ``manifest_csv``, ``manifest_jsonl`` and ``manifest_parquet``;
``manifest_rows`` turns their rows into refs and error rows.
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import posixpath
from typing import Iterator, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from aisthetics_transforms import records
from aisthetics_transforms.progress import inc
from aisthetics_transforms.manifest_csv import csv_items, csv_rows
from aisthetics_transforms.manifest_jsonl import check_json_lines, check_sampled_columns, jsonl_lines, jsonl_rows
from aisthetics_transforms.manifest_parquet import open_parquet, parquet_rows, row_group_starts
from aisthetics_transforms.manifest_rows import (  # noqa: F401  (the module's public names)
    FORMATS,
    RESERVED_COLUMNS,
    ManifestError,
    ManifestFile,
    ManifestSpec,
    RowBuilder,
    printable,
)
from aisthetics_transforms.records import ImageRef

_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
_DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}

JSONL_RANGE_BYTES = 64 << 20  # an uncompressed JSON Lines file larger than this is read in ranges
ROWS_PER_TABLE = 50_000
_READ_BUFFER_BYTES = 1 << 20
_GLOB_CHARACTERS = "*?["


# --------------------------------------------------------------------------- files


def _literal_file(path: str):
    """FileMetadata of ``path`` taken literally, when it has glob characters but names a file."""
    if not any(c in path for c in _GLOB_CHARACTERS):
        return None
    try:
        filesystem = FileSystems.get_filesystem(path)
        if not filesystem.exists(path) or (FileSystems.get_scheme(path) is None and os.path.isdir(path)):
            return None
        return filesystem.metadata(path)
    except Exception:  # BeamIOError, or a filesystem-specific error: then it is a glob
        return None


def _match_metadata(pattern: str) -> list:
    """FileMetadata of the files ``pattern`` matches, sorted by path; a path that names
    a file literally (``m[1].csv``) is that file, not a glob."""
    literal = _literal_file(pattern)
    if literal is not None:
        return [literal]
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as exc:  # BeamIOError or a filesystem-specific error
        raise ManifestError(f"cannot list {pattern!r}: {exc}") from exc
    return sorted((m for m in result.metadata_list if not m.path.endswith("/")), key=lambda m: m.path)


def _split_compression(path: str) -> tuple[str, str]:
    base = posixpath.basename(path).lower()
    for ext in _DECOMPRESSORS:
        if base.endswith(ext):
            return base[: -len(ext)], ext
    return base, ""


def manifest_format(path: str, spec: ManifestSpec) -> str:
    """``spec.format``, or the format the file name implies (``.csv``, ``.jsonl``, ``.parquet``, maybe ``.gz``)."""
    if spec.format is not None:
        return spec.format
    base, _ = _split_compression(path)
    ext = posixpath.splitext(base)[1]
    if ext not in _EXTENSIONS:
        raise ManifestError(
            f"cannot tell the format of manifest {path!r} from its extension; name it "
            f"{', '.join(sorted(_EXTENSIONS))} (optionally .gz) or pass the format "
            f"({', '.join(FORMATS)})")
    return _EXTENSIONS[ext]


def manifest_files(spec: ManifestSpec, jsonl_range_bytes: int = JSONL_RANGE_BYTES) -> list[ManifestFile]:
    """The files ``spec.pattern`` matches, sorted, each with its format and position unit;
    :class:`ManifestError` when none matches or a name shows no format."""
    files = []
    for index, metadata in enumerate(_match_metadata(spec.pattern)):
        fmt = manifest_format(metadata.path, spec)
        compressed = bool(_split_compression(metadata.path)[1])
        if fmt == "parquet":
            unit = "row"
        elif fmt == "jsonl" and not compressed and metadata.size_in_bytes > jsonl_range_bytes:
            unit = "byte"
        else:
            unit = "line"
        files.append(ManifestFile(index, metadata.path, metadata.size_in_bytes, fmt, unit))
    if not files:
        raise ManifestError(f"manifest {spec.pattern!r} matches no file")
    return files


def list_manifest_files(spec: ManifestSpec) -> list[str]:
    """The paths of :func:`manifest_files`."""
    return [f.path for f in manifest_files(spec)]


@contextlib.contextmanager
def open_manifest(path: str):
    """``path`` opened for reading with a fast ``readline``, decompressing .gz/.bz2/.xz by suffix."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        # A gs:// reader has no buffer of its own to peek into, so its readline() would
        # read one byte per call; the stdlib decompressors buffer for themselves.
        stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw, _READ_BUFFER_BYTES)
        _, ext = _split_compression(path)
        if not ext:
            yield stream
            return
        with _DECOMPRESSORS[ext](stream, "rb") as decompressed:
            yield decompressed


def _single_file(path: str, fmt: str) -> ManifestFile:
    """``path`` as a manifest of its own, read whole by lines (or Parquet rows)."""
    return ManifestFile(0, path, 0, fmt, "row" if fmt == "parquet" else "line")


# --------------------------------------------------------------------------- pieces


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
        compressed = bool(_split_compression(file.path)[1])
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
    schema = records.refs_schema(spec.keep_columns)
    refs: list[ImageRef] = []
    try:
        for item in _split_items(split, spec, builder):
            if isinstance(item, ImageRef):
                refs.append(item)
                if len(refs) >= ROWS_PER_TABLE:
                    collected, refs = refs, []
                    yield records.refs_table(collected, spec.keep_columns, file.index)
            elif isinstance(item, pa.Table):
                column = pa.array(np.full(item.num_rows, file.index, np.int32))
                yield item.append_column("manifest_file", column).select(schema.names).cast(schema)
            else:
                yield item
    except Exception as exc:  # a truncated .gz, an I/O error, a corrupt Parquet page...
        collected, refs = refs, []
        if collected:
            yield records.refs_table(collected, spec.keep_columns, file.index)
        yield _stopped(split, spec, builder.position, exc)
    if refs:
        yield records.refs_table(refs, spec.keep_columns, file.index)


def _stopped(split: ManifestSplit, spec: ManifestSpec, position: int | None, exc: Exception) -> dict:
    """The error row of a piece whose reading failed after ``position`` (None: before any row)."""
    file = split.file
    detail = " ".join(str(exc).split()) or "no detail"
    if isinstance(exc, ManifestError):  # the file as a whole: a missing column, a JSON array...
        error_type, message = "InvalidFile", f"{detail}; none of its rows are read"
    elif position is None:
        start = ("its start" if split.where() == file.path
                 else file.describe(split.first_row if split.row_group is not None else split.byte_range[0]))
        error_type = "UnreadableFile"
        message = f"manifest {file.path} cannot be read from {start}: {type(exc).__name__}: {detail}"
    else:
        error_type = "UnreadableFile"
        message = (f"manifest {file.path}: reading stopped after {file.describe(position)} (rows up to "
                   f"there are kept): {type(exc).__name__}: {detail}")
    ref = ImageRef(printable(split.where()), "", {c: None for c in spec.keep_columns})
    return records.error_row(ref, "manifest", error_type, printable(message))


# --------------------------------------------------------------------------- one file, row by row


def read_manifest_file(path: str, spec: ManifestSpec) -> Iterator:
    """Stream the rows of one whole manifest file as ImageRefs, and bad rows as error
    rows, row by row: the reference the piecewise, bulk reading is tested against.

    Raises :class:`ManifestError` for problems with the file as a whole (a needed
    column missing from the header, an unknown format, not Parquet).
    """
    fmt = manifest_format(path, spec)
    builder = RowBuilder(_single_file(path, fmt), spec, empty_is_null=fmt == "csv")
    with open_manifest(path) as stream:
        if fmt == "csv":
            yield from csv_rows(stream, builder)
        elif fmt == "jsonl":
            yield from jsonl_rows(jsonl_lines(stream, "line"), builder)
        else:
            for item in parquet_rows(open_parquet(path, stream, spec), builder):
                if isinstance(item, pa.Table):
                    positions = item.column("manifest_line").to_pylist()
                    for ref, position in zip(records.table_refs(item, spec.keep_columns), positions):
                        yield ref._replace(source=f"{path}:{position}")
                else:
                    yield item


def check_manifest_file(file: ManifestFile, spec: ManifestSpec) -> None:
    """Fail fast, before a job starts, when ``file`` lacks the uri, a renamed id or a kept
    column (for JSON Lines: in its first rows), is a JSON document instead of JSON
    Lines, or cannot be read at all."""
    try:
        with open_manifest(file.path) as stream:
            if file.format == "parquet":
                open_parquet(file.path, stream, spec)
            elif file.format == "csv":
                rows = csv_rows(stream, RowBuilder(file, spec))
                next(rows, None)  # reading the header is what checks the columns
                rows.close()
            else:
                check_json_lines(file.path, stream)
        if file.format == "jsonl":
            with open_manifest(file.path) as stream:
                check_sampled_columns(file.path, spec, jsonl_lines(stream, "line"))
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"manifest {file.path} cannot be read: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}") from exc


# --------------------------------------------------------------------------- --images


def _absolute(pattern: str) -> str:
    """A local pattern made absolute, so uris (and the image_ids made of them) do not
    depend on the folder a run starts in."""
    return os.path.abspath(pattern) if FileSystems.get_scheme(pattern) is None else pattern


def image_glob_refs(pattern: str, keep_columns: tuple = ()) -> list[ImageRef]:
    """One ImageRef per file ``pattern`` matches (image_id = uri = the absolute path)."""
    files = [m.path for m in _match_metadata(_absolute(pattern))]
    if not files:
        raise ManifestError(f"--images {pattern!r} matches no file")
    return [ImageRef(f, f, {c: None for c in keep_columns}) for f in files]


def image_glob_tables(pattern: str, keep_columns: tuple = ()) -> Iterator[pa.Table]:
    refs = image_glob_refs(pattern, keep_columns)
    for start in range(0, len(refs), ROWS_PER_TABLE):
        table = records.refs_table(refs[start : start + ROWS_PER_TABLE], keep_columns)
        yield table.drop_columns(["manifest_file", "manifest_line"])  # paths are unique: no order needed


# --------------------------------------------------------------------------- Beam


class RouteManifestItemsFn(beam.DoFn):
    """Error rows to the ``errors`` output; refs tables and pieces to the main one; counted."""

    def __init__(self):
        self.rows = Metrics.counter("aisthetics", "manifest_rows")
        self.errors = Metrics.counter("aisthetics", "manifest_errors")
        self.splits = Metrics.counter("aisthetics", "manifest_splits")

    def process(self, item):
        if isinstance(item, dict):
            inc(self.rows)
            inc(self.errors)
            yield beam.pvalue.TaggedOutput(records.ERRORS, item)
            return
        if isinstance(item, pa.Table):
            inc(self.rows, item.num_rows)
        else:
            self.splits.inc()
        yield item


def _route(items, label: str):
    return items | label >> beam.ParDo(RouteManifestItemsFn()).with_outputs(records.ERRORS, main="items")


class ReadManifest(beam.PTransform):
    """Manifest files -> ``{"refs": refs tables, records.ERRORS: error rows}``; image_ids
    are made unique later (``dedupe.UniqueImageIds``).

    Files -> Reshuffle -> pieces planned per file (:func:`plan_splits`) -> Reshuffle ->
    rows read per piece (:func:`read_split`): both the planning of thousands of files and
    the reading of one big file spread over the workers. ``jsonl_range_bytes`` is the
    size of a JSON Lines piece.
    """

    def __init__(self, spec: ManifestSpec, label: str | None = None, jsonl_range_bytes: int = JSONL_RANGE_BYTES):
        super().__init__(label)
        self.spec = spec
        self.jsonl_range_bytes = jsonl_range_bytes
        self.files = manifest_files(spec, jsonl_range_bytes)

    def expand(self, pbegin):
        check_manifest_file(self.files[0], self.spec)
        files = pbegin | "ManifestFiles" >> beam.Create(self.files)
        if len(self.files) > 1:
            files = files | "SpreadFiles" >> beam.Reshuffle()
        planned = _route(files | "PlanSplits" >> beam.FlatMap(plan_splits, self.spec, self.jsonl_range_bytes),
                         "PlanErrors")
        items = (planned["items"]
                 | "SpreadSplits" >> beam.Reshuffle()
                 | "ReadSplits" >> beam.FlatMap(read_split, self.spec))
        rows = _route(items, "SplitErrors")
        errors = (planned[records.ERRORS], rows[records.ERRORS]) | "ManifestErrors" >> beam.Flatten()
        return {"refs": rows["items"], records.ERRORS: errors}


class ReadImageGlob(beam.PTransform):
    """An ``--images`` glob -> the same ``refs`` / ``errors`` outputs as ReadManifest;
    a local glob is made absolute first."""

    def __init__(self, pattern: str, keep_columns: tuple = (), label: str | None = None):
        super().__init__(label)
        self.pattern = _absolute(pattern)
        self.keep_columns = tuple(keep_columns)
        self.files: list[str] = []

    def expand(self, pbegin):
        # Listing happens on a worker so millions of paths never go into the job
        # graph; here we only check that something matches.
        found = _literal_file(self.pattern) is not None
        if not found:
            try:
                found = bool(FileSystems.match([self.pattern], limits=[1])[0].metadata_list)
            except Exception as exc:
                raise ManifestError(f"cannot list {self.pattern!r}: {exc}") from exc
        if not found:
            raise ManifestError(f"--images {self.pattern!r} matches no file")
        tables = (
            pbegin
            | "ImagePattern" >> beam.Create([self.pattern])
            | "ListImages" >> beam.FlatMap(image_glob_tables, self.keep_columns)
            | "SpreadRows" >> beam.Reshuffle())
        rows = _route(tables, "SplitErrors")  # paths are unique, so image_ids are
        return {"refs": rows["items"], records.ERRORS: rows[records.ERRORS]}
