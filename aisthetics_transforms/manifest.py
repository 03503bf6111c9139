"""Manifest stage: manifest files (CSV with a header, JSON Lines, Parquet) -> ImageRef.

A manifest is a path or glob, local or ``gs://``, read through Beam's
``FileSystems`` and streamed row by row so a file of millions of rows needs
little memory. Every row becomes either an :class:`~records.ImageRef` or an
error row of stage ``manifest`` (missing uri, broken JSON, malformed CSV...),
so each row is accounted for; problems the user has to fix on the command line
(no file matches, the uri column or a kept column is not in the header, an
unknown format) raise :class:`ManifestError` instead. The plain functions need
no pipeline; :class:`ReadManifest` and :class:`ReadImageGlob` wire them into
one with a ``refs`` output and an ``errors`` tagged output.
"""
from __future__ import annotations

import bz2
import collections
import contextlib
import csv
import datetime
import decimal
import gzip
import io
import itertools
import json
import lzma
import posixpath
from dataclasses import dataclass
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyarrow import csv as pa_csv
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from aisthetics_transforms import buckets, records
from aisthetics_transforms.records import ImageRef

FORMATS = ("csv", "jsonl", "parquet")
_FORMAT_ALIASES = {"csv": "csv", "jsonl": "jsonl", "json": "jsonl", "ndjson": "jsonl",
                   "parquet": "parquet", "pq": "parquet"}
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
               ".parquet": "parquet", ".pq": "parquet"}
_DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".lzma": lzma.open}

# Kept columns are appended to the scores and errors tables, so they must not
# shadow a column those tables already have (error_row would overwrite it).
RESERVED_COLUMNS = records.reserved_columns()

# An unterminated quote makes the csv module read on into the following rows;
# past this many physical lines one record is treated as broken and re-read.
MAX_RECORD_LINES = 1000


class ManifestError(ValueError):
    """A manifest problem that stops the run: the user has to fix the command or the file."""


@dataclass(frozen=True)
class ManifestSpec:
    """Where the manifest is and how to read it (``--manifest`` and its options)."""

    pattern: str
    format: str | None = None  # None: by extension
    uri_column: str = "uri"
    id_column: str = "image_id"
    keep_columns: tuple = ()

    def __post_init__(self):
        if self.format is not None:
            fmt = _FORMAT_ALIASES.get(str(self.format).strip().lower())
            if fmt is None:
                raise ManifestError(
                    f"unknown manifest format {self.format!r}; use one of {', '.join(FORMATS)}")
            object.__setattr__(self, "format", fmt)
        if not self.uri_column:
            raise ManifestError("uri_column must not be empty")
        keep = tuple(self.keep_columns or ())
        clash = sorted(set(keep) & RESERVED_COLUMNS)
        if clash:
            raise ManifestError(
                f"keep_columns {clash} clash with output table columns "
                f"{sorted(RESERVED_COLUMNS)}; rename them in the manifest")
        object.__setattr__(self, "keep_columns", keep)


# --------------------------------------------------------------------------- files


def _match_metadata(pattern: str) -> list:
    """FileMetadata of the files ``pattern`` matches, sorted by path."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as exc:  # BeamIOError or a filesystem-specific error
        raise ManifestError(f"cannot list {pattern!r}: {exc}") from exc
    return sorted((m for m in result.metadata_list if not m.path.endswith("/")), key=lambda m: m.path)


def _match(pattern: str) -> list[str]:
    return [m.path for m in _match_metadata(pattern)]


def list_manifest_files(spec: ManifestSpec) -> list[str]:
    """The files ``spec.pattern`` matches, sorted; :class:`ManifestError` when none does."""
    files = _match(spec.pattern)
    if not files:
        raise ManifestError(f"manifest {spec.pattern!r} matches no file")
    return files


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


@contextlib.contextmanager
def _open_binary(path: str):
    """Open ``path`` for reading, decompressing .gz/.bz2/.xz by suffix."""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        _, ext = _split_compression(path)
        if not ext:
            yield raw
            return
        # Beam's CompressedFile is not an io.IOBase, so it cannot be iterated by
        # lines; the stdlib readers can, and they stream too.
        with _DECOMPRESSORS[ext](raw, "rb") as stream:
            yield stream


def _numbered_lines(stream, start: int = 1) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line_number, text, decoded_ok)``; undecodable bytes become U+FFFD."""
    for number, raw in enumerate(stream, start=start):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8"), True
        except UnicodeDecodeError:
            yield number, raw.decode("utf-8", errors="replace"), False


# --------------------------------------------------------------------------- values


def _as_text(value) -> str | None:
    """A manifest value as the string the tables carry (None stays None)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace").strip()
    if isinstance(value, (int, float, decimal.Decimal, datetime.date, datetime.time,
                          datetime.timedelta)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


class _RowBuilder:
    """Turns one parsed row (a mapping of column -> value) into an ImageRef or error row."""

    def __init__(self, path: str, spec: ManifestSpec):
        self.path = path
        self.spec = spec

    def blank_kept(self) -> dict:
        return {c: None for c in self.spec.keep_columns}

    def error(self, where: int, error_type: str, message: str, *, uri="",
              image_id=None, kept=None) -> dict:
        if not (isinstance(image_id, str) and image_id):
            image_id = f"{self.path}:{where}"
        ref = ImageRef(image_id, uri or "",
                       kept if kept is not None else self.blank_kept())
        return records.error_row(ref, "manifest", error_type, message)

    def build(self, row: dict, where: int, unit: str) -> ImageRef | dict:
        spec = self.spec
        kept = {c: _as_text(row.get(c)) for c in spec.keep_columns}
        raw_id = row.get(spec.id_column)
        image_id = _id_text(raw_id)
        raw_uri = row.get(spec.uri_column)
        if isinstance(raw_uri, (bytes, bytearray)):  # Parquet binary without a UTF-8 annotation
            try:
                raw_uri = bytes(raw_uri).decode("utf-8")
            except UnicodeDecodeError:
                return self.error(where, "InvalidUri",
                                  f"{unit} {where}: {spec.uri_column!r} is not valid UTF-8",
                                  uri=_as_text(raw_uri), image_id=image_id, kept=kept)
        if raw_uri is not None and not isinstance(raw_uri, str):
            return self.error(
                where, "InvalidUri",
                f"{unit} {where}: {spec.uri_column!r} must be a string, got "
                f"{type(raw_uri).__name__} {_as_text(raw_uri)}",
                uri=_as_text(raw_uri), image_id=image_id, kept=kept)
        uri = (raw_uri or "").strip()
        if not uri:
            return self.error(where, "MissingUri",
                              f"{unit} {where}: no value in column {spec.uri_column!r}",
                              image_id=image_id, kept=kept)
        if image_id is _INVALID:
            return self.error(
                where, "InvalidRow",
                f"{unit} {where}: {spec.id_column!r} must be a string or a number, got "
                f"{type(raw_id).__name__}", uri=uri, kept=kept)
        return ImageRef(image_id or uri, uri, kept, f"{self.path}:{where}")


_INVALID = object()


def _id_text(value):
    """The image_id a value gives: None when absent or empty, _INVALID when unusable."""
    if value is None:
        return None
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, (str, bytes, bytearray)):
        return _as_text(value) or None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids of an int column with nulls come back as floats
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    return _INVALID


def _missing_columns_error(path: str, missing: list[str], present: Iterable[str]) -> ManifestError:
    return ManifestError(
        f"manifest {path}: column(s) {', '.join(repr(c) for c in missing)} not found; "
        f"it has {', '.join(repr(c) for c in present) or 'no columns'} "
        "(see --uri_column, --id_column, --keep_columns)")


def _check_columns(path: str, spec: ManifestSpec, present: list[str]) -> None:
    wanted = [spec.uri_column, *spec.keep_columns]
    missing = [c for c in dict.fromkeys(wanted) if c not in present]
    if missing:
        raise _missing_columns_error(path, missing, present)
    counts = collections.Counter(present)
    doubled = [c for c in dict.fromkeys([*wanted, spec.id_column]) if counts[c] > 1]
    if doubled:
        raise ManifestError(f"manifest {path}: column(s) {doubled} appear more than once "
                            f"in the header {present}")


# --------------------------------------------------------------------------- CSV


class _RecordTooLong(Exception):
    pass


class _LineFeed:
    """The lines the csv reader pulls, remembering the current record's lines so they can be pushed back."""

    def __init__(self, lines: Iterator[tuple[int, str, bool]]):
        self._lines = lines
        self._pending: collections.deque = collections.deque()
        self.record: list[tuple[int, str, bool]] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if len(self.record) >= MAX_RECORD_LINES:
            raise _RecordTooLong()
        item = self._pending.popleft() if self._pending else next(self._lines)
        self.record.append(item)
        return item[1]

    def start_record(self) -> None:
        self.record = []

    def push_back(self, items) -> None:
        self._pending.extendleft(reversed(items))


def _csv_reader(feed: _LineFeed):
    # strict: a stray quote after a closing quote, or a quote still open at the
    # end of the file, is an error instead of a silently merged field.
    return csv.reader(feed, strict=True, skipinitialspace=True)


def _next_csv_record(feed: _LineFeed, reader):
    """Next ``(row, lines, problem)`` from the reader; ``row`` is None when it failed."""
    feed.start_record()
    try:
        row = next(reader)
    except StopIteration:
        if feed.record:  # not seen with strict=True, but lines must never vanish silently
            return None, feed.record, "unexpected end of file inside a quoted field"
        raise
    except _RecordTooLong:
        return None, feed.record, (
            f"a quoted field is still open after {MAX_RECORD_LINES} lines")
    except csv.Error as exc:
        problem = str(exc)
        if problem == "unexpected end of data":
            problem = "the file ends inside a quoted field"
        return None, feed.record, problem
    return row, feed.record, None


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def _read_csv(path: str, spec: ManifestSpec, stream) -> Iterator[ImageRef | dict]:
    feed = _LineFeed(_numbered_lines(stream))
    header = _csv_header(path, feed)
    if header is not None:
        _check_columns(path, spec, header)
        yield from _csv_body(path, spec, header, feed)


def _csv_header(path: str, feed: _LineFeed) -> list[str] | None:
    """The header's column names (None for an empty file)."""
    reader = _csv_reader(feed)
    while True:
        try:
            row, lines, problem = _next_csv_record(feed, reader)
        except StopIteration:
            return None
        if problem:
            raise ManifestError(f"manifest {path}: cannot parse the header on line "
                                f"{lines[0][0] if lines else 1}: {problem}")
        if not _is_blank(row):
            return [name.strip() for name in row]


def _csv_body(path: str, spec: ManifestSpec, header: list[str], feed: _LineFeed) -> Iterator[ImageRef | dict]:
    builder = _RowBuilder(path, spec)
    reader = _csv_reader(feed)
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    uri_i = index[spec.uri_column]
    id_i = index.get(spec.id_column)

    while True:
        try:
            row, lines, problem = _next_csv_record(feed, reader)
        except StopIteration:
            return
        first = lines[0][0]
        multiline = len(lines) > 1
        if problem is None and not multiline and _is_blank(row):
            continue
        if problem is None and len(row) != len(header):
            problem = f"{len(row)} fields where the header has {len(header)}"
        if problem is None and multiline and any(
                "\n" in v or "\r" in v for v in (row[uri_i], row[id_i] if id_i is not None else "")):
            problem = "a line break inside the uri or id (probably an unclosed quote)"
        if problem is not None:
            if multiline:
                # Only the first line is given up; the rest is parsed again as rows.
                feed.push_back(lines[1:])
                problem += (f" (probably an unclosed quote: the record ran on from line {first} "
                            f"to line {lines[-1][0]}; only line {first} is skipped, the lines "
                            "after it are read again as rows)")
            reader = _csv_reader(feed)
            uri = id_ = None
            if row is not None and not multiline:
                uri = row[uri_i].strip() if uri_i < len(row) else None
                id_ = row[id_i].strip() if id_i is not None and id_i < len(row) else None
            yield builder.error(first, "MalformedCsv", f"line {first}: {problem}",
                                uri=uri, image_id=id_)
            continue
        values = dict(zip(header, row))
        if not all(ok for _, _, ok in lines):
            yield builder.error(first, "InvalidEncoding", f"line {first}: not valid UTF-8",
                                uri=values.get(spec.uri_column, "").strip(),
                                image_id=(values.get(spec.id_column) or "").strip() or None)
            continue
        yield builder.build(values, first, "line")


# --------------------------------------------------------------------------- JSON Lines


def _read_jsonl(path: str, spec: ManifestSpec, stream) -> Iterator[ImageRef | dict]:
    builder = _RowBuilder(path, spec)
    for number, text, ok in _numbered_lines(stream):
        if not text.strip():
            continue
        if not ok:
            yield builder.error(number, "InvalidEncoding", f"line {number}: not valid UTF-8")
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            # json's own "line 1" would clash with the file line number.
            yield builder.error(number, "InvalidJson",
                                f"line {number}: invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield builder.error(
                number, "InvalidRow",
                f"line {number}: expected a JSON object, got {type(value).__name__}")
            continue
        yield builder.build(value, number, "line")


# --------------------------------------------------------------------------- Parquet


def _read_parquet(path: str, spec: ManifestSpec, stream) -> Iterator[ImageRef | dict]:
    for item in _parquet_items(path, spec, stream):
        if isinstance(item, pa.Table):
            for ref, line in zip(records.table_refs(item, spec.keep_columns), item.column("manifest_line").to_pylist()):
                yield ref._replace(source=f"{path}:{line}")
        else:
            yield item


_READERS = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}


def read_manifest_file(path: str, spec: ManifestSpec) -> Iterator[ImageRef | dict]:
    """Stream the rows of one manifest file as ImageRefs, and bad rows as error rows.

    Raises :class:`ManifestError` for problems with the file as a whole (a needed
    column missing from the header, an unknown format, not Parquet).
    """
    fmt = manifest_format(path, spec)
    with _open_binary(path) as stream:
        yield from _READERS[fmt](path, spec, stream)


def check_manifest_columns(path: str, spec: ManifestSpec) -> None:
    """Fail fast (before a job starts) when ``path`` lacks the uri or a kept column."""
    fmt = manifest_format(path, spec)
    if fmt == "jsonl":
        return  # no header: a missing uri shows up per row
    rows = read_manifest_file(path, spec)
    try:
        next(rows, None)  # reading the header is what checks the columns
    finally:
        rows.close()


# --------------------------------------------------------------------------- tables
#
# The pipeline reads a manifest as Arrow tables of rows (records.refs_schema). Plain
# rows -- one line each, no quotes, values without surrounding space, a uri -- are
# parsed and checked by Arrow in bulk; every other row goes through the row-by-row
# readers above, so both ways give the same refs and the same error rows.

ROWS_PER_TABLE = 50_000
CSV_BLOCK_BYTES = 4 << 20


def read_manifest_tables(indexed_path: tuple[int, str], spec: ManifestSpec) -> Iterator[pa.Table | dict]:
    """The rows of manifest file number ``index`` as refs tables, and its bad rows as error rows."""
    index, path = indexed_path
    fmt = manifest_format(path, spec)
    with _open_binary(path) as stream:
        if fmt == "csv":
            items = _csv_items(path, spec, stream)
        elif fmt == "parquet":
            items = _parquet_items(path, spec, stream)
        else:
            items = _READERS[fmt](path, spec, stream)
        yield from _tables_of(items, spec, index)


def _tables_of(items: Iterator[pa.Table | ImageRef | dict], spec: ManifestSpec, index: int):
    """Collect single ImageRefs into tables; pass tables and error rows through."""
    refs: list[ImageRef] = []
    for item in items:
        if isinstance(item, ImageRef):
            refs.append(item)
            if len(refs) >= ROWS_PER_TABLE:
                yield records.refs_table(refs, spec.keep_columns, index)
                refs = []
        elif isinstance(item, pa.Table):
            yield item.append_column("manifest_file", pa.array([index] * item.num_rows, pa.int32())).select(
                records.refs_schema(spec.keep_columns).names)
        else:
            yield item
    if refs:
        yield records.refs_table(refs, spec.keep_columns, index)


def _plain_rows(columns: dict[str, pa.Array], lines: np.ndarray, spec: ManifestSpec):
    """(a refs table without manifest_file for the rows Arrow can take as they are,
    the positions of the others)."""
    uri = columns[spec.uri_column]
    plain = pc.and_(pc.is_valid(uri), pc.greater(pc.binary_length(uri), 0))
    for name in dict.fromkeys([spec.uri_column, spec.id_column, *spec.keep_columns]):
        if name in columns:
            value = columns[name]
            untrimmed = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(value), value), True)
            plain = pc.and_(plain, untrimmed)
    plain = pc.fill_null(plain, False).to_numpy(zero_copy_only=False)
    keep = pa.array(plain)
    if spec.id_column in columns:
        ids = columns[spec.id_column]
        image_id = pc.if_else(pc.fill_null(pc.greater(pc.binary_length(ids), 0), False), ids, uri)
    else:
        image_id = uri
    table = pa.table(
        {
            "image_id": pc.filter(image_id, keep),
            "uri": pc.filter(uri, keep),
            **{name: pc.filter(columns[name], keep) for name in spec.keep_columns},
            "manifest_line": pa.array(lines[plain], pa.int64()),
        }
    )
    return table, np.flatnonzero(~plain)


def _csv_items(path: str, spec: ManifestSpec, stream) -> Iterator[pa.Table | ImageRef | dict]:
    """A CSV manifest: blocks of plain lines through Arrow's CSV parser; from the first
    block that is not plain (quotes, CR, blank lines, a parse error) on, the row reader."""
    first = stream.readline()
    if first.startswith(b"\xef\xbb\xbf") or any(c in first for c in (b'"', b"\r")) or not first.strip():
        yield from _read_csv(path, spec, itertools.chain([first], stream))
        return
    header = [name.strip() for name in next(csv.reader([first.decode("utf-8", errors="replace")]))]
    _check_columns(path, spec, header)
    wanted = [c for c in dict.fromkeys([spec.uri_column, spec.id_column, *spec.keep_columns]) if c in header]
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    names = [f"c{i}" for i in range(len(header))]
    options = dict(
        read_options=pa_csv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES + (1 << 20)),
        parse_options=pa_csv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            include_columns=[names[index[c]] for c in wanted], column_types={n: pa.string() for n in names},
            strings_can_be_null=False),
    )
    builder = _RowBuilder(path, spec)
    line = 2  # of the block's first line
    pending = b""
    while True:
        chunk = stream.read(CSV_BLOCK_BYTES)
        block = pending + chunk
        cut = len(block) if not chunk else block.rfind(b"\n") + 1
        block, pending = block[:cut], block[cut:]
        if not block:
            if not chunk:
                return
            continue
        table = None
        if _plain_block(block):
            try:
                table = pa_csv.read_csv(io.BytesIO(block), **options)
            except pa.ArrowInvalid:  # a wrong field count, invalid UTF-8...
                table = None
        count = block.count(b"\n") + (not block.endswith(b"\n"))
        if table is None or table.num_rows != count:
            rest = itertools.chain(block.splitlines(keepends=True), [pending] if pending else [], stream)
            yield from _csv_body(path, spec, header, _LineFeed(_numbered_lines(rest, start=line)))
            return
        columns = {c: table.column(names[index[c]]).combine_chunks() for c in wanted}
        refs, others = _plain_rows(columns, np.arange(line, line + count), spec)
        yield refs
        for i in others.tolist():
            values = {c: columns[c][i].as_py() for c in wanted}
            if len(header) == 1 and not values[header[0]].strip():
                continue  # a blank line, as the row reader skips it
            yield builder.build(values, line + i, "line")
        line += count
        if not chunk:
            return


def _plain_block(block: bytes) -> bool:
    """Whether every line of ``block`` is one record Arrow parses as the row reader would."""
    if b'"' in block or b"\r" in block or b"\n\n" in block or block.startswith(b"\n"):
        return False
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _parquet_items(path: str, spec: ManifestSpec, stream) -> Iterator[pa.Table | ImageRef | dict]:
    """A Parquet manifest: batches whose columns are all strings through Arrow, others row by row."""
    import pyarrow.parquet as pq  # only Parquet manifests pay for the import

    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise ManifestError(f"manifest {path} is not a readable Parquet file: {exc}") from exc
    present = list(parquet.schema_arrow.names)
    _check_columns(path, spec, present)
    columns = list(dict.fromkeys(
        c for c in (spec.uri_column, spec.id_column, *spec.keep_columns) if c in present))
    builder = _RowBuilder(path, spec)
    number = 1
    for batch in parquet.iter_batches(batch_size=ROWS_PER_TABLE, columns=columns):
        if all(pa.types.is_string(batch.column(c).type) for c in columns):
            values = {c: batch.column(c) for c in columns}
            refs, others = _plain_rows(values, np.arange(number, number + batch.num_rows), spec)
            yield refs
            for i in others.tolist():
                yield builder.build({c: values[c][i].as_py() for c in columns}, number + i, "row")
        else:
            for i, row in enumerate(batch.to_pylist()):
                yield builder.build(row, number + i, "row")
        number += batch.num_rows


# --------------------------------------------------------------------------- --images


def image_glob_refs(pattern: str, keep_columns: tuple = ()) -> list[ImageRef]:
    """One ImageRef per file ``pattern`` matches (image_id = uri = the path)."""
    files = _match(pattern)
    if not files:
        raise ManifestError(f"--images {pattern!r} matches no file")
    return [ImageRef(f, f, {c: None for c in keep_columns}) for f in files]


def image_glob_tables(pattern: str, keep_columns: tuple = ()) -> Iterator[pa.Table]:
    refs = image_glob_refs(pattern, keep_columns)
    for start in range(0, len(refs), ROWS_PER_TABLE):
        table = records.refs_table(refs[start : start + ROWS_PER_TABLE], keep_columns)
        yield table.drop_columns(["manifest_file", "manifest_line"])  # paths are unique: no order needed


# --------------------------------------------------------------------------- Beam


class SplitManifestRowsFn(beam.DoFn):
    """Routes manifest items: refs tables to the main output, error rows to ``errors``, counting both."""

    def __init__(self):
        self.rows = Metrics.counter("aisthetics", "manifest_rows")
        self.errors = Metrics.counter("aisthetics", "manifest_errors")

    def process(self, item):
        if isinstance(item, pa.Table):
            self.rows.inc(item.num_rows)
            yield item
        else:
            self.rows.inc()
            self.errors.inc()
            yield beam.pvalue.TaggedOutput(records.ERRORS, item)


def _split(items):
    return items | "SplitErrors" >> beam.ParDo(SplitManifestRowsFn()).with_outputs(
        records.ERRORS, main="refs")


_DUPLICATES = Metrics.counter("aisthetics", "manifest_errors")


def keep_first_of_each_id(element, files: list[str], keep_columns: tuple):
    """(bucket, refs tables) -> one table of the earliest row of each image_id in manifest
    order; the other rows of an image_id become error rows."""
    _, tables = element
    table = buckets.concat(tables)
    table = table.take(pc.sort_indices(table, [("image_id", "ascending"), ("manifest_file", "ascending"),
                                               ("manifest_line", "ascending")]))
    ids = table.column("image_id")
    repeated = np.zeros(table.num_rows, dtype=bool)
    if table.num_rows > 1:
        repeated[1:] = pc.equal(ids.slice(1), ids.slice(0, table.num_rows - 1)).to_numpy(zero_copy_only=False)
    yield table.filter(pa.array(~repeated)).drop_columns(["manifest_file", "manifest_line"])
    if not repeated.any():
        return
    # each repeated row's first row: the last non-repeated position at or before it
    first_of = np.maximum.accumulate(np.where(repeated, 0, np.arange(table.num_rows)))
    where = lambda i: f"{files[table['manifest_file'][i].as_py()]}:{table['manifest_line'][i].as_py()}"
    for i in np.flatnonzero(repeated).tolist():
        ref = next(records.table_refs(table.slice(i, 1), keep_columns))
        _DUPLICATES.inc()
        yield beam.pvalue.TaggedOutput(records.ERRORS, records.error_row(
            ref, "manifest", "DuplicateImageId",
            f"{where(i)}: image_id {ref.image_id!r} is already used at {where(first_of[i])}; "
            "only that row is scored"))


class UniqueImageIds(beam.PTransform):
    """Refs tables -> ``{"refs": ..., errors: ...}`` with one row per image_id: an image_id
    is a key of the output tables, so a repeated one is an error row, not a second score."""

    def __init__(self, files: list[str], keep_columns: tuple, bucket_count: int):
        super().__init__()
        self.files = files
        self.keep_columns = keep_columns
        self.bucket_count = bucket_count

    def expand(self, tables):
        result = (
            tables
            | "ById" >> beam.FlatMap(buckets.split_by_bucket, "image_id", self.bucket_count)
            | "GroupById" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(keep_first_of_each_id, self.files, self.keep_columns).with_outputs(
                records.ERRORS, main="refs")
        )
        return {"refs": result.refs, records.ERRORS: result[records.ERRORS]}


class ReadManifest(beam.PTransform):
    """Manifest files -> ``{"refs": refs tables, records.ERRORS: error rows}`` (image_ids are
    made unique by ``dedupe.UniqueImageIds``)."""

    def __init__(self, spec: ManifestSpec, label: str | None = None):
        super().__init__(label)
        self.spec = spec
        metadata = _match_metadata(spec.pattern)
        self.files = [m.path for m in metadata]
        if not self.files:
            raise ManifestError(f"manifest {spec.pattern!r} matches no file")

    def expand(self, pbegin):
        for path in self.files:
            manifest_format(path, self.spec)
        check_manifest_columns(self.files[0], self.spec)
        files = pbegin | "ManifestFiles" >> beam.Create(list(enumerate(self.files)))
        if len(self.files) > 1:
            files = files | "SpreadFiles" >> beam.Reshuffle()
        items = files | "ReadRows" >> beam.FlatMap(read_manifest_tables, self.spec)
        rows = _split(items)
        return {"refs": rows.refs, records.ERRORS: rows[records.ERRORS]}


class ReadImageGlob(beam.PTransform):
    """An ``--images`` glob -> the same ``refs`` / ``errors`` outputs as ReadManifest."""

    def __init__(self, pattern: str, keep_columns: tuple = (), label: str | None = None):
        super().__init__(label)
        self.pattern = pattern
        self.keep_columns = tuple(keep_columns)
        self.files: list[str] = []

    def expand(self, pbegin):
        # Listing happens on a worker so millions of paths never go into the job
        # graph; here we only check that something matches.
        try:
            found = FileSystems.match([self.pattern], limits=[1])[0].metadata_list
        except Exception as exc:
            raise ManifestError(f"cannot list {self.pattern!r}: {exc}") from exc
        if not found:
            raise ManifestError(f"--images {self.pattern!r} matches no file")
        tables = (
            pbegin
            | "ImagePattern" >> beam.Create([self.pattern])
            | "ListImages" >> beam.FlatMap(image_glob_tables, self.keep_columns)
            | "SpreadRows" >> beam.Reshuffle())
        rows = _split(tables)  # paths are unique, so image_ids are
        return {"refs": rows.refs, records.ERRORS: rows[records.ERRORS]}
