"""The nightly report: one self-contained HTML page about one run date.

    aisthetics report OUTPUT --run_date=YYYY-MM-DD [--top N]
    -> OUTPUT/reports/dt=YYYY-MM-DD/report.html

The page shows the run's counts and model_version (``runs/dt=DATE/summary.json``), a
histogram of mean scores, the same per value of each kept column, the top and bottom N
images as thumbnails, the errors by stage and type, and, when an earlier night exists,
what changed since the newest one: both distributions and the images that moved most.

It stays fast on a catalog of millions of rows. Every number comes from an aggregate
query in DuckDB over the Parquet files (histogram bins included); Python only ever holds
the rows it shows. Thumbnails are fetched only for the images shown, through the
pipeline's ``fetch_bytes`` with small limits, in a small thread pool; one that cannot be
fetched or decoded becomes a placeholder naming why.

The page makes no request of its own: CSS is inline, charts are inline SVG, thumbnails
are ``data:`` URIs, there is no script, and a Content-Security-Policy forbids anything
else. Every text that comes from the data is escaped.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import duckdb

from aisthetics_transforms import layout
from aisthetics_transforms.queries import sql_identifier, sql_literal
from aisthetics_transforms.records import scores_schema

REPORTS = "reports"
REPORT_FILE = "report.html"
DEFAULT_TOP = 12
MAX_TOP = 100
# Columns the pipeline itself writes (and the Hive partition column); any other string
# column of the scores table is a kept column.
CONTRACT_COLUMNS = frozenset(
    {
        "image_id", "uri", "mean_score", "sd_score", "predictions", "model_version", "scored_at",
        "content_sha256", "source_version", "reused", "dt", *scores_schema().names,
    }
)
STAGE_ORDER = ("manifest", "fetch", "decode", "score")
MAX_GROUPS = 8  # values of a kept column shown, the most frequent first
MAX_KEPT_COLUMNS = 6
MAX_ERROR_ROWS = 30
DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB's; beyond it joins and aggregates spill to disk
EXACT_PERCENTILES_UP_TO = 2_000_000  # rows in a night; above, percentiles are approximate
THUMB_SIZE = (320, 240)  # pixels stored; shown at half that for sharp screens
THUMB_WORKERS = 8
THUMB_BUDGET_S = 30.0  # all thumbnails together; later ones become placeholders


class ReportError(Exception):
    """The report cannot be made (no such night, a bad argument)."""


# ---------------------------------------------------------------------------
# What the page shows


@dataclass
class Histogram:
    lo: float
    width: float
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def edges(self, i: int) -> tuple[float, float]:
        return self.lo + i * self.width, self.lo + (i + 1) * self.width


@dataclass
class Stats:
    count: int = 0
    mean: Optional[float] = None
    sd: Optional[float] = None
    p10: Optional[float] = None
    median: Optional[float] = None
    p90: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None


@dataclass
class Group:
    value: str
    stats: Stats
    histogram: Histogram
    previous_mean: Optional[float] = None


@dataclass
class KeptColumn:
    name: str
    distinct: int
    groups: list[Group]
    other_images: int  # rows in values not shown


@dataclass
class Thumbnail:
    data_uri: Optional[str] = None
    problem: Optional[str] = None  # why there is no picture


@dataclass
class Shown:
    """One image shown on the page."""

    image_id: str
    uri: str
    mean_score: float
    sd_score: Optional[float] = None
    kept: dict = field(default_factory=dict)
    before: Optional[float] = None  # movers: the earlier night's score
    thumbnail: Thumbnail = field(default_factory=Thumbnail)


@dataclass
class Comparison:
    previous_date: str
    stats: Stats
    histogram: Histogram
    in_both: int
    added: int
    removed: int
    changed: int
    mean_change_in_both: Optional[float]
    movers: list[Shown]
    model_versions: list[str]
    summary: Optional[dict]


@dataclass
class ReportData:
    output: str
    run_date: str
    generated_at: str
    summary: Optional[dict]
    table_rows: int
    model_versions: list[str]
    stats: Stats
    histogram: Histogram
    kept_columns: list[KeptColumn]
    top: list[Shown]
    bottom: list[Shown]
    errors: list[dict]  # stage, error_type, count, example, previous
    error_rows: int
    comparison: Optional[Comparison]
    approximate: bool = False  # percentiles by t-digest (a very large night)
    elapsed_s: float = 0.0


# ---------------------------------------------------------------------------
# Finding the files


def nights(output: str) -> list[str]:
    """The dates published under ``output`` (those with a summary.json), oldest first."""
    return layout.published_dates(output)


def night_files(output: str, table: str, run_date: str, summary: Optional[dict] = None) -> list[str]:
    """The files of ``table`` of the run that ``run_date``'s summary names (layout.py)."""
    return layout.night_files(output, table, run_date, summary)


def report_path(output: str, run_date: str) -> str:
    return layout.join(output, REPORTS, f"dt={run_date}", REPORT_FILE)


def read_summary(output: str, run_date: str) -> Optional[dict]:
    """The summary of a published night; a night whose summary cannot be read cannot be
    trusted (it names the night's files), so that is a :class:`ReportError`."""
    try:
        return layout.read_summary(output, run_date)
    except layout.LayoutError as exc:
        raise ReportError(str(exc)) from None


# ---------------------------------------------------------------------------
# Queries (all aggregates: nothing per row comes back to Python)


class Night:
    """The scores and errors of one date as DuckDB views."""

    def __init__(self, con: duckdb.DuckDBPyConnection, output: str, run_date: str, name: str, summary: dict):
        self.con = con
        self.run_date = run_date
        self.summary = summary
        self.scores = f"{name}_scores"
        self.errors = f"{name}_errors"
        self.columns = self._view(self.scores, night_files(output, "scores", run_date, summary), _EMPTY_SCORES)
        self._view(self.errors, night_files(output, "errors", run_date, summary), _EMPTY_ERRORS)
        self.rows_count = self.value(f"SELECT count(*) FROM {self.scores}")  # from Parquet footers
        # Exact percentiles hold every value in memory; past a few million rows a t-digest
        # (within ~0.001 of the exact value there) keeps memory flat.
        self.approximate = self.rows_count > EXACT_PERCENTILES_UP_TO
        function = "approx_quantile" if self.approximate else "quantile_cont"
        self.quantiles = f"{function}(mean_score, [0.1, 0.5, 0.9])"

    def _view(self, view: str, files: list[str], empty: str) -> dict[str, str]:
        if files:
            source = f"read_parquet([{', '.join(sql_literal(f) for f in files)}], union_by_name = true)"
            self.con.execute(f"CREATE VIEW {view} AS SELECT * FROM {source}")
        else:
            self.con.execute(f"CREATE VIEW {view} AS {empty}")
        return {name: kind for name, kind, *_ in self.con.execute(f"DESCRIBE {view}").fetchall()}

    def value(self, sql: str, params: Optional[dict] = None):
        return self.con.execute(sql, params or {}).fetchone()[0]

    def rows(self, sql: str, params: Optional[dict] = None) -> list[tuple]:
        return self.con.execute(sql, params or {}).fetchall()

    def kept_columns(self) -> list[str]:
        return [n for n, kind in self.columns.items() if kind == "VARCHAR" and n not in CONTRACT_COLUMNS]


_EMPTY_SCORES = (
    "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS uri, NULL::DOUBLE AS mean_score, "
    "NULL::DOUBLE AS sd_score, NULL::VARCHAR AS model_version WHERE false"
)
_EMPTY_ERRORS = (
    "SELECT NULL::VARCHAR AS image_id, NULL::VARCHAR AS uri, NULL::VARCHAR AS stage, "
    "NULL::VARCHAR AS error_type, NULL::VARCHAR AS error_message WHERE false"
)
_FINITE = "mean_score IS NOT NULL AND isfinite(mean_score)"


def _stats(night: Night) -> Stats:
    count, mean, sd, quantiles, low, high = night.con.execute(
        f"""SELECT count(*), avg(mean_score), stddev_samp(mean_score),
                   {night.quantiles}, min(mean_score), max(mean_score)
            FROM {night.scores} WHERE {_FINITE}"""
    ).fetchone()
    p10, median, p90 = quantiles if quantiles else (None, None, None)
    return Stats(count, mean, sd, p10, median, p90, low, high)


def choose_bins(low: Optional[float], high: Optional[float], max_bins: int = 40) -> tuple[float, float, int]:
    """(lo, width, n): round-numbered bins that cover [low, high] in at most ``max_bins``."""
    if low is None or high is None:
        return 1.0, 0.5, 18  # nothing scored: the whole 1..10 scale
    center = (low + high) / 2
    low, high = min(low, center - 0.5), max(high, center + 0.5)  # at least one score point wide
    for width in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        lo = math.floor(low / width + 1e-9) * width
        n = int(math.floor((high - lo) / width + 1e-9)) + 1
        if n <= max_bins:
            return round(lo, 6), width, n
    return math.floor(low), 1.0, int(high - math.floor(low)) + 1


def _bin_expr(lo: float, width: float, n: int) -> str:
    return f"least(greatest(floor((mean_score - {lo!r}) / {width!r}), 0), {n - 1})::INTEGER"


def _histograms(
    night: Night, lo: float, width: float, n: int, group: Optional[str] = None, values: Sequence[str] = ()
) -> dict:
    """{group value (or None): Histogram}; with ``group``, only for ``values``."""
    key = f"coalesce({sql_identifier(group)}, '(none)')" if group else "NULL"
    where = f"{_FINITE}"
    params: dict = {}
    if group:
        where += f" AND {key} IN (SELECT unnest($values))"
        params["values"] = list(values)
    found: dict = {}
    for value, b, count in night.rows(
        f"SELECT {key}, {_bin_expr(lo, width, n)} AS bin, count(*) FROM {night.scores} WHERE {where} GROUP BY ALL",
        params,
    ):
        found.setdefault(value, Histogram(lo, width, [0] * n)).counts[b] += count
    return found


def _kept_column(night: Night, column: str, bins: tuple, previous: Optional[Night]) -> KeptColumn:
    key = f"coalesce({sql_identifier(column)}, '(none)')"
    # The most frequent values first; the window counts the distinct values in the same pass.
    top = night.rows(
        f"""SELECT value, n, count(*) OVER (), sum(n) OVER () FROM (
                SELECT {key} AS value, count(*) AS n FROM {night.scores} WHERE {_FINITE} GROUP BY value)
            ORDER BY n DESC, value LIMIT {MAX_GROUPS}"""
    )
    values = [r[0] for r in top]
    distinct, total = (top[0][2], top[0][3]) if top else (0, 0)
    stats = {
        value: Stats(count, mean, sd, *(quantiles or (None, None, None)), low, high)
        for value, count, mean, sd, quantiles, low, high in night.rows(
            f"""SELECT {key} AS value, count(*), avg(mean_score), stddev_samp(mean_score),
                       {night.quantiles}, min(mean_score), max(mean_score)
                FROM {night.scores} WHERE {_FINITE} AND {key} IN (SELECT unnest($values)) GROUP BY value""",
            {"values": values},
        )
    } if values else {}
    histograms = _histograms(night, *bins, group=column, values=values) if values else {}
    previous_means = {}
    if previous is not None and column in previous.columns and values:
        previous_means = dict(
            previous.rows(
                f"""SELECT {key}, avg(mean_score) FROM {previous.scores}
                    WHERE {_FINITE} AND {key} IN (SELECT unnest($values)) GROUP BY ALL""",
                {"values": values},
            )
        )
    groups = [
        Group(v, stats[v], histograms.get(v, Histogram(bins[0], bins[1], [0] * bins[2])), previous_means.get(v))
        for v in values
    ]
    return KeptColumn(column, int(distinct), groups, int(total) - sum(g.stats.count for g in groups))


def _shown(night: Night, order: str, n: int, kept: Sequence[str]) -> list[Shown]:
    extra = "".join(f", {sql_identifier(c)}" for c in kept)
    sd = "sd_score" if "sd_score" in night.columns else "NULL"
    rows = night.rows(
        f"""SELECT image_id, uri, mean_score, {sd}{extra} FROM {night.scores}
            WHERE {_FINITE} ORDER BY mean_score {order}, image_id LIMIT {int(n)}"""
    )
    return [Shown(r[0], r[1], r[2], r[3], dict(zip(kept, r[4:]))) for r in rows]


def _errors(night: Night, previous: Optional[Night]) -> tuple[list[dict], int]:
    total = night.value(f"SELECT count(*) FROM {night.errors}")
    rows = night.rows(
        f"""SELECT coalesce(stage, '?'), coalesce(error_type, '?'), count(*) AS n, min(error_message)
            FROM {night.errors} GROUP BY ALL ORDER BY n DESC, 1, 2 LIMIT {MAX_ERROR_ROWS}"""
    )
    before = {}
    if previous is not None:
        before = {
            (s, t): c
            for s, t, c in previous.rows(
                f"SELECT coalesce(stage, '?'), coalesce(error_type, '?'), count(*) FROM {previous.errors} GROUP BY ALL"
            )
        }
    return [
        {"stage": s, "error_type": t, "count": c, "example": m, "previous": before.get((s, t), 0 if previous else None)}
        for s, t, c, m in rows
    ], total


def _comparison(current: Night, previous: Night, bins: tuple, n: int, summary: Optional[dict]) -> Comparison:
    # image_id is unique within a night (the pipeline sends duplicates to the errors
    # table), so one inner join per query; what is new or gone follows from the counts.
    joined = f"""
        SELECT c.image_id, c.uri, p.mean_score AS before, c.mean_score AS after
        FROM {current.scores} AS c JOIN {previous.scores} AS p ON c.image_id = p.image_id
        WHERE isfinite(c.mean_score) AND isfinite(p.mean_score)"""
    in_both, changed, mean_change = current.con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE abs(after - before) > 1e-9), avg(after - before) FROM ({joined})"
    ).fetchone()
    stats = _stats(previous)
    now_count = current.value(f"SELECT count(*) FROM {current.scores} WHERE {_FINITE}")
    movers = [
        Shown(image_id, uri, after, before=before)
        for image_id, uri, before, after in current.rows(
            f"""SELECT image_id, uri, before, after FROM ({joined}) WHERE abs(after - before) > 1e-9
                ORDER BY abs(after - before) DESC, image_id LIMIT {int(n)}"""
        )
    ]
    versions = [v for (v,) in previous.rows(f"SELECT DISTINCT model_version FROM {previous.scores} ORDER BY 1")]
    return Comparison(
        previous.run_date,
        stats,
        _histograms(previous, *bins).get(None, Histogram(bins[0], bins[1], [0] * bins[2])),
        in_both, now_count - in_both, stats.count - in_both, changed, mean_change, movers, versions, summary,
    )


# ---------------------------------------------------------------------------
# Thumbnails


def thumbnail_limits():
    from aisthetics_transforms.fetch import FetchLimits

    return FetchLimits(
        max_bytes=20 * 1024 * 1024, connect_timeout=3.0, read_timeout=5.0, deadline=10.0, retries=1,
        backoff=0.2, max_retry_after=1.0, max_redirects=3,
    )


def make_thumbnail(data: bytes, size: tuple[int, int] = THUMB_SIZE) -> str:
    """Image bytes -> a ``data:image/jpeg`` URI of ``size``, centre-cropped. Refuses
    decompression bombs by their header (the pipeline's limits) before decoding."""
    from PIL import Image, ImageOps

    from aisthetics_transforms.preprocess import open_image

    image = open_image(data)
    image.draft("RGB", (size[0] * 2, size[1] * 2))  # JPEG: decode at a reduced scale
    image = ImageOps.exif_transpose(image)  # people expect photos upright
    image = ImageOps.fit(image.convert("RGB"), size, Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=78, optimize=True, progressive=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _one_thumbnail(uri: str, limits, session) -> Thumbnail:
    from aisthetics_transforms.fetch import FetchError, fetch_bytes
    from aisthetics_transforms.preprocess import ImageDecodeError

    try:
        return Thumbnail(make_thumbnail(fetch_bytes(uri, limits, session)))
    except (FetchError, ImageDecodeError) as exc:
        return Thumbnail(problem=exc.error_type)
    except Exception as exc:  # a truncated or strange file: a placeholder, never a failed report
        return Thumbnail(problem=type(exc).__name__)


def fetch_thumbnails(
    uris: Iterable[str], limits=None, workers: int = THUMB_WORKERS, budget_s: float = THUMB_BUDGET_S
) -> dict[str, Thumbnail]:
    """{uri: Thumbnail} for each distinct uri, fetched by ``workers`` threads. Whatever is
    not done after ``budget_s`` seconds becomes a ``Timeout`` placeholder.

    No fetch outlives the budget (each one's deadline is cut to what is left of it), and
    the threads are daemons: a pool's threads would be joined at interpreter exit, so a
    thread stuck on a slow read would hold the command up past its budget."""
    from dataclasses import replace

    from aisthetics_transforms.fetch import ThreadSessions

    uris = list(dict.fromkeys(u for u in uris if u))
    if not uris:
        return {}
    limits = limits or thumbnail_limits()
    ends = time.monotonic() + budget_s
    found = {u: Thumbnail(problem="Timeout") for u in uris}
    todo = queue.SimpleQueue()
    for uri in uris:
        todo.put(uri)
    changed = threading.Condition()
    finished = []
    sessions = ThreadSessions(limits)

    def work():
        session = sessions.get()
        while True:
            left = ends - time.monotonic()
            try:
                uri = todo.get_nowait()
            except queue.Empty:
                return
            if left <= 0:
                return
            thumbnail = _one_thumbnail(uri, replace(limits, deadline=min(limits.deadline, left)), session)
            with changed:
                found[uri] = thumbnail
                finished.append(uri)
                changed.notify()

    for _ in range(min(workers, len(uris))):
        threading.Thread(target=work, name="thumb", daemon=True).start()
    with changed:
        changed.wait_for(lambda: len(finished) == len(uris), timeout=budget_s)
        result = dict(found)
    sessions.close()
    return result


# ---------------------------------------------------------------------------
# Collecting and writing


def _connect(memory_limit: str) -> tuple[duckdb.DuckDBPyConnection, tempfile.TemporaryDirectory]:
    """An in-memory DuckDB whose joins and aggregates spill to a temporary directory
    beyond ``memory_limit``, so memory stays flat however many rows a night has."""
    spill = tempfile.TemporaryDirectory(prefix="aisthetics-report-")
    try:
        con = duckdb.connect(config={"threads": max(1, min(4, os.cpu_count() or 1)), "memory_limit": memory_limit})
    except duckdb.Error as exc:
        spill.cleanup()
        raise ReportError(f"bad memory limit {memory_limit!r}: {exc}") from None
    con.execute(f"SET temp_directory = {sql_literal(spill.name)}")
    con.execute("SET preserve_insertion_order = false")
    return con, spill


def check_date(run_date: str) -> str:
    if not layout.is_date(run_date):
        raise ReportError(f"run_date must be a date written YYYY-MM-DD, got {run_date!r}")
    return run_date


def collect(
    output: str,
    run_date: Optional[str] = None,
    top: int = DEFAULT_TOP,
    thumbnails: bool = True,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> ReportData:
    """Everything the page shows, from the tables under ``output`` (a few aggregate
    queries) and at most 3 x ``top`` fetched images."""
    started = time.monotonic()
    output = output.rstrip("/")
    if not 1 <= int(top) <= MAX_TOP:
        raise ReportError(f"--top must be between 1 and {MAX_TOP}, got {top}")
    present = nights(output)
    if run_date is None:
        if not present:
            raise ReportError(f"no published night under {output} (expected runs/dt=YYYY-MM-DD/summary.json)")
        run_date = present[-1]
    check_date(run_date)
    if run_date not in present:
        listed = ", ".join(present[-5:]) or "none"
        raise ReportError(f"no run for {run_date} under {output} (published nights: {listed})")
    earlier = [d for d in present if d < run_date]
    summary = read_summary(output, run_date)
    previous = (earlier[-1], read_summary(output, earlier[-1])) if earlier else None

    con, spill = _connect(memory_limit)
    try:
        data = _query(con, output, run_date, summary, previous, top)
    except duckdb.Error as exc:  # unreadable files, a table that is not ours
        raise ReportError(f"could not read the tables of {run_date} under {output}: {exc}") from exc
    finally:
        con.close()
        spill.cleanup()
    if thumbnails:
        shown = [*data.top, *data.bottom, *(data.comparison.movers if data.comparison else [])]
        found = fetch_thumbnails(s.uri for s in shown)
        for s in shown:
            s.thumbnail = found.get(s.uri, Thumbnail(problem="NoUri"))
    data.elapsed_s = time.monotonic() - started
    return data


def _query(
    con: duckdb.DuckDBPyConnection, output: str, run_date: str, summary: dict, earlier: Optional[tuple], top: int
) -> ReportData:
    """Every number of the page, by aggregate queries on one connection; ``earlier`` is
    (date, summary) of the night to compare with."""
    current = Night(con, output, run_date, "now", summary)
    previous = Night(con, output, earlier[0], "before", earlier[1]) if earlier else None
    stats = _stats(current)
    previous_stats = _stats(previous) if previous else None
    lows = [s.low for s in (stats, previous_stats) if s and s.low is not None]
    highs = [s.high for s in (stats, previous_stats) if s and s.high is not None]
    bins = choose_bins(min(lows) if lows else None, max(highs) if highs else None)
    kept_names = current.kept_columns()[:MAX_KEPT_COLUMNS]
    errors, error_rows = _errors(current, previous)
    versions = current.rows(f"SELECT DISTINCT model_version FROM {current.scores} WHERE model_version IS NOT NULL ORDER BY 1")
    return ReportData(
        output=output,
        run_date=run_date,
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary,
        table_rows=current.rows_count,
        approximate=current.approximate,
        model_versions=[v for (v,) in versions],
        stats=stats,
        histogram=_histograms(current, *bins).get(None, Histogram(bins[0], bins[1], [0] * bins[2])),
        kept_columns=[_kept_column(current, c, bins, previous) for c in kept_names],
        top=_shown(current, "DESC", top, kept_names),
        # A small night is shown once, best first.
        bottom=_shown(current, "ASC", top, kept_names) if stats.count > top else [],
        errors=errors,
        error_rows=error_rows,
        comparison=(
            _comparison(current, previous, bins, top, previous.summary) if previous else None
        ),
    )


def write_report(
    output: str,
    run_date: Optional[str] = None,
    top: int = DEFAULT_TOP,
    thumbnails: bool = True,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
) -> str:
    """Write ``OUTPUT/reports/dt=DATE/report.html`` and return its path. Without
    ``run_date``, the newest night under ``output``."""
    data = collect(output, run_date, top, thumbnails, memory_limit)
    page = render(data).encode("utf-8")
    path = report_path(data.output, data.run_date)
    if layout.is_local(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=os.path.dirname(path), prefix=".report-", delete=False) as f:
            f.write(page)
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)
    else:
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(path, mime_type="text/html") as f:
            f.write(page)
    return path


# ---------------------------------------------------------------------------
# Rendering: plain strings, every data text through esc()


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def fmt_int(value) -> str:
    return "—" if value is None else f"{int(value):,}"


def fmt_score(value, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_delta(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if round(value, digits) == 0:
        return f"±{0:.{digits}f}"
    return f"{value:+.{digits}f}".replace("-", "−")


def percent(part, whole) -> str:
    if not whole or part is None:
        return "—"
    share = 100.0 * part / whole
    return f"{share:.1f}%" if share >= 0.1 or share == 0 else "<0.1%"


# Score colour scale: anchored on scores (not on the night's range), so a colour means
# the same on every report. Dark red (poor) through amber to dark green (excellent).
_STOPS = (
    (3.0, (178, 34, 34)),
    (4.25, (230, 110, 40)),
    (5.0, (238, 190, 60)),
    (5.75, (120, 180, 90)),
    (6.5, (30, 120, 80)),
)


def score_color(score: Optional[float]) -> str:
    if score is None or not math.isfinite(score):
        return "#9aa3ad"
    if score <= _STOPS[0][0]:
        r, g, b = _STOPS[0][1]
    elif score >= _STOPS[-1][0]:
        r, g, b = _STOPS[-1][1]
    else:
        for (s0, c0), (s1, c1) in zip(_STOPS, _STOPS[1:]):
            if s0 <= score <= s1:
                t = (score - s0) / (s1 - s0)
                r, g, b = (round(a + (z - a) * t) for a, z in zip(c0, c1))
                break
    return f"#{r:02x}{g:02x}{b:02x}"


def _text_on(color: str) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return "#1b1f24" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def nice_step(span: float, ticks: int = 5) -> float:
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _num(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".") if abs(x - round(x)) > 1e-9 else str(int(round(x)))


def histogram_svg(
    hist: Histogram,
    label: str,
    previous: Optional[Histogram] = None,
    previous_label: str = "",
    shares: bool = False,
    width: int = 1040,
    height: int = 300,
    compact: bool = False,
) -> str:
    """An inline SVG bar chart of ``hist``; ``previous`` is drawn over it as an outline.
    ``shares`` plots each night's share of its images instead of counts."""
    n = len(hist.counts)

    def values(h: Histogram) -> list[float]:
        if not shares:
            return [float(c) for c in h.counts]
        total = h.total or 1
        return [100.0 * c / total for c in h.counts]

    now = values(hist)
    before = values(previous) if previous is not None else []
    peak = max([*now, *before, 0.0]) or 1.0
    step = nice_step(peak, 3 if compact else 5)
    if not shares:
        step = max(1.0, math.ceil(step))
    y_max = math.ceil(peak / step - 1e-9) * step
    widest = len(f"{_num(y_max)}%" if shares else f"{int(y_max):,}")
    left = (14 if compact else 36) + 7 * widest
    right, top, bottom = (10, 10, 34) if compact else (16, 14, 50)
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_w = plot_w / n

    def x_of(score: float) -> float:
        return left + (score - hist.lo) / hist.width * bar_w

    def y_of(v: float) -> float:
        return top + plot_h - v / y_max * plot_h

    parts = [
        f'<svg class="chart{"" if compact else " full"}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" '
        f'aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    tick = 0.0
    while tick <= y_max + 1e-9:
        y = y_of(tick)
        text = (f"{_num(tick)}%" if shares else f"{int(tick):,}")
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{text}</text>')
        tick += step
    for i, v in enumerate(now):
        lo, hi = hist.edges(i)
        if v <= 0:
            continue
        y = y_of(v)
        color = score_color((lo + hi) / 2)
        count = hist.counts[i]
        share = f" ({percent(count, hist.total)})" if hist.total else ""
        parts.append(
            f'<rect class="bar" x="{x_of(lo) + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{top + plot_h - y:.1f}" fill="{color}"><title>{lo:.2f}–{hi:.2f}: '
            f"{count:,} images{share}</title></rect>"
        )
    if previous is not None:
        points = [f"{left:.1f},{top + plot_h:.1f}"]
        for i, v in enumerate(before):
            lo, hi = previous.edges(i)
            y = y_of(v)
            points += [f"{x_of(lo):.1f},{y:.1f}", f"{x_of(hi):.1f},{y:.1f}"]
        points.append(f"{left + plot_w:.1f},{top + plot_h:.1f}")
        parts.append(f'<polyline class="previous" points="{" ".join(points)}"><title>{esc(previous_label)}</title></polyline>')
    # x axis: a tick at every whole score (every half when the range is narrow)
    span = hist.width * n
    x_step = 0.5 if span <= 4 else 1.0
    if compact and span > 3:
        x_step = 1.0
    x = math.ceil(hist.lo / x_step - 1e-9) * x_step
    base = top + plot_h
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}" class="axis"/>')
    while x <= hist.lo + span + 1e-9:
        px = x_of(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{base}" y2="{base + 4}" class="axis"/>')
        parts.append(f'<text x="{px:.1f}" y="{base + 16}" class="tick" text-anchor="middle">{_num(x)}</text>')
        x += x_step
    if not compact:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" class="axis-label" text-anchor="middle">'
            "Mean aesthetic score (NIMA, 1 = poor, 10 = excellent)</text>"
        )
        y_label = "Share of the night’s images" if shares else "Images"
        parts.append(
            f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" class="axis-label" '
            f'text-anchor="middle">{y_label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def scale_legend_svg(width: int = 260) -> str:
    stops = "".join(
        f'<stop offset="{(s - 3.0) / 3.5:.3f}" stop-color="{score_color(s)}"/>' for s, _ in _STOPS
    )
    ticks = "".join(
        f'<text x="{10 + (s - 3.0) / 3.5 * (width - 20):.1f}" y="30" class="tick" text-anchor="middle">{_num(s)}</text>'
        for s in (3, 4, 5, 6, 6.5)
    )
    return (
        f'<svg class="legend" viewBox="0 0 {width} 34" width="{width}" height="34" role="img" '
        f'aria-label="score colour scale" xmlns="http://www.w3.org/2000/svg">'
        f'<defs><linearGradient id="score-scale">{stops}</linearGradient></defs>'
        f'<rect x="10" y="4" width="{width - 20}" height="12" rx="3" fill="url(#score-scale)"/>{ticks}</svg>'
    )


def error_bars_svg(rows: list[dict], width: int = 760) -> str:
    """Horizontal bars: errors per stage, in pipeline order."""
    per_stage: dict[str, int] = {}
    for row in rows:
        per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + row["count"]
    stages = [s for s in STAGE_ORDER if s in per_stage] + sorted(set(per_stage) - set(STAGE_ORDER))
    if not stages:
        return ""
    bar_h, gap, left = 22, 10, 90
    height = len(stages) * (bar_h + gap) + gap
    peak = max(per_stage.values()) or 1
    parts = [
        f'<svg class="chart errors-chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="errors by stage" xmlns="http://www.w3.org/2000/svg">'
    ]
    for i, stage in enumerate(stages):
        y = gap + i * (bar_h + gap)
        w = max(2.0, (width - left - 80) * per_stage[stage] / peak)
        parts.append(f'<text x="{left - 10}" y="{y + 15}" class="tick" text-anchor="end">{esc(stage)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="3" class="error-bar"/>')
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + 15}" class="tick">{per_stage[stage]:,}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
:root { --ink:#1b1f24; --muted:#5b6570; --line:#e3e7ec; --bg:#f5f7fa; --card:#fff; --accent:#2f5d8a; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif; }
header { background:#17324d; color:#fff; padding:28px 0 24px; }
.wrap { max-width:1180px; margin:0 auto; padding:0 24px; }
header h1 { margin:0 0 4px; font-size:26px; font-weight:650; letter-spacing:-0.01em; }
header .meta { color:#c8d6e5; font-size:13.5px; }
header .meta span { margin-right:18px; display:inline-block; }
header code { color:#fff; }
main { padding:22px 0 40px; }
section { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:20px 22px;
  margin:0 0 20px; box-shadow:0 1px 2px rgba(16,24,40,.04); }
h2 { font-size:18px; margin:0 0 4px; font-weight:650; }
.lede { color:var(--muted); margin:0 0 14px; font-size:14px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit, minmax(150px, 1fr)); gap:14px; margin:0 0 20px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:12px; padding:14px 16px; }
.card .label { color:var(--muted); font-size:12.5px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:28px; font-weight:650; margin:2px 0 0; font-variant-numeric:tabular-nums; }
.card .sub { color:var(--muted); font-size:12.5px; }
.card.bad .value { color:#b42318; }
.chart { display:block; max-width:100%; height:auto; }
.chart.full { width:100%; }
.chart .grid { stroke:#edf0f3; stroke-width:1; }
.chart .axis { stroke:#9aa3ad; stroke-width:1; }
.chart .tick { fill:#5b6570; font-size:11.5px; }
.chart .axis-label { fill:#39424c; font-size:12.5px; }
.chart .previous { fill:none; stroke:#1b1f24; stroke-width:1.6; stroke-dasharray:5 3; opacity:.75; }
.chart .error-bar { fill:#d9534f; }
.legend { display:block; }
.legend .tick { fill:#5b6570; font-size:11px; }
.row { display:flex; flex-wrap:wrap; gap:10px 26px; align-items:center; margin:12px 0 0; }
.stat { font-size:14px; color:var(--muted); }
.stat b { color:var(--ink); font-variant-numeric:tabular-nums; }
.key { display:inline-flex; align-items:center; gap:6px; font-size:13px; color:var(--muted); }
.swatch { width:22px; height:10px; border-radius:2px; background:linear-gradient(90deg,#b22222,#eebe3c,#1e7850); }
.dash { width:22px; border-top:2px dashed #1b1f24; }
table { border-collapse:collapse; width:100%; font-size:14px; }
th, td { text-align:left; padding:7px 10px; border-bottom:1px solid var(--line); vertical-align:middle; }
th { color:var(--muted); font-weight:600; font-size:12.5px; text-transform:uppercase; letter-spacing:.03em; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td.msg { color:var(--muted); font-size:13px; max-width:460px; overflow-wrap:anywhere; }
.multiples { display:grid; grid-template-columns:repeat(auto-fill, minmax(270px, 1fr)); gap:14px; margin-top:14px; }
.multiple { border:1px solid var(--line); border-radius:10px; padding:10px 12px 6px; }
.multiple h3 { font-size:14px; margin:0; overflow-wrap:anywhere; }
.multiple .sub { color:var(--muted); font-size:12.5px; }
.gallery { display:grid; grid-template-columns:repeat(auto-fill, minmax(158px, 1fr)); gap:14px; }
.tile { border:1px solid var(--line); border-radius:10px; overflow:hidden; background:#fff; }
.tile .frame { position:relative; aspect-ratio:4/3; background:#eef1f4; }
.tile img.thumb { display:block; width:100%; height:100%; object-fit:cover; }
.badge { position:absolute; top:8px; left:8px; padding:2px 8px; border-radius:999px; font-weight:700;
  font-size:13px; font-variant-numeric:tabular-nums; box-shadow:0 1px 3px rgba(0,0,0,.25); }
.tile .info { padding:8px 10px 10px; font-size:12.5px; }
.tile .id { font-weight:600; font-size:13px; overflow-wrap:anywhere; }
.tile .kv { color:var(--muted); overflow-wrap:anywhere; }
.thumb-missing { width:100%; height:100%; display:flex; flex-direction:column; align-items:center;
  justify-content:center; color:#7b8794; font-size:12px; gap:4px; text-align:center; padding:8px; }
.thumb-missing svg { width:34px; height:34px; }
.mini { width:64px; height:48px; border-radius:6px; overflow:hidden; background:#eef1f4; }
.mini img.thumb { width:64px; height:48px; object-fit:cover; display:block; }
.mini .thumb-missing { font-size:9px; padding:2px; }
.mini .thumb-missing svg { width:16px; height:16px; }
.pill { display:inline-block; padding:1px 8px; border-radius:999px; font-weight:650; font-variant-numeric:tabular-nums; }
.up { color:#1e7850; } .down { color:#b42318; }
.note { background:#fff8e6; border:1px solid #f3d27a; border-radius:8px; padding:8px 12px; font-size:13.5px; margin:10px 0 0; }
.empty { color:var(--muted); font-style:italic; }
footer { color:var(--muted); font-size:12.5px; padding:0 0 30px; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size:.92em; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_BROKEN_IMAGE_ICON = (
    '<svg viewBox="0 0 24 24" aria-hidden="true" xmlns="http://www.w3.org/2000/svg"><path fill="none" '
    'stroke="#9aa3ad" stroke-width="1.6" stroke-linejoin="round" d="M3 5h18v14H3z M3 16l5-5 4 4 3-3 6 6 '
    'M15 9.5a1.5 1.5 0 1 0 0.01 0"/><path stroke="#c0392b" stroke-width="1.8" d="M4 4l16 16"/></svg>'
)


def _thumb(shown: Shown) -> str:
    t = shown.thumbnail
    if t.data_uri:
        return f'<img class="thumb" src="{esc(t.data_uri)}" alt="{esc(shown.image_id)}" title="{esc(shown.uri)}">'
    return (
        f'<div class="thumb-missing" title="{esc(shown.uri)}">{_BROKEN_IMAGE_ICON}'
        f"<span>no preview</span><span>{esc(t.problem or 'not fetched')}</span></div>"
    )


def _badge(score: Optional[float], css: str = "badge") -> str:
    color = score_color(score)
    return f'<span class="{css}" style="background:{color};color:{_text_on(color)}">{fmt_score(score)}</span>'


def _tile(shown: Shown) -> str:
    kv = "".join(f'<div class="kv">{esc(k)}: {esc(v)}</div>' for k, v in shown.kept.items())
    sd = f'<div class="kv">sd {fmt_score(shown.sd_score)}</div>' if shown.sd_score is not None else ""
    return (
        f'<figure class="tile" style="margin:0"><div class="frame">{_thumb(shown)}{_badge(shown.mean_score)}</div>'
        f'<figcaption class="info"><div class="id">{esc(shown.image_id)}</div>{kv}{sd}</figcaption></figure>'
    )


def _gallery(title: str, lede: str, shown: list[Shown], anchor: str) -> str:
    tiles = "".join(_tile(s) for s in shown) or '<p class="empty">No scored images.</p>'
    return f'<section id="{anchor}"><h2>{esc(title)}</h2><p class="lede">{lede}</p><div class="gallery">{tiles}</div></section>'


def _card(label: str, value: str, sub: str = "", css: str = "") -> str:
    return (
        f'<div class="card {css}"><div class="label">{esc(label)}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div></div>'
    )


def _delta_span(delta: Optional[float], digits: int = 2) -> str:
    if delta is None:
        return "—"
    if round(delta, digits) == 0:
        return fmt_delta(0.0, digits)
    css = "up" if delta > 0 else "down" if delta < 0 else ""
    arrow = "▲" if delta > 0 else "▼" if delta < 0 else ""
    return f'<span class="{css}">{arrow}&#8201;{fmt_delta(delta, digits)}</span>'


def _cards(data: ReportData) -> str:
    s = data.summary or {}
    ok = "_problem" not in s

    def get(key):
        value = s.get(key) if ok else None
        return value if isinstance(value, (int, float)) else None

    rows = get("rows")
    errors = get("errors") if get("errors") is not None else data.error_rows
    incremental = s.get("incremental_from") if ok else None
    reused_sub = "unchanged since the last run"
    if isinstance(incremental, str):
        try:  # the date of the partition itself, whatever --output holds
            source = layout.split_partition(incremental)[2]
        except layout.LayoutError:
            source = incremental
        reused_sub = f"carried over from {esc(source)}"
    mean_sub = "mean of mean scores"
    if data.comparison and data.comparison.stats.mean is not None and data.stats.mean is not None:
        mean_sub = f"{_delta_span(data.stats.mean - data.comparison.stats.mean)} vs {esc(data.comparison.previous_date)}"
    cards = [
        _card("Rows", fmt_int(rows if rows is not None else data.table_rows + data.error_rows), "manifest rows in this run"),
        _card("Scored", fmt_int(get("scored")), "inferred by the model this run"),
        _card("Reused", fmt_int(get("reused")), reused_sub),
        _card("Deduplicated", fmt_int(get("deduplicated")), "same bytes as another row"),
        _card("Errors", fmt_int(errors), f"{percent(errors, rows)} of rows", "bad" if errors else ""),
        _card("Mean score", fmt_score(data.stats.mean), mean_sub),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _distribution(data: ReportData) -> str:
    st = data.stats
    if not st.count:
        return '<section id="distribution"><h2>Score distribution</h2><p class="empty">No scored images.</p></section>'
    chips = "".join(
        f'<span class="stat">{esc(k)} <b>{v}</b></span>'
        for k, v in (
            ("images", fmt_int(st.count)),
            ("mean", fmt_score(st.mean)),
            ("median", fmt_score(st.median)),
            ("10th pct", fmt_score(st.p10)),
            ("90th pct", fmt_score(st.p90)),
            ("sd", fmt_score(st.sd)),
            ("range", f"{fmt_score(st.low)} – {fmt_score(st.high)}"),
        )
    )
    chart = histogram_svg(data.histogram, f"histogram of mean scores on {data.run_date}")
    approx = " Percentiles are approximate (t-digest) on a night this large." if data.approximate else ""
    return (
        '<section id="distribution"><h2>Score distribution</h2>'
        f'<p class="lede">How the {fmt_int(st.count)} scored images of {esc(data.run_date)} spread over the '
        f"score scale; bins of {_num(data.histogram.width)} points, coloured by score."
        f"{approx}</p>"
        f'{chart}<div class="row">{chips}<span class="key">{scale_legend_svg()}</span></div></section>'
    )


def _kept_section(column: KeptColumn, comparing: bool) -> str:
    header = "<tr><th>value</th><th class='num'>images</th><th class='num'>mean</th><th class='num'>median</th>" \
             "<th class='num'>10th pct</th><th class='num'>90th pct</th>"
    header += "<th class='num'>mean vs before</th></tr>" if comparing else "</tr>"
    rows, multiples = [], []
    for g in column.groups:
        st = g.stats
        delta = ""
        if comparing:
            delta = f"<td class='num'>{_delta_span(st.mean - g.previous_mean) if g.previous_mean is not None else 'new'}</td>"
        rows.append(
            f"<tr><td>{esc(g.value)}</td><td class='num'>{fmt_int(st.count)}</td>"
            f"<td class='num'>{_badge(st.mean, 'pill')}</td><td class='num'>{fmt_score(st.median)}</td>"
            f"<td class='num'>{fmt_score(st.p10)}</td><td class='num'>{fmt_score(st.p90)}</td>{delta}</tr>"
        )
        chart = histogram_svg(g.histogram, f"histogram of mean scores for {column.name} = {g.value}",
                              width=300, height=130, compact=True)
        multiples.append(
            f'<div class="multiple"><h3>{esc(g.value)}</h3><div class="sub">{fmt_int(st.count)} images · '
            f"mean {fmt_score(st.mean)}</div>{chart}</div>"
        )
    more = ""
    if column.other_images:
        hidden = max(column.distinct - len(column.groups), 1)
        more = (f'<p class="lede" style="margin-top:8px">Plus {fmt_int(column.other_images)} images in '
                f"{fmt_int(hidden)} less frequent value{'s' if hidden > 1 else ''}, not shown.</p>")
    return (
        f'<section class="kept"><h2>By {esc(column.name)}</h2>'
        f'<p class="lede">Mean scores per value of the kept column <code>{esc(column.name)}</code> '
        f"({fmt_int(column.distinct)} distinct values; the {len(column.groups)} most frequent shown), "
        f"on the same score axis as above.</p>"
        f"<table>{header}{''.join(rows)}</table>{more}<div class='multiples'>{''.join(multiples)}</div></section>"
    )


def _comparison_section(data: ReportData) -> str:
    c = data.comparison
    if c is None:
        return (
            '<section id="change"><h2>Change since the previous night</h2>'
            f'<p class="empty">No earlier night under this output: nothing to compare {esc(data.run_date)} with.</p></section>'
        )
    now_versions, before_versions = data.model_versions, c.model_versions
    note = ""
    if now_versions and before_versions and set(now_versions) != set(before_versions):
        note = (f'<p class="note">The model changed: {esc(", ".join(before_versions))} on {esc(c.previous_date)}, '
                f"{esc(', '.join(now_versions))} now. Score shifts may come from the model, not the images.</p>")
    chart = histogram_svg(
        data.histogram, f"mean score distributions of {data.run_date} and {c.previous_date}",
        previous=c.histogram, previous_label=c.previous_date, shares=True,
    )
    mean_delta = None if c.stats.mean is None or data.stats.mean is None else data.stats.mean - c.stats.mean
    median_delta = None if c.stats.median is None or data.stats.median is None else data.stats.median - c.stats.median
    chips = "".join(
        f'<span class="stat">{k} <b>{v}</b></span>'
        for k, v in (
            ("mean", f"{fmt_score(c.stats.mean)} → {fmt_score(data.stats.mean)} ({_delta_span(mean_delta)})"),
            ("median", f"{fmt_score(c.stats.median)} → {fmt_score(data.stats.median)} ({_delta_span(median_delta)})"),
            ("in both nights", fmt_int(c.in_both)),
            ("score changed", fmt_int(c.changed)),
            ("new", fmt_int(c.added)),
            ("gone", fmt_int(c.removed)),
            ("average move of images in both", _delta_span(c.mean_change_in_both, 3)),
        )
    )
    legend = (f'<span class="key"><span class="swatch"></span>{esc(data.run_date)}</span>'
              f'<span class="key"><span class="dash"></span>{esc(c.previous_date)}</span>')
    if c.movers:
        body = "".join(
            f"<tr><td style='width:84px'><div class='mini'>{_thumb(m)}</div></td><td>{esc(m.image_id)}</td>"
            f"<td class='num'>{_badge(m.before, 'pill')}</td><td class='num'>{_badge(m.mean_score, 'pill')}</td>"
            f"<td class='num'>{_delta_span(m.mean_score - m.before)}</td></tr>"
            for m in c.movers
        )
        movers = (
            f"<h2 style='margin-top:18px'>Biggest movers</h2><p class='lede'>Images scored on both nights whose mean "
            f"score moved most.</p><table><tr><th></th><th>image_id</th><th class='num'>{esc(c.previous_date)}</th>"
            f"<th class='num'>{esc(data.run_date)}</th><th class='num'>change</th></tr>{body}</table>"
        )
    else:
        movers = '<p class="empty">No image present on both nights changed its score.</p>'
    return (
        f'<section id="change"><h2>Change since {esc(c.previous_date)}</h2>'
        f'<p class="lede">Both nights\' distributions as shares of their images: bars for '
        f"{esc(data.run_date)}, the dashed outline for {esc(c.previous_date)}, the newest earlier night.</p>"
        f'{note}{chart}<div class="row">{legend}</div><div class="row">{chips}</div>{movers}</section>'
    )


def _errors_section(data: ReportData) -> str:
    if not data.error_rows:
        return ('<section id="errors"><h2>Errors</h2><p class="lede">Every manifest row of this night was scored: '
                "no errors.</p></section>")
    comparing = data.comparison is not None
    body = "".join(
        f"<tr><td>{esc(e['stage'])}</td><td>{esc(e['error_type'])}</td><td class='num'>{fmt_int(e['count'])}</td>"
        + (f"<td class='num'>{fmt_int(e['previous'])}</td>" if comparing else "")
        + f"<td class='msg'>{esc(_clip(e['example'], 240))}</td></tr>"
        for e in data.errors
    )
    before = f"<th class='num'>{esc(data.comparison.previous_date)}</th>" if comparing else ""
    shown = sum(e["count"] for e in data.errors)
    more = "" if shown == data.error_rows else f"<p class='lede'>{fmt_int(data.error_rows - shown)} more in rarer kinds.</p>"
    return (
        f'<section id="errors"><h2>Errors</h2><p class="lede">{fmt_int(data.error_rows)} manifest rows could not be '
        "scored, by the pipeline stage that failed and the kind of failure (from the errors table).</p>"
        f"{error_bars_svg(data.errors)}<table><tr><th>stage</th><th>error_type</th><th class='num'>rows</th>{before}"
        f"<th>example message</th></tr>{body}</table>{more}</section>"
    )


def _clip(text, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(data: ReportData) -> str:
    """The whole page, as one string."""
    n = len(data.top)
    comparing = data.comparison is not None
    if data.bottom:
        top_title, bottom = f"Top {n}", _gallery(
            f"Bottom {len(data.bottom)}", "The lowest mean scores of the night, worst first.", data.bottom, "bottom"
        )
        top_lede = "The highest mean scores of the night, best first."
    else:
        top_title, bottom = "All scored images", ""
        top_lede = "Every scored image of the night, best first."
    summary_note = ""
    if data.summary is None:
        summary_note = '<p class="note">No runs/dt=DATE/summary.json for this night: counts come from the tables.</p>'
    elif "_problem" in data.summary:
        summary_note = f'<p class="note">summary.json could not be read: {esc(data.summary["_problem"])}</p>'
    s = data.summary if data.summary and "_problem" not in data.summary else {}
    model = s.get("model_version") or ", ".join(data.model_versions) or "—"
    meta = [
        f"<span>model <code>{esc(model)}</code></span>",
        f"<span>output <code>{esc(data.output)}</code></span>",
        f"<span>compared with {esc(data.comparison.previous_date)}</span>" if comparing else "<span>no earlier night</span>",
        f"<span>generated {esc(data.generated_at)}</span>",
    ]
    sections = [
        _cards(data),
        summary_note,
        _distribution(data),
        _gallery(top_title, top_lede, data.top, "top"),
        bottom,
        *[_kept_section(c, comparing) for c in data.kept_columns],
        _comparison_section(data),
        _errors_section(data),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Aesthetics report {esc(data.run_date)}</title><style>{_CSS}</style></head><body>"
        f'<header><div class="wrap"><h1>Image aesthetics · {esc(data.run_date)}</h1>'
        f'<div class="meta">{"".join(meta)}</div></div></header>'
        f'<main class="wrap">{"".join(sections)}</main>'
        f'<footer class="wrap">Made by <code>aisthetics report</code> in {data.elapsed_s:.1f} s from the Parquet '
        "tables of this output. Self-contained: no scripts and no external resources.</footer>"
        "</body></html>\n"
    )
