"""Where a night's files live under ``--output``, and how a published night is read back.

    scores/dt=DATE/RUNID-*.parquet    errors/dt=DATE/RUNID-*.parquet    runs/dt=DATE/summary.json
    _staging/DATE_RUNID/{scores,errors}/RUNID-*.parquet    a run's files before it publishes
    _publish/DATE/RUNID.claim, RUNID.alive                  the date's publish lock (publish.py)

A night is trusted only through its ``summary.json``: written last and atomically, it names
the run (``run_id``) whose files in the partition directories are that night. Files of other
runs sit beside them only while a publish of that date is in progress, or after one died,
until the next publish of the date removes them; the readers here never see them, and a date
without a summary is not a night at all. Dates are parsed only from a partition directory's
own name, directly under its table directory, so ``dt=...`` inside ``--output`` means nothing.

Every function takes local paths and ``gs://`` (any Beam filesystem) alike, through
``storage``.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import re
import secrets
from typing import Optional

from aisthetics_transforms import storage

TABLES = ("scores", "errors")
RUNS = "runs"
SUMMARY = "summary.json"
STAGING = "_staging"
PUBLISH = "_publish"
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_RUN_TIME = re.compile(r"^(\d{8}T\d{12}Z)")
_RUN_TIME_FORMAT = "%Y%m%dT%H%M%S%fZ"


class LayoutError(ValueError):
    """A file of the layout that cannot be read as what it must be."""


# ---------------------------------------------------------------------------
# Paths


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def is_date(text: str) -> bool:
    """``text`` is a real date written YYYY-MM-DD, zero-padded: a night's partition is named
    by it and compared as text (and DuckDB would read dt=2026-1-5 as 2026-01-05). The one
    rule for a run date, wherever one is given or read back."""
    if not isinstance(text, str) or not _DATE.fullmatch(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def partition_dir(output: str, table: str, run_date: str) -> str:
    return join(output, table, f"dt={run_date}")


def summary_path(output: str, run_date: str) -> str:
    return join(partition_dir(output, RUNS, run_date), SUMMARY)


def staging_dir(output: str, run_date: str, run_id: str) -> str:
    return join(output, STAGING, f"{run_date}_{run_id}")


def claims_dir(output: str, run_date: str) -> str:
    return join(output, PUBLISH, run_date)


def new_run_id(now: dt.datetime) -> str:
    """The start time to the microsecond (so run ids sort by start), then random characters
    so that two runs started at once still differ."""
    return f"{now.astimezone(dt.UTC).strftime(_RUN_TIME_FORMAT)}-{secrets.token_hex(3)}"


def run_started(run_id: str) -> Optional[dt.datetime]:
    """When run ``run_id`` started (UTC); None for a name that is not a run id."""
    found = _RUN_TIME.match(run_id)
    if not found:
        return None
    try:
        return dt.datetime.strptime(found.group(1), _RUN_TIME_FORMAT).replace(tzinfo=dt.UTC)
    except ValueError:
        return None


def is_run_file(name: str, run_id: Optional[str]) -> bool:
    """A Parquet file written by run ``run_id`` (any Parquet file when the run is not known:
    summaries written by hand, or before run ids were recorded)."""
    return name.endswith(".parquet") and (not run_id or name.startswith(f"{run_id}-"))


def split_partition(partition: str) -> tuple[str, str, str]:
    """``OUTPUT/TABLE/dt=DATE`` -> (OUTPUT, TABLE, DATE): the inverse of :func:`partition_dir`."""
    parent, _, leaf = partition.rstrip("/").rpartition("/")
    output, _, table = parent.rpartition("/")
    if not (leaf.startswith("dt=") and is_date(leaf[3:]) and output and table):
        raise LayoutError(f"{partition} is not a partition directory (OUTPUT/TABLE/dt=YYYY-MM-DD)")
    return output, table, leaf[3:]


# ---------------------------------------------------------------------------
# Reading published nights


def read_summary(output: str, run_date: str) -> Optional[dict]:
    """The summary.json of ``run_date`` (None when that date was never published)."""
    path = summary_path(output, run_date)
    data = storage.read_bytes(path)
    if data is None:
        return None
    try:
        summary = json.loads(data)
    except ValueError as exc:  # written atomically, so only a foreign hand breaks it
        raise LayoutError(f"{path} is not valid JSON ({exc}); rerun {run_date} to publish it again") from None
    if not isinstance(summary, dict):
        raise LayoutError(f"{path} is not a run summary (a JSON object); rerun {run_date} to publish it again")
    return summary


def night_files(output: str, table: str, run_date: str, summary: Optional[dict] = None) -> list[str]:
    """The Parquet files of table ``table`` on ``run_date``: those of the run its summary
    names, found by one listing of the partition directory; none without a summary."""
    summary = summary if summary is not None else read_summary(output, run_date)
    if summary is None:
        return []
    run_id = summary.get("run_id")
    return [e.path for e in storage.list_dir(partition_dir(output, table, run_date)) if is_run_file(e.name, run_id)]


def night_pattern(partition: str) -> str:
    """A glob of the published files in ``partition`` (``OUTPUT/TABLE/dt=DATE``), for readers
    that take one pattern (Beam's Parquet source)."""
    output, _, run_date = split_partition(partition)
    summary = read_summary(output, run_date)
    if summary is None:
        raise LayoutError(f"{partition} has no published night (no {summary_path(output, run_date)})")
    run_id = summary.get("run_id")
    return join(partition, f"{run_id}-*.parquet" if run_id else "*.parquet")


def published_dates(output: str) -> list[str]:
    """The dates that have a summary.json, oldest first: one listing of ``runs/``, never of
    the nights' data files."""
    runs = join(output, RUNS)
    if storage.is_local(output):
        paths = glob.glob(join(glob.escape(runs), "dt=*", SUMMARY))
    else:
        paths = [e.path for e in storage.list_prefix(join(runs, "dt="))]
    found = set()
    for path in paths:
        parts = path[len(runs) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == SUMMARY and parts[0].startswith("dt=") and is_date(parts[0][3:]):
            found.add(parts[0][3:])
    return sorted(found)


def previous_night(output: str, run_date: str) -> Optional[dict]:
    """The summary of the newest night published before ``run_date`` (with its
    ``run_date``), or None. A date whose publish never completed has no summary, so it is
    never chosen."""
    earlier = [d for d in published_dates(output) if d < run_date]
    if not earlier:
        return None
    summary = read_summary(output, earlier[-1])
    if summary is None:  # removed since the listing
        return previous_night(output, earlier[-1])
    return {**summary, "run_date": earlier[-1]}
