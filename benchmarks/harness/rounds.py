"""Rounds: each row once per round, the median run of each row, and ratios taken within each round.

This machine's speed drifts by 15-20% from minute to minute with nothing else running, so one run
of each row could land on a fast minute for one and a slow minute for the other. Rows compared by a
goal therefore run alternately, and the ratio is also taken within each round (paired).
"""

from __future__ import annotations

import statistics
import sys
from typing import Callable


def run_rounds(
    rows: dict[str, Callable[[], dict]], rounds: int, reverse_every_other: bool = False
) -> dict[str, list[dict]]:
    """Every row once per round, in the order given (with ``reverse_every_other``, rounds 2, 4, ...
    in reverse, so a drift within a round favours neither row of a pair); ``{row: [run of round 1, ...]}``."""
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    for i in range(rounds):
        print(f"round {i + 1} of {rounds}", file=sys.stderr, flush=True)
        order = list(rows)[::-1] if reverse_every_other and i % 2 else list(rows)
        for name in order:
            runs[name].append(rows[name]())
    return runs


def median_run(runs: list[dict], key: Callable[[dict], float]) -> dict:
    """A copy of the run with the median ``key`` (the lower middle one of an even count)."""
    return dict(sorted(runs, key=key)[(len(runs) - 1) // 2])


def within_rounds(runs: dict[str, list[dict]], value: Callable[[dict[str, dict]], float]) -> list[float]:
    """``value`` of each round, given that round's run of every row (``{row: run}``)."""
    count = min(len(r) for r in runs.values())
    return [value({name: r[i] for name, r in runs.items()}) for i in range(count)]


def paired(runs: dict[str, list[dict]], metric: str, pairs: dict[str, tuple[str, str]]) -> dict:
    """The median run of each row by ``metric``, and each named pair's ratio (first row's
    ``metric`` over the second's) within each round: ``{"rows": ..., "ratios": ...}``."""
    return {
        "rows": {key: median_run(r, key=lambda x: x[metric]) for key, r in runs.items()},
        "ratios": {
            name: within_rounds(runs, lambda r, a=a, b=b: r[a][metric] / r[b][metric]) for name, (a, b) in pairs.items()
        },
    }


def median(values: list[float]) -> float:
    return statistics.median(values)
