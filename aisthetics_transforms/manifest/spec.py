"""The manifest's spec (its columns and format) and what a row becomes under it: an ImageRef,
or an error row that says where the row is.

Shared by every format reader (``csv_format``, ``jsonl_format``, ``parquet_format``): the spec and the error
it raises, where a row is in its file (:class:`ManifestFile`), the row-by-row builder
(:class:`RowBuilder`) and its bulk twin for Arrow columns (:func:`plain_rows`). Both give
the same refs for the same values, so a reader may use either for any row.
"""

from __future__ import annotations

import collections
import datetime
import decimal
import json
import re
from dataclasses import dataclass
from typing import Iterable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisthetics_transforms import records
from aisthetics_transforms.records import ImageRef

FORMATS = ("csv", "jsonl", "parquet")
FORMAT_ALIASES = {
    "csv": "csv",
    "jsonl": "jsonl",
    "json": "jsonl",
    "ndjson": "jsonl",
    "parquet": "parquet",
    "pq": "parquet",
}
DEFAULT_ID_COLUMN = "image_id"  # optional: the uri is the id when a manifest has no such column

# Kept columns are appended to the scores and errors tables, so they must not
# shadow a column those tables already have (error_row would overwrite it).
RESERVED_COLUMNS = records.reserved_columns()


class ManifestError(ValueError):
    """A manifest problem that stops the run: the user has to fix the command or the file."""


@dataclass(frozen=True)
class ManifestSpec:
    """Where the manifest is and how to read it (``--manifest`` and its options)."""

    pattern: str
    format: str | None = None  # None: by extension
    uri_column: str = "uri"
    id_column: str = DEFAULT_ID_COLUMN
    keep_columns: tuple = ()
    version_column: str | None = None  # --version_column: each row's declared version of its image

    def __post_init__(self):
        if self.format is not None:
            fmt = FORMAT_ALIASES.get(str(self.format).strip().lower())
            if fmt is None:
                raise ManifestError(f"unknown manifest format {self.format!r}; use one of {', '.join(FORMATS)}")
            object.__setattr__(self, "format", fmt)
        if not self.uri_column:
            raise ManifestError("uri_column must not be empty")
        keep = tuple(self.keep_columns or ())
        clash = sorted(set(keep) & RESERVED_COLUMNS)
        if clash:
            raise ManifestError(
                f"keep_columns {clash} clash with output table columns "
                f"{sorted(RESERVED_COLUMNS)}; rename them in the manifest"
            )
        object.__setattr__(self, "keep_columns", keep)

    def required_columns(self) -> list[str]:
        """The columns a file must have: the uri, the kept ones, and a renamed id column
        (only the default id column may be absent)."""
        renamed_id = [self.id_column] if self.id_column != DEFAULT_ID_COLUMN else []
        version = [self.version_column] if self.version_column and self.version_column != self.id_column else []
        return list(dict.fromkeys([self.uri_column, *renamed_id, *self.keep_columns, *version]))

    def used_columns(self) -> list[str]:
        version = [self.version_column] if self.version_column else []
        return list(dict.fromkeys([self.uri_column, self.id_column, *self.keep_columns, *version]))

    @property
    def carried_columns(self) -> tuple:
        """The columns besides the uri and the id that refs tables carry as strings: the
        kept ones, then the version column (:func:`with_declared_versions` renames it)."""
        version = self.version_column
        if not version or version in (*self.keep_columns, self.uri_column, self.id_column):
            return self.keep_columns
        return (*self.keep_columns, version)


class ManifestFile(NamedTuple):
    """One file of a manifest, as listed when the pipeline is built.

    ``unit`` is what the file's row positions (``manifest_line``) count: ``line`` for CSV
    and for JSON Lines read whole, ``row`` for Parquet, ``byte`` (the offset of the line's
    first byte) for a JSON Lines file read in byte ranges, whose line numbers no range
    reader knows.
    """

    number: int  # in the sorted file list: orders rows across files
    path: str
    size: int
    format: str  # csv | jsonl | parquet
    unit: str  # line | row | byte

    def describe(self, position: int) -> str:
        """A row's position within the file, for messages: ``line 5``, ``byte 4096``."""
        return f"{self.unit} {position}"

    def where(self, position: int) -> str:
        """A row's location: ``FILE:LINE`` (or ``FILE:byte N``); the image_id of an error
        row without a usable id."""
        return f"{self.path}:byte {position}" if self.unit == "byte" else f"{self.path}:{position}"


def missing_columns_error(
    path: str, missing: list[str], present: Iterable[str], seen: str = "it has", hint: str = ""
) -> ManifestError:
    return ManifestError(
        f"manifest {path}: column(s) {', '.join(repr(c) for c in missing)} not found; "
        f"{seen} {', '.join(repr(c) for c in present) or 'no columns'} "
        f"(see --uri_column, --id_column, --keep_columns{hint})"
    )


def check_columns(path: str, spec: ManifestSpec, present: list[str]) -> None:
    """:class:`ManifestError` when a header lacks a column the spec needs, or repeats one."""
    missing = [c for c in spec.required_columns() if c not in present]
    if missing:
        raise missing_columns_error(path, missing, present)
    counts = collections.Counter(present)
    doubled = [c for c in spec.used_columns() if counts[c] > 1]
    if doubled:
        raise ManifestError(f"manifest {path}: column(s) {doubled} appear more than once in the header {present}")


# --------------------------------------------------------------------------- values

# A lone UTF-16 surrogate cannot be written as UTF-8: it comes from a JSON escape such as
# "\ud800", or from invalid bytes decoded with "surrogateescape".
_SURROGATE = re.compile("[\ud800-\udfff]")


def is_utf8(text: str | None) -> bool:
    return text is None or not _SURROGATE.search(text)


def printable(text):
    """``text`` as it can be stored: lone surrogates become U+FFFD, as undecodable CSV bytes do."""
    return _SURROGATE.sub("\ufffd", text) if isinstance(text, str) else text


def as_text(value) -> str | None:
    """A manifest value as the string the tables carry (None stays None); bytes that are
    not UTF-8 keep their bad bytes as lone surrogates, for :func:`is_utf8` to find."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="surrogateescape").strip()
    if isinstance(value, (int, float, decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)


_INVALID = object()


def _id_text(value):
    """The image_id a value gives: None when absent or empty, _INVALID when unusable."""
    if value is None:
        return None
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, (str, bytes, bytearray)):
        return as_text(value) or None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # ids of an int column with nulls come back as floats
    if isinstance(value, (int, float, decimal.Decimal)):
        return str(value)
    return _INVALID


# --------------------------------------------------------------------------- rows


class RowBuilder:
    """Turns the parsed rows of one file (mappings of column -> value) into ImageRefs or
    error rows, and remembers how far the file has been read (``position``), for the
    message when reading it stops part way.

    ``empty_is_null``: an empty cell is no value (CSV), so an empty kept value is null.
    """

    def __init__(self, file: ManifestFile, spec: ManifestSpec, empty_is_null: bool = False):
        self.file = file
        self.spec = spec
        self.empty_is_null = empty_is_null
        self.position: int | None = None

    def reached(self, position: int) -> None:
        self.position = position if self.position is None else max(self.position, position)

    def error(self, position: int, error_type: str, problem: str, *, uri=None, image_id=None, kept=None) -> dict:
        """The error row of the row at ``position``: ``"line 5: <problem>"``."""
        self.reached(position)
        if not (isinstance(image_id, str) and image_id):
            image_id = self.file.where(position)
        kept = {c: None for c in self.spec.carried_columns} if kept is None else kept
        ref = ImageRef(printable(image_id), printable(uri or ""), {c: printable(v) for c, v in kept.items()})
        return records.error_row(ref, "manifest", error_type, printable(f"{self.file.describe(position)}: {problem}"))

    def kept_text(self, value) -> str | None:
        text = as_text(value)
        return None if self.empty_is_null and text == "" else text

    def build(self, row: dict, position: int) -> ImageRef | dict:
        self.reached(position)
        spec = self.spec
        kept = {c: self.kept_text(row.get(c)) for c in spec.carried_columns}
        raw_id = row.get(spec.id_column)
        image_id = _id_text(raw_id)
        raw_uri = row.get(spec.uri_column)
        if isinstance(raw_uri, (bytes, bytearray)):  # Parquet binary, or a string column that was not UTF-8
            raw_uri = as_text(raw_uri)
        if raw_uri is not None and not isinstance(raw_uri, str):
            return self.error(
                position,
                "InvalidUri",
                f"{spec.uri_column!r} must be a string, got {type(raw_uri).__name__} {as_text(raw_uri)}",
                uri=as_text(raw_uri),
                image_id=image_id if isinstance(image_id, str) else None,
                kept=kept,
            )
        uri = (raw_uri or "").strip()
        undecodable = [
            column
            for column, text in ((spec.uri_column, uri), (spec.id_column, image_id), *kept.items())
            if isinstance(text, str) and not is_utf8(text)
        ]
        if undecodable:  # an id that is not valid text is no id: the row's location is
            return self.error(
                position,
                "InvalidEncoding",
                f"{', '.join(repr(c) for c in undecodable)} not valid UTF-8 "
                "(invalid bytes, or an unpaired surrogate escape such as \\ud800)",
                uri=uri,
                image_id=image_id if isinstance(image_id, str) and is_utf8(image_id) else None,
                kept=kept,
            )
        if not uri:
            return self.error(
                position,
                "MissingUri",
                f"no value in column {spec.uri_column!r}",
                image_id=image_id if isinstance(image_id, str) else None,
                kept=kept,
            )
        if image_id is _INVALID:
            return self.error(
                position,
                "InvalidRow",
                f"{spec.id_column!r} must be a string or a number, got {type(raw_id).__name__}",
                uri=uri,
                kept=kept,
            )
        return ImageRef(image_id or uri, uri, kept, f"{self.file.path}:{position}")


def plain_rows(columns: dict[str, pa.Array], positions: np.ndarray, builder: RowBuilder):
    """The bulk twin of :meth:`RowBuilder.build` for Arrow string columns of valid UTF-8:
    (a refs table without ``manifest_file`` for the rows it can take as they are, the
    indices of the others, which go through ``builder.build``)."""
    spec = builder.spec
    uri = columns[spec.uri_column]
    plain = pc.and_(pc.is_valid(uri), pc.greater(pc.binary_length(uri), 0))
    for name in spec.used_columns():
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
    kept = {}
    for name in spec.carried_columns:
        value = columns[name]
        if builder.empty_is_null:
            value = pc.if_else(pc.equal(value, ""), pa.scalar(None, value.type), value)
        kept[name] = pc.filter(value, keep)
    table = pa.table(
        {
            "image_id": pc.filter(image_id, keep),
            "uri": pc.filter(uri, keep),
            **kept,
            "manifest_line": pa.array(positions[plain], pa.int64()),
        }
    )
    if len(positions):
        builder.reached(int(positions[-1]))
    return table, np.flatnonzero(~plain)


def with_declared_versions(table: pa.Table, spec: ManifestSpec) -> pa.Table:
    """A refs table with its rows' declared versions (``--version_column``) in the column
    ``declared_version``: an empty value is none (null). The version column itself stays
    only where it is also kept."""
    version = spec.version_column
    if version is None:
        return table
    if version == spec.uri_column:
        declared = table.column("uri")
    elif version == spec.id_column:
        declared = table.column("image_id")
    else:
        declared = table.column(version)
        if version not in spec.keep_columns:
            table = table.drop_columns([version])
    declared = pc.if_else(pc.equal(declared, ""), pa.scalar(None, pa.string()), declared)
    return table.append_column("declared_version", declared)
