"""What each record of the data flow costs in a shuffle, as Beam encodes it.

    python benchmarks/element_sizes.py [--uri-length 90] [--rows 20000]

Builds one realistic record of each kind that crosses a shuffle (a gs:// uri of
``--uri-length`` characters, a generation-based version, a 10-way distribution) and
encodes it with the coder Beam gives a PCollection of Python objects; row tables are
packed as the pipeline packs them (zstd Arrow IPC, ``buckets.pack``) at ``--rows`` rows.
docs/catalog-scale.md's per-stage table and shuffle estimate come from these figures.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from apache_beam.coders import coders

from aisthetics_transforms import buckets
from aisthetics_transforms.bundles import Batch
from aisthetics_transforms.records import (
    URIS_PER_ELEMENT,
    ContentClaim,
    ContentResult,
    ContentTask,
    PreviousScore,
    Score,
    UriOutcome,
    UriTask,
    scores_schema,
)


def records(uri: str) -> dict:
    sha = hashlib.sha256(uri.encode()).hexdigest()
    version, pin = "generation=1732700000123456;size=183456", "1732700000123456"
    distribution = tuple(float(v) for v in np.random.default_rng(0).dirichlet(np.ones(10)).astype(np.float32))
    score = Score(5.43, 1.41, distribution, "nima-mobilenet-e563ad91b3d4-litert", datetime.now(UTC))
    return {
        "UriTask (a new uri)": UriTask(uri, (1234,)),
        "UriTask (with the earlier night's score)": UriTask(uri, (1234,), PreviousScore(sha, version, score)),
        "claim (content_sha256, ContentClaim)": (sha, ContentClaim(uri, version, pin, (1234,))),
        "ContentTask": ContentTask(sha, ((uri, pin),)),
        "ContentResult": ContentResult(sha, score),
        "outcome (row buckets, UriOutcome)": ((1234,), UriOutcome(uri, sha, version, score, False)),
    }


def listed(uri: str) -> dict:
    """UriTasks and outcomes as they travel: Batches of URIS_PER_ELEMENT (uris differing in their last characters)."""
    uris = [uri[:-20] + f"{i:016x}.jpg" for i in range(URIS_PER_ELEMENT)]
    return {
        name: Batch(make(u) for u in uris)
        for name, make in (
            ("UriTask (a new uri)", lambda u: records(u)["UriTask (a new uri)"]),
            (
                "UriTask (with the earlier night's score)",
                lambda u: records(u)["UriTask (with the earlier night's score)"],
            ),
            ("outcome (row buckets, UriOutcome)", lambda u: records(u)["outcome (row buckets, UriOutcome)"]),
        )
    }


def tables(uri: str, rows: int) -> dict:
    uris = pa.array([uri[:-20] + f"{i:016x}.jpg" for i in range(rows)])
    scored = pa.table(
        {
            "uri": uris,
            "mean_score": np.random.default_rng(1).uniform(2, 8, rows),
            "sd_score": np.random.default_rng(2).uniform(1, 2, rows),
            "predictions": pa.array(
                list(np.random.default_rng(3).dirichlet(np.ones(10), rows).astype(np.float32)),
                scores_schema().field("predictions").type,
            ),
            "model_version": ["nima-mobilenet-e563ad91b3d4-litert"] * rows,
            "scored_at": pa.array([datetime.now(UTC)] * rows, scores_schema().field("scored_at").type),
            "content_sha256": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(rows)],
            "source_version": [f"generation={1732700000000000 + i};size={180000 + i}" for i in range(rows)],
        }
    )
    return {
        "a manifest row (image_id, uri, one kept column)": pa.table(
            {
                "image_id": [f"listing-{i:09d}" for i in range(rows)],
                "uri": uris,
                "category": [f"category-{i % 40}" for i in range(rows)],
            }
        ),
        "a uri request (uri, row bucket)": pa.table({"uri": uris, "bucket": np.full(rows, 7, np.int32)}),
        "an earlier night's row": scored,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri-length", type=int, default=90)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    prefix, name = "gs://marketplace-images/listings/", "0123456789abcdef.jpg"
    uri = prefix + "x" * max(0, args.uri_length - len(prefix) - len(name)) + name
    coder = coders.FastPrimitivesCoder()
    print(f"| record (uri of {len(uri)} characters) | bytes |\n| --- | ---: |")
    for name, record in records(uri).items():
        print(f"| {name} | {len(coder.encode(record))} |")
    for name, items in listed(uri).items():
        print(f"| {name}, per uri in a Batch of {len(items)} | {len(coder.encode(items)) / len(items):.0f} |")
    for name, table in tables(uri, args.rows).items():
        print(f"| {name}, in a packed piece of {args.rows:,} rows | {len(buckets.pack(table)) / args.rows:.1f} |")
    print()
    print(choices(uri, args.rows, coder))


def _timed(encode, repeat: int = 20) -> tuple[float, int]:
    """(best seconds of ``repeat`` calls, bytes) of ``encode()``."""
    best, size = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        size = len(encode())
        best = min(best, time.perf_counter() - start)
    return best, size


def choices(uri: str, rows: int, coder) -> str:
    """The two encodings the code chose, against what they replaced: a Batch of 64 UriTasks
    against the same tasks as a plain list, and a row piece packed per buffer with zstd
    against lz4 and against the whole stream compressed in one call."""
    tasks = listed(uri)["UriTask (with the earlier night's score)"]
    plain = list(tasks)
    lines = ["| choice | this code | instead | time | bytes |", "| --- | --- | --- | ---: | ---: |"]
    (t_batch, b_batch), (t_list, b_list) = (
        _timed(lambda: coder.encode(Batch(tasks))),
        _timed(lambda: coder.encode(plain)),
    )
    lines.append(
        f"| 64 UriTasks in a shuffle | Batch | plain list | {t_list / t_batch:.1f}x | {b_list / b_batch:.1f}x |"
    )
    table = tables(uri, rows)["a manifest row (image_id, uri, one kept column)"]

    def stream(compression) -> bytes:
        sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=compression)
        with pa.ipc.new_stream(sink, table.schema, options=options) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    t_zstd, b_zstd = _timed(lambda: stream("zstd"))
    t_lz4, b_lz4 = _timed(lambda: stream("lz4"))
    t_whole, b_whole = _timed(lambda: pa.compress(stream(None), codec="zstd", asbytes=True))
    b_plain = len(stream(None))
    lines.append(
        f"| a row piece of {rows:,} rows | zstd per buffer | lz4 per buffer | {t_lz4 / t_zstd:.1f}x | {b_lz4 / b_zstd:.2f}x |"
    )
    lines.append(
        f"| a row piece of {rows:,} rows | zstd per buffer | the whole stream in one zstd call | "
        f"{t_whole / t_zstd:.1f}x | {b_whole / b_zstd:.2f}x |"
    )
    lines.append(f"| a row piece of {rows:,} rows | zstd per buffer | no compression | | {b_plain / b_zstd:.1f}x |")
    lines.append("")
    lines.append("time and bytes of the alternative over this code's (above 1: this code is faster or smaller)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
