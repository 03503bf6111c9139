"""The nightly report: one self-contained HTML page about one published night.

    aisthetics report OUTPUT --run_date=YYYY-MM-DD [--top N]
    -> OUTPUT/reports/dt=YYYY-MM-DD/report.html

The page shows the run's counts and model_version (its summary.json), a histogram of mean
scores, the same per value of each kept column, the top and bottom N images as
thumbnails, the errors by stage and type, and, when an earlier night exists, what changed
since the newest one: both distributions, where the images went, and those that moved most.

The package, in the order the work happens:

    data.py        what the page shows (data classes) and which published nights it reads
    aggregates.py  every number, by aggregate queries in DuckDB over the Parquet files
    thumbnails.py  the shown images as data: URIs, or placeholders naming why not
    charts.py      SVG histograms and error bars, the score colour scale
    formatting.py  numbers and escaped text for the page
    page.py        the HTML, with style.css inlined

It stays fast on a catalog of millions of rows: Python only ever holds the rows it shows,
and fetches only their thumbnails.
"""

from __future__ import annotations

import time

import duckdb

from aisthetics_transforms import layout, storage
from aisthetics_transforms.report.aggregates import DEFAULT_MEMORY_LIMIT, connect, query
from aisthetics_transforms.report.data import ReportData, ReportError, Thumbnail, find_nights
from aisthetics_transforms.report.page import render
from aisthetics_transforms.report.thumbnails import THUMB_SIZE, fetch_thumbnails

__all__ = [
    "DEFAULT_TOP",
    "MAX_TOP",
    "REPORTS",
    "REPORT_FILE",
    "THUMB_SIZE",
    "ReportData",
    "ReportError",
    "Thumbnail",
    "collect",
    "fetch_thumbnails",
    "nights",
    "render",
    "report_path",
    "write_report",
]

REPORTS = "reports"  # OUTPUT/reports/dt=DATE/report.html, beside the tables
REPORT_FILE = "report.html"
DEFAULT_TOP = 12
MAX_TOP = 100


def nights(output: str) -> list[str]:
    """The nights a report can be made of: the published dates, oldest first."""
    return layout.published_dates(output)


def report_path(output: str, run_date: str) -> str:
    return layout.join(layout.partition_dir(output, REPORTS, run_date), REPORT_FILE)


def collect(
    output: str,
    run_date: str | None = None,
    top: int = DEFAULT_TOP,
    thumbnails: bool = True,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> ReportData:
    """Everything the page shows about ``run_date`` (default: the newest night) under
    ``output``: a few aggregate queries, and at most 3 x ``top`` fetched images."""
    started = time.monotonic()
    output = output.rstrip("/")
    if not 1 <= int(top) <= MAX_TOP:
        raise ReportError(f"--top must be between 1 and {MAX_TOP}, got {top}")
    night, earlier = find_nights(output, run_date)
    con, spill = connect(memory_limit)
    try:
        data = query(con, output, night, earlier, top)
    except duckdb.Error as exc:  # unreadable files, a table that is not ours
        raise ReportError(f"could not read the tables of {night.run_date} under {output}: {exc}") from exc
    finally:
        con.close()
        spill.cleanup()
    if thumbnails:
        shown = data.shown()
        found = fetch_thumbnails(s.uri for s in shown)
        for s in shown:
            s.thumbnail = found.get(s.uri, Thumbnail(problem="NoUri"))
    data.elapsed_s = time.monotonic() - started
    return data


def write_report(
    output: str,
    run_date: str | None = None,
    top: int = DEFAULT_TOP,
    thumbnails: bool = True,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> str:
    """Write ``OUTPUT/reports/dt=DATE/report.html`` (readers see the old page or the whole
    new one) and return its path. Without ``run_date``, the newest night under ``output``."""
    data = collect(output, run_date, top, thumbnails, memory_limit)
    path = report_path(data.output, data.run_date)
    storage.write_atomic(path, render(data).encode("utf-8"), mime_type="text/html")
    return path
