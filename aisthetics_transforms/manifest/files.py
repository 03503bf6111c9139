"""Manifest files: which files a ``--manifest`` pattern names, their format, and opening them
(decompressing ``.gz``/``.bz2``/``.xz`` by name); a path that exists literally is that file, not a glob."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import posixpath
from typing import Any, Callable, cast

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from aisthetics_transforms.manifest.spec import (
    FORMATS,
    ManifestError,
    ManifestFile,
    ManifestSpec,
)

_EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DECOMPRESSORS: dict[str, Callable[..., Any]] = {
    ".gz": gzip.open,
    ".bz2": bz2.open,
    ".xz": lzma.open,
    ".lzma": lzma.open,
}

JSONL_RANGE_BYTES = 64 << 20  # an uncompressed JSON Lines file larger than this is read in ranges
ROWS_PER_TABLE = 50_000
_READ_BUFFER_BYTES = 1 << 20
_GLOB_CHARACTERS = "*?["


def literal_file(path: str):
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


def match_metadata(pattern: str) -> list:
    """FileMetadata of the files ``pattern`` matches, sorted by path; a path that names
    a file literally (``m[1].csv``) is that file, not a glob."""
    literal = literal_file(pattern)
    if literal is not None:
        return [literal]
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as exc:  # BeamIOError or a filesystem-specific error
        raise ManifestError(f"cannot list {pattern!r}: {exc}") from exc
    return sorted((m for m in result.metadata_list if not m.path.endswith("/")), key=lambda m: m.path)


def split_compression(path: str) -> tuple[str, str]:
    base = posixpath.basename(path).lower()
    for ext in _DECOMPRESSORS:
        if base.endswith(ext):
            return base[: -len(ext)], ext
    return base, ""


def manifest_format(path: str, spec: ManifestSpec) -> str:
    """``spec.format``, or the format the file name implies (``.csv``, ``.jsonl``, ``.parquet``, maybe ``.gz``)."""
    if spec.format is not None:
        return spec.format
    base, _ = split_compression(path)
    ext = posixpath.splitext(base)[1]
    if ext not in _EXTENSIONS:
        raise ManifestError(
            f"cannot tell the format of manifest {path!r} from its extension; name it "
            f"{', '.join(sorted(_EXTENSIONS))} (optionally .gz) or pass the format "
            f"({', '.join(FORMATS)})"
        )
    return _EXTENSIONS[ext]


def manifest_files(spec: ManifestSpec, jsonl_range_bytes: int = JSONL_RANGE_BYTES) -> list[ManifestFile]:
    """The files ``spec.pattern`` matches, sorted, each with its format and position unit;
    :class:`ManifestError` when none matches or a name shows no format."""
    files = []
    for index, metadata in enumerate(match_metadata(spec.pattern)):
        fmt = manifest_format(metadata.path, spec)
        compressed = bool(split_compression(metadata.path)[1])
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
        stream = raw if hasattr(raw, "peek") else io.BufferedReader(cast(Any, raw), _READ_BUFFER_BYTES)
        _, ext = split_compression(path)
        if not ext:
            yield stream
            return
        with _DECOMPRESSORS[ext](stream, "rb") as decompressed:
            yield decompressed


SAMPLE_BYTES = 1 << 20  # of the first file, to estimate a manifest's bytes per row
COMPRESSED_EXPANSION = 5  # a compressed manifest's bytes, decompressed, about (CSV and JSON under gzip)


def estimated_rows(files: list[ManifestFile]) -> int:
    """About how many rows ``files`` hold, known before any is read: their bytes over the
    first file's bytes per row (its own count for Parquet; lines in its first MiB otherwise;
    a compressed file's bytes counted as decompressed about 5 times larger). What it sets (the
    row buckets' count) needs no more than the order of magnitude."""
    first = files[0]
    total = sum(f.size for f in files)
    try:
        if first.format == "parquet":
            import pyarrow.parquet as pq

            with FileSystems.open(first.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
            return max(1, int(total * rows / max(first.size, 1)))
        with open_manifest(first.path) as stream:
            sample = stream.read(SAMPLE_BYTES)
    except Exception:  # unreadable: the run says so when it reads it; guess a row per 100 bytes
        return max(1, total // 100)
    per_row = len(sample) / max(1, sample.count(b"\n"))
    expansion = COMPRESSED_EXPANSION if split_compression(first.path)[1] else 1
    return max(1, int(total * expansion / max(per_row, 1.0)))
