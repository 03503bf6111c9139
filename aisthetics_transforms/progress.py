"""Progress of a run: one line that says what the stages are doing, and Beam counters.

Every stage counts what it does with :func:`inc`, which increments its Beam counter (what
Dataflow shows, under the namespace ``aisthetics``) and this process's :data:`TALLY`. In a
local run the stages run in the launcher's process, so :class:`Reporter` can read the tally
and print one line: updated in place on a terminal, a plain line every few seconds
otherwise (logs, CI). Rates and times are formatted by tqdm. Importing this module is
cheap (no Beam), so a command can say what it does before its slow imports.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections import Counter
from typing import Optional, TextIO

from tqdm import tqdm

from aisthetics_transforms import storage
from aisthetics_transforms.counters import (
    CONTENTS_PLANNED,
    DECODE_ERRORS,
    FETCH_ERRORS,
    FETCHED,
    MANIFEST_ERRORS,
    MANIFEST_ROWS,
    ROWS_WRITTEN,
    SCORE_ERRORS,
    SCORED,
    URIS_PLANNED,
    URIS_UNCHANGED,
)


class Tally:
    """Counts of this process, by name; safe to add to from any thread."""

    def __init__(self):
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> Counter:
        with self._lock:
            return Counter(self._counts)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()


TALLY = Tally()


def inc(counter, n: int = 1) -> None:
    """Increment a Beam counter and this process's tally of the same name."""
    counter.inc(n)
    TALLY.add(counter.metric_name.name, n)


_transient = {"width": 0}  # the status line now on the terminal, to be overwritten


def show(text: str, stream: TextIO = sys.stderr) -> None:
    """``text`` as the terminal's status line, in place of the last one; nothing elsewhere
    (logs get the progress lines of :class:`Reporter` and a command's one-line errors)."""
    if stream.isatty():
        width = shutil.get_terminal_size((120, 20)).columns - 1
        text = text[:width]
        stream.write("\r" + text.ljust(_transient["width"]))
        stream.flush()
        _transient["width"] = len(text)


def clear(stream: TextIO = sys.stderr) -> None:
    """Blank the terminal's status line, before a line that stays."""
    if _transient["width"] and stream.isatty():
        stream.write("\r" + " " * _transient["width"] + "\r")
        stream.flush()
    _transient["width"] = 0


def _n(value: int) -> str:
    return f"{value:,}"


def describe(counts: Counter, elapsed: float, rate: Optional[float] = None) -> str:
    """The progress line for ``counts`` (see :data:`TALLY`), ``elapsed`` seconds into the
    run; ``rate`` is the current phase's recent rate per second, if known."""
    rows, uris, contents = counts[MANIFEST_ROWS], counts[URIS_PLANNED], counts[CONTENTS_PLANNED]
    errors = counts[MANIFEST_ERRORS] + counts[FETCH_ERRORS] + counts[DECODE_ERRORS] + counts[SCORE_ERRORS]
    prefix, done, total, unit = _phase(counts)
    phase = tqdm.format_meter(done, total, elapsed, prefix=prefix, unit=unit, rate=rate)
    facts = [f"{_n(rows)} rows"]
    if uris:
        facts.append(f"{_n(uris)} distinct uris ({_n(counts[URIS_UNCHANGED])} unchanged)")
    if contents:
        facts.append(f"{_n(contents)} new images")
    if errors:
        facts.append(f"{_n(errors)} errors")
    return f"aisthetics: {phase} · " + ", ".join(facts)


def _phase(counts: Counter) -> tuple[str, int, Optional[int], str]:
    """(name, done, total or None, unit) of the phase the counts show the run in: the latest
    one that has begun."""
    if counts[ROWS_WRITTEN]:
        return "writing tables", counts[ROWS_WRITTEN], counts[MANIFEST_ROWS] or None, " rows"
    if counts[CONTENTS_PLANNED]:
        scored = counts[SCORED] + counts[SCORE_ERRORS] + counts[DECODE_ERRORS]
        return "scoring", scored, counts[CONTENTS_PLANNED], " images"
    if counts[URIS_PLANNED]:
        checked = counts[URIS_UNCHANGED] + counts[FETCHED] + counts[FETCH_ERRORS]
        return "checking and fetching", checked, counts[URIS_PLANNED], " uris"
    return "reading the manifest", counts[MANIFEST_ROWS], None, " rows"


class Reporter:
    """Prints :func:`describe` of :data:`TALLY` to ``stream`` while a run goes on: in place
    every ``refresh`` seconds on a terminal, else a line every ``every`` seconds (and at
    once, so a run says what it does from its first second)."""

    def __init__(self, every: float, stream: TextIO = sys.stderr, refresh: float = 0.25):
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = (refresh if self.tty else every) if every > 0 else 0  # 0: no line at all
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="aisthetics-progress", daemon=True)
        self._shown = ""  # the last plain line printed
        self._last = (0.0, 0)  # (time, count) the rate is measured from

    def start(self) -> Reporter:
        if self.interval > 0:
            self.started = time.monotonic()
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        clear(self.stream)

    def _loop(self) -> None:
        while True:
            self._show()
            if self._stop.wait(self.interval):
                return

    def _show(self) -> None:
        now = time.monotonic()
        counts = TALLY.snapshot()
        count = _phase(counts)[1]  # what the current phase advances: its rate
        then, before = self._last
        rate = (count - before) / (now - then) if then and now > then and count >= before else None
        self._last = (now, count)
        line = describe(counts, now - self.started, rate)
        if self.tty:
            show(line, self.stream)
        elif line != self._shown and any(counts.values()):  # a log gets no line that says nothing yet
            self.stream.write(line + "\n")
            self.stream.flush()
        self._shown = line


def summary_line(summary: dict, seconds: float, output: str) -> str:
    """The one line a finished run ends with: what became of every row, in the summary's own
    words (scored + deduplicated + reused + errors = rows), and where the tables are."""
    by_stage = ", ".join(f"{stage} {n:,}" for stage, n in summary.get("errors_by_stage", {}).items() if n)
    date = summary.get("run_date")
    output = storage.shown(output)
    return (
        f"aisthetics: {summary['rows']:,} rows in {seconds:.1f} s: {summary['scored']:,} scored, "
        f"{summary['deduplicated']:,} deduplicated, {summary['reused']:,} reused from an earlier night, "
        f"{summary['errors']:,} errors"
        + (f" ({by_stage})" if by_stage else "")
        + f". Tables: {output}/scores/dt={date}/, {output}/errors/dt={date}/, {output}/runs/dt={date}/summary.json"
    )
