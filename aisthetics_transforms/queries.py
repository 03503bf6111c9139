"""Example analyst queries over the output tables, in DuckDB, as tested code.

The README shows each query reading the Hive-partitioned Parquet files directly:

    read_parquet('OUT/scores/*/*.parquet', hive_partitioning = true, union_by_name = true)

``hive_partitioning`` adds the ``dt`` column (a DATE) from the ``dt=YYYY-MM-DD`` folder
names, and filters on it skip whole partitions. ``union_by_name`` lets nights with
different kept columns (or written by an older version, without ``reused``) be read
together: a column a night does not have reads as NULL.

The functions here run the same SQL on the published nights only (:func:`table`): for
each date with a summary.json, the files of the run it names, with ``dt`` taken from that
date, so a publish in progress or one that died adds nothing, and a ``dt=`` inside the
output path itself cannot confuse the date.

The SQL texts (:data:`EXAMPLES`) are what the README shows; ``OUT`` stands for the
pipeline's ``--output`` and ``$night``, ``$before``, ``$after``, ``$n`` are parameters.
The functions run them and return plain rows (lists of dicts)::

    from aisthetics_transforms import queries
    queries.worst_images("out", "2026-11-28", n=20)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import duckdb

from aisthetics_transforms import layout

Day = str | dt.date

EXAMPLES = {
    # How the scores are distributed, night by night.
    "distribution_per_night": """
SELECT dt,
       count(*)                                 AS images,
       round(avg(mean_score), 3)                AS mean,
       round(quantile_cont(mean_score, 0.1), 3) AS p10,
       round(median(mean_score), 3)             AS median,
       round(quantile_cont(mean_score, 0.9), 3) AS p90
FROM {scores}
GROUP BY dt
ORDER BY dt""",
    # The same as a histogram: images per half-point bucket of mean_score, per night.
    "histogram_per_night": """
SELECT dt, floor(mean_score * 2) / 2 AS bucket, count(*) AS images
FROM {scores}
GROUP BY ALL
ORDER BY dt, bucket""",
    # One night, per value of a kept column (here `category`).
    "per_column": """
SELECT {column},
       count(*)                     AS images,
       round(avg(mean_score), 3)    AS mean,
       round(median(mean_score), 3) AS median,
       round(min(mean_score), 3)    AS worst,
       round(max(mean_score), 3)    AS best
FROM {scores}
WHERE dt = $night
GROUP BY ALL
ORDER BY mean DESC""",
    # The N lowest-scoring images of one night.
    "worst_images": """
SELECT image_id, uri, mean_score, sd_score
FROM {scores}
WHERE dt = $night
ORDER BY mean_score, image_id
LIMIT $n""",
    # Images whose score moved most between two nights, and whether their bytes changed.
    "biggest_movers": """
WITH scores AS (FROM {scores})
SELECT image_id,
       b.mean_score                         AS before,
       a.mean_score                         AS after,
       a.mean_score - b.mean_score          AS delta,
       a.content_sha256 <> b.content_sha256 AS content_changed
FROM scores AS a JOIN scores AS b USING (image_id)
WHERE a.dt = $after AND b.dt = $before
ORDER BY abs(delta) DESC, image_id
LIMIT $n""",
    # What failed, where, per night.
    "errors_by_stage_and_type": """
SELECT dt, stage, error_type, count(*) AS errors
FROM {errors}
GROUP BY ALL
ORDER BY dt, errors DESC, stage, error_type""",
    # The run summaries as a table.
    "runs": """
SELECT dt, rows, scored, reused, deduplicated, errors, model_version
FROM {runs}
ORDER BY dt""",
}
SUMMARY_COLUMNS = (
    "{rows: 'BIGINT', scored: 'BIGINT', reused: 'BIGINT', deduplicated: 'BIGINT', errors: 'BIGINT', "
    "model_version: 'VARCHAR'}"
)


def sql_literal(text: str) -> str:
    """``text`` as a single-quoted SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier (kept columns are user-named)."""
    return '"' + str(name).replace('"', '""') + '"'


def files_relation(files: Sequence[str]) -> str:
    """``read_parquet(...)`` of exactly these Parquet files (a published night's, from
    ``layout.night_files``): columns by name, so files with different kept columns read
    together; no ``dt`` from the paths, which readers of one night take from the summary."""
    listed = ", ".join(sql_literal(f) for f in files)
    return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"


def glob_table(output: str, name: str) -> str:
    """``read_parquet(...)`` of every file of table ``name`` (scores, errors or runs), as
    the README shows it: every ``dt=`` folder, whatever is published."""
    out = str(output).rstrip("/")
    if name == "runs":
        pattern = sql_literal(f"{out}/runs/*/summary.json")
        return f"read_json({pattern}, hive_partitioning = true, columns = {SUMMARY_COLUMNS})"
    return f"read_parquet({sql_literal(f'{out}/{name}/*/*.parquet')}, hive_partitioning = true, union_by_name = true)"


def table(output: str, name: str) -> str:
    """The published nights of table ``name`` (scores, errors or runs) under ``output`` as
    one relation with a ``dt`` DATE column: per date with a summary, the files of the run it
    names. A filter on ``dt`` still reads only that night's files."""
    output = str(output).rstrip("/")
    nights = []
    for day in layout.published_dates(output):
        if name == "runs":
            path = sql_literal(layout.summary_path(output, day))
            source = f"read_json([{path}], hive_partitioning = false, columns = {SUMMARY_COLUMNS})"
        else:
            files = layout.night_files(output, name, day)
            if not files:
                continue
            source = files_relation(files)
        nights.append(f"SELECT *, DATE {sql_literal(day)} AS dt FROM {source}")
    if not nights:
        raise FileNotFoundError(f"no published night under {output} (no runs/dt=YYYY-MM-DD/summary.json)")
    return "(" + " UNION ALL BY NAME ".join(nights) + ")"


def example_sql(name: str, output: str, column: str = "category", published: bool = False) -> str:
    """The text of example ``name`` for the tables under ``output``: the README's form, or
    with ``published`` the form that reads published nights only (:func:`table`)."""
    text = EXAMPLES[name].strip()
    relation = table if published else glob_table
    sources = {key: relation(output, key) for key in ("scores", "errors", "runs") if f"{{{key}}}" in text}
    return text.format(**sources, column=sql_identifier(column))


def _as_date(day: Day) -> dt.date:
    return day if isinstance(day, dt.date) else dt.date.fromisoformat(day)


def run(
    name: str,
    output: str,
    params: dict | None = None,
    column: str = "category",
    con: duckdb.DuckDBPyConnection | None = None,
) -> list[dict]:
    """Run example ``name`` and return its rows as dicts."""
    con = con or duckdb.connect()
    cursor = con.execute(example_sql(name, output, column, published=True), params or {})
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def distribution_per_night(output: str, **kw) -> list[dict]:
    """Per night: images, mean, p10, median, p90 of mean_score."""
    return run("distribution_per_night", output, **kw)


def histogram_per_night(output: str, **kw) -> list[dict]:
    """Per night and half-point bucket (4.0, 4.5, ...): how many images."""
    return run("histogram_per_night", output, **kw)


def per_column(output: str, night: Day, column: str = "category", **kw) -> list[dict]:
    """One night, per value of a kept ``column``: images, mean, median, worst, best."""
    return run("per_column", output, {"night": _as_date(night)}, column=column, **kw)


def worst_images(output: str, night: Day, n: int = 10, **kw) -> list[dict]:
    """The ``n`` lowest mean scores of one night (ties by image_id)."""
    return run("worst_images", output, {"night": _as_date(night), "n": int(n)}, **kw)


def biggest_movers(output: str, before: Day, after: Day, n: int = 10, **kw) -> list[dict]:
    """Images present on both nights, by how far their mean score moved."""
    params = {"before": _as_date(before), "after": _as_date(after), "n": int(n)}
    return run("biggest_movers", output, params, **kw)


def errors_by_stage_and_type(output: str, **kw) -> list[dict]:
    """Per night, stage and error_type: how many manifest rows failed."""
    return run("errors_by_stage_and_type", output, **kw)


def runs(output: str, **kw) -> list[dict]:
    """Every night's summary.json as one row."""
    return run("runs", output, **kw)
