"""Test helper: manifest pieces read as the pipeline reads them, as plain rows to compare."""

from __future__ import annotations

from typing import Iterator

import apache_beam as beam
import pyarrow as pa

from aisthetics_transforms import buckets, manifest, records
from aisthetics_transforms.manifest.csv_format import csv_rows
from aisthetics_transforms.manifest.files import manifest_format, open_manifest
from aisthetics_transforms.manifest.jsonl_format import jsonl_lines, jsonl_rows
from aisthetics_transforms.manifest.parquet_format import open_parquet, parquet_rows
from aisthetics_transforms.manifest.spec import ManifestFile, ManifestSpec, RowBuilder
from aisthetics_transforms.unique_ids import ROWS, UniqueImageIds


def unique_ids(read: dict, files: list, keep: tuple) -> dict:
    """A manifest's refs through the unique-ids stage, as the pipeline does:
    ``{"refs": ImageRefs, ERRORS: every error row, as a dict}`` (duplicates come as tables)."""
    unique = read["refs"] | "UniqueImageIds" >> UniqueImageIds(files, keep)
    refs = unique[ROWS] | "Unpack" >> beam.FlatMap(lambda kv: records.table_refs(buckets.unpack(kv[1]), keep))
    duplicates = (
        (unique[records.ERRORS], unique["final"])
        | "Duplicates" >> beam.Flatten()
        | "DuplicateRows" >> beam.FlatMap(lambda table: table.to_pylist())
    )
    errors = (read[records.ERRORS], duplicates) | "AllErrors" >> beam.Flatten()
    return {"refs": refs, records.ERRORS: errors}


def pieces_as_rows(pieces, spec):
    """(ImageRefs whose source is ``FILE:POSITION``, error rows) of the pieces and error
    rows :func:`manifest.plan_splits` gave, read with :func:`manifest.read_split`."""
    refs, errors = [], []
    for piece in pieces:
        if isinstance(piece, dict):
            errors.append(piece)
            continue
        for item in manifest.read_split(piece, spec):
            if isinstance(item, pa.Table):
                assert item.schema == records.refs_schema(spec.keep_columns)
                assert set(item.column("manifest_file").to_pylist()) <= {piece.file.number}
                positions = item.column("manifest_line").to_pylist()
                refs += [
                    ref._replace(source=f"{piece.file.path}:{position}")
                    for ref, position in zip(records.table_refs(item, spec.keep_columns), positions)
                ]
            else:
                errors.append(item)
    return refs, errors


def read_manifest_file(path: str, spec: ManifestSpec) -> Iterator:
    """Stream the rows of one whole manifest file as ImageRefs, and bad rows as error
    rows, row by row: the reference the piecewise, bulk reading is tested against.

    Raises :class:`ManifestError` for problems with the file as a whole (a needed
    column missing from the header, an unknown format, not Parquet).
    """
    fmt = manifest_format(path, spec)
    whole = ManifestFile(0, path, 0, fmt, "row" if fmt == "parquet" else "line")  # one piece: all of it
    builder = RowBuilder(whole, spec, empty_is_null=fmt == "csv")
    with open_manifest(path) as stream:
        if fmt == "csv":
            yield from csv_rows(stream, builder)
        elif fmt == "jsonl":
            yield from jsonl_rows(jsonl_lines(stream, "line"), builder)
        else:
            for item in parquet_rows(open_parquet(path, stream, spec), builder):
                if isinstance(item, pa.Table):
                    positions = item.column("manifest_line").to_pylist()
                    for ref, position in zip(records.table_refs(item, spec.carried_columns), positions):
                        yield ref._replace(source=f"{path}:{position}")
                else:
                    yield item
