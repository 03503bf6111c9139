"""Hash buckets: the same bucket for the same key in every process, and nothing lost or doubled."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa

from aisthetics_transforms import buckets

KEYS = ["", "a", "ab", "ba", "gs://bucket/catalog/images/000123.jpg", "é" * 40, "x" * 1000]


def test_hashes_are_the_same_in_another_process():
    code = (
        "import pyarrow as pa; from aisthetics_transforms import buckets; "
        f"print(buckets.string_hashes(pa.array({KEYS!r})).tolist())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert [int(v) for v in other.strip("[]\n").split(",")] == buckets.string_hashes(pa.array(KEYS)).tolist()


def test_hashes_depend_on_the_value_only():
    values = pa.array(KEYS)
    alone = [int(buckets.string_hashes(pa.array([key]))[0]) for key in KEYS]
    assert buckets.string_hashes(values).tolist() == alone
    assert buckets.string_hashes(values.slice(2)).tolist() == alone[2:]
    assert buckets.string_hashes(pa.chunked_array([values[:3], values[3:]])).tolist() == alone
    assert buckets.string_hashes(pa.array([None, ""])).tolist() == [alone[0], alone[0]]
    assert len(set(alone)) == len(KEYS)


def test_keys_spread_over_the_buckets():
    counts = np.bincount(
        buckets.buckets_of(pa.array([f"/images/{i:06d}.jpg" for i in range(40_000)]), 16), minlength=16
    )
    assert counts.min() > 0.9 * 40_000 / 16 and counts.max() < 1.1 * 40_000 / 16


def test_split_and_concat_keep_every_row_once():
    table = pa.table({"uri": [f"/i/{i % 37}.jpg" for i in range(1000)], "row": list(range(1000))})
    pieces = list(buckets.split_by_bucket(table, "uri", 7))
    assert len({bucket for bucket, _ in pieces}) == len(pieces)
    rows = []
    for bucket, packed in pieces:
        piece = buckets.concat([packed])
        assert set(buckets.buckets_of(piece.column("uri"), 7)) == {bucket}
        rows += piece.column("row").to_pylist()
    assert sorted(rows) == list(range(1000))
    assert buckets.concat([packed for _, packed in pieces]).num_rows == 1000
    assert buckets.concat([]) is None


def test_bucket_count_follows_the_row_count_without_a_cap():
    assert buckets.bucket_count(0) == buckets.MIN_BUCKETS
    assert buckets.bucket_count(100 * buckets.ROWS_PER_BUCKET) == 100
    assert buckets.bucket_count(100 * buckets.ROWS_PER_BUCKET + 1) == 101
    # 100 million rows: buckets keep their size instead of growing with the catalog.
    assert buckets.bucket_count(10**8) * buckets.ROWS_PER_BUCKET >= 10**8
