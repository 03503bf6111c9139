"""``--images GLOB``: every file a glob matches as a manifest row (image_id = uri = its absolute path)."""

from __future__ import annotations

import os
from typing import Iterator

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from aisthetics_transforms import records
from aisthetics_transforms.manifest.files import ROWS_PER_TABLE, match_metadata
from aisthetics_transforms.manifest.rows import (
    ManifestError,
)
from aisthetics_transforms.records import ImageRef


def absolute_pattern(pattern: str) -> str:
    """A local pattern made absolute, so uris (and the image_ids made of them) do not
    depend on the folder a run starts in."""
    return os.path.abspath(pattern) if FileSystems.get_scheme(pattern) is None else pattern


def image_glob_refs(pattern: str, keep_columns: tuple = ()) -> list[ImageRef]:
    """One ImageRef per file ``pattern`` matches (image_id = uri = the absolute path)."""
    files = [m.path for m in match_metadata(absolute_pattern(pattern))]
    if not files:
        raise ManifestError(f"--images {pattern!r} matches no file")
    return [ImageRef(f, f, {c: None for c in keep_columns}) for f in files]


def image_glob_tables(pattern: str, keep_columns: tuple = ()) -> Iterator[pa.Table]:
    refs = image_glob_refs(pattern, keep_columns)
    for start in range(0, len(refs), ROWS_PER_TABLE):
        table = records.refs_table(refs[start : start + ROWS_PER_TABLE], keep_columns)
        yield table.drop_columns(["manifest_file", "manifest_line"])  # paths are unique: no order needed
