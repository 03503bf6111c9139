"""Helpers for DoFns that hold elements across ``process`` calls and emit the rest in
``finish_bundle`` (fetch's and decode's thread pools, score's inference thread)."""

from __future__ import annotations

import itertools
import pickle
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Generic, Iterable, Iterator, Tuple, TypeVar

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


T = TypeVar("T")


class Batch(list):
    """A list of records that crosses a shuffle as one pickle. Beam's default coder encodes a
    plain list item by item and pickles each item that is no primitive (our NamedTuples) on
    its own, class path and all: several times the time and the bytes (docs/performance.md).

    The pickle is made once per Batch and kept: Beam also encodes an element to measure it,
    at every step of a fused chain (a Reshuffle alone has three), and a Batch, like every
    element once emitted, is never changed."""

    _pickled: bytes | None = None

    def __reduce__(self):
        if self._pickled is None:
            self._pickled = pickle.dumps(list(self), pickle.HIGHEST_PROTOCOL)
        return _unpickled_batch, (self._pickled,)


def _unpickled_batch(pickled: bytes) -> Batch:
    batch = Batch(pickle.loads(pickled))
    batch._pickled = pickled  # an input is never changed either: passed on, it costs no pickle
    return batch


def batched(items: Iterable[T], size: int) -> Iterator[Batch]:
    """``items`` in Batches of up to ``size``: per-uri work crosses a shuffle as a few thousand
    lists rather than millions of elements, each of which costs the runner and the wire
    more than the few hundred bytes it holds."""
    items = iter(items)
    while batch := Batch(itertools.islice(items, size)):
        yield batch


def completed(call: Callable, *args) -> Future:
    """``call(*args)`` run here, as a finished Future (its result or its exception): for work
    too quick to hand to a pool thread, given to the same code that reads the pool's."""
    future: Future = Future()
    try:
        future.set_result(call(*args))
    except Exception as exc:  # delivered through the Future, as the pool delivers it
        future.set_exception(exc)
    return future


class WorkPool(Generic[T]):
    """Runs one call per element on ``threads`` threads and hands back ``(element, future)``
    pairs as the calls finish, not in input order, so one slow call (a dead host) holds
    one thread, never the others' results. At most ``threads * per_thread`` calls are
    unfinished at a time; the caller emits each pair's outputs on the bundle's own thread
    (Beam counters and outputs belong there).

    ``start`` begins a bundle; ``submit`` returns the pairs finished so far, first waiting
    for one when the window is full; ``drain`` returns the rest (call it from
    ``finish_bundle``)."""

    def __init__(self, threads: int, per_thread: int, name: str):
        self.threads = max(1, threads)
        self.limit = self.threads * max(1, per_thread)
        self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=name)
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._unfinished = 0

    def start(self) -> None:
        self._unfinished = 0
        self._finished = queue.SimpleQueue()  # a failed bundle's leftovers stay in the old queue

    def submit(self, element: T, call: Callable, *args) -> Iterator[Tuple[T, Future]]:
        """Run ``call(*args)`` on a pool thread; see the class doc."""
        return self.track(element, self._executor.submit(call, *args))

    def then(self, future: Future, call: Callable) -> Future:
        """A Future of ``call(future's result)`` run on a pool thread once ``future`` is done
        (its exception, if it failed): for work whose first step runs elsewhere, such as
        a read on I/O threads before the CPU work here."""
        chained: Future = Future()

        def resolve(done: Future) -> None:
            try:
                result = self._executor.submit(call, done.result())
            except Exception as exc:  # the first step failed, or the pool is shut down
                chained.set_exception(exc)
                return
            result.add_done_callback(lambda finished: _copy_outcome(finished, chained))

        future.add_done_callback(resolve)
        return chained

    def track(self, element: T, future: Future) -> Iterator[Tuple[T, Future]]:
        """Count ``future`` (however it was started) in the window, as :meth:`submit` does."""
        self._unfinished += 1
        finished = self._finished
        future.add_done_callback(lambda f: finished.put((element, f)))
        if self._unfinished > self.limit:
            yield self._next(block=True)
        while self._unfinished:
            try:
                yield self._next(block=False)
            except queue.Empty:
                return

    def drain(self) -> Iterator[Tuple[T, Future]]:
        while self._unfinished:
            yield self._next(block=True)

    def _next(self, block: bool) -> Tuple[T, Future]:
        pair = self._finished.get(block=block)
        self._unfinished -= 1
        return pair

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def _copy_outcome(source: Future, target: Future) -> None:
    exception = source.exception()
    if exception is not None:
        target.set_exception(exception)
    else:
        target.set_result(source.result())
