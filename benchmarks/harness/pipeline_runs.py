"""``python -m pipeline`` as a benchmark runs it, and what a run left behind.

The output layout is the project's contract: ``scores/dt=D/*.parquet``, ``errors/dt=D/*.parquet``,
``runs/dt=D/summary.json``.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence


def pipeline_command(manifest: str, output: Path, run_date: str, *extra: str) -> list[str]:
    """The local default run (in-memory FnApiRunner, LiteRT on every core), no progress lines."""
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"--manifest={manifest}",
        f"--output={output}",
        f"--run_date={run_date}",
        "--progress_seconds=0",
        *extra,
    ]


@functools.cache
def _help_text(source: str, env_items: tuple) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--help"], env=dict(env_items), cwd=source, capture_output=True, text=True
    )
    return proc.stdout


def loopback_flags(source: Path, env: dict) -> list[str]:
    """``--allow_private_hosts`` when this version of the pipeline has it: a fetcher that refuses
    loopback addresses by default needs it to fetch from a benchmark's server on 127.0.0.1."""
    return ["--allow_private_hosts"] if "--allow_private_hosts" in _help_text(str(source), tuple(env.items())) else []


def read_summary(output: Path, run_date: str) -> dict:
    return json.loads((Path(output) / "runs" / f"dt={run_date}" / "summary.json").read_text())


def table_ids(output: Path, table: str, run_date: str) -> list[str]:
    import pyarrow.parquet as pq

    folder = Path(output) / table / f"dt={run_date}"
    return pq.read_table(str(folder), columns=["image_id"]).column("image_id").to_pylist()


def accounting_problems(
    output: Path,
    run_date: str,
    image_ids: Iterable[str],
    *,
    scored: int | None = None,
    errors_by_stage: dict[str, int] | None = None,
) -> list[str]:
    """What is wrong with a run's accounting: every manifest row (``image_ids``, unique) must be in exactly one
    of the two tables, once; summary.json must count the same rows, and ``scored`` inferences and
    ``errors_by_stage`` when given (stages not named must have none). Empty when all is right."""
    expected = set(image_ids)
    summary = read_summary(output, run_date)
    scores, errors = table_ids(output, "scores", run_date), table_ids(output, "errors", run_date)
    found = Counter(scores) + Counter(errors)
    problems = []
    if summary["rows"] != len(expected):
        problems.append(f"summary.json counts {summary['rows']} rows, the manifest has {len(expected)}")
    twice = [image_id for image_id, n in found.items() if n > 1]
    if twice:
        problems.append(f"{len(twice)} image ids are in the tables more than once (e.g. {twice[0]})")
    missing, unknown = expected - found.keys(), found.keys() - expected
    if missing:
        problems.append(f"{len(missing)} manifest rows are in no table (e.g. {min(missing)})")
    if unknown:
        problems.append(f"the tables hold {len(unknown)} ids the manifest does not have (e.g. {min(unknown)})")
    if scored is not None and summary["scored"] != scored:
        problems.append(f"summary.json scored {summary['scored']}, expected {scored}")
    wanted = dict(errors_by_stage or {})
    got = {stage: n for stage, n in summary["errors_by_stage"].items() if n}
    if got != wanted:
        problems.append(f"errors by stage {got}, expected {wanted}")
    if summary["errors"] != len(errors):
        problems.append(f"summary.json counts {summary['errors']} errors, the errors table holds {len(errors)}")
    return problems


def summary_counts(
    summary: dict, keys: Sequence[str] = ("rows", "scored", "deduplicated", "reused", "errors", "uris", "fetched")
) -> dict:
    return {k: summary.get(k) for k in keys}
