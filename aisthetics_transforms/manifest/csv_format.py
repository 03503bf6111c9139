"""CSV manifests: a row-by-row reader, and a bulk path through Arrow that gives the same rows.

A CSV file is read whole by one worker: a quoted field may hold a line break, so no
reader that starts in the middle of a file can tell a record's start from a line inside
a quoted field. Big CSV manifests should be sharded into several files (or written as
Parquet or JSON Lines, which are split).

Plain lines -- one record per line, no quotes, no CR, valid UTF-8 -- are parsed by
Arrow's CSV reader in blocks; from the first block that is not plain on, the row reader
(Python's ``csv``) takes over, so both give the same refs and error rows.
"""

from __future__ import annotations

import collections
import csv
import io
import itertools
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyarrow import csv as pa_csv

from aisthetics_transforms.manifest.spec import (
    ManifestError,
    RowBuilder,
    check_columns,
    plain_rows,
)

# An unterminated quote makes the csv module read on into the following rows;
# past this many physical lines one record is treated as broken and re-read.
MAX_RECORD_LINES = 1000
CSV_BLOCK_BYTES = 4 << 20

# Arrow parses a field of any length (a line longer than its block falls back to the row
# reader), so the row reader must too: the csv module's default cap (128 KiB) turned a
# long value in an unused column into MalformedCsv. The cap is process-wide; this only
# ever raises it. Memory per line is bounded by the line, as for Arrow.
csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))


def numbered_lines(stream, start: int = 1) -> Iterator[tuple[int, str, bool]]:
    """Yield ``(line_number, text, decoded_ok)``; undecodable bytes become U+FFFD."""
    for number, raw in enumerate(stream, start=start):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            yield number, raw.decode("utf-8"), True
        except UnicodeDecodeError:
            yield number, raw.decode("utf-8", errors="replace"), False


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
        return None, feed.record, (f"a quoted field is still open after {MAX_RECORD_LINES} lines")
    except csv.Error as exc:
        problem = str(exc)
        if problem == "unexpected end of data":
            problem = "the file ends inside a quoted field"
        return None, feed.record, problem
    return row, feed.record, None


def _is_blank(row: list[str]) -> bool:
    return not row or (len(row) == 1 and not row[0].strip())


def csv_rows(stream, builder: RowBuilder) -> Iterator:
    """The row reader: every record of a CSV stream as an ImageRef or an error row."""
    feed = _LineFeed(numbered_lines(stream))
    header = _csv_header(builder.file.path, feed)
    if header is not None:
        check_columns(builder.file.path, builder.spec, header)
        yield from _csv_body(builder, header, feed)


def _csv_header(path: str, feed: _LineFeed) -> list[str] | None:
    """The header's column names (None for an empty file)."""
    reader = _csv_reader(feed)
    while True:
        try:
            row, lines, problem = _next_csv_record(feed, reader)
        except StopIteration:
            return None
        if problem:
            raise ManifestError(
                f"manifest {path}: cannot parse the header on line {lines[0][0] if lines else 1}: {problem}"
            )
        if not _is_blank(row):
            return [name.strip() for name in row]


def _csv_body(builder: RowBuilder, header: list[str], feed: _LineFeed) -> Iterator:
    spec = builder.spec
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
            builder.reached(first)
            continue
        if problem is None and len(row) != len(header):
            problem = f"{len(row)} fields where the header has {len(header)}"
        if (
            problem is None
            and multiline
            and any("\n" in v or "\r" in v for v in (row[uri_i], row[id_i] if id_i is not None else ""))
        ):
            problem = "a line break inside the uri or id (probably an unclosed quote)"
        if problem is not None:
            if multiline:
                # Only the first line is given up; the rest is parsed again as rows.
                feed.push_back(lines[1:])
                problem += (
                    f" (probably an unclosed quote: the record ran on from line {first} "
                    f"to line {lines[-1][0]}; only line {first} is skipped, the lines "
                    "after it are read again as rows)"
                )
            reader = _csv_reader(feed)
            uri = id_ = None
            if row is not None and not multiline:
                uri = row[uri_i].strip() if uri_i < len(row) else None
                id_ = row[id_i].strip() if id_i is not None and id_i < len(row) else None
            yield builder.error(first, "MalformedCsv", problem, uri=uri, image_id=id_)
            continue
        values = dict(zip(header, row))
        if not all(ok for _, _, ok in lines):
            yield builder.error(
                first,
                "InvalidEncoding",
                "not valid UTF-8",
                uri=values.get(spec.uri_column, "").strip(),
                image_id=(values.get(spec.id_column) or "").strip() or None,
            )
            continue
        yield builder.build(values, first)


def csv_items(stream, builder: RowBuilder) -> Iterator:
    """A CSV stream as refs tables (plain blocks, through Arrow), ImageRefs and error rows
    (from the first block that is not plain on, through :func:`csv_rows`'s reader)."""
    path, spec = builder.file.path, builder.spec
    first = stream.readline()
    if first.startswith(b"\xef\xbb\xbf") or any(c in first for c in (b'"', b"\r")) or not first.strip():
        yield from csv_rows(itertools.chain([first], stream), builder)
        return
    header = [name.strip() for name in next(csv.reader([first.decode("utf-8", errors="replace")]))]
    check_columns(path, spec, header)
    wanted = [c for c in spec.used_columns() if c in header]
    index = {name: i for i, name in reversed(list(enumerate(header)))}
    names = [f"c{i}" for i in range(len(header))]
    options = dict(
        read_options=pa_csv.ReadOptions(column_names=names, block_size=CSV_BLOCK_BYTES + (1 << 20)),
        parse_options=pa_csv.ParseOptions(quote_char=False, newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            include_columns=[names[index[c]] for c in wanted],
            column_types={n: pa.string() for n in names},
            strings_can_be_null=False,
        ),
    )
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
            except pa.ArrowInvalid:  # a wrong field count, a line longer than Arrow's block...
                table = None
        count = block.count(b"\n") + (not block.endswith(b"\n"))
        if table is None or table.num_rows != count:
            # The row reader takes the rest of the file from this block's first line on.
            # Lines are cut at b"\n" only, as when it reads the stream, and ``pending`` (the
            # start of a line) is joined to the rest of its line.
            rest = itertools.chain(io.BytesIO(block + pending + (stream.readline() if pending else b"")), stream)
            yield from _csv_body(builder, header, _LineFeed(numbered_lines(rest, start=line)))
            return
        columns = {c: table.column(names[index[c]]).combine_chunks() for c in wanted}
        refs, others = plain_rows(columns, np.arange(line, line + count), builder)
        yield refs
        for i in others.tolist():
            values = {c: columns[c][i].as_py() for c in wanted}
            if len(header) == 1 and not values[header[0]].strip():
                continue  # a blank line, as the row reader skips it
            yield builder.build(values, line + i)
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
