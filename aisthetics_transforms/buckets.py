"""Hash buckets: how tables of rows are joined and grouped in Beam without one element per row.

A join key (image_id, uri, content hash) picks one of ``n`` buckets; every table is split
by bucket, keyed by the bucket number, and a GroupByKey/CoGroupByKey brings each bucket's
pieces of every input together, where the join is done with Arrow and plain Python. The
bucket count follows the row count (:func:`bucket_count`), so a bucket, and so what one
element holds, stays about the same size however large the catalog.

The hash is computed here with numpy rather than Python's ``hash`` (salted per process)
so that every worker agrees on it. A bucket's pieces cross the shuffle as zstd-compressed
Arrow IPC (uris share long prefixes: ~8x smaller than pickled tables), which is what
the shuffle, and the local runner that holds it in memory, has to carry.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from aisthetics_transforms.bundles import in_global_window

ROWS_PER_BUCKET = 20_000  # rows one element holds at most (a few MB as Arrow), however large the catalog
MIN_BUCKETS = 4
# One pseudo-random odd 64-bit multiplier per byte position (positions past the table wrap).
_MULTIPLIERS = np.random.default_rng(20261129).integers(1, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(
    1
)


def bucket_count(rows: int) -> int:
    """Buckets for ``rows`` rows: about :data:`ROWS_PER_BUCKET` each, with no upper bound, so a
    bucket stays the same size as the catalog grows."""
    return int(max(MIN_BUCKETS, -(-int(rows) // ROWS_PER_BUCKET)))


def string_hashes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A stable 64-bit hash of each string (null hashes like the empty string)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    encoded = pc.dictionary_encode(pc.fill_null(values, ""))  # hash each distinct value once
    distinct = encoded.dictionary.cast(pa.large_binary())
    step = 8192  # keeps the per-byte temporaries in cache
    hashes = np.concatenate(
        [_hash_distinct(distinct.slice(i, step)) for i in range(0, len(distinct), step)] or [np.zeros(0, np.uint64)]
    )
    return hashes[encoded.indices.to_numpy()]


def _hash_distinct(values: pa.LargeBinaryArray) -> np.ndarray:
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
    lengths = np.diff(offsets)
    sums = np.zeros(len(values), dtype=np.uint64)
    if offsets[-1] > offsets[0]:
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
        starts = offsets[:-1] - offsets[0]
        # byte j of string i contributes byte * multiplier[position of j within string i]
        positions = np.arange(data.size, dtype=np.int64) - np.repeat(starts, lengths)
        terms = data.astype(np.uint64) * _MULTIPLIERS[positions % _MULTIPLIERS.size]
        nonempty = lengths > 0
        sums[nonempty] = np.add.reduceat(terms, starts[nonempty])
    sums ^= lengths.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    # finalise (splitmix64's mixer) so every output bit depends on every input bit
    sums ^= sums >> np.uint64(30)
    sums *= np.uint64(0xBF58476D1CE4E5B9)
    sums ^= sums >> np.uint64(27)
    sums *= np.uint64(0x94D049BB133111EB)
    sums ^= sums >> np.uint64(31)
    return sums


def buckets_of(values: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    return (string_hashes(values) % np.uint64(n)).astype(np.int64)


def bucket_of(value: str, n: int) -> int:
    return int(buckets_of(pa.array([value], pa.string()), n)[0])


# Each buffer zstd-compressed by the IPC writer, on Arrow's threads: smaller than lz4 (less
# memory growth on the local runner) and faster than compressing the whole stream in one
# call (docs/performance.md has the figures).
_PACKED = pa.ipc.IpcWriteOptions(compression="zstd")


def pack(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream with compressed buffers."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=_PACKED) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(data).read_all()


def split_table(table: pa.Table, column: str, n: int) -> Iterator[tuple[int, pa.Table]]:
    """(bucket, the rows of ``table`` whose ``column`` hashes to it), for each non-empty bucket."""
    if table.num_rows == 0:
        return
    buckets = buckets_of(table.column(column), n)
    order = np.argsort(buckets, kind="stable")
    sorted_buckets = buckets[order]
    bounds = np.flatnonzero(np.diff(sorted_buckets)) + 1
    for start, stop in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(order)]])):
        yield int(sorted_buckets[start]), table.take(order[start:stop])


def split_by_bucket(table: pa.Table, column: str, n: int) -> Iterator[tuple[int, bytes]]:
    """:func:`split_table`, each piece packed; :func:`concat` unpacks a bucket's pieces."""
    for bucket, piece in split_table(table, column, n):
        yield bucket, pack(piece)


def first_per_key(table: pa.Table, key: str) -> pa.Table:
    """One row of ``table`` per distinct ``key`` (the first: an earlier night's rows of one
    uri or content carry the same score)."""
    if table.num_rows < 2:
        return table
    codes = pc.dictionary_encode(pc.fill_null(table.column(key), "")).combine_chunks().indices.to_numpy()
    _, first = np.unique(codes, return_index=True)
    return table if len(first) == table.num_rows else table.take(np.sort(first))


def concat(pieces) -> pa.Table | None:
    """One table of a bucket's packed pieces (None when there are none)."""
    tables = [unpack(piece) for piece in pieces]
    if not tables:
        return None
    return pa.concat_tables(tables).combine_chunks() if len(tables) > 1 else tables[0]


class SplitByBucket(beam.DoFn):
    """Tables -> ``(bucket, packed rows)`` by the hash of ``column`` into ``n`` buckets (a
    side input). Pieces of one bucket from several tables of a bundle are packed together
    up to ``piece_rows`` rows, holding at most ``held_rows`` rows, so a large bucket count
    does not turn every table into thousands of tiny elements."""

    def __init__(self, column: str, piece_rows: int = 5_000, held_rows: int = 200_000):
        self.column = column
        self.piece_rows = piece_rows
        self.held_rows = held_rows

    def start_bundle(self):
        self._held: dict[int, list[pa.Table]] = defaultdict(list)
        self._rows: dict[int, int] = defaultdict(int)
        self._total = 0

    def process(self, table: pa.Table, n: int):
        for bucket, piece in split_table(table, self.column, n):
            self._held[bucket].append(piece)
            self._rows[bucket] += piece.num_rows
            self._total += piece.num_rows
            if self._rows[bucket] >= self.piece_rows:
                yield from self._flush(bucket)
        if self._total >= self.held_rows:
            for bucket in list(self._held):
                yield from self._flush(bucket)

    def finish_bundle(self):
        yield from in_global_window([out for bucket in list(self._held) for out in self._flush(bucket)])

    def _flush(self, bucket: int):
        yield bucket, pack(self._take(bucket))

    def _take(self, bucket: int) -> pa.Table:
        """The rows held for ``bucket``, in one table, no longer held."""
        pieces = self._held.pop(bucket)
        self._total -= self._rows.pop(bucket)
        return pa.concat_tables(pieces) if len(pieces) > 1 else pieces[0]
