"""WorkPool (the thread pool of fetch, decode and score), in_global_window and batched,
without a pipeline: calls gated by events, so each order is forced, not hoped for."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from apache_beam.coders import FastPrimitivesCoder
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from aisthetics_transforms.bundles import Batch, WorkPool, batched, in_global_window
from aisthetics_transforms.records import PreviousScore, Score, UriTask

WAIT = 10  # seconds a gated call waits at most: a broken pool fails the test, never hangs it


@pytest.fixture
def pool_of():
    pools = []

    def make(threads: int, per_thread: int) -> WorkPool:
        pool = WorkPool(threads, per_thread, "test-pool")
        pool.start()
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.shutdown()


def gated(event: threading.Event, value):
    """A call that finishes only once ``event`` is set; says whether it was."""
    return value if event.wait(WAIT) else "gate never opened"


def submit_in_thread(pool: WorkPool, element, call, *args) -> tuple[threading.Thread, list]:
    """Run one ``submit`` in another thread, so a blocked one can be watched."""
    handed_back: list = []
    thread = threading.Thread(target=lambda: handed_back.extend(pool.submit(element, call, *args)), daemon=True)
    thread.start()
    return thread, handed_back


def test_a_slow_call_holds_back_none_of_the_calls_after_it(pool_of):
    pool = pool_of(threads=2, per_thread=4)
    gate = threading.Event()
    handed_back = list(pool.submit("slow", gated, gate, "slow done"))
    for i in range(6):
        handed_back += pool.submit(i, pow, i, 2)
    for pair in pool.drain():
        handed_back.append(pair)
        if len(handed_back) == 6:  # every quick call is back while the slow one still runs
            gate.set()
    assert sorted(element for element, _ in handed_back[:6]) == list(range(6)) and handed_back[-1][0] == "slow"
    assert all(future.result() == element**2 for element, future in handed_back[:6])
    assert handed_back[-1][1].result() == "slow done"


def test_at_most_threads_times_per_thread_calls_are_unfinished(pool_of):
    pool = pool_of(threads=2, per_thread=2)
    gates = [threading.Event() for _ in range(5)]
    for i in range(4):
        assert list(pool.submit(i, gated, gates[i], i)) == []  # room in the window (4): returns at once
    fifth, handed_back = submit_in_thread(pool, 4, gated, gates[4], 4)
    fifth.join(0.3)
    assert fifth.is_alive() and handed_back == []  # a fifth would overfill it: submit waits...
    gates[1].set()
    fifth.join(WAIT)
    assert not fifth.is_alive()
    assert [element for element, _ in handed_back] == [1]  # ...for the first call to finish
    for gate in gates:
        gate.set()
    rest = [element for element, _ in pool.drain()]
    assert sorted(rest) == [0, 2, 3, 4]


def test_drain_returns_every_unfinished_call_once_then_nothing(pool_of):
    pool = pool_of(threads=3, per_thread=1)
    gate = threading.Event()
    handed_back = []
    for i in range(10):
        handed_back += pool.submit(i, gated, gate, i)
        if i == 1:  # before the window (3) fills, which would wait for one of these
            gate.set()
    handed_back += pool.drain()
    assert sorted(element for element, _ in handed_back) == list(range(10))
    assert all(future.result() == element for element, future in handed_back)
    assert list(pool.drain()) == []


def test_a_call_that_raises_comes_back_with_its_exception_and_spoils_nothing(pool_of):
    pool = pool_of(threads=2, per_thread=2)

    def parse(text: str) -> int:
        return int(text)

    handed_back = []
    for text in ("1", "two", "3"):
        handed_back += pool.submit(text, parse, text)
    handed_back += pool.drain()
    outcomes = {element: future.exception() or future.result() for element, future in handed_back}
    assert outcomes["1"] == 1 and outcomes["3"] == 3
    assert isinstance(outcomes["two"], ValueError) and "two" in str(outcomes["two"])
    # The pool goes on working.
    assert [future.result() for _, future in [*pool.submit("4", parse, "4"), *pool.drain()]] == [4]


def test_a_new_bundle_never_sees_the_calls_of_one_that_failed(pool_of):
    pool = pool_of(threads=2, per_thread=2)
    gate = threading.Event()
    list(pool.submit("from the failed bundle", gated, gate, "late"))
    pool.start()  # the bundle failed before its drain; Beam starts another
    gate.set()
    handed_back = [*pool.submit("new", pow, 2, 3), *pool.drain()]
    assert [(element, future.result()) for element, future in handed_back] == [("new", 8)]


def test_in_global_window_windows_plain_and_tagged_outputs():
    outputs = list(in_global_window(["plain", TaggedOutput("errors", {"row": 1})]))
    plain, tagged = outputs
    assert isinstance(plain, WindowedValue)
    assert (plain.value, plain.windows) == ("plain", (GlobalWindow(),))
    assert isinstance(tagged, TaggedOutput) and tagged.tag == "errors"
    assert isinstance(tagged.value, WindowedValue)
    assert (tagged.value.value, tagged.value.windows) == ({"row": 1}, (GlobalWindow(),))
    assert list(in_global_window([])) == []


def test_batched_keeps_every_item_in_order_in_batches_of_at_most_size():
    batches = list(batched(range(130), 64))
    assert [len(b) for b in batches] == [64, 64, 2]
    assert [i for b in batches for i in b] == list(range(130))
    assert all(isinstance(b, Batch) for b in batches)
    assert list(batched([], 64)) == []


def test_a_batch_crosses_beams_default_coder_as_one_pickle():
    """The coder Beam gives an untyped PCollection encodes a plain list item by item,
    pickling every record alone; a Batch is pickled once, class paths written once."""
    score = Score(5.5, 1.5, tuple(0.1 for _ in range(10)), "nima-mobilenet", datetime(2026, 11, 1, tzinfo=UTC))
    earlier = PreviousScore("ab" * 32, "1764547200:4411", score)  # what an incremental night carries
    tasks = [UriTask(f"gs://catalog/listings/{i:08d}/photo-1.jpg", (i % 7, 12), earlier) for i in range(64)]
    coder = FastPrimitivesCoder()
    as_list, as_batch = coder.encode(tasks), coder.encode(Batch(tasks))
    assert len(as_batch) * 3 < len(as_list)
    decoded = coder.decode(as_batch)
    assert isinstance(decoded, Batch) and decoded == tasks


_pickled_items = []


class _Counted:
    """A record that counts how often it is pickled."""

    def __init__(self, n: int):
        self.n = n

    def __reduce__(self):
        _pickled_items.append(self.n)
        return _Counted, (self.n,)

    def __eq__(self, other):
        return isinstance(other, _Counted) and other.n == self.n


def test_a_batch_and_what_it_decodes_to_pickle_their_items_once():
    """Beam encodes an element at each step of a fused chain to measure it: the items of a
    Batch, emitted or received and passed on, are pickled once."""
    coder = FastPrimitivesCoder()
    _pickled_items.clear()
    batch = Batch(_Counted(i) for i in range(3))
    first = coder.encode(batch)
    assert coder.encode(batch) == first and coder.estimate_size(batch) == len(first)
    decoded = coder.decode(first)
    assert coder.encode(decoded) == first
    assert _pickled_items == [0, 1, 2]
    assert decoded == batch and isinstance(decoded, Batch)
