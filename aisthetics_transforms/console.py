"""What both command lines (``aisthetics`` and ``python -m pipeline``) share: exit statuses,
an exception told in one line, and leaving at once on Ctrl-C.

Cheap to import (standard library only): both import it before TensorFlow or Beam.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn

EXIT_OK = 0
EXIT_FAILED = 1  # the run failed, or (``aisthetics score``) some image could not be scored
EXIT_USAGE = 2  # a mistake in what was given, told in one line before anything is written
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


def one_line(exc: BaseException, *, with_type: bool = False, limit: int | None = None) -> str:
    """An exception's whole message on one line (newlines and runs of spaces collapsed), its
    type's name when it has none; ``with_type``: ``"OSError: ..."``; ``limit``: at most that
    many characters of the message."""
    message = " ".join(str(exc).split())[:limit]
    if not message:
        return type(exc).__name__
    return f"{type(exc).__name__}: {message}" if with_type else message


def first_line(exc: BaseException) -> str:
    """What a user is told of an error that stops a run: the first line of its message. Beam
    re-raises a worker's exception with the step and a traceback appended."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0].split(" [while running")[0]


def leave_interrupted(prog: str, detail: str = "") -> NoReturn:
    """Say ``PROG: interrupted[; detail]`` and leave with :data:`EXIT_INTERRUPTED` at once.

    Not an exception: Beam would catch it inside a DoFn and wrap it, and worker threads may
    be blocked on a slow disk or a FIFO. Both commands write their results whole at the end,
    so leaving at any point leaves nothing half-written."""
    print(f"{prog}: interrupted" + (f"; {detail}" if detail else ""), file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


def handle_interrupt(handler: Callable[..., object]) -> bool:
    """Make ``handler`` answer Ctrl-C, unless the caller chose otherwise (a shell running us
    in the background ignores SIGINT). Returns whether it did."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    signal.signal(signal.SIGINT, handler)
    return True
