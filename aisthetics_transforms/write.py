"""Write stage: score and error rows -> Parquet tables, a run summary, and a swap into place.

Layout under ``--output`` (Hive-style partitions):
    scores/dt=DATE/*.parquet   errors/dt=DATE/*.parquet   runs/dt=DATE/summary.json

Tables are first written under ``_staging/RUN_ID/``; only when both are complete does
one final step replace that date's files with them and write the summary. A rerun of a
date therefore replaces it, and a run that dies before the end leaves it as it was.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquet

from aisthetics_transforms.records import STAGES

TABLES = ("scores", "errors")
STAGING = "_staging"


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


def partition_dir(output: str, table: str, run_date: str) -> str:
    return FileSystems.join(output, table, f"dt={run_date}")


def summary_path(output: str, run_date: str) -> str:
    return FileSystems.join(partition_dir(output, "runs", run_date), "summary.json")


def _match(pattern: str) -> list[str]:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def _ensure_dir(path: str) -> None:
    if not FileSystems.exists(path):
        try:
            FileSystems.mkdirs(path)
        except OSError:  # made concurrently, or an object store that has no directories
            pass


def publish_partition(output: str, run_id: str, run_date: str, table: str) -> list[str]:
    """Move this run's staged files of ``table`` into ``dt=run_date``, then delete the files
    an earlier run left there. Safe to call again if it was interrupted."""
    staged_dir = FileSystems.join(output, STAGING, run_id, table)
    final_dir = partition_dir(output, table, run_date)
    staged = _match(FileSystems.join(staged_dir, "*.parquet"))
    _ensure_dir(final_dir)
    moved = [FileSystems.join(final_dir, posixpath.basename(path)) for path in staged]
    if staged:
        FileSystems.rename(staged, moved)
    ours = f"{run_id}-"
    stale = [p for p in _match(FileSystems.join(final_dir, "*.parquet")) if not posixpath.basename(p).startswith(ours)]
    if stale:
        FileSystems.delete(stale)
    return [p for p in _match(FileSystems.join(final_dir, "*.parquet"))]


def write_summary(output: str, run_date: str, summary: dict) -> str:
    path = summary_path(output, run_date)
    _ensure_dir(posixpath.dirname(path))
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode() + b"\n")
    return path


@dataclass(frozen=True)
class RunInfo:
    output: str
    run_date: str
    run_id: str
    model_version: str
    started_at: str
    source: str  # the manifest or image glob, for the summary

    @classmethod
    def new(cls, output: str, run_date: str, model_version: str, source: str) -> "RunInfo":
        now = datetime.now(timezone.utc)
        run_id = now.strftime("%Y%m%dT%H%M%S%fZ")
        return cls(output.rstrip("/"), run_date, run_id, model_version, now.isoformat(), source)


def _publish(_, score_files, error_files, scored: int, error_stages: list, run: RunInfo) -> dict:
    """Runs once, after both tables are fully written (their file lists are side inputs)."""
    for table in TABLES:
        publish_partition(run.output, run.run_id, run.run_date, table)
    staging_root = FileSystems.join(run.output, STAGING, run.run_id)
    if FileSystems.exists(staging_root):
        FileSystems.delete([staging_root])
    by_stage = dict.fromkeys(STAGES, 0)
    for stage, count in error_stages:
        by_stage[stage] = count
    errors = sum(by_stage.values())
    summary = {
        "run_date": run.run_date,
        "run_id": run.run_id,
        "source": run.source,
        "rows": scored + errors,
        "scored": scored,
        "reused": 0,
        "errors": errors,
        "errors_by_stage": by_stage,
        "model_version": run.model_version,
        "started_at": run.started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    write_summary(run.output, run.run_date, summary)
    return summary


class WriteTables(beam.PTransform):
    """(scores, errors) PCollections of row dicts -> the tables of one run date, published
    together with its summary.json. Outputs the summary dict."""

    def __init__(self, run: RunInfo, keep_columns: Sequence[str] = ()):
        super().__init__()
        self.run = run
        self.keep_columns = tuple(keep_columns)

    def _write(self, rows, table: str, schema: pa.Schema):
        prefix = FileSystems.join(self.run.output, STAGING, self.run.run_id, table, self.run.run_id)
        return rows | f"Write{table.title()}" >> WriteToParquet(
            prefix, schema, codec="snappy", file_name_suffix=".parquet"
        )

    def expand(self, tables):
        scores, errors = tables
        score_files = self._write(scores, "scores", scores_schema(self.keep_columns))
        error_files = self._write(errors, "errors", errors_schema(self.keep_columns))
        scored = scores | "CountScored" >> beam.combiners.Count.Globally()
        error_stages = errors | "ErrorStages" >> beam.Map(lambda row: row["stage"]) | beam.combiners.Count.PerElement()
        return (
            scores.pipeline
            | "Once" >> beam.Create([None])
            | "Publish"
            >> beam.Map(
                _publish,
                beam.pvalue.AsList(score_files),
                beam.pvalue.AsList(error_files),
                beam.pvalue.AsSingleton(scored),
                beam.pvalue.AsList(error_stages),
                run=self.run,
            )
        )
