"""JSON Lines manifests: whole, or one byte range at a time.

A JSON line cannot hold a raw newline (JSON escapes it inside strings), so a file splits
safely at any byte: the reader of ``[start, stop)`` skips the line running into its
range (the previous range reads it) and reads every line that begins before ``stop``,
however far past ``stop`` it runs. Together the ranges read every line exactly once.
"""

from __future__ import annotations

import itertools
import json
from typing import Iterator

from aisthetics_transforms.manifest.spec import (
    ManifestError,
    ManifestSpec,
    RowBuilder,
    missing_columns_error,
)

_BOM = b"\xef\xbb\xbf"
SAMPLE_ROWS = 1000  # rows of the first file whose keys are checked against the spec
_HEAD_BYTES = 1 << 20  # enough to tell a JSON document from JSON Lines


def jsonl_lines(stream, unit: str, byte_range: tuple[int, int] | None = None) -> Iterator[tuple[int, bytes]]:
    """``(position, line)`` for the lines of ``stream`` (all, or those beginning in
    ``byte_range``); ``position`` is the line number (``unit="line"``) or the offset of the
    line's first byte (``unit="byte"``). A leading byte order mark is dropped."""
    start, stop = byte_range or (0, None)
    offset = start
    if start > 0:
        # A line begins at ``start`` only if the byte before it ends a line; otherwise the
        # rest of the line running into the range belongs to the previous range.
        stream.seek(start - 1)
        offset = start - 1 + len(stream.readline())
    number = 0
    while stop is None or offset < stop:
        line = stream.readline()
        if not line:
            return
        number += 1
        yield (offset if unit == "byte" else number), (line[3:] if offset == 0 and line.startswith(_BOM) else line)
        offset += len(line)


def jsonl_rows(lines: Iterator[tuple[int, bytes]], builder: RowBuilder) -> Iterator:
    """Each non-blank line as an ImageRef or an error row."""
    for position, raw in lines:
        builder.reached(position)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield builder.error(position, "InvalidEncoding", "not valid UTF-8")
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text.rstrip("\r\n"))  # so that an error's column is on this line
        except json.JSONDecodeError as exc:
            # json's own "line 1" would clash with the file line number.
            yield builder.error(position, "InvalidJson", f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(value, dict):
            yield builder.error(position, "InvalidRow", f"expected a JSON object, got {type(value).__name__}")
            continue
        yield builder.build(value, position)


def json_document_problem(head: bytes, complete: bool) -> str | None:
    """Why a file's first bytes show a JSON document rather than JSON Lines (None if they
    don't): a JSON array of rows, or a pretty-printed object; ``{path}`` stands for the
    file. ``complete``: ``head`` is the whole file."""
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff").lstrip()
    if not text.startswith(("[", "{")):
        return None
    first, newline, _ = text.partition("\n")
    try:
        value = json.loads(first) if newline or complete else None
    except ValueError:
        value = None
    if text.startswith("[") and (
        value is None or (isinstance(value, list) and any(isinstance(v, dict) for v in value))
    ):
        return "a JSON array, not JSON Lines; convert it with jq -c '.[]' {path} > rows.jsonl"
    if text.startswith("{") and first.strip() == "{":
        return "pretty-printed JSON, not JSON Lines (one object per line); convert it with jq -c . {path} > rows.jsonl"
    return None


def check_json_lines(path: str, stream) -> None:
    """:class:`ManifestError` when the file at ``stream``'s start is a JSON document, not
    JSON Lines. Reads only up to its first non-blank line (at most :data:`_HEAD_BYTES`)."""
    head = b""
    while len(head) < _HEAD_BYTES:
        line = stream.readline(_HEAD_BYTES - len(head))
        head += line
        if not line or line.strip(b" \t\r\n\xef\xbb\xbf"):
            break
    problem = json_document_problem(head, complete=not line)
    if problem:
        raise ManifestError(f"manifest {path} is " + problem.format(path=path))


def check_sampled_columns(path: str, spec: ManifestSpec, lines: Iterator[tuple[int, bytes]]) -> None:
    """:class:`ManifestError` when no row among the first :data:`SAMPLE_ROWS` non-blank lines
    of a file has a column the spec needs. JSON Lines has no header, so this is how a
    ``--keep_columns`` typo stops the run as it does for CSV (a column that is absent
    from the first rows but there later can be given ``null`` in the first row)."""
    seen: dict[str, None] = {}
    rows = 0
    for _, raw in itertools.islice((line for line in lines if line[1].strip()), SAMPLE_ROWS):
        try:
            value = json.loads(raw.decode("utf-8"))
        except ValueError:  # bad lines are error rows when the file is read
            continue
        if isinstance(value, dict):
            rows += 1
            seen.update(dict.fromkeys(value))
    missing = [c for c in spec.required_columns() if c not in seen]
    if rows and missing:
        raise missing_columns_error(
            path,
            missing,
            seen,
            seen=f"its first {rows} row(s) have",
            hint="; a column that only appears later needs a null in the first row",
        )
