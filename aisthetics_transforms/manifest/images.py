"""``--images GLOB``: every file a glob matches as a manifest row (image_id = uri = its absolute path).

A ``gs://`` glob over millions of objects is listed in parallel: the names after its fixed
part (everything before the first wildcard) are cut into ranges by their next character
(:data:`RANGE_CUTS`), each listed on a worker of its own (``objects.list`` with
``startOffset``/``endOffset``, a page of 1,000 names at a time) and matched against the
glob as Beam matches it. The ranges cover every name once, so no object is listed twice.
A local glob is listed on one worker, as a directory listing is cheap.
"""

from __future__ import annotations

import os
import re
import string
from typing import Iterator, NamedTuple, Optional

import pyarrow as pa
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems

from aisthetics_transforms import records
from aisthetics_transforms.manifest.files import ROWS_PER_TABLE, match_metadata
from aisthetics_transforms.manifest.spec import (
    ManifestError,
)
from aisthetics_transforms.records import ImageRef


def absolute_pattern(pattern: str) -> str:
    """A local pattern made absolute, so uris (and the image_ids made of them) do not
    depend on the folder a run starts in."""
    return os.path.abspath(pattern) if FileSystems.get_scheme(pattern) is None else pattern


def image_glob_refs(pattern: str, keep_columns: tuple = (), must_match: bool = True) -> list[ImageRef]:
    """One ImageRef per file ``pattern`` matches (image_id = uri = the absolute path)."""
    files = [m.path for m in match_metadata(absolute_pattern(pattern))]
    if not files and must_match:
        raise ManifestError(f"--images {pattern!r} matches no file")
    return [ImageRef(f, f, {c: None for c in keep_columns}) for f in files]


def image_glob_tables(pattern: str, keep_columns: tuple = (), must_match: bool = True) -> Iterator[pa.Table]:
    refs = image_glob_refs(pattern, keep_columns, must_match)
    for start in range(0, len(refs), ROWS_PER_TABLE):
        table = records.refs_table(refs[start : start + ROWS_PER_TABLE], keep_columns)
        yield table.drop_columns(["manifest_file", "manifest_line"])  # paths are unique: no order needed


# A gs:// glob's names are cut by the character after its fixed part: 62 ranges, one per
# digit and ASCII letter, and the ranges between them (what sorts before "0", after "z"...).
RANGE_CUTS = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
_WILDCARD = re.compile(r"[*?\[]")


class GlobRange(NamedTuple):
    """The names of ``pattern``'s bucket from ``start`` (inclusive) to ``end`` (exclusive; None:
    no end) that the pattern matches."""

    pattern: str
    start: Optional[str]
    end: Optional[str]


def glob_ranges(pattern: str) -> list[GlobRange]:
    """How to list ``pattern``: one range for a local glob or a literal path, else the ranges
    of its names after the fixed part (see the module doc)."""
    wildcard = _WILDCARD.search(pattern)
    if not pattern.startswith("gs://") or wildcard is None:
        return [GlobRange(pattern, None, None)]
    fixed = pattern[len("gs://") :][: wildcard.start() - len("gs://")].partition("/")[2]
    cuts = [fixed + c for c in RANGE_CUTS]
    return [GlobRange(pattern, start, end) for start, end in zip([fixed, *cuts], [*cuts, None])]


def list_range(glob: GlobRange, keep_columns: tuple = ()) -> Iterator[pa.Table]:
    """The files of one range as refs tables of at most ROWS_PER_TABLE rows."""
    if glob.start is None:
        yield from image_glob_tables(glob.pattern, keep_columns, must_match=False)
        return
    from aisthetics_transforms.fetch.gcs import storage_client

    bucket, _, fixed = glob.pattern[len("gs://") :].partition("/")
    fixed = fixed[: _WILDCARD.search(fixed).start()]  # type: ignore[union-attr]
    matches = re.compile(FileSystem.translate_pattern(glob.pattern)).match
    blobs = storage_client().list_blobs(
        bucket, prefix=fixed or None, start_offset=glob.start, end_offset=glob.end, fields="items(name),nextPageToken"
    )
    paths: list[str] = []
    for blob in blobs:
        # the range is checked here too: a store that ignores the offsets is slower, never wrong
        inside = blob.name >= glob.start and (glob.end is None or blob.name < glob.end)
        path = f"gs://{bucket}/{blob.name}"
        if inside and not blob.name.endswith("/") and matches(path):
            paths.append(path)
            if len(paths) >= ROWS_PER_TABLE:
                yield _paths_table(paths, keep_columns)
                paths = []
    if paths:
        yield _paths_table(paths, keep_columns)


def _paths_table(paths: list[str], keep_columns: tuple) -> pa.Table:
    refs = [ImageRef(path, path, {c: None for c in keep_columns}) for path in paths]
    return records.refs_table(refs, keep_columns).drop_columns(["manifest_file", "manifest_line"])
