"""Score each distinct image once: deduplication within a run, reuse across nights.

Before fetch, rows are grouped by uri, so a uri named by many rows is fetched once
(:class:`GroupByUri`); between fetch and decode, by the sha256 of the bytes, so
identical bytes under many uris are decoded and inferred once (:class:`GroupByContent`).
With ``--incremental`` the newest earlier ``scores/dt=*`` partition is read back, and a
row is not inferred again when

- its uri's version signal (size and mtime for files and gs://, ETag or Last-Modified
  for http) equals the one recorded last time: the bytes are not even read
  (:class:`GroupByUri`); or
- its bytes hash to a content scored last time (:class:`GroupByContent`), which covers
  servers that give no validators and files touched without changing.

Both are joins in Beam (CoGroupByKey over hash buckets of Arrow tables, see
``buckets``), so the earlier partition is never held in one worker's memory, and
millions of unchanged rows cost a few thousand elements. Reused rows keep their original ``scored_at`` and say ``reused``; an
earlier row scored by another model_version is never reused.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import ReadFromParquetBatched

from aisthetics_transforms import buckets, layout
from aisthetics_transforms.fetch import DEFAULT_LIMITS, FetchLimits, ThreadSessions, is_local_file, source_version
from aisthetics_transforms.records import (
    ImageRef,
    Member,
    UniqueImage,
    UriRows,
    score_row,
    score_table,
    scores_schema,
    table_refs,
)

REUSED = "reused"
VERSION_CHECKS_AT_ONCE = 16
PREVIOUS_COLUMNS = [
    "uri", "mean_score", "sd_score", "predictions", "model_version", "scored_at", "content_sha256", "source_version",
    "exif_orientation",
]


def find_previous_partition(output: str, run_date: str) -> Optional[str]:
    """The scores partition of the newest night published before ``run_date`` (found
    through the nights' summaries, ``layout.previous_night``); None when there is none."""
    night = layout.previous_night(output, run_date)
    return layout.partition_dir(output, "scores", night["run_date"]) if night else None


def reused_row(previous: dict, member: Member) -> dict:
    """A row for ``member`` carrying an earlier night's score of the same image."""
    return score_row(
        member,
        previous["content_sha256"],
        previous["predictions"],
        previous["mean_score"],
        previous["sd_score"],
        previous["model_version"],
        previous["scored_at"],
        reused=True,
        exif_orientation=previous.get("exif_orientation"),  # absent in partitions from before it existed
    )


def reused_table(rows: pa.Table, previous: pa.Table, keep_columns: tuple) -> pa.Table:
    """Score rows for the refs ``rows``, each carrying the score of the ``previous`` row
    of its uri (``previous`` holds one row per uri)."""
    match = previous.take(pc.index_in(rows.column("uri"), value_set=previous.column("uri")))
    schema = scores_schema(keep_columns)
    columns = {
        "image_id": rows.column("image_id"),
        "uri": rows.column("uri"),
        **{name: match.column(name) for name in ("mean_score", "sd_score", "predictions", "model_version", "scored_at")},
        **{name: rows.column(name) for name in keep_columns},
        "content_sha256": match.column("content_sha256"),
        "source_version": match.column("source_version"),
        "reused": pa.array(np.ones(rows.num_rows, dtype=bool)),
        "exif_orientation": (
            match.column("exif_orientation")
            if "exif_orientation" in match.column_names
            else pa.nulls(rows.num_rows, pa.int32())  # partitions from before it existed
        ),
    }
    return pa.table([columns[f.name].cast(f.type) for f in schema], schema=schema)


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """One row of ``table`` per distinct ``key`` (the first: they are interchangeable)."""
    if table.num_rows < 2:
        return table
    codes = pc.dictionary_encode(pc.fill_null(table.column(key), "")).combine_chunks().indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    return table if len(first) == table.num_rows else table.take(np.sort(first))


class AnyOne(beam.CombineFn):
    """Keeps one value per key, preferring one that is not None: enough where all values
    of a key are interchangeable, and cheap, since Beam combines before the shuffle. For a
    content fetched from both a local file (no bytes carried) and gs:// or http, this keeps
    the carried bytes."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, value):
        return value if accumulator is None else accumulator

    def merge_accumulators(self, accumulators):
        return next((a for a in accumulators if a is not None), None)

    def extract_output(self, accumulator):
        return accumulator


def _reusable(table: pa.Table, key: str, model_version: str) -> pa.Table:
    """One row per ``key`` of those scored by ``model_version`` (a partition is written by
    one run, so all rows of a key share one model_version: deduplicating first is cheaper)."""
    table = first_per_key(table, key)
    return table.filter(pc.equal(table.column("model_version"), model_version))


class ReadPreviousScores(beam.PTransform):
    """The rows of an earlier scores partition that ``model_version`` may reuse, as
    ``{"uri": one row per uri, "content": one row per content}`` within each table read
    (all rows of a uri, or of a content, carry the same score), split into
    ``bucket_count`` hash buckets of that key for the joins."""

    def __init__(self, partition: str, model_version: str, bucket_count: int):
        super().__init__()
        self.partition = partition
        self.model_version = model_version
        self.bucket_count = bucket_count

    def expand(self, pbegin):
        n, version = self.bucket_count, self.model_version
        tables = pbegin | "Read" >> ReadFromParquetBatched(
            layout.night_pattern(self.partition), columns=PREVIOUS_COLUMNS
        )
        return {
            key: tables
            | f"OnePer{key.title()}" >> beam.Map(_reusable, column, version)
            | f"{key.title()}Buckets" >> beam.FlatMap(buckets.split_by_bucket, column, n)
            for key, column in (("uri", "uri"), ("content", "content_sha256"))
        }


class MatchVersions(beam.DoFn):
    """Per bucket of uris: check each uri's version signal once (however many rows share
    it), reuse the earlier score for the rows of unchanged uris (a table on ``reused``),
    and emit one UriRows per other uri, to be fetched. No bytes are read here."""

    def __init__(self, keep_columns: tuple, limits: FetchLimits = DEFAULT_LIMITS):
        self.keep_columns = keep_columns
        self.limits = limits

    def setup(self):
        self.sessions = ThreadSessions(self.limits)
        # HEAD requests and gs:// metadata calls wait on the network: check many at once.
        self.pool = ThreadPoolExecutor(VERSION_CHECKS_AT_ONCE, thread_name_prefix="aisthetics-version")

    def teardown(self):
        self.pool.shutdown()
        self.sessions.close()

    def _version(self, uri: str):
        return source_version(uri, self.limits, self.sessions.get())

    def process(self, element):
        _, sides = element
        current = buckets.concat(sides["current"])
        if current is None:
            return
        previous = buckets.concat(sides.get("previous", ()))
        if previous is not None and previous.num_rows:
            previous = first_per_key(previous, "uri")
            known = previous.filter(pc.is_in(previous.column("uri"), value_set=pc.unique(current.column("uri"))))
            known = known.filter(pc.is_valid(known.column("source_version")))  # no signal last time: fetch
            uris = known.column("uri").to_pylist()
            remote = any(not is_local_file(uri) for uri in uris)  # a local stat is quicker than a thread hand-off
            now = self.pool.map(self._version, uris) if remote else map(self._version, uris)
            unchanged = [uri for uri, before, after in zip(uris, known.column("source_version").to_pylist(), now)
                         if after == before]
            reuse = pc.is_in(current.column("uri"), value_set=pa.array(unchanged, pa.string()))
            if unchanged:
                yield beam.pvalue.TaggedOutput(REUSED, reused_table(current.filter(reuse), previous, self.keep_columns))
                current = current.filter(pc.invert(reuse))
        current = current.take(pc.sort_indices(current, [("uri", "ascending")]))
        for uri, refs in itertools.groupby(table_refs(current, self.keep_columns), key=lambda ref: ref.uri):
            yield UriRows(uri, tuple(refs))


class GroupByUri(beam.PTransform):
    """Refs tables -> one UriRows per distinct uri (main output), and, with the tables of
    an earlier partition as ``previous``, tables of reused score rows (``reused``) for
    the rows whose uri did not change."""

    def __init__(self, keep_columns: tuple, bucket_count: int, previous=None, limits: FetchLimits = DEFAULT_LIMITS):
        super().__init__()
        self.keep_columns = keep_columns
        self.bucket_count = bucket_count
        self.previous = previous  # ReadPreviousScores()["uri"]
        self.limits = limits

    def expand(self, refs):
        sides = {"current": refs | "ByUri" >> beam.FlatMap(buckets.split_by_bucket, "uri", self.bucket_count)}
        if self.previous is not None:
            sides["previous"] = self.previous
        return (
            sides
            | "JoinOnUri" >> beam.CoGroupByKey()
            | "MatchVersions" >> beam.ParDo(MatchVersions(self.keep_columns, self.limits)).with_outputs(REUSED, main="uris")
        )


def _previous_of_fetched(element):
    """(bucket, fetched hashes and previous tables) -> (hash, an earlier row) per fetched
    hash the earlier partition scored."""
    _, sides = element
    wanted = set(sides["wanted"])
    previous = buckets.concat(sides["previous"])
    if not wanted or previous is None:
        return
    hits = first_per_key(previous.filter(pc.is_in(previous.column("content_sha256"), value_set=pa.array(list(wanted)))),
                         "content_sha256")
    for row in hits.to_pylist():
        yield row["content_sha256"], row


def _uri_members(fetched, keep_columns: tuple):
    """(content, the rows of one uri): the uri once, then ids and kept values column by column.
    In this shape Beam encodes ~25 bytes a row; as ImageRef tuples (pickled one by one,
    the uri in each) it was ~190, and the local runner holds this whole shuffle in memory."""
    refs = fetched.refs
    kept = tuple(tuple(ref.kept.get(name) for ref in refs) for name in keep_columns)
    return fetched.content_sha256, (fetched.uri, tuple(ref.image_id for ref in refs), kept, fetched.source_version)


def _reuse_or_infer(element, keep_columns: tuple):
    """Per content: reuse an earlier score for all its rows, or pass it on to be inferred."""
    sha, sides = element
    members = tuple(
        Member(ImageRef(image_id, uri, dict(zip(keep_columns, kept))), version)
        for uri, ids, kept_columns, version in sides["members"]
        for image_id, kept in zip(ids, zip(*kept_columns) if kept_columns else itertools.repeat(()))
    )
    previous = next(iter(sides.get("previous", ())), None)
    if previous is not None:
        yield beam.pvalue.TaggedOutput(REUSED, score_table((reused_row(previous, m) for m in members), keep_columns))
    else:
        [data] = sides["data"]
        yield UniqueImage(sha, data, members)


class GroupByContent(beam.PTransform):
    """FetchedImage -> one UniqueImage per distinct content (main output), and tables of
    reused score rows (``reused``) for contents an earlier partition already scored.

    Only one copy of each content's bytes crosses the shuffle: the rows travel as
    small refs, the bytes through a combine that keeps one. The earlier partition is
    joined in hash buckets against the contents fetched tonight only, so its rows do
    not become one element each.
    """

    def __init__(self, keep_columns: tuple, bucket_count: int, previous=None):
        super().__init__()
        self.keep_columns = keep_columns
        self.bucket_count = bucket_count
        self.previous = previous  # ReadPreviousScores()["content"]

    def expand(self, fetched):
        sides = {
            "members": fetched | "Members" >> beam.Map(_uri_members, self.keep_columns),
            "data": (
                fetched
                | "Bytes" >> beam.Map(lambda f: (f.content_sha256, f.data))
                | "OneCopy" >> beam.CombinePerKey(AnyOne())
            ),
        }
        if self.previous is not None:
            n = self.bucket_count
            sides["previous"] = (
                {
                    "wanted": fetched | "WantedByBucket" >> beam.Map(
                        lambda f: (buckets.bucket_of(f.content_sha256, n), f.content_sha256)),
                    "previous": self.previous,
                }
                | "JoinPreviousOnContent" >> beam.CoGroupByKey()
                | "PreviousOfFetched" >> beam.FlatMap(_previous_of_fetched)
            )
        return (
            sides
            | "JoinOnContent" >> beam.CoGroupByKey()
            | "ReuseOrInfer" >> beam.FlatMap(_reuse_or_infer, self.keep_columns).with_outputs(REUSED, main="images")
        )
