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
(:data:`JSONL_RANGE_BYTES`), a CSV or compressed file whole (see ``csv_format``).

``files`` lists and opens the files, ``pieces`` cuts them and reads a piece, the format
readers are ``csv_format``, ``jsonl_format`` and ``parquet_format``, ``rows`` turns their
rows into refs and error rows, ``images`` serves ``--images``, and ``transforms`` wires it
all into Beam.
"""

from aisthetics_transforms.manifest.files import (
    JSONL_RANGE_BYTES,
    ROWS_PER_TABLE,
    list_manifest_files,
    manifest_files,
    manifest_format,
    open_manifest,
)
from aisthetics_transforms.manifest.images import image_glob_refs, image_glob_tables
from aisthetics_transforms.manifest.pieces import (
    ManifestSplit,
    check_manifest_file,
    plan_splits,
    read_split,
)
from aisthetics_transforms.manifest.spec import (
    FORMATS,
    RESERVED_COLUMNS,
    ManifestError,
    ManifestFile,
    ManifestSpec,
)
from aisthetics_transforms.manifest.transforms import ReadImageGlob, ReadManifest

__all__ = [
    "FORMATS",
    "JSONL_RANGE_BYTES",
    "RESERVED_COLUMNS",
    "ROWS_PER_TABLE",
    "ManifestError",
    "ManifestFile",
    "ManifestSpec",
    "ManifestSplit",
    "ReadImageGlob",
    "ReadManifest",
    "check_manifest_file",
    "image_glob_refs",
    "image_glob_tables",
    "list_manifest_files",
    "manifest_files",
    "manifest_format",
    "open_manifest",
    "plan_splits",
    "read_split",
]
