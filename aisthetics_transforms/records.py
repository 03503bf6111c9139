"""The records that flow between stages, and the one shape every failure takes.

Manifest rows travel as Arrow tables (:func:`refs_schema`), so a catalog of millions of
rows costs the pipeline a few thousand elements, not millions. Images travel one by
one: manifest tables -> UriRows (one per distinct uri) -> FetchedImage -> UniqueImage
(one per distinct content) -> DecodedImage -> tables of score rows (one row per manifest
row) -> Parquet. Each stage emits its failures on the ``errors`` tagged output as error
rows (:func:`error_row`), so every manifest row ends in exactly one of the two tables.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import pyarrow as pa

ERRORS = "errors"  # tag of every stage's failure output
STAGES = ("manifest", "fetch", "decode", "score")


class ImageRef(NamedTuple):
    """One manifest row: what to score, and the user's columns to carry through."""

    image_id: str
    uri: str
    kept: dict  # --keep_columns, as strings (None for a missing value)
    source: str = ""  # where the row is: "manifest-file:line"; orders duplicates


class UriRows(NamedTuple):
    """One distinct uri and every manifest row that names it: fetched once."""

    uri: str
    refs: tuple  # of ImageRef


class FetchedImage(NamedTuple):
    uri: str
    refs: tuple  # of ImageRef: the rows of this uri
    data: Optional[bytes]  # None for a local file: decode reads it again (fetch.read_again)
    source_version: Optional[str]  # size+mtime, ETag...: see fetch.source_version
    content_sha256: str


class Member(NamedTuple):
    """A manifest row that shares its image content with others."""

    ref: ImageRef
    source_version: Optional[str]


class UniqueImage(NamedTuple):
    """One distinct image content, and every manifest row that has it."""

    content_sha256: str
    data: Optional[bytes]  # None when all its uris are local files
    members: tuple  # of Member


class DecodedImage(NamedTuple):
    content_sha256: str
    members: tuple  # of Member
    pixels: np.ndarray  # (224, 224, 3) uint8, see preprocess.decode_image
    exif_orientation: Optional[int] = None  # recorded, not applied (the seed ignores it)


def error_row(ref: ImageRef, stage: str, error_type: str, message: str) -> dict:
    """The errors-table row for ``ref`` failing at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return {
        "image_id": ref.image_id,
        "uri": ref.uri,
        "stage": stage,
        "error_type": error_type,
        "error_message": message,
        **ref.kept,
    }


def score_row(
    member: Member,
    content_sha256: str,
    predictions: list,
    mean: float,
    sd: float,
    model_version: str,
    scored_at,
    reused: bool,
    exif_orientation: Optional[int] = None,
) -> dict:
    """The scores-table row for one manifest row: the contract's columns, the kept
    columns, then what incremental runs need."""
    return {
        "image_id": member.ref.image_id,
        "uri": member.ref.uri,
        "mean_score": mean,
        "sd_score": sd,
        "predictions": predictions,
        "model_version": model_version,
        "scored_at": scored_at,
        **member.ref.kept,
        "content_sha256": content_sha256,
        "source_version": member.source_version,
        "reused": reused,
        "exif_orientation": exif_orientation,
    }


# --- the tables' schemas: the contract's columns, the kept columns, then more ---


def refs_schema(keep_columns: Sequence[str] = ()) -> pa.Schema:
    """Manifest rows in flight; ``manifest_file`` (index into the sorted manifest files)
    and ``manifest_line`` give manifest order, which decides between duplicate ids."""
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            *[(name, pa.string()) for name in keep_columns],
            ("manifest_file", pa.int32()),
            ("manifest_line", pa.int64()),
        ]
    )


def refs_table(refs: Sequence[ImageRef], keep_columns: Sequence[str], manifest_file: int = 0) -> pa.Table:
    """ImageRefs (their ``source`` ends in ``:LINE``) -> a table of :func:`refs_schema`."""
    columns = {
        "image_id": [ref.image_id for ref in refs],
        "uri": [ref.uri for ref in refs],
        **{name: [ref.kept.get(name) for ref in refs] for name in keep_columns},
        "manifest_file": [manifest_file] * len(refs),
        "manifest_line": [int(ref.source.rpartition(":")[2] or 0) for ref in refs],
    }
    return pa.table(columns, schema=refs_schema(keep_columns))


def table_refs(table: pa.Table, keep_columns: Sequence[str]) -> Iterable[ImageRef]:
    """The rows of a refs table as ImageRefs (without their manifest position)."""
    ids, uris = table.column("image_id").to_pylist(), table.column("uri").to_pylist()
    kept = [table.column(name).to_pylist() for name in keep_columns]
    for i, (image_id, uri) in enumerate(zip(ids, uris)):
        yield ImageRef(image_id, uri, {name: values[i] for name, values in zip(keep_columns, kept)})


def score_table(rows: Iterable[dict], keep_columns: Sequence[str]) -> pa.Table:
    """Score rows (:func:`score_row`) -> a table of :func:`scores_schema`."""
    return pa.Table.from_pylist(list(rows), schema=scores_schema(keep_columns))


def scores_schema(keep_columns: Sequence[str] = ()) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("mean_score", pa.float64()),
            ("sd_score", pa.float64()),
            ("predictions", pa.list_(pa.float32())),
            ("model_version", pa.string()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
            *[(name, pa.string()) for name in keep_columns],
            ("content_sha256", pa.string()),
            ("source_version", pa.string()),
            ("reused", pa.bool_()),
            ("exif_orientation", pa.int32()),
        ]
    )


def errors_schema(keep_columns: Sequence[str] = ()) -> pa.Schema:
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("uri", pa.string()),
            ("stage", pa.string()),
            ("error_type", pa.string()),
            ("error_message", pa.string()),
            *[(name, pa.string()) for name in keep_columns],
        ]
    )


def reserved_columns() -> frozenset:
    """Names a kept column may not take: the tables' own columns and the partition key."""
    return frozenset(scores_schema().names) | frozenset(errors_schema().names) | {"dt"}
