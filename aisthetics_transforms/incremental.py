"""Incremental nights: read back what an earlier night scored, so tonight reuses it.

With ``--incremental`` the newest published night before ``--run_date`` is read back
(only the files of the run its summary names) and reduced to one row per uri and one
per content, each split into hash buckets for the joins of ``plan_uris`` and ``contents``. A row is not
inferred again when

- its uri's version signal (size and mtime for files, generation for gs://, ETag or
  Last-Modified for http) equals the one recorded: the bytes are not read at all;
- its bytes hash to the content recorded for its uri (a touched file, a server without
  validators): fetched and hashed, not decoded;
- its bytes hash to a content the earlier night scored under any uri (a photo moved).

Reused rows keep their original ``scored_at`` and say ``reused``; a row scored under
another ``model_version`` is never reused. An unreadable file of the earlier night only
means its rows are scored again: it is counted in the summary, never fatal.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsSingleton, TaggedOutput

from aisthetics_transforms import layout
from aisthetics_transforms.buckets import SplitByBucket, bucket_count, concat, first_per_key
from aisthetics_transforms.records import STATS, previous_scores

PREVIOUS_COLUMNS = (
    "uri",
    "mean_score",
    "sd_score",
    "predictions",
    "model_version",
    "scored_at",
    "content_sha256",
    "source_version",
    "exif_orientation",
    "declared_version",
)
# what only the join on uri needs: the join on content leaves them out of its shuffle
_URI_ONLY_COLUMNS = frozenset({"uri", "source_version", "declared_version"})
_LOG = logging.getLogger(__name__)


def read_previous_file(path: str, model_version: str):
    """The rows of one earlier scores file that ``model_version`` may reuse, one table per
    row group; a file that cannot be read yields a ``STATS`` count instead (its rows are
    simply scored again)."""
    try:
        with FileSystems.open(path) as f:
            parquet = pq.ParquetFile(f)
            columns = [c for c in PREVIOUS_COLUMNS if c in parquet.schema_arrow.names]
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=columns)
                tonights = pc.equal(table.column("model_version"), model_version)
                if not pc.all(tonights).as_py():  # a night has one model: all or none, as a rule
                    table = table.filter(tonights)
                if table.num_rows:
                    yield table
    except Exception as exc:  # a corrupt or vanished file of an earlier night must not fail tonight
        _LOG.warning("aisthetics: earlier night's file %s is unreadable (%s); its rows are scored again", path, exc)
        yield TaggedOutput(STATS, {"previous_files_unreadable": 1})


class ReadPreviousFiles(beam.DoFn):
    """A path of the earlier night -> its reusable rows (:func:`read_previous_file`), each
    row group reduced to one row per uri (output ``"uri"``) and one per content (output
    ``"content"``) before they leave the worker. Its display data names the night, so the
    Dataflow UI shows what a job reuses."""

    def __init__(self, model_version: str, night: PreviousNight):
        self.model_version = model_version
        self.night = night.partition
        self.run = night.run_id or ""
        self.files = len(night.files)

    def display_data(self):
        return {"night": self.night, "run": self.run, "files": self.files}

    def process(self, path: str):
        for item in read_previous_file(path, self.model_version):
            if isinstance(item, TaggedOutput):
                yield item
                continue
            by_uri = first_per_key(item, "uri")
            yield TaggedOutput("uri", by_uri)
            # every row of a uri took that uri's one content, so its first row names them all;
            # a content is reused by its hash alone, so its uri and versions stay behind
            by_content = first_per_key(by_uri, "content_sha256")
            yield TaggedOutput(
                "content", by_content.drop_columns([c for c in by_content.column_names if c in _URI_ONLY_COLUMNS])
            )


class ReadPreviousNight(beam.PTransform):
    """An earlier night's scores files -> ``{"uri": (uri bucket, packed rows), "content": (content bucket,
    packed rows), STATS: counts}``, rows ``model_version`` may reuse, reduced per key
    within each row group. ``join_buckets`` is the singleton PCollection of tonight's bucket
    count for the joins on uri and on content."""

    def __init__(self, night: PreviousNight, model_version: str, join_buckets):
        super().__init__()
        self.night = night
        self.model_version = model_version
        self.join_buckets = join_buckets

    def expand(self, pbegin):
        tables = (
            pbegin
            | "PreviousFiles" >> beam.Create(self.night.files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadFiles"
            >> beam.ParDo(ReadPreviousFiles(self.model_version, self.night)).with_outputs(STATS, "uri", "content")
        )
        # tonight without rows has no count: its buckets are then the earlier night's
        n = AsSingleton(self.join_buckets, default_value=bucket_count(self.night.rows))
        return {
            "uri": tables.uri | "ByUri" >> beam.ParDo(SplitByBucket("uri"), n),
            "content": tables.content | "ByContent" >> beam.ParDo(SplitByBucket("content_sha256"), n),
            STATS: tables[STATS],
        }


class PreviousNight(NamedTuple):
    """The earlier night an incremental run reuses: its date, its run, its scores files, its row
    count, and how many of its uris were on ``gs://`` (None: a night from before that count)."""

    run_date: str
    run_id: Optional[str]
    partition: str
    files: list
    rows: int
    gcs_uris: Optional[int] = None

    @property
    def may_list(self) -> bool:
        """Whether listing could tell tonight a version: only an earlier ``gs://`` row has one."""
        return self.gcs_uris != 0


def find_previous_night(output: str, run_date: str) -> Optional[PreviousNight]:
    """The newest night published whole under ``output`` before ``run_date``: found through
    the summaries (``layout.previous_night``), its files those of the run its summary names."""
    summary = layout.previous_night(output, run_date)
    if summary is None:
        return None
    date = summary["run_date"]
    files = sorted(layout.night_files(output, "scores", date, summary))
    return PreviousNight(
        date,
        summary.get("run_id"),
        layout.partition_dir(output, "scores", date),
        files,
        int(summary.get("rows", 0)),
        summary.get("gcs_uris"),
    )


def earlier_scores(pieces, key: str, wanted: pa.Array) -> dict:
    """An earlier night's packed rows -> ``{value: PreviousScore}`` for the ``wanted`` values
    of ``key`` only, one row each (each row group was reduced on its own, so a value may
    come back once per row group)."""
    previous = concat(pieces)
    if previous is None or not previous.num_rows:
        return {}
    hits = first_per_key(previous.filter(pc.is_in(previous.column(key), value_set=wanted)), key)
    return dict(zip(hits.column(key).to_pylist(), previous_scores(hits)))
