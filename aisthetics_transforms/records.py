"""The records that flow between stages, and the shapes of the output tables.

Manifest rows travel as Arrow tables (:func:`refs_schema`) in hash buckets, so a catalog
of millions of rows costs the pipeline a few thousand elements, and they never ride
inside an image's element. Images travel one by one, as small records: UriTask (one per
distinct uri) -> ContentClaim (keyed by content hash) -> ContentTask (one per distinct
content) -> DecodedImage -> ContentResult -> UriOutcome, which goes back to the row
buckets naming the uri, where every row takes its uri's Score or Failure (``join``). A
manifest row that cannot even be read is an error row (:func:`error_row`) at once. So
every manifest row ends in exactly one of the two tables.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional, Sequence, TypedDict

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from aisthetics_transforms.fetch.limits import Version

ERRORS = "errors"  # tag of every stage's failure output
STATS = "stats"  # tag of the counts stages report for summary.json
OUTCOMES = "outcomes"  # tag of the lists of (row buckets, UriOutcome) a stage settles
STAGES = ("manifest", "fetch", "decode", "score")
MANIFEST_ERROR_TYPES = (
    "MissingUri",
    "InvalidUri",
    "InvalidRow",
    "InvalidJson",
    "MalformedCsv",
    "InvalidEncoding",
    "InvalidFile",
    "UnreadableFile",
    "DuplicateImageId",
)
SCORE_ERROR_TYPES = ("InferenceFailed", "InvalidPrediction")


class RunSummary(TypedDict, total=False):
    """``runs/dt=DATE/summary.json``: one run's counts, written last, when the night is
    committed (``publish``). ``rows = scored + deduplicated + reused + errors``."""

    run_date: str
    run_id: str  # the run whose files are the night (``layout.night_files``)
    source: str  # the manifest or image glob
    rows: int  # manifest rows
    scored: int  # distinct images inferred in this run
    deduplicated: int  # rows that shared their bytes with another row of the run
    reused: int  # rows carried over from an earlier night by --incremental
    errors: int
    errors_by_stage: dict[str, int]
    uris: int  # distinct uris
    gcs_uris: int  # of those, on gs:// (the next night lists their versions only if there are some)
    fetched: int  # uris whose bytes were read
    version_checks: int
    version_checks_failed: int  # counted; the uri fetched instead, unless the failure settles it
    versions_listed: int  # gs:// uris whose version a listing told (no request of their own)
    listing_requests: int  # objects.list pages those took
    listings_failed: int  # listed ranges whose listing failed: their uris were checked one by one
    declared_unchanged: int  # uris reused on an unchanged declared version, without a request
    declared_changed: int  # uris whose declared version changed: fetched without a version check
    declared_audited: int  # of those, checked for real anyway (--verify_declared_fraction)
    declared_mismatches: int  # audited uris whose bytes had changed (or were gone) all the same
    hosts_tripped: int  # hosts whose breaker opened (per worker process that saw it)
    previous_files_unreadable: int
    model_version: str
    incremental_from: Optional[str]  # the earlier night's scores partition
    incremental_reason: str  # why an --incremental run reuses nothing
    started_at: str  # ISO 8601, UTC
    finished_at: str
    published_at: str


def error_types() -> dict[str, tuple[str, ...]]:
    """The stable ``error_type`` tags of each stage, as the errors table and the README list them."""
    from aisthetics_transforms.fetch.limits import FETCH_ERROR_TYPES
    from aisthetics_transforms.preprocess import DECODE_ERROR_TYPES

    return {
        "manifest": MANIFEST_ERROR_TYPES,
        "fetch": FETCH_ERROR_TYPES,  # also what decode reports when it cannot read a content again
        "decode": (*DECODE_ERROR_TYPES, "InternalError"),
        "score": SCORE_ERROR_TYPES,
    }


class ImageRef(NamedTuple):
    """One manifest row: what to score, and the user's columns to carry through."""

    image_id: str
    uri: str
    kept: dict  # --keep_columns, as strings (None for a missing value)
    source: str = ""  # where the row is: "manifest-file:line"; orders duplicates


class Score(NamedTuple):
    """NIMA's verdict on one image content."""

    mean_score: float
    sd_score: float
    predictions: tuple  # 10 floats
    model_version: str
    scored_at: datetime
    exif_orientation: Optional[int] = None  # recorded, not applied (the seed ignores it)


class Failure(NamedTuple):
    """Why an image has no score: the errors table's stage, error_type and error_message."""

    stage: str
    error_type: str
    message: str


class PreviousScore(NamedTuple):
    """An earlier night's row for one uri or one content, as ``--incremental`` may reuse it."""

    content_sha256: str
    source_version: Optional[str]
    score: Score
    declared_version: Optional[str] = None  # what the manifest declared for the uri (--version_column)


# UriTasks or UriOutcomes per element (a list): ~64 version checks of work, thousands of
# elements per million uris for a shuffle to spread.
URIS_PER_ELEMENT = 64


class UriTask(NamedTuple):
    """One distinct uri to check and fetch, the row buckets whose rows name it, and what an
    earlier night recorded for it (None without ``--incremental`` or for a new uri).
    ``audit``: its declared version is unchanged, but it is checked for real anyway (a
    sample, ``--verify_declared_fraction``), to count declarations that lie."""

    uri: str
    buckets: tuple  # of int
    previous: Optional[PreviousScore] = None
    audit: bool = False
    known: Optional[Version] = None  # the uri's current version, when a listing told it already


class ContentClaim(NamedTuple):
    """A fetched uri whose content still needs a score (keyed by its content_sha256)."""

    uri: str
    source_version: Optional[str]
    pin: Optional[str]  # what a refetch needs to get exactly these bytes (gs: the generation and size)
    buckets: tuple  # of int: the row buckets naming the uri


class ContentTask(NamedTuple):
    """One distinct content to decode and score, and where to read it again: a few
    (uri, pin) pairs, tried in turn should one have changed since fetch."""

    content_sha256: str
    sources: tuple


class DecodedImage(NamedTuple):
    content_sha256: str
    uri: str
    pixels: np.ndarray  # (224, 224, 3) uint8, see preprocess.decode_image
    exif_orientation: Optional[int] = None


class ContentResult(NamedTuple):
    """What became of one content: a score (inferred tonight, or reused) or a failure."""

    content_sha256: str
    score: Optional[Score] = None
    reused: bool = False
    failure: Optional[Failure] = None


class UriOutcome(NamedTuple):
    """What became of one uri, sent to every row bucket that names it: the rows of the
    uri get this score or this failure."""

    uri: str
    content_sha256: Optional[str] = None
    source_version: Optional[str] = None
    score: Optional[Score] = None
    reused: bool = False
    failure: Optional[Failure] = None


def reused(uri: str, previous: PreviousScore) -> UriOutcome:
    """The outcome of a uri whose image did not change since the earlier night scored it."""
    return UriOutcome(uri, previous.content_sha256, previous.source_version, previous.score, True)


def previous_scores(table: pa.Table) -> list[PreviousScore]:
    """An earlier night's scores-table rows as PreviousScores, in row order. Read column by
    column, scored_at as naive UTC timestamps given their zone after: a tz-aware datetime
    from Arrow costs most of turning a row into a PreviousScore (docs/performance.md)."""

    def column(name: str) -> list:  # exif_orientation, source_version: absent in partitions from before them
        return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows

    stamps = table.column("scored_at")
    scored_at = [
        None if at is None else at.replace(tzinfo=UTC) for at in stamps.cast(pa.timestamp(stamps.type.unit)).to_pylist()
    ]
    scores = [
        Score(mean, sd, tuple(predictions), model, at, orientation)
        for mean, sd, predictions, model, at, orientation in zip(
            column("mean_score"),
            column("sd_score"),
            column("predictions"),
            column("model_version"),
            scored_at,
            column("exif_orientation"),
        )
    ]
    return [
        PreviousScore(sha, version, score, declared)
        for sha, version, score, declared in zip(
            column("content_sha256"), column("source_version"), scores, column("declared_version")
        )
    ]


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
            ("declared_version", pa.string()),
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


def table_schemas(keep_columns: Sequence[str] = ()) -> dict[str, pa.Schema]:
    """The schema of each output table (``layout.TABLES``) with these kept columns."""
    return {"scores": scores_schema(keep_columns), "errors": errors_schema(keep_columns)}


def reserved_columns() -> frozenset:
    """Names a kept column may not take: the tables' own columns and the partition key."""
    return frozenset(name for schema in table_schemas().values() for name in schema.names) | {"dt"}
