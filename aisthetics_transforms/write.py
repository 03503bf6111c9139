"""Write stage: tables of score rows and error rows -> Parquet tables and a run summary.

Layout under ``--output`` (Hive-style partitions; ``layout`` owns the paths):
    scores/dt=DATE/*.parquet   errors/dt=DATE/*.parquet   runs/dt=DATE/summary.json

Everything is first written under ``_staging/DATE_RUNID/``, one Parquet file per bundle
(:class:`WriteParquetFiles`), each named ``RUNID-INPUT-UUID.parquet``. Only when both tables
are complete does one final step publish the night (``publish.publish_night``): the staged
files move into the partitions and summary.json, written last, commits them. A rerun of a
date replaces it, and a run that dies before the commit leaves it as it was.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows

from aisthetics_transforms import layout, storage
from aisthetics_transforms.counters import ROWS_WRITTEN, counter
from aisthetics_transforms.progress import inc
from aisthetics_transforms.publish import RunInfo, publish_night
from aisthetics_transforms.records import STAGES, RunSummary, table_schemas

ROW_GROUP_ROWS = 50_000  # score rows per Parquet row group (about 10 MB in memory)


def summarize(files: Sequence[dict], stats: dict, run: RunInfo) -> RunSummary:
    """summary.json: row counts from what the committed Parquet files hold
    (:func:`file_counts`), and what the stages counted (``stats``: inferences, fetches...)."""
    totals: dict = {}
    for f in files:
        for key, n in f["counts"].items():
            totals[key] = totals.get(key, 0) + n
    by_stage = {stage: totals.get(f"errors_{stage}", 0) for stage in STAGES}
    errors = sum(by_stage.values())
    fresh_rows, reused = totals.get("fresh_rows", 0), totals.get("reused", 0)
    inferred = stats.get("inferred", 0)
    summary: RunSummary = {
        "run_date": run.run_date,
        "run_id": run.run_id,
        "source": run.source,
        "rows": fresh_rows + reused + errors,
        "scored": inferred,
        "deduplicated": fresh_rows - inferred,
        "reused": reused,
        "errors": errors,
        "errors_by_stage": by_stage,
        "uris": stats.get("uris", 0),
        "gcs_uris": stats.get("gcs_uris", 0),
        "fetched": stats.get("fetched", 0),
        "version_checks": stats.get("version_checks", 0),
        "version_checks_failed": stats.get("version_checks_failed", 0),
        "versions_listed": stats.get("versions_listed", 0),
        "listing_requests": stats.get("listing_requests", 0),
        "listings_failed": stats.get("listings_failed", 0),
        "hosts_tripped": stats.get("hosts_tripped", 0),
        "declared_unchanged": stats.get("declared_unchanged", 0),
        "declared_changed": stats.get("declared_changed", 0),
        "declared_audited": stats.get("declared_audited", 0),
        "declared_mismatches": stats.get("declared_mismatches", 0),
        "previous_files_unreadable": stats.get("previous_files_unreadable", 0),
        "model_version": run.model_version,
        "incremental_from": run.previous_partition,
        "started_at": run.started_at,
    }
    if run.incremental_reason:
        summary["incremental_reason"] = run.incremental_reason
    return summary


def file_counts(item: pa.Table | dict) -> dict:
    """What summary.json needs to know of a table of score rows, a table of error rows,
    or one error row (a dict)."""
    if isinstance(item, dict):
        return {f"errors_{item['stage']}": 1}
    if "stage" in item.column_names:
        counts = pc.value_counts(item.column("stage")).to_pylist()
        return {f"errors_{c['values']}": c["counts"] for c in counts}
    reused = int(pc.sum(item.column("reused")).as_py() or 0)
    return {"reused": reused, "fresh_rows": item.num_rows - reused}


def sum_counts(dicts) -> dict:
    """Adds up dicts of counts (the stages' STATS outputs)."""
    total: dict = {}
    for d in dicts:
        for key, n in d.items():
            total[key] = total.get(key, 0) + n
    return total


def _publish(_, files: list, stats: dict, run: RunInfo) -> dict:
    """Runs once, after every bundle that writes has committed (their files are the side input)."""
    summary = summarize(files, stats, run)
    summary["finished_at"] = datetime.now(UTC).isoformat()
    return publish_night(run, [f["path"] for f in files], summary)


def open_parquet(path: str, schema: pa.Schema):
    """(the file, a snappy ParquetWriter on it) for a new Parquet file at ``path``; close both."""
    if storage.is_local(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    parquet = FileSystems.create(path, mime_type="application/x-parquet")
    return parquet, pq.ParquetWriter(parquet, schema, compression="snappy")


class WriteParquetFiles(beam.DoFn):
    """Tables of score rows, or error row dicts -> one Parquet file per bundle in the staged
    table directory, in row groups of ``rows`` rows; emits ``{"table", "path", "counts"}``
    for each file once it is complete.

    Beam's own Parquet sink would do the same through a temporary directory and a
    finalizing step; here the staging directory already is that, and the publish step
    deletes the files of bundle attempts that did not commit."""

    def __init__(
        self, directory: str, prefix: str, table: str, schema: pa.Schema, row_group_rows: int = ROW_GROUP_ROWS
    ):
        self.directory = directory
        self.prefix = prefix  # of the file names: RUNID-INPUT
        self.table = table
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows_written = counter(ROWS_WRITTEN)

    def start_bundle(self):
        self.path = layout.join(self.directory, f"{self.prefix}-{uuid.uuid4().hex}.parquet")
        self.writer, self.file, self.counts = None, None, {}
        self.held_tables, self.held_dicts, self.held_rows = [], [], 0

    def process(self, item):
        if isinstance(item, pa.Table):
            self.held_tables.append(item)
            self.held_rows += item.num_rows
        else:
            self.held_dicts.append(item)
            self.held_rows += 1
        for key, n in file_counts(item).items():
            self.counts[key] = self.counts.get(key, 0) + n
        inc(self.rows_written, item.num_rows if isinstance(item, pa.Table) else 1)
        if self.held_rows >= self.row_group_rows:
            self._write_row_group()

    def finish_bundle(self):
        if self.held_rows:
            self._write_row_group()
        if self.writer is None or self.file is None:
            return
        self.writer.close()
        self.file.close()
        yield GlobalWindows.windowed_value({"table": self.table, "path": self.path, "counts": self.counts})

    def _write_row_group(self):
        if self.writer is None:
            self.file, self.writer = open_parquet(self.path, self.schema)
        if self.held_dicts:
            self.held_tables.append(pa.Table.from_pylist(self.held_dicts, schema=self.schema))
        group = pa.concat_tables(self.held_tables).combine_chunks()
        self.writer.write_table(group, row_group_size=group.num_rows)
        self.held_tables, self.held_dicts, self.held_rows = [], [], 0


def error_outputs(tables: dict) -> list[str]:
    """The keys of the error outputs among WriteTables' inputs: ``errors_NAME``, by name."""
    return sorted(key for key in tables if key.startswith("errors_"))


class WriteTables(beam.PTransform):
    """``{"scores": tables of score rows, "errors_...": each stage's error tables or error row
    dicts, "stats": dicts of counts}`` -> the tables of one run date, published together
    with its summary.json; outputs the summary dict. Each table is written where it is made:
    every stage's errors by a writer of their own, fused with the stage, never first gathered
    in one place (a runner that holds what passes between stages would hold them all, as many
    as the rows of the most repeated image_id)."""

    def __init__(self, run: RunInfo):
        super().__init__()
        self.run = run

    def expand(self, tables):
        staged = layout.staging_dir(self.run.output, self.run.run_date, self.run.run_id)
        schemas = table_schemas(self.run.keep_columns)
        writes = [("scores", "WriteScores", tables["scores"])]
        writes += [("errors", f"Write{key.title().replace('_', '')}", tables[key]) for key in error_outputs(tables)]
        files = [
            rows
            | label
            >> beam.ParDo(
                WriteParquetFiles(layout.join(staged, table), f"{self.run.run_id}-{table}", table, schemas[table])
            )
            for table, label, rows in writes
        ]
        files = files | "Files" >> beam.Flatten()
        # without_defaults: a night with no counts at all sums to {} here, not in an extra stage
        stats = tables["stats"] | "SumStats" >> beam.CombineGlobally(sum_counts).without_defaults()
        return (
            files.pipeline
            | "Once" >> beam.Create([None])
            | "Publish"
            >> beam.Map(
                _publish, beam.pvalue.AsList(files), beam.pvalue.AsSingleton(stats, default_value={}), run=self.run
            )
        )
