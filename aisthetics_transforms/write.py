"""Write stage: tables of score rows and error rows -> Parquet tables, a run summary, and a swap into place.

Layout under ``--output`` (Hive-style partitions):
    scores/dt=DATE/*.parquet   errors/dt=DATE/*.parquet   runs/dt=DATE/summary.json

Everything is first written under ``_staging/DATE_RUNID/``. Only when both tables are
complete does one final step swap each staged directory with that date's partition
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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet, WriteToParquetBatched
from apache_beam.transforms.window import GlobalWindows

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

    @classmethod
    def new(
        cls, output: str, run_date: str, model_version: str, source: str, previous_partition: Optional[str] = None
    ) -> "RunInfo":
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%dT%H%M%S%fZ")
        return cls(output.rstrip("/"), run_date, run_id, model_version, now.isoformat(), source, previous_partition)


def summarize(scores: Sequence[tuple], error_stages: Sequence[tuple], run: "RunInfo") -> dict:
    """Counts for summary.json. ``scores`` holds (reused, contents) per kind of row: how
    many rows were reused, and the (rows, distinct contents) inferred in this run."""
    counts = dict(scores)
    reused = counts.get(True, (0, 0))[0]
    fresh_rows, inferred = counts.get(False, (0, 0))
    by_stage = dict.fromkeys(STAGES, 0)
    by_stage.update(dict(error_stages))
    errors = sum(by_stage.values())
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
        "model_version": run.model_version,
        "incremental_from": run.previous_partition,
        "started_at": run.started_at,
    }


def _publish(_, score_files, error_files, scores: list, error_stages: list, run: "RunInfo") -> dict:
    """Runs once, after both tables are fully written (their file lists are side inputs)."""
    summary = summarize(scores, error_stages, run)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat()
    staged = staging_dir(run.output, run.run_date, run.run_id)
    if _objects(FileSystems.join(staged, "scores")):  # not yet published by an earlier attempt
        runs_dir = FileSystems.join(staged, "runs")
        if _is_local(runs_dir):
            os.makedirs(runs_dir, exist_ok=True)
        with FileSystems.create(FileSystems.join(runs_dir, SUMMARY), mime_type="application/json") as f:
            f.write(json.dumps(summary, indent=2, sort_keys=True).encode() + b"\n")
        for table in TABLES:
            swap_into_place(FileSystems.join(staged, table), partition_dir(run.output, table, run.run_date))
    remove_staging(run.output, run.run_date)
    return summary


def _add_pairs(pairs) -> tuple[int, int]:
    rows = contents = 0
    for r, c in pairs:
        rows += r
        contents += c
    return rows, contents


class RowGroups(beam.DoFn):
    """Small tables of score rows -> tables of about ``rows`` rows, so the Parquet files
    get large row groups however small the batches that made them."""

    def __init__(self, rows: int = ROW_GROUP_ROWS):
        self.rows = rows

    def start_bundle(self):
        self.held, self.held_rows = [], 0

    def process(self, table: pa.Table):
        self.held.append(table)
        self.held_rows += table.num_rows
        if self.held_rows >= self.rows:
            yield self._take()

    def finish_bundle(self):
        if self.held:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self.held).combine_chunks()
        self.held, self.held_rows = [], 0
        return table


def score_counts(table: pa.Table):
    """(reused, (rows, 0)) for reused rows; ((False, content), rows) per content scored tonight."""
    reused = table.column("reused").to_numpy(zero_copy_only=False)
    if reused.any():
        yield True, (int(reused.sum()), 0)
    if not reused.all():
        fresh = table.filter(pa.array(~reused)).column("content_sha256")
        for item in pc.value_counts(fresh).to_pylist():
            yield (False, item["values"]), item["counts"]


class WriteTables(beam.PTransform):
    """``{"errors": error row dicts, NAME: tables of score rows, ...}`` -> the tables of
    one run date, published together with its summary.json; outputs the summary dict.
    Each PCollection of score tables is written by its own sink (files ``RUNID-NAME-*``),
    so rows are written in the stage that made them rather than first gathered in one
    place."""

    def __init__(self, run: RunInfo, keep_columns: Sequence[str] = ()):
        super().__init__()
        self.run = run
        self.keep_columns = tuple(keep_columns)

    def _prefix(self, table: str, part: str = "") -> str:
        staged = staging_dir(self.run.output, self.run.run_date, self.run.run_id)
        return FileSystems.join(staged, table, self.run.run_id + part)

    def _write_scores(self, name: str, scores):
        return (
            scores
            | f"RowGroups_{name}" >> beam.ParDo(RowGroups())
            | f"WriteScores_{name}" >> WriteToParquetBatched(
                self._prefix("scores", f"-{name}"), scores_schema(self.keep_columns), codec="snappy",
                file_name_suffix=".parquet",
            )
        )

    def expand(self, tables):
        errors = tables["errors"]
        scores = {name: part for name, part in sorted(tables.items()) if name != "errors"}
        score_files = [self._write_scores(name, part) for name, part in scores.items()]
        error_files = errors | "WriteErrors" >> WriteToParquet(
            self._prefix("errors"), errors_schema(self.keep_columns), codec="snappy", file_name_suffix=".parquet"
        )
        # (reused, (rows, distinct contents)), counted in combines so no worker ever
        # holds a set of all hashes.
        counts = [part | f"CountRows_{name}" >> beam.FlatMap(score_counts) for name, part in scores.items()]
        counts = counts | "AllCounts" >> beam.Flatten()
        fresh = (
            counts
            | "Fresh" >> beam.Filter(lambda kv: kv[0] is not True)
            | "RowsPerContent" >> beam.CombinePerKey(sum)
            | "ByKind" >> beam.Map(lambda kv: (kv[0][0], (kv[1], 1)))
        )
        reused = counts | "Reused" >> beam.Filter(lambda kv: kv[0] is True)
        totals = (fresh, reused) | "Kinds" >> beam.Flatten() | "TotalsPerKind" >> beam.CombinePerKey(_add_pairs)
        error_stages = errors | "ErrorStages" >> beam.Map(lambda row: row["stage"]) | beam.combiners.Count.PerElement()
        score_files = score_files | "ScoreFiles" >> beam.Flatten()
        return (
            errors.pipeline
            | "Once" >> beam.Create([None])
            | "Publish"
            >> beam.Map(
                _publish,
                beam.pvalue.AsList(score_files),
                beam.pvalue.AsList(error_files),
                beam.pvalue.AsList(totals),
                beam.pvalue.AsList(error_stages),
                run=self.run,
            )
        )
