"""Every number of the report, as aggregate queries in DuckDB over a night's Parquet files.

Nothing per row comes back to Python but the rows the page shows (the top, bottom and
movers), so a night of millions of rows costs the report a few scans, and DuckDB spills to
a temporary directory past its memory limit. (The analyst queries the README shows are
:mod:`aisthetics_transforms.queries`; the helpers that quote SQL and read a night's files
are theirs too.)
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tempfile
from collections.abc import Sequence

import duckdb

from aisthetics_transforms.queries import files_relation, sql_identifier, sql_literal
from aisthetics_transforms.records import errors_schema, reserved_columns, scores_schema
from aisthetics_transforms.report.data import (
    Comparison,
    Group,
    Histogram,
    KeptColumn,
    PublishedNight,
    ReportData,
    ReportError,
    Shown,
    Stats,
)

DEFAULT_MEMORY_LIMIT = "512MB"  # DuckDB's; beyond it joins and aggregates spill to disk
EXACT_PERCENTILES_UP_TO = 2_000_000  # rows in a night; above, percentiles are approximate
MAX_GROUPS = 8  # values of a kept column shown, the most frequent first
MAX_KEPT_COLUMNS = 6
MAX_ERROR_ROWS = 30
_FINITE = "mean_score IS NOT NULL AND isfinite(mean_score)"


def connect(memory_limit: str = DEFAULT_MEMORY_LIMIT) -> tuple[duckdb.DuckDBPyConnection, tempfile.TemporaryDirectory]:
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


class Night:
    """The scores and errors of one published night as DuckDB views named ``NAME_scores``
    and ``NAME_errors``; a table without files is an empty one of the pipeline's schema."""

    def __init__(self, con: duckdb.DuckDBPyConnection, night: PublishedNight, name: str):
        self.con = con
        self.run_date = night.run_date
        self.scores = f"{name}_scores"
        self.errors = f"{name}_errors"
        self.columns = self._view(self.scores, night.scores, scores_schema())
        self._view(self.errors, night.errors, errors_schema())
        self.rows_count = self.value(f"SELECT count(*) FROM {self.scores}")  # from Parquet footers
        # Exact percentiles hold every value in memory; past a few million rows a t-digest
        # (within ~0.001 of the exact value there) keeps memory flat.
        self.approximate = self.rows_count > EXACT_PERCENTILES_UP_TO
        function = "approx_quantile" if self.approximate else "quantile_cont"
        self.quantiles = f"{function}(mean_score, [0.1, 0.5, 0.9])"

    def _view(self, view: str, files: list[str], empty_schema) -> dict[str, str]:
        if files:
            self.con.execute(f"CREATE VIEW {view} AS SELECT * FROM {files_relation(files)}")
        else:
            self.con.register(view, empty_schema.empty_table())
        return {name: kind for name, kind, *_ in self.con.execute(f"DESCRIBE {view}").fetchall()}

    def one(self, sql: str, params: dict | None = None) -> tuple:
        """The row of an aggregate query without GROUP BY (it always has exactly one)."""
        row = self.con.execute(sql, params or {}).fetchone()
        assert row is not None
        return row

    def value(self, sql: str, params: dict | None = None):
        return self.one(sql, params)[0]

    def rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        return self.con.execute(sql, params or {}).fetchall()

    def kept_columns(self) -> list[str]:
        """The user's columns: every string column the pipeline does not write itself."""
        reserved = reserved_columns()
        return [n for n, kind in self.columns.items() if kind == "VARCHAR" and n not in reserved]


def _stats_columns(night: Night) -> str:
    """The columns :func:`_stats_of` reads, in its order."""
    return f"count(*), avg(mean_score), stddev_samp(mean_score), {night.quantiles}, min(mean_score), max(mean_score)"


def _stats_of(count, mean, sd, quantiles, low, high) -> Stats:
    p10, median, p90 = quantiles or (None, None, None)  # no quantiles of no rows
    return Stats(count, mean, sd, p10, median, p90, low, high)


def stats(night: Night) -> Stats:
    return _stats_of(*night.one(f"SELECT {_stats_columns(night)} FROM {night.scores} WHERE {_FINITE}"))


def choose_bins(low: float | None, high: float | None, max_bins: int = 40) -> tuple[float, float, int]:
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


def _empty(bins: tuple) -> Histogram:
    lo, width, n = bins
    return Histogram(lo, width, [0] * n)


def histograms(night: Night, bins: tuple, group: str | None = None, values: Sequence[str] = ()) -> dict:
    """{group value (or None): Histogram}; with ``group``, only for ``values``."""
    lo, width, n = bins
    key = f"coalesce({sql_identifier(group)}, '(none)')" if group else "NULL"
    where = _FINITE
    params: dict = {}
    if group:
        where += f" AND {key} IN (SELECT unnest($values))"
        params["values"] = list(values)
    bin_of = f"least(greatest(floor((mean_score - {lo!r}) / {width!r}), 0), {n - 1})::INTEGER"
    found: dict = {}
    for value, b, count in night.rows(
        f"SELECT {key}, {bin_of} AS bin, count(*) FROM {night.scores} WHERE {where} GROUP BY ALL", params
    ):
        found.setdefault(value, _empty(bins)).counts[b] += count
    return found


def kept_column(night: Night, column: str, bins: tuple, previous: Night | None) -> KeptColumn:
    key = f"coalesce({sql_identifier(column)}, '(none)')"
    # The most frequent values first; the window counts the distinct values in the same pass.
    top = night.rows(
        f"""SELECT value, n, count(*) OVER (), sum(n) OVER () FROM (
                SELECT {key} AS value, count(*) AS n FROM {night.scores} WHERE {_FINITE} GROUP BY value)
            ORDER BY n DESC, value LIMIT {MAX_GROUPS}"""
    )
    if not top:
        return KeptColumn(column, 0, [], 0)
    values = [r[0] for r in top]
    distinct, total = top[0][2], top[0][3]
    in_values = f"{_FINITE} AND {key} IN (SELECT unnest($values))"
    per_value = {
        value: _stats_of(*row)
        for value, *row in night.rows(
            f"SELECT {key} AS value, {_stats_columns(night)} FROM {night.scores} WHERE {in_values} GROUP BY value",
            {"values": values},
        )
    }
    shapes = histograms(night, bins, group=column, values=values)
    previous_means = {}
    if previous is not None and column in previous.columns:
        previous_means = dict(
            previous.rows(
                f"SELECT {key}, avg(mean_score) FROM {previous.scores} WHERE {in_values} GROUP BY ALL",
                {"values": values},
            )
        )
    groups = [Group(v, per_value[v], shapes.get(v, _empty(bins)), previous_means.get(v)) for v in values]
    return KeptColumn(column, int(distinct), groups, int(total) - sum(g.stats.count for g in groups))


def shown(night: Night, order: str, n: int, kept: Sequence[str]) -> list[Shown]:
    """The ``n`` best (``order`` DESC) or worst (ASC) images, ties by image_id."""
    extra = "".join(f", {sql_identifier(c)}" for c in kept)
    sd = "sd_score" if "sd_score" in night.columns else "NULL"  # tables written by hand may lack it
    rows = night.rows(
        f"""SELECT image_id, uri, mean_score, {sd}{extra} FROM {night.scores}
            WHERE {_FINITE} ORDER BY mean_score {order}, image_id LIMIT {int(n)}"""
    )
    return [Shown(r[0], r[1], r[2], r[3], dict(zip(kept, r[4:], strict=True))) for r in rows]


def errors(night: Night, previous: Night | None) -> tuple[list[dict], int]:
    """The most frequent (stage, error_type) pairs with an example message and the
    earlier night's count of each; and the night's error rows in all."""
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


def scored_then_failed(scored: Night, failed: Night) -> int:
    """Images scored on night ``scored`` that night ``failed`` has as error rows and did not
    score: their rows are still in that night's manifest. The errors table is the small
    side, so the query starts from it."""
    return scored.value(
        f"""SELECT count(DISTINCT e.image_id)
            FROM {failed.errors} AS e JOIN {scored.scores} AS s ON s.image_id = e.image_id
            WHERE isfinite(s.mean_score) AND NOT EXISTS (
                SELECT 1 FROM {failed.scores} AS f WHERE f.image_id = e.image_id AND isfinite(f.mean_score))"""
    )


def comparison(
    current: Night, previous: Night, bins: tuple, n: int, now: Stats, before: Stats, kept: Sequence[str] = ()
) -> Comparison:
    """Tonight against ``previous``; its movers carry tonight's uri and ``kept`` columns."""
    # image_id is unique within a night's scores (the pipeline sends duplicates to the
    # errors table), so one inner join pairs the images scored on both nights.
    extra = "".join(f", c.{sql_identifier(c)}" for c in kept)
    joined = f"""
        SELECT c.image_id, c.uri, p.mean_score AS before, c.mean_score AS after{extra}
        FROM {current.scores} AS c JOIN {previous.scores} AS p ON c.image_id = p.image_id
        WHERE isfinite(c.mean_score) AND isfinite(p.mean_score)"""
    in_both, changed, mean_change = current.one(
        f"SELECT count(*), count(*) FILTER (WHERE abs(after - before) > 1e-9), avg(after - before) FROM ({joined})"
    )
    movers = [
        Shown(r[0], r[1], r[3], before=r[2], kept=dict(zip(kept, r[4:], strict=True)))
        for r in current.rows(
            f"""SELECT * FROM ({joined}) WHERE abs(after - before) > 1e-9
                ORDER BY abs(after - before) DESC, image_id LIMIT {int(n)}"""
        )
    ]
    # An image not scored tonight is gone only when its row left the manifest; one whose
    # row is tonight's error row (its file deleted, say) is failing, not gone.
    failing = scored_then_failed(previous, current)
    recovered = scored_then_failed(current, previous)
    versions = [v for (v,) in previous.rows(f"SELECT DISTINCT model_version FROM {previous.scores} ORDER BY 1")]
    return Comparison(
        previous_date=previous.run_date,
        stats=before,
        histogram=histograms(previous, bins).get(None, _empty(bins)),
        in_both=in_both,
        added=now.count - in_both - recovered,
        removed=before.count - in_both - failing,
        failing=failing,
        recovered=recovered,
        changed=changed,
        mean_change_in_both=mean_change,
        movers=movers,
        model_versions=versions,
    )


def query(
    con: duckdb.DuckDBPyConnection, output: str, night: PublishedNight, earlier: PublishedNight | None, top: int
) -> ReportData:
    """Every number of the page, by aggregate queries on one connection."""
    current = Night(con, night, "now")
    previous = Night(con, earlier, "before") if earlier else None
    now = stats(current)
    before = stats(previous) if previous else None
    lows = [s.low for s in (now, before) if s and s.low is not None]
    highs = [s.high for s in (now, before) if s and s.high is not None]
    bins = choose_bins(min(lows) if lows else None, max(highs) if highs else None)
    kept_names = current.kept_columns()[:MAX_KEPT_COLUMNS]
    error_kinds, error_rows = errors(current, previous)
    versions = current.rows(
        f"SELECT DISTINCT model_version FROM {current.scores} WHERE model_version IS NOT NULL ORDER BY 1"
    )
    return ReportData(
        output=output,
        run_date=night.run_date,
        generated_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        summary=night.summary,
        table_rows=current.rows_count,
        approximate=current.approximate,
        model_versions=[v for (v,) in versions],
        stats=now,
        histogram=histograms(current, bins).get(None, _empty(bins)),
        kept_columns=[kept_column(current, c, bins, previous) for c in kept_names],
        top=shown(current, "DESC", top, kept_names),
        bottom=shown(current, "ASC", top, kept_names) if now.count > top else [],  # a small night is shown once
        errors=error_kinds,
        error_rows=error_rows,
        comparison=comparison(current, previous, bins, top, now, before, kept_names) if previous and before else None,
    )
