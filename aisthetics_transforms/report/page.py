"""The report as one self-contained HTML page.

The page makes no request of its own: the CSS (``style.css``, package data) is inline,
charts are inline SVG, thumbnails are ``data:`` URIs, there is no script, and a
Content-Security-Policy forbids anything else. Every text from the data goes through
``esc``.
"""

from __future__ import annotations

import functools
import importlib.resources

from aisthetics_transforms import layout
from aisthetics_transforms.report.charts import error_bars_svg, histogram_svg, score_color, text_on
from aisthetics_transforms.report.data import Comparison, KeptColumn, ReportData, Shown
from aisthetics_transforms.report.formatting import (
    DASH,
    clip,
    esc,
    fmt_delta,
    fmt_int,
    fmt_number,
    fmt_score,
    percent,
)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
NO_SCORES = "No scored images"

_BROKEN_IMAGE_ICON = (
    '<svg viewBox="0 0 24 24" aria-hidden="true" xmlns="http://www.w3.org/2000/svg"><path fill="none" '
    'stroke="#9aa3ad" stroke-width="1.6" stroke-linejoin="round" d="M3 5h18v14H3z M3 16l5-5 4 4 3-3 6 6 '
    'M15 9.5a1.5 1.5 0 1 0 0.01 0"/><path stroke="#c0392b" stroke-width="1.8" d="M4 4l16 16"/></svg>'
)


@functools.cache
def stylesheet() -> str:
    return importlib.resources.files(__package__).joinpath("style.css").read_text(encoding="utf-8")


def _thumb(shown: Shown) -> str:
    t = shown.thumbnail
    if t.data_uri:
        return f'<img class="thumb" src="{esc(t.data_uri)}" alt="{esc(shown.image_id)}" title="{esc(shown.uri)}">'
    return (
        f'<div class="thumb-missing" title="{esc(shown.uri)}">{_BROKEN_IMAGE_ICON}'
        f"<span>no preview</span><span>{esc(t.problem or 'not fetched')}</span></div>"
    )


def _badge(score: float | None, css: str = "badge") -> str:
    color = score_color(score)
    return f'<span class="{css}" style="background:{color};color:{text_on(color)}">{fmt_score(score)}</span>'


def _tile(shown: Shown) -> str:
    kv = "".join(f'<div class="kv">{esc(k)}: {esc(v)}</div>' for k, v in shown.kept.items())
    sd = f'<div class="kv">sd {fmt_score(shown.sd_score)}</div>' if shown.sd_score is not None else ""
    return (
        f'<figure class="tile" style="margin:0"><div class="frame">{_thumb(shown)}{_badge(shown.mean_score)}</div>'
        f'<figcaption class="info"><div class="id">{esc(shown.image_id)}</div>{kv}{sd}</figcaption></figure>'
    )


def _gallery(title: str, lede: str, shown: list[Shown], anchor: str) -> str:
    tiles = "".join(_tile(s) for s in shown)
    return (
        f'<section id="{anchor}"><h2>{esc(title)}</h2><p class="lede">{lede}</p>'
        f'<div class="gallery">{tiles}</div></section>'
    )


def _galleries(data: ReportData) -> list[str]:
    """The best and worst images; nothing on a night with none (the distribution says so)."""
    if not data.top:
        return []
    if not data.bottom:
        return [_gallery("All scored images", "Every scored image of the night, best first.", data.top, "top")]
    return [
        _gallery(f"Top {len(data.top)}", "The highest mean scores of the night, best first.", data.top, "top"),
        _gallery(
            f"Bottom {len(data.bottom)}", "The lowest mean scores of the night, worst first.", data.bottom, "bottom"
        ),
    ]


def _card(label: str, value: str, sub: str = "", css: str = "") -> str:
    return (
        f'<div class="card {css}"><div class="label">{esc(label)}</div><div class="value">{value}</div>'
        f'<div class="sub">{sub}</div></div>'
    )


def _delta_span(delta: float | None, digits: int = 2) -> str:
    if delta is None:
        return DASH
    if round(delta, digits) == 0:
        return fmt_delta(0.0, digits)
    css, arrow = ("up", "▲") if delta > 0 else ("down", "▼")
    return f'<span class="{css}">{arrow}&#8201;{fmt_delta(delta, digits)}</span>'


def _change_span(after: float | None, before: float | None) -> str:
    return _delta_span(None if after is None or before is None else after - before)


def _from_to(before: float | None, after: float | None) -> str:
    return f"{fmt_score(before)} → {fmt_score(after)} ({_change_span(after, before)})"


def _cards(data: ReportData) -> str:
    def count(key):
        value = data.summary.get(key)
        return value if isinstance(value, (int, float)) else None

    rows = count("rows")
    errors = count("errors") if count("errors") is not None else data.error_rows
    incremental = data.summary.get("incremental_from")
    reused_sub = "unchanged since the last run"
    if isinstance(incremental, str):
        try:  # the date of the partition itself, whatever --output holds
            source = layout.split_partition(incremental)[2]
        except layout.LayoutError:
            source = incremental
        reused_sub = f"carried over from {esc(source)}"
    mean_sub = "mean of mean scores"
    if data.comparison and data.comparison.stats.mean is not None and data.stats.mean is not None:
        mean_sub = (
            f"{_change_span(data.stats.mean, data.comparison.stats.mean)} vs {esc(data.comparison.previous_date)}"
        )
    cards = [
        _card(
            "Rows",
            fmt_int(rows if rows is not None else data.table_rows + data.error_rows),
            "manifest rows in this run",
        ),
        _card("Scored", fmt_int(count("scored")), "inferred by the model this run"),
        _card("Reused", fmt_int(count("reused")), reused_sub),
        _card("Deduplicated", fmt_int(count("deduplicated")), "same bytes as another row"),
        _card("Errors", fmt_int(errors), f"{percent(errors, rows)} of rows", "bad" if errors else ""),
        _card("Mean score", fmt_score(data.stats.mean), mean_sub),
    ]
    return f'<div class="cards">{"".join(cards)}</div>'


def _chips(pairs) -> str:
    return "".join(f'<span class="stat">{esc(k)} <b>{v}</b></span>' for k, v in pairs)


def _distribution(data: ReportData) -> str:
    st = data.stats
    if not st.count:
        why = f": all {fmt_int(data.error_rows)} rows are in the errors below" if data.error_rows else ""
        return (
            f'<section id="distribution"><h2>Score distribution</h2>'
            f'<p class="empty">{NO_SCORES} on {esc(data.run_date)}{why}.</p></section>'
        )
    chips = _chips(
        (
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
        f"score scale; bins of {fmt_number(data.histogram.width)} points, each coloured by its score as the band "
        f"under the axis shows.{approx}</p>"
        f'{chart}<div class="row">{chips}</div></section>'
    )


def _kept_section(column: KeptColumn, comparing: bool) -> str:
    header = (
        "<tr><th>value</th><th class='num'>images</th><th class='num'>mean</th><th class='num'>median</th>"
        "<th class='num'>10th pct</th><th class='num'>90th pct</th>"
    )
    header += "<th class='num'>mean vs before</th></tr>" if comparing else "</tr>"
    rows, multiples = [], []
    for g in column.groups:
        st = g.stats
        delta = ""
        if comparing:
            change = "new" if g.previous_mean is None else _change_span(st.mean, g.previous_mean)
            delta = f"<td class='num'>{change}</td>"
        rows.append(
            f"<tr><td>{esc(g.value)}</td><td class='num'>{fmt_int(st.count)}</td>"
            f"<td class='num'>{_badge(st.mean, 'pill')}</td><td class='num'>{fmt_score(st.median)}</td>"
            f"<td class='num'>{fmt_score(st.p10)}</td><td class='num'>{fmt_score(st.p90)}</td>{delta}</tr>"
        )
        chart = histogram_svg(
            g.histogram, f"histogram of mean scores for {column.name} = {g.value}", width=300, height=130, compact=True
        )
        multiples.append(
            f'<div class="multiple"><h3>{esc(g.value)}</h3><div class="sub">{fmt_int(st.count)} images · '
            f"mean {fmt_score(st.mean)}</div>{chart}</div>"
        )
    more = ""
    if column.other_images:
        hidden = max(column.distinct - len(column.groups), 1)
        more = (
            f'<p class="lede" style="margin-top:8px">Plus {fmt_int(column.other_images)} images in '
            f"{fmt_int(hidden)} less frequent value{'s' if hidden > 1 else ''}, not shown.</p>"
        )
    return (
        f'<section class="kept"><h2>By {esc(column.name)}</h2>'
        f'<p class="lede">Mean scores per value of the kept column <code>{esc(column.name)}</code> '
        f"({fmt_int(column.distinct)} distinct values; the {len(column.groups)} most frequent shown), "
        f"on the same score axis as above.</p>"
        f"<table>{header}{''.join(rows)}</table>{more}<div class='multiples'>{''.join(multiples)}</div></section>"
    )


def _mover_row(m: Shown) -> str:
    kv = "".join(f'<div class="kv">{esc(k)}: {esc(v)}</div>' for k, v in m.kept.items())
    return (
        f"<tr><td style='width:84px'><div class='mini'>{_thumb(m)}</div></td>"
        f'<td><div class="id">{esc(m.image_id)}</div><div class="kv">{esc(m.uri)}</div>{kv}</td>'
        f"<td class='num'>{_badge(m.before, 'pill')}</td><td class='num'>{_badge(m.mean_score, 'pill')}</td>"
        f"<td class='num'>{_change_span(m.mean_score, m.before)}</td></tr>"
    )


def _movers(c: Comparison, run_date: str) -> str:
    if not c.movers:
        return '<p class="empty">No image present on both nights changed its score.</p>'
    return (
        f"<h2 style='margin-top:18px'>Biggest movers</h2><p class='lede'>Images scored on both nights whose mean "
        f"score moved most, with tonight's uri and kept columns.</p><table class='movers'><tr><th></th>"
        f"<th>image</th><th class='num'>{esc(c.previous_date)}</th><th class='num'>{esc(run_date)}</th>"
        f"<th class='num'>change</th></tr>{''.join(_mover_row(m) for m in c.movers)}</table>"
    )


def _comparison_section(data: ReportData) -> str:
    c = data.comparison
    if c is None:
        return (
            '<section id="change"><h2>Change since the previous night</h2>'
            '<p class="empty">No earlier night under this output: nothing to compare '
            f"{esc(data.run_date)} with.</p></section>"
        )
    now_versions, before_versions = data.model_versions, c.model_versions
    note = ""
    if now_versions and before_versions and set(now_versions) != set(before_versions):
        note = (
            f'<p class="note">The model changed: {esc(", ".join(before_versions))} on {esc(c.previous_date)}, '
            f"{esc(', '.join(now_versions))} now. Score shifts may come from the model, not the images.</p>"
        )
    chart = histogram_svg(
        data.histogram,
        f"mean score distributions of {data.run_date} and {c.previous_date}",
        previous=c.histogram,
        previous_label=c.previous_date,
        shares=True,
    )
    chips = _chips(
        (
            ("mean", _from_to(c.stats.mean, data.stats.mean)),
            ("median", _from_to(c.stats.median, data.stats.median)),
            ("in both nights", fmt_int(c.in_both)),
            ("score changed", fmt_int(c.changed)),
            ("average move of images in both", _delta_span(c.mean_change_in_both, 3)),
        )
    )
    # Where the images scored on either night went: each is in exactly one of these.
    flows = _chips(
        (
            ("new", fmt_int(c.added)),
            ("gone from the manifest", fmt_int(c.removed)),
            ("now failing", fmt_int(c.failing)),
            ("scored again", fmt_int(c.recovered)),
        )
    )
    legend = (
        f'<span class="key"><span class="swatch"></span>{esc(data.run_date)}</span>'
        f'<span class="key"><span class="dash"></span>{esc(c.previous_date)}</span>'
    )
    return (
        f'<section id="change"><h2>Change since {esc(c.previous_date)}</h2>'
        f'<p class="lede">Both nights\' distributions as shares of their images: bars for '
        f"{esc(data.run_date)}, the dashed outline for {esc(c.previous_date)}, the newest earlier night.</p>"
        f'{note}{chart}<div class="row">{legend}</div><div class="row">{chips}</div>'
        f'<div class="row flows">{flows}</div>'
        f'<p class="lede" style="margin-top:6px">New: scored tonight and in neither table of {esc(c.previous_date)}. '
        f"Gone: scored on {esc(c.previous_date)} and no longer in the manifest. Now failing: scored then, an "
        f"error row tonight. Scored again: an error row then, scored tonight.</p>{_movers(c, data.run_date)}</section>"
    )


def _errors_section(data: ReportData) -> str:
    if not data.error_rows:
        return (
            '<section id="errors"><h2>Errors</h2><p class="lede">Every manifest row of this night was scored: '
            "no errors.</p></section>"
        )
    c = data.comparison
    body = "".join(
        f"<tr><td>{esc(e['stage'])}</td><td>{esc(e['error_type'])}</td><td class='num'>{fmt_int(e['count'])}</td>"
        + (f"<td class='num'>{fmt_int(e['previous'])}</td>" if c else "")
        + f"<td class='msg'>{esc(clip(e['example'], 240))}</td></tr>"
        for e in data.errors
    )
    before = f"<th class='num'>{esc(c.previous_date)}</th>" if c else ""
    shown = sum(e["count"] for e in data.errors)
    more = (
        ""
        if shown == data.error_rows
        else f"<p class='lede'>{fmt_int(data.error_rows - shown)} more in rarer kinds.</p>"
    )
    return (
        f'<section id="errors"><h2>Errors</h2><p class="lede">{fmt_int(data.error_rows)} manifest rows could not be '
        "scored, by the pipeline stage that failed and the kind of failure (from the errors table).</p>"
        f"{error_bars_svg(data.errors)}<table><tr><th>stage</th><th>error_type</th><th class='num'>rows</th>{before}"
        f"<th>example message</th></tr>{body}</table>{more}</section>"
    )


def render(data: ReportData) -> str:
    """The whole page, as one string."""
    c = data.comparison
    model = data.summary.get("model_version") or ", ".join(data.model_versions) or DASH
    meta = [
        f"<span>model <code>{esc(model)}</code></span>",
        f"<span>output <code>{esc(data.output)}</code></span>",
        f"<span>compared with {esc(c.previous_date)}</span>" if c else "<span>no earlier night</span>",
        f"<span>generated {esc(data.generated_at)}</span>",
    ]
    sections = [
        _cards(data),
        _distribution(data),
        *_galleries(data),
        *[_kept_section(column, c is not None) for column in data.kept_columns if column.groups],
        _comparison_section(data),
        _errors_section(data),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Aesthetics report {esc(data.run_date)}</title><style>{stylesheet()}</style></head><body>"
        f'<header><div class="wrap"><h1>Image aesthetics · {esc(data.run_date)}</h1>'
        f'<div class="meta">{"".join(meta)}</div></div></header>'
        f'<main class="wrap">{"".join(sections)}</main>'
        f'<footer class="wrap">Made by <code>aisthetics report</code> in {data.elapsed_s:.1f} s from the Parquet '
        "tables of this output. Self-contained: no scripts and no external resources.</footer>"
        "</body></html>\n"
    )
