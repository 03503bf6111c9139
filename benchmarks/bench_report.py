"""`aisthetics report` on a catalog-sized synthetic output: wall time and peak RSS.

    python benchmarks/bench_report.py [--rows 1000000] [--runs 2] [--top 12]

Writes two nights of synthetic tables with the pipeline's exact schemas (scores with
`category` and a high-cardinality `seller` kept column, errors, summary.json) under
benchmarks/.cache/ (gitignored; reused when already there): ROWS score rows per night,
night two with 1% of the images re-scored, 2% gone and 2% new. The uris point at the first 40
JPEGs of the cached 800x600 catalog (harness.corpus) plus 5% files that do not exist, so thumbnails are fetched,
decoded and sometimes missing, as in real life.

Each run is `aisthetics report OUT --run_date=NIGHT2 --top=N` in a fresh process; the wall
time (process start to exit, imports included) and that process's peak RSS (its VmHWM)
are printed. The goal: under 30 s, with memory that does not grow with the row count
(compare sizes: --rows 100000,1000000,5000000).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from harness import CACHE, REPO
from harness.code import checkout
from harness.corpus import build_catalog
from harness.machine import machine_info
from harness.process import child_env, emit, run_timed
from harness.report import machine_line

NIGHTS = ("2026-11-27", "2026-11-28")
GOAL_S = 30.0
FILES_PER_NIGHT = 4
CATEGORIES = np.array(["shoes", "bags", "dresses", "jackets", "watches", "furniture", "toys", "bikes", "books"])
STAGES_AND_TYPES = [
    ("fetch", "NotFound"),
    ("fetch", "Timeout"),
    ("decode", "CorruptImage"),
    ("decode", "UnsupportedFormat"),
    ("manifest", "MissingUri"),
]


def _strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    return pa.array([f"{prefix}{i:0{width}d}" for i in numbers.tolist()], pa.string())


def write_night(output: Path, night: str, ids: np.ndarray, scores: np.ndarray, photos: list[str], rng) -> None:
    from aisthetics_transforms.records import errors_schema, scores_schema

    n = len(ids)
    keep = ("category", "seller")
    predictions = rng.random((n, 10), dtype=np.float32)
    predictions /= predictions.sum(axis=1, keepdims=True)
    offsets = pa.array(np.arange(0, 10 * n + 1, 10, dtype=np.int32))
    uri_pick = ids % (len(photos) + 2)  # two in every len+2 point at files that do not exist
    uris = [
        photos[k] if k < len(photos) else f"/nonexistent/catalog/{i}.jpg"
        for k, i in zip(uri_pick.tolist(), ids.tolist())
    ]
    weights = np.linspace(3, 1, len(CATEGORIES))
    columns = {
        "image_id": _strings("listing-", ids, 8),
        "uri": pa.array(uris, pa.string()),
        "mean_score": pa.array(scores),
        "sd_score": pa.array(rng.normal(1.4, 0.1, n)),
        "predictions": pa.ListArray.from_arrays(offsets, pa.array(predictions.ravel())),
        "model_version": pa.array(["nima-mobilenet-e563ad91b3d4-litert"] * n, pa.string()),
        "scored_at": pa.array(np.full(n, np.datetime64(f"{night}T03:00:00", "us")), pa.timestamp("us", tz="UTC")),
        "category": pa.array(rng.choice(CATEGORIES, n, p=weights / weights.sum()), pa.string()),
        "seller": _strings("seller-", ids % 50_000, 5),
        "content_sha256": pa.array([f"{i:064x}" for i in ids.tolist()], pa.string()),
        "source_version": pa.array(["size=1;mtime_ns=1"] * n, pa.string()),
        "reused": pa.array(rng.random(n) < 0.95),
    }
    schema = scores_schema(keep)
    for extra in schema.names:  # columns added to the schema later: nulls
        columns.setdefault(extra, pa.nulls(n, schema.field(extra).type))
    table = pa.Table.from_pydict({k: columns[k] for k in schema.names}, schema=schema)
    folder = output / "scores" / f"dt={night}"
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-n // FILES_PER_NIGHT)
    for f in range(FILES_PER_NIGHT):
        pq.write_table(
            table.slice(f * step, step),
            folder / f"part-{f:05d}-of-{FILES_PER_NIGHT:05d}.parquet",
            compression="snappy",
            row_group_size=128 * 1024,
        )

    n_errors = max(1, n // 50)
    kinds = rng.integers(0, len(STAGES_AND_TYPES), n_errors)
    errors = pa.Table.from_pydict(
        {
            "image_id": _strings("broken-", np.arange(n_errors), 8),
            "uri": _strings("/nonexistent/broken-", np.arange(n_errors), 8),
            "stage": pa.array([STAGES_AND_TYPES[k][0] for k in kinds.tolist()], pa.string()),
            "error_type": pa.array([STAGES_AND_TYPES[k][1] for k in kinds.tolist()], pa.string()),
            "error_message": pa.array([f"synthetic failure of kind {k}" for k in kinds.tolist()], pa.string()),
            "category": pa.array(rng.choice(CATEGORIES, n_errors), pa.string()),
            "seller": _strings("seller-", np.arange(n_errors) % 50_000, 5),
        },
        schema=errors_schema(keep),
    )
    folder = output / "errors" / f"dt={night}"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(errors, folder / "part-00000-of-00001.parquet")
    runs = output / "runs" / f"dt={night}"
    runs.mkdir(parents=True, exist_ok=True)
    summary = {
        "run_date": night,
        "rows": n + n_errors,
        "scored": int(n * 0.05),
        "reused": int(n * 0.95),
        "deduplicated": 0,
        "errors": n_errors,
        "model_version": "nima-mobilenet-e563ad91b3d4-litert",
        "started_at": f"{night}T03:00:00+00:00",
        "finished_at": f"{night}T04:00:00+00:00",
    }
    (runs / "summary.json").write_text(json.dumps(summary, indent=2))


def build(rows: int) -> Path:
    output = CACHE / f"report-{rows}" / "out"
    marker = output / ".complete"
    if marker.exists():
        return output
    started = time.perf_counter()
    photos = sorted(f["uri"] for f in build_catalog(40, (800, 600))["files"])
    rng = np.random.default_rng(20261128)
    ids = np.arange(rows, dtype=np.int64)
    scores = np.clip(rng.normal(5.2, 0.45, rows), 1.0, 10.0)
    write_night(output, NIGHTS[0], ids, scores, photos, rng)
    # Night two: 2% gone, 2% new, 1% re-scored with a real change.
    keep = rng.random(rows) >= 0.02
    new_ids = np.arange(rows, rows + (rows - int(keep.sum())), dtype=np.int64)
    ids2 = np.concatenate([ids[keep], new_ids])
    scores2 = np.concatenate([scores[keep], np.clip(rng.normal(5.3, 0.45, len(new_ids)), 1, 10)])
    moved = rng.random(len(ids2)) < 0.01
    scores2[moved] = np.clip(scores2[moved] + rng.normal(0, 0.8, int(moved.sum())), 1, 10)
    write_night(output, NIGHTS[1], ids2, scores2, photos, rng)
    marker.write_text("ok\n")
    print(f"wrote {rows:,} rows x 2 nights to {output} in {time.perf_counter() - started:.1f} s", flush=True)
    return output


def child(output: str, night: str, top: int) -> int:
    """The measured process: exactly `aisthetics report`, then its own peak RSS (harness.process.emit)."""
    from aisthetics_transforms import cli

    code = cli.main(["report", output, f"--run_date={night}", f"--top={top}"])
    sys.stdout.flush()
    emit({"exit_code": code})
    return code


def run_report(output: Path, top: int) -> dict:
    source = REPO
    run = run_timed(
        [sys.executable, __file__, "--child", str(output), NIGHTS[1], str(top)],
        env=child_env(source),
        cwd=source,
        log_dir=CACHE / "report-logs",
        name="report",
        sample_interval=None,
        label="aisthetics report",
    )
    path = Path(run["stdout_tail"].splitlines()[0].strip())
    return {
        "wall_s": run["process_wall_s"],
        "peak_rss_mb": run["result"]["peak_rss_mb"],
        "report": str(path),
        "report_kb": path.stat().st_size / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000", help="score rows per night; a comma list runs each")
    parser.add_argument("--runs", type=int, default=2, help="report runs per size (the first reads a cold cache)")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--child", nargs=3, metavar=("OUTPUT", "NIGHT", "TOP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]))
    checkout()
    print(f"aisthetics report benchmark: {machine_line(machine_info())}")
    failed = False
    for rows in [int(r) for r in args.rows.split(",")]:
        output = build(rows)
        for i in range(args.runs):
            r = run_report(output, args.top)
            ok = r["wall_s"] < GOAL_S
            failed |= not ok
            print(
                f"rows/night {rows:>9,}  run {i + 1}: wall {r['wall_s']:5.1f} s  "
                f"peak RSS {r['peak_rss_mb']:6.0f} MB  report {r['report_kb']:5.0f} KB  "
                f"{'OK' if ok else 'OVER'} (goal < {GOAL_S:.0f} s)",
                flush=True,
            )
    print(f"report: {r['report']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
