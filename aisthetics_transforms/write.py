"""Write stage: tables of score rows and error rows -> Parquet tables, a run summary, and a swap into place.

Layout under ``--output`` (Hive-style partitions):
    scores/dt=DATE/*.parquet   errors/dt=DATE/*.parquet   runs/dt=DATE/summary.json

Everything is first written under ``_staging/DATE_RUNID/``, one Parquet file per bundle
(:class:`WriteParquetFiles`). Only when both tables are complete does one final step
delete the files of bundle attempts that did not commit and swap each staged directory
with that date's partition
(an atomic exchange on local disks; on object stores, which have no directory rename,
the old objects are deleted before the new ones are moved in, so a reader may briefly
see the date empty but never a mix of two runs). A rerun of a date replaces it, and a
run that dies before the end leaves it as it was.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import posixpath
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import STAGES, errors_schema, scores_schema

TABLES = ("scores", "errors", "runs")
STAGING = "_staging"
SUMMARY = "summary.json"
ROW_GROUP_ROWS = 50_000  # score rows per Parquet row group (about 10 MB in memory)


def partition_dir(output: str, table: str, run_date: str) -> str:
    return FileSystems.join(output, table, f"dt={run_date}")


def summary_path(output: str, run_date: str) -> str:
    return FileSystems.join(partition_dir(output, "runs", run_date), SUMMARY)


def _is_local(path: str) -> bool:
    return "://" not in path


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _objects(prefix: str) -> list[str]:
    """Every file under ``prefix`` (object stores have no directories to ask about)."""
    return [m.path for m in FileSystems.match([FileSystems.join(prefix, "**")])[0].metadata_list]


def swap_into_place(staged: str, final: str) -> None:
    """Make ``staged`` (a complete directory) the contents of ``final``."""
    if _is_local(final):
        os.makedirs(os.path.dirname(final), exist_ok=True)
        if os.path.isdir(final) and _exchange(staged, final):
            shutil.rmtree(staged)  # now holds the previous contents
            return
        if os.path.isdir(final):
            aside = staged + ".previous"
            os.rename(final, aside)
            os.rename(staged, final)
            shutil.rmtree(aside)
        else:
            os.rename(staged, final)
        return
    old = _objects(final)
    if old:
        FileSystems.delete(old)
    new = _objects(staged)
    if new:
        FileSystems.rename(new, [FileSystems.join(final, posixpath.relpath(p, staged)) for p in new])


def staging_dir(output: str, run_date: str, run_id: str) -> str:
    return FileSystems.join(output, STAGING, f"{run_date}_{run_id}")


def remove_staging(output: str, run_date: str) -> None:
    """Delete every staging directory of ``run_date``: this run's, and any left by runs that died."""
    pattern = FileSystems.join(output, STAGING, f"{run_date}_*")
    if _is_local(output):
        for path in glob.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.rmdir(os.path.join(output, STAGING))
        except OSError:
            pass  # other dates are staging
        return
    leftovers = [m.path for m in FileSystems.match([pattern + "/**"])[0].metadata_list]
    if leftovers:
        FileSystems.delete(leftovers)


@dataclass(frozen=True)
class RunInfo:
    output: str
    run_date: str
    run_id: str
    model_version: str
    started_at: str
    source: str  # the manifest or image glob, for the summary
    previous_partition: Optional[str] = None  # what an incremental run reuses from
    keep_columns: tuple = ()

    @classmethod
    def new(
        cls, output: str, run_date: str, model_version: str, source: str, previous_partition: Optional[str] = None,
        keep_columns: Sequence[str] = (),
    ) -> "RunInfo":
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%dT%H%M%S%fZ")
        return cls(output.rstrip("/"), run_date, run_id, model_version, now.isoformat(), source, previous_partition,
                   tuple(keep_columns))


def summarize(files: Sequence[dict], stats: dict, run: "RunInfo") -> dict:
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
    return {
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
        "fetched": stats.get("fetched", 0),
        "version_checks": stats.get("version_checks", 0),
        "version_checks_failed": stats.get("version_checks_failed", 0),
        "previous_files_unreadable": stats.get("previous_files_unreadable", 0),
        "model_version": run.model_version,
        "incremental_from": run.previous_partition,
        "started_at": run.started_at,
    }


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


def _leftovers(directory: str, committed: set) -> list[str]:
    """Files in a staged table directory that no committed bundle wrote: what a failed
    bundle attempt left behind before Beam retried it."""
    return [path for path in _objects(directory) if path not in committed]


def _publish(_, files: list, stats: dict, run: "RunInfo") -> dict:
    """Runs once, after every bundle that writes has committed (their files are the side input)."""
    summary = summarize(files, stats, run)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat()
    staged = staging_dir(run.output, run.run_date, run.run_id)
    runs_dir = FileSystems.join(staged, "runs")
    if not _objects(runs_dir):  # not yet published by an earlier attempt of this step
        committed = {f["path"] for f in files}
        for table, schema in (("scores", scores_schema(run.keep_columns)), ("errors", errors_schema(run.keep_columns))):
            directory = FileSystems.join(staged, table)
            leftovers = _leftovers(directory, committed)
            if leftovers:
                FileSystems.delete(leftovers)
            if not any(f["table"] == table for f in files):  # an empty table is one file with the schema
                parquet, writer = open_parquet(FileSystems.join(directory, f"{run.run_id}-empty.parquet"), schema)
                writer.close()
                parquet.close()
        if _is_local(runs_dir):
            os.makedirs(runs_dir, exist_ok=True)
        with FileSystems.create(FileSystems.join(runs_dir, SUMMARY), mime_type="application/json") as f:
            f.write(json.dumps(summary, indent=2, sort_keys=True).encode() + b"\n")
        for table in TABLES:
            swap_into_place(FileSystems.join(staged, table), partition_dir(run.output, table, run.run_date))
    remove_staging(run.output, run.run_date)
    return summary


def open_parquet(path: str, schema: pa.Schema):
    """(the file, a snappy ParquetWriter on it) for a new Parquet file at ``path``; close both."""
    if _is_local(path):
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
        self.rows_written = Metrics.counter("aisthetics", "rows_written")

    def start_bundle(self):
        self.path = FileSystems.join(self.directory, f"{self.prefix}-{uuid.uuid4().hex}.parquet")
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
        if self.writer is None:
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


class WriteTables(beam.PTransform):
    """``{"scores": tables of score rows, "errors": tables of error rows or error row dicts,
    "stats": dicts of counts}`` -> the tables of one run date, published together with its
    summary.json; outputs the summary dict. Each table is written where it is made, not
    first gathered in one place."""

    def __init__(self, run: RunInfo):
        super().__init__()
        self.run = run

    def expand(self, tables):
        staged = staging_dir(self.run.output, self.run.run_date, self.run.run_id)
        schemas = {"scores": scores_schema(self.run.keep_columns), "errors": errors_schema(self.run.keep_columns)}
        files = [
            tables[table] | f"Write{table.title()}" >> beam.ParDo(
                WriteParquetFiles(FileSystems.join(staged, table), f"{self.run.run_id}-{table}", table, schemas[table]))
            for table in ("scores", "errors")
        ]
        files = files | "Files" >> beam.Flatten()
        stats = tables["stats"] | "SumStats" >> beam.CombineGlobally(sum_counts)
        return (
            files.pipeline
            | "Once" >> beam.Create([None])
            | "Publish" >> beam.Map(_publish, beam.pvalue.AsList(files), beam.pvalue.AsSingleton(stats), run=self.run)
        )
