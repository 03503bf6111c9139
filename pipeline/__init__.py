"""``python -m pipeline``: manifest -> fetch -> decode -> score -> Parquet tables.

``build.build_pipeline`` only wires the stages of ``aisthetics_transforms``; ``run.run``
parses the options, picks local defaults, and runs it; :func:`main` (here) turns every
mistake a user can make into one line on stderr and a documented exit status
(:data:`pipeline.options.EXIT_STATUS_HELP`). This module says what a run does before
Beam's slow imports, and stops at once on Ctrl-C.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time

from aisthetics_transforms import progress  # cheap: no Beam yet
from aisthetics_transforms.console import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    first_line,
    handle_interrupt,
    leave_interrupted,
)


def interrupted(signum=None, frame=None) -> None:
    """The SIGINT handler of ``python -m pipeline``: one line, exit status 130, at once. A
    night is published whole or not at all; a remote job already submitted is not this
    process, and keeps running: the line says how to stop it."""
    progress.clear()
    launched = sys.modules.get("pipeline.run")
    jobs = getattr(launched, "SUBMITTED", [])
    left = jobs[-1].left_running() if jobs else "nothing half-written (a night is published whole or not at all)"
    leave_interrupted("pipeline", left)


_started_at = None  # when the run began to say what it does


def _say_started() -> None:
    """On a terminal, say at once what the run is doing (a status line the progress line or
    an error replaces); elsewhere a mistake stays exactly one line."""
    global _started_at
    if _started_at is None:
        _started_at = time.monotonic()
        progress.show("aisthetics: starting: checking the options, the manifest and the model")


if sys.argv[:1] == ["-m"]:  # ``python -m pipeline`` is importing this package: Beam's imports take a while
    handle_interrupt(interrupted)
    # Beam's imports make hundreds of thousands of objects that live until exit; collecting
    # while they are made only walks them again and again. main() turns it back on.
    gc.disable()
    if not {"-h", "--help"} & set(sys.argv[1:]):
        _say_started()

from aisthetics_transforms.progress import summary_line  # noqa: E402
from aisthetics_transforms.publish import PublishError  # noqa: E402
from pipeline.build import build_pipeline  # noqa: E402  (after the first line and the Ctrl-C handler)
from pipeline.run import LOCAL_RUNNERS, USAGE_ERRORS, RunOutcome, run  # noqa: E402

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LOCAL_RUNNERS",
    "RunOutcome",
    "build_pipeline",
    "main",
    "run",
]


def main(argv: list[str] | None = None) -> None:
    """Run one night from the command line. Every mistake a user can make ends in one line
    on stderr and exit status 2; Ctrl-C in one line and 130 (see EXIT_STATUS_HELP)."""
    handle_interrupt(interrupted)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Local workers forward their start-up warnings (no semi-persistent directory...) here.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # A DoFn's exception is logged with its traceback before Beam re-raises it here, where it
    # reaches the user once: one line for a ManifestError, the traceback for anything else.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    # Beam's modules and the graph are hundreds of thousands of objects that live until exit:
    # frozen, the garbage collector stops walking them during the run and at interpreter exit
    # (docs/performance.md: part of a local run's fixed cost). Collecting resumes here if it was
    # paused while ``python -m pipeline`` imported them.
    gc.freeze()
    gc.enable()
    _say_started()
    try:
        outcome = run(argv)
    except USAGE_ERRORS as exc:
        progress.clear()
        print(f"pipeline: {first_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except PublishError as exc:  # superseded by a newer run, or no lock in time: one line, not a traceback
        progress.clear()
        print(f"pipeline: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if outcome.summary:
        print(json.dumps(outcome.summary, indent=2, sort_keys=True))
        seconds = time.monotonic() - (_started_at or 0.0)
        print(summary_line(outcome.summary, seconds, outcome.output), file=sys.stderr)
    gc.freeze()
