"""What the report shows, as plain data classes, and which nights it reads.

A night is read only as ``layout`` publishes it: a date with a summary.json, and the files
of the run that summary names. :func:`find_nights` picks the night to report and the
newest earlier one to compare it with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aisthetics_transforms import layout


class ReportError(Exception):
    """The report cannot be made (no such night, a bad argument, unreadable tables)."""


@dataclass(frozen=True)
class PublishedNight:
    """One published date: its summary and the Parquet files of each table."""

    run_date: str
    summary: dict
    scores: list[str]
    errors: list[str]


@dataclass
class Histogram:
    lo: float
    width: float
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def hi(self) -> float:
        return self.lo + self.width * len(self.counts)

    def edges(self, i: int) -> tuple[float, float]:
        return self.lo + i * self.width, self.lo + (i + 1) * self.width


@dataclass
class Stats:
    count: int = 0
    mean: float | None = None
    sd: float | None = None
    p10: float | None = None
    median: float | None = None
    p90: float | None = None
    low: float | None = None
    high: float | None = None


@dataclass
class Group:
    value: str
    stats: Stats
    histogram: Histogram
    previous_mean: float | None = None


@dataclass
class KeptColumn:
    name: str
    distinct: int
    groups: list[Group]
    other_images: int  # rows in values not shown


@dataclass
class Thumbnail:
    data_uri: str | None = None
    problem: str | None = None  # why there is no picture


@dataclass
class Shown:
    """One image shown on the page."""

    image_id: str
    uri: str
    mean_score: float
    sd_score: float | None = None
    kept: dict = field(default_factory=dict)
    before: float | None = None  # movers: the earlier night's score
    thumbnail: Thumbnail = field(default_factory=Thumbnail)


@dataclass
class Comparison:
    """Tonight against the newest earlier night. Every image_id scored on either night is
    in exactly one count: tonight's scored = in_both + added + recovered, the earlier
    night's scored = in_both + removed + failing."""

    previous_date: str
    stats: Stats
    histogram: Histogram
    in_both: int  # scored on both nights
    added: int  # scored tonight, in neither table of the earlier night
    removed: int  # scored before, in neither table tonight: no longer in the manifest
    failing: int  # scored before, an error row tonight (e.g. its file was deleted)
    recovered: int  # an error row before, scored tonight
    changed: int
    mean_change_in_both: float | None
    movers: list[Shown]
    model_versions: list[str]


@dataclass
class ReportData:
    output: str
    run_date: str
    generated_at: str
    summary: dict
    table_rows: int
    model_versions: list[str]
    stats: Stats
    histogram: Histogram
    kept_columns: list[KeptColumn]
    top: list[Shown]
    bottom: list[Shown]
    errors: list[dict]  # stage, error_type, count, example, previous
    error_rows: int
    comparison: Comparison | None
    approximate: bool = False  # percentiles by t-digest (a very large night)
    elapsed_s: float = 0.0

    def shown(self) -> list[Shown]:
        """Every image the page shows a thumbnail of."""
        return [*self.top, *self.bottom, *(self.comparison.movers if self.comparison else [])]


def check_date(run_date: str) -> str:
    if not layout.is_date(run_date):
        raise ReportError(f"run_date must be a date written YYYY-MM-DD, got {run_date!r}")
    return run_date


def read_night(output: str, run_date: str) -> PublishedNight:
    """A published night's summary and files. A summary that cannot be read cannot be
    trusted (it names the night's files), so that is a :class:`ReportError`."""
    try:
        summary = layout.read_summary(output, run_date)
    except layout.LayoutError as exc:
        raise ReportError(str(exc)) from None
    if summary is None:  # unpublished since it was listed
        raise ReportError(f"no run for {run_date} under {output}: its summary.json is gone")
    return PublishedNight(
        run_date,
        summary,
        scores=layout.night_files(output, "scores", run_date, summary),
        errors=layout.night_files(output, "errors", run_date, summary),
    )


def find_nights(output: str, run_date: str | None) -> tuple[PublishedNight, PublishedNight | None]:
    """The night of ``run_date`` (default: the newest) and the newest published before it."""
    present = layout.published_dates(output)
    if run_date is None:
        if not present:
            raise ReportError(f"no published night under {output} (expected runs/dt=YYYY-MM-DD/summary.json)")
        run_date = present[-1]
    check_date(run_date)
    if run_date not in present:
        listed = ", ".join(present[-5:]) or "none"
        raise ReportError(f"no run for {run_date} under {output} (published nights: {listed})")
    earlier = [d for d in present if d < run_date]
    return read_night(output, run_date), read_night(output, earlier[-1]) if earlier else None
