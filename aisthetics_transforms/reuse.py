"""Score each distinct image once: deduplication within a run, reuse across nights.

Between fetch and decode, rows are grouped by the sha256 of their bytes, so identical
bytes under many rows are decoded and inferred once (:class:`GroupByContent`). With
``--incremental`` the newest earlier ``scores/dt=*`` partition is read back, and a row
is not inferred again when

- its uri's version signal (size and mtime for files and gs://, ETag or Last-Modified
  for http) equals the one recorded last time: the bytes are not even read
  (:class:`ReuseUnchanged`); or
- its bytes hash to a content scored last time (:class:`GroupByContent`), which covers
  servers that give no validators and files touched without changing.

Both are joins in Beam (CoGroupByKey), so the earlier partition is never held in one
worker's memory. Reused rows keep their original ``scored_at`` and say ``reused``; an
earlier row scored by another model_version is never reused.
"""
from __future__ import annotations

import posixpath
import re
from typing import Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import ReadFromParquet

from aisthetics_transforms.fetch import DEFAULT_LIMITS, FetchLimits, make_http_session, source_version
from aisthetics_transforms.records import Member, UniqueImage, score_row

REUSED = "reused"
PREVIOUS_COLUMNS = [
    "uri", "mean_score", "sd_score", "predictions", "model_version", "scored_at", "content_sha256", "source_version",
    "exif_orientation",
]
_DATE_DIR = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")


def find_previous_partition(output: str, run_date: str) -> Optional[str]:
    """The newest ``scores/dt=DATE`` directory under ``output`` with DATE before ``run_date``."""
    pattern = FileSystems.join(output, "scores", "dt=*", "*.parquet")
    dates = set()
    for metadata in FileSystems.match([pattern])[0].metadata_list:
        found = _DATE_DIR.search(metadata.path.replace("\\", "/"))
        if found and found.group(1) < run_date:
            dates.add(found.group(1))
    if not dates:
        return None
    return FileSystems.join(output, "scores", f"dt={max(dates)}")


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


class AnyOne(beam.CombineFn):
    """Keeps one value per key: enough where all values of a key are interchangeable,
    and cheap, since Beam combines before the shuffle."""

    def create_accumulator(self):
        return None

    def add_input(self, accumulator, value):
        return value if accumulator is None else accumulator

    def merge_accumulators(self, accumulators):
        return next((a for a in accumulators if a is not None), None)

    def extract_output(self, accumulator):
        return accumulator


class ReadPreviousScores(beam.PTransform):
    """The rows of an earlier scores partition that ``model_version`` may reuse."""

    def __init__(self, partition: str, model_version: str):
        super().__init__()
        self.partition = partition
        self.model_version = model_version

    def expand(self, pbegin):
        version = self.model_version
        return (
            pbegin
            | "Read" >> ReadFromParquet(posixpath.join(self.partition, "*.parquet"), columns=PREVIOUS_COLUMNS)
            | "SameModel" >> beam.Filter(lambda row: row["model_version"] == version)
        )


class MatchVersions(beam.DoFn):
    """Per uri: check the source's version signal once (however many rows share the uri),
    reuse last night's score for rows whose version is unchanged, pass the rest on to fetch.
    No bytes are read here."""

    def __init__(self, limits: FetchLimits = DEFAULT_LIMITS):
        self.limits = limits

    def setup(self):
        self.session = make_http_session(self.limits)

    def teardown(self):
        self.session.close()

    def process(self, element):
        uri, sides = element
        previous = next(iter(sides["previous"]), None)
        refs = sides["current"]
        version = source_version(uri, self.limits, self.session) if previous is not None else None
        for ref in refs:
            if version is not None and version == previous["source_version"]:
                yield beam.pvalue.TaggedOutput(REUSED, reused_row(previous, Member(ref, version)))
            else:
                yield ref


class ReuseUnchanged(beam.PTransform):
    """ImageRef -> ImageRefs to fetch (main output) and reused score rows (``reused``)."""

    def __init__(self, previous, limits: FetchLimits = DEFAULT_LIMITS):
        super().__init__()
        self.previous = previous
        self.limits = limits

    def expand(self, refs):
        current = refs | "ByUri" >> beam.Map(lambda ref: (ref.uri, ref))
        previous = (
            self.previous
            | "PreviousByUri" >> beam.Map(lambda row: (row["uri"], row))
            | "OnePerUri" >> beam.CombinePerKey(AnyOne())
        )
        return (
            {"current": current, "previous": previous}
            | "JoinOnUri" >> beam.CoGroupByKey()
            | "MatchVersions" >> beam.ParDo(MatchVersions(self.limits)).with_outputs(REUSED, main="changed")
        )


def _reuse_or_infer(element):
    """Per content: reuse an earlier score for all its rows, or pass it on to be inferred."""
    sha, sides = element
    members = tuple(sides["members"])  # empty: a content scored last night that no row has tonight
    previous = next(iter(sides.get("previous", ())), None)
    if previous is not None:
        for member in members:
            yield beam.pvalue.TaggedOutput(REUSED, reused_row(previous, member))
    elif members:
        [data] = sides["data"]
        yield UniqueImage(sha, data, members)


class GroupByContent(beam.PTransform):
    """FetchedImage -> one UniqueImage per distinct content (main output), and reused
    score rows (``reused``) for contents an earlier partition already scored.

    Only one copy of each content's bytes crosses the shuffle: the rows travel as
    small Members, the bytes through a combine that keeps one.
    """

    def __init__(self, previous=None):
        super().__init__()
        self.previous = previous

    def expand(self, fetched):
        sides = {
            "members": fetched | "Members" >> beam.Map(lambda f: (f.content_sha256, Member(f.ref, f.source_version))),
            "data": (
                fetched
                | "Bytes" >> beam.Map(lambda f: (f.content_sha256, f.data))
                | "OneCopy" >> beam.CombinePerKey(AnyOne())
            ),
        }
        if self.previous is not None:
            sides["previous"] = (
                self.previous
                | "ByContent" >> beam.Map(lambda row: (row["content_sha256"], row))
                | "OnePerContent" >> beam.CombinePerKey(AnyOne())
            )
        return (
            sides
            | "JoinOnContent" >> beam.CoGroupByKey()
            | "ReuseOrInfer" >> beam.FlatMap(_reuse_or_infer).with_outputs(REUSED, main="images")
        )
