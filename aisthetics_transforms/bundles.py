"""Helpers for DoFns that hold elements across ``process`` calls and emit the rest in
``finish_bundle`` (fetch's and decode's thread pools, score's inference thread)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Tuple

from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows


def in_global_window(outputs: Iterable):
    """``finish_bundle`` has no input element to take a window from: every output,
    tagged or not, is put in the global window (the pipeline is batch)."""
    for output in outputs:
        if isinstance(output, TaggedOutput):
            yield TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
        else:
            yield GlobalWindows.windowed_value(output)


class OrderedPool:
    """Runs one call per element on a pool of ``threads`` threads and hands back
    ``(element, future)`` pairs in the order the elements came, keeping at most
    ``threads * per_thread`` of them unfinished: the caller emits each pair's outputs on
    the bundle's own thread (Beam counters and outputs belong there).

    ``start`` begins a bundle; ``submit`` returns the pairs that fell out of the window;
    ``drain`` returns the rest (call it from ``finish_bundle``)."""

    def __init__(self, threads: int, per_thread: int, name: str):
        self.threads = max(1, threads)
        self.limit = self.threads * per_thread
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=name)
        self._in_flight: deque[Tuple[object, Future]] = deque()

    def start(self) -> None:
        self._in_flight.clear()

    def submit(self, element, call: Callable, *args) -> Iterator[Tuple[object, Future]]:
        self._in_flight.append((element, self._executor.submit(call, *args)))
        while len(self._in_flight) > self.limit:
            yield self._in_flight.popleft()

    def drain(self) -> Iterator[Tuple[object, Future]]:
        while self._in_flight:
            yield self._in_flight.popleft()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
