"""The page's charts as inline SVG strings, and the colour of a score.

Colours are anchored on scores, not on a night's range, so a colour means the same on
every report. A full histogram draws its colour key as a band directly under its x axis,
one swatch per bin: the key covers exactly the scores the axis shows, and every axis
label sits on the colour its bars get.
"""

from __future__ import annotations

import itertools
import math

from aisthetics_transforms.records import STAGES
from aisthetics_transforms.report.data import Histogram
from aisthetics_transforms.report.formatting import esc, fmt_number, percent

# Dark red (poor) through amber to dark green (excellent); clamped outside 3..6.5, where
# few photos score.
_STOPS = (
    (3.0, (178, 34, 34)),
    (4.25, (230, 110, 40)),
    (5.0, (238, 190, 60)),
    (5.75, (120, 180, 90)),
    (6.5, (30, 120, 80)),
)
NO_SCORE_COLOR = "#9aa3ad"
X_TICK_STEPS = (0.1, 0.2, 0.25, 0.5, 1.0, 2.0)
MAX_X_TICKS = 11  # a full-width chart; a compact one gets 6
MAX_X_TICKS_COMPACT = 6


def score_color(score: float | None) -> str:
    if score is None or not math.isfinite(score):
        return NO_SCORE_COLOR
    if score <= _STOPS[0][0]:
        r, g, b = _STOPS[0][1]
    elif score >= _STOPS[-1][0]:
        r, g, b = _STOPS[-1][1]
    else:
        for (s0, c0), (s1, c1) in itertools.pairwise(_STOPS):
            if s0 <= score <= s1:
                t = (score - s0) / (s1 - s0)
                r, g, b = (round(a + (z - a) * t) for a, z in zip(c0, c1, strict=True))
                break
    return f"#{r:02x}{g:02x}{b:02x}"


def text_on(color: str) -> str:
    """Dark or white text, whichever reads on ``color`` (#rrggbb)."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#1b1f24" if 0.299 * r + 0.587 * g + 0.114 * b > 150 else "#ffffff"


def nice_step(span: float, ticks: int = 5) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving about ``ticks`` steps."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def score_ticks(lo: float, hi: float, max_ticks: int = MAX_X_TICKS) -> list[float]:
    """Round scores in [lo, hi] for an x axis: the finest step of :data:`X_TICK_STEPS`
    that gives at most ``max_ticks`` of them."""
    for step in X_TICK_STEPS:  # the last one covers the whole 1..10 scale in a few ticks
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 <= max_ticks:
            break
    return [round(k * step, 6) for k in range(first, last + 1)]


def tick_labels(ticks: list[float]) -> list[str]:
    """The ticks written with one number of decimals, the fewest that shows them all."""
    digits = next((d for d in range(3) if all(abs(t * 10**d - round(t * 10**d)) < 1e-6 for t in ticks)), 2)
    return [f"{t:.{digits}f}" for t in ticks]


def histogram_svg(
    hist: Histogram,
    label: str,
    previous: Histogram | None = None,
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

    def y_text(v: float) -> str:
        return f"{fmt_number(v, 1)}%" if shares else f"{int(v):,}"

    now = values(hist)
    before = values(previous) if previous is not None else []
    peak = max([*now, *before, 0.0]) or 1.0
    step = nice_step(peak, 3 if compact else 5)
    if not shares:
        step = max(1.0, math.ceil(step))
    y_max = math.ceil(peak / step - 1e-9) * step
    left = (14 if compact else 36) + 7 * len(y_text(y_max))
    right, top, bottom = (10, 10, 34) if compact else (16, 14, 60)
    plot_w, plot_h = width - left - right, height - top - bottom
    bar_w = plot_w / n
    base = top + plot_h

    def x_of(score: float) -> float:
        return left + (score - hist.lo) / hist.width * bar_w

    def y_of(v: float) -> float:
        return base - v / y_max * plot_h

    parts = [
        f'<svg class="chart{"" if compact else " full"}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{esc(label)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    tick = 0.0
    while tick <= y_max + 1e-9:
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="tick" text-anchor="end">{y_text(tick)}</text>')
        tick += step
    for i, v in enumerate(now):
        if v <= 0:
            continue
        lo, hi = hist.edges(i)
        y = y_of(v)
        count = hist.counts[i]
        parts.append(
            f'<rect class="bar" x="{x_of(lo) + 0.5:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
            f'height="{base - y:.1f}" fill="{score_color((lo + hi) / 2)}"><title>{lo:.2f}–{hi:.2f}: '
            f"{count:,} images ({percent(count, hist.total)})</title></rect>"
        )
    if previous is not None:
        points = [f"{left:.1f},{base:.1f}"]
        for i, v in enumerate(before):
            lo, hi = previous.edges(i)
            y = y_of(v)
            points += [f"{x_of(lo):.1f},{y:.1f}", f"{x_of(hi):.1f},{y:.1f}"]
        points.append(f"{left + plot_w:.1f},{base:.1f}")
        parts.append(
            f'<polyline class="previous" points="{" ".join(points)}"><title>{esc(previous_label)}</title></polyline>'
        )
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{base}" y2="{base}" class="axis"/>')
    tick_top = base
    if not compact:  # the colour key: each bin's colour, under the bars it colours
        parts.append('<g class="scale"><title>the colour of each score, as the bars above it</title>')
        for i in range(n):
            lo, hi = hist.edges(i)
            parts.append(
                f'<rect x="{x_of(lo):.2f}" y="{base + 3}" width="{bar_w:.2f}" height="8" '
                f'fill="{score_color((lo + hi) / 2)}"/>'
            )
        parts.append("</g>")
        tick_top = base + 11
    ticks = score_ticks(hist.lo, hist.hi, MAX_X_TICKS_COMPACT if compact else MAX_X_TICKS)
    for x, text in zip(ticks, tick_labels(ticks), strict=True):
        px = x_of(x)
        parts.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{tick_top}" y2="{tick_top + 4}" class="axis"/>')
        parts.append(f'<text x="{px:.1f}" y="{tick_top + 16}" class="tick x" text-anchor="middle">{text}</text>')
    if not compact:
        parts.append(
            f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" class="axis-label" text-anchor="middle">'
            "Mean aesthetic score (NIMA, 1 = poor, 10 = excellent)</text>"
        )
        y_label = "Share of the night’s images" if shares else "Images"
        parts.append(
            f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" class="axis-label" '
            f'text-anchor="middle">{y_label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def error_bars_svg(rows: list[dict], width: int = 760) -> str:
    """Horizontal bars: errors per stage, in pipeline order."""
    per_stage: dict[str, int] = {}
    for row in rows:
        per_stage[row["stage"]] = per_stage.get(row["stage"], 0) + row["count"]
    stages = [s for s in STAGES if s in per_stage] + sorted(set(per_stage) - set(STAGES))
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
