"""Nothing grows with the hottest key or the worst body: peak memory at 10x or 4x the hot key, side by side.

    python benchmarks/bench_hot_keys.py [--idless-rows 200000] [--content-uris 400000]
                                        [--good-images 200] [--oversize 96] [--rounds 2]
                                        [--idle-wait 20] [--commit REV] [--out FILE]

Each row is a fresh ``python -m pipeline`` (through harness.pipeline_child, which also reports the
run's Beam distributions) on the local defaults, timed from here with the peak RSS of its process
tree, in rounds (each row once per round, every other round reversed); every goal is a ratio taken
within each round, the median of the rounds.

- one uri, no ids: a manifest without an image_id column whose rows all name one photo, every row
  but one a DuplicateImageId error row: ``--idless-rows`` of them, the same rows with ids of their
  own (nothing repeated), and 10x the rows without ids. Goals: peak RSS without ids within 1.15x of
  the same rows with ids (the hot key costs what distinct rows cost), and at 10x within 1.15x
  (bounded). A tenth of the rows is shown too: below ~50,000 rows a run has not yet filled the
  buffers of its reading and writing (tables and row groups of 50,000 rows), so the step from a
  tenth is larger than any step after it.
- one content, many uris: ``--content-uris`` symbolic links to one photo (a CDN's "no photo" image
  under a million dead listings), against as many links spread over 400 photos (the same uris,
  claims and outcomes, only no hot key), and a quarter of them. Goals: peak RSS of the hot content
  within 1.15x of the spread one, and the largest element of the join back to the uris (the
  distribution ``claims_per_join_element``) about CLAIMS_PER_ELEMENT, not the number of uris. The
  quarter is shown: the local runner keeps every shuffle's records in memory, so its memory grows
  with the distinct uris of a night, hot or not (on Dataflow a shuffle is on disk).
- bodies refused part-way: ``--good-images`` photos over HTTP, then the same with ``--oversize``
  uris whose answers are TooLarge at ``--max_image_bytes`` of 8 MiB (half declare 10 GB, half stream
  12 MiB with no Content-Length), both with ``--max_bytes_in_flight`` of 32 MiB: what bodies being
  read may hold at once. Goal: peak RSS within 1.15x (a body refused part-way is freed at once;
  before, each stayed until the garbage collector ran).

Every run must leave every manifest row in exactly one table, once. Report: hot_keys.md (``--out``; ``--reference``: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import CACHE
from harness.code import checkout, code_line, source_of
from harness.corpus import build_catalog, write_manifest
from harness.machine import disturbed, wait_for_idle
from harness.pipeline_runs import accounting_problems, loopback_flags, read_summary, summary_counts
from harness.process import child_env, describe, run_timed
from harness.report import (
    add_output_options,
    finish,
    goal_line,
    goals_section,
    machine_line,
    noise_cell,
    noise_note,
    ratio_text,
)
from harness.rounds import paired, run_rounds
from harness.servers import ImageServer, OversizeServer
from harness.workers import warm_model_cache

WORK = CACHE / "hot_keys"
RUN_DATE = "2026-11-28"
GOAL_RSS = 1.15
OVERSIZE_CAP = 8 * 2**20  # --max_image_bytes of the oversize rows
STREAMED = 12 * 2**20
SPREAD = 400  # contents the "spread" row's uris share
BYTES_IN_FLIGHT = 4 * OVERSIZE_CAP  # --max_bytes_in_flight of the oversize rows: what they may add


@dataclass
class Row:
    key: str
    label: str
    manifest: Path
    ids: list[str]  # every row's image id, as the tables must hold them
    scored: int
    errors_by_stage: dict = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)


def one_uri_manifest(rows: int, photo: str, ids: bool) -> tuple[Path, list[str]]:
    """``rows`` rows naming one photo: without an image_id column (the uri is every row's id, so
    one row is scored and the others are DuplicateImageId rows), or each with an id of its own."""
    path = WORK / f"one-uri-{rows}-{'ids' if ids else 'idless'}.csv"
    if not path.exists():
        with open(path, "w") as f:
            if ids:
                f.write("image_id,uri,category\n")
                f.writelines(f"row-{i:07d},{photo},placeholder\n" for i in range(rows))
            else:
                f.write("uri,category\n")
                f.writelines(f"{photo},placeholder\n" for _ in range(rows))
    return path, [f"row-{i:07d}" for i in range(rows)] if ids else [photo] * rows


def content_manifest(uris: int, photos: list[str], key: str) -> tuple[Path, list[str]]:
    """``uris`` distinct paths (symbolic links), link i to ``photos[i % len(photos)]``, a row each."""
    links = WORK / f"links-{len(photos)}"
    links.mkdir(parents=True, exist_ok=True)
    for i in range(uris):
        link = links / f"listing-photo-{i:07d}.jpg"
        if not link.is_symlink():
            link.symlink_to(photos[i % len(photos)])
    rows = [(f"listing-{i:07d}", str(links / f"listing-photo-{i:07d}.jpg"), "listing") for i in range(uris)]
    path = WORK / f"{key}-{uris}.csv"
    write_manifest(path, rows)
    return path, [image_id for image_id, _, _ in rows]


def idless_problems(out: Path, rows: int) -> list[str]:
    """One score row and rows - 1 DuplicateImageId rows, as summary.json says."""
    import pyarrow.parquet as pq

    scores = pq.read_table(str(out / "scores" / f"dt={RUN_DATE}"), columns=["image_id"]).num_rows
    errors = pq.read_table(str(out / "errors" / f"dt={RUN_DATE}"), columns=["error_type"]).column("error_type")
    summary = read_summary(out, RUN_DATE)
    problems = []
    if (summary["rows"], summary["scored"], summary["errors"]) != (rows, 1, rows - 1):
        problems.append(f"summary rows/scored/errors {summary['rows']}/{summary['scored']}/{summary['errors']}")
    if scores != 1 or len(errors) != rows - 1 or set(errors.to_pylist()) != {"DuplicateImageId"}:
        problems.append(f"{scores} score rows and {len(errors)} error rows for {rows} rows on one uri")
    return problems


def build_rows(args, photos: list[str], server: ImageServer, oversize: OversizeServer) -> list[Row]:
    rows = []
    n = args.idless_rows
    for key, count in (("idless_tenth", n // 10), ("idless", n), ("idless_10x", 10 * n)):
        manifest, ids = one_uri_manifest(count, photos[0], ids=False)
        rows.append(Row(key, f"{count:,} rows on one uri, no ids", manifest, ids, 1, {"manifest": count - 1}))
    manifest, ids = one_uri_manifest(n, photos[0], ids=True)
    rows.append(Row("ids", f"{n:,} rows on one uri, ids of their own", manifest, ids, 1))
    n = args.content_uris
    for key, count, contents in (("content_quarter", n // 4, 1), ("content", n, 1), ("spread", n, SPREAD)):
        manifest, ids = content_manifest(count, photos[1 : 1 + contents], key)
        label = f"{count:,} uris of one content" if contents == 1 else f"{count:,} uris of {contents} contents"
        rows.append(Row(key, label, manifest, ids, contents))
    good = [(f"good-{i:04d}", server.url(p), "good") for i, p in enumerate(photos[: args.good_images])]
    bad = [(f"oversize-{i:03d}", uri, "oversize") for i, uri in enumerate(oversize.uris(args.oversize))]
    cap = [f"--max_image_bytes={OVERSIZE_CAP}", f"--max_bytes_in_flight={BYTES_IN_FLIGHT}"]
    for key, label, manifest_rows, errors in (
        ("http_base", f"{args.good_images} photos over HTTP", good, {}),
        ("http_oversize", f"the same + {args.oversize} bodies refused as TooLarge", good + bad, {"fetch": len(bad)}),
    ):
        path = WORK / f"{key}.csv"
        write_manifest(path, manifest_rows)
        ids = [r[0] for r in manifest_rows]
        rows.append(Row(key, label, path, ids, args.good_images, errors, cap))
    return rows


def run_row(row: Row, source: Path, args) -> dict:
    out = WORK / f"out-{row.key}"
    shutil.rmtree(out, ignore_errors=True)
    env = child_env(source)
    cmd = [
        sys.executable,
        "-m",
        "harness.pipeline_child",
        f"--manifest={row.manifest}",
        f"--output={out}",
        f"--run_date={RUN_DATE}",
        "--progress_seconds=0",
        *loopback_flags(source, env),
        *row.extra,
    ]
    waited = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
    print(f"  {row.label} ...", end="", file=sys.stderr, flush=True)
    run = run_timed(cmd, env=env, cwd=source, log_dir=WORK / "logs", name=row.key, timelines=False, label=row.label)
    print(f" {describe(run)}", file=sys.stderr, flush=True)
    if row.key.startswith("idless"):  # every row's id is the one uri: counted, not matched by id
        problems = idless_problems(out, len(row.ids))
    else:
        problems = accounting_problems(out, RUN_DATE, row.ids, scored=row.scored, errors_by_stage=row.errors_by_stage)
    joined = (run["result"] or {}).get("distributions", {}).get("claims_per_join_element", {})
    return {
        "key": row.key,
        "label": row.label,
        "rows": len(row.ids),
        "wall_s": run["process_wall_s"],
        "cpu_s": run["process_cpu_s"],
        "peak_rss_mb": run["tree_peak_rss_mb"],
        "other_cpu_cores": run["other_cpu_cores"],
        "steal_cores": run["steal_cores"],
        "idle_wait_s": waited,
        "largest_join_element": joined.get("max"),
        "join_elements": joined.get("count"),
        "summary": summary_counts(read_summary(out, RUN_DATE)),
        "problems": problems,
        "command": run["command"],
    }


RATIOS = {
    "idless_vs_ids": ("one uri without ids / with ids of their own: peak RSS", ("idless", "ids")),
    "idless_rss": ("one uri without ids: peak RSS, 10x the rows", ("idless_10x", "idless")),
    "content_vs_spread": ("one content / the same uris over 400 contents: peak RSS", ("content", "spread")),
    "oversize_rss": ("bodies refused as TooLarge: peak RSS, with / without", ("http_oversize", "http_base")),
}


def report(data: dict) -> str:
    rows, runs = data["rows"], data["runs"]
    lines = [
        "# Hot keys and refused bodies",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `{data['command']}` ({data['total_wall_s'] / 60:.1f} min in all). {code_line(data['code'])}",
        "",
        "| row | manifest rows | wall (s) | peak RSS (MB) | largest join element (claims) | join elements | "
        "scored / errors | peaks per round (MB) | other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for key, r in rows.items():
        s = r["summary"]
        lines.append(
            f"| {r['label']} | {r['rows']:,} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{r['largest_join_element'] if r['largest_join_element'] is not None else ''} | "
            f"{r['join_elements'] if r['join_elements'] is not None else ''} | {s['scored']} / {s['errors']:,} | "
            f"{', '.join('%.0f' % x['peak_rss_mb'] for x in runs[key])} | {noise_cell(r)} |"
        )
    lines += goals_section(data)
    return "\n".join(lines)


def goals(data: dict) -> list[str]:
    from aisthetics_transforms.contents import CLAIMS_PER_ELEMENT

    lines = []
    for name, (text, _) in RATIOS.items():
        mid, measured = ratio_text(data["ratios"][name])
        lines.append(goal_line(mid <= GOAL_RSS, f"{text} <= {GOAL_RSS:.2f}x: {measured}"))
    tenth, whole = (data["rows"][k]["peak_rss_mb"] for k in ("idless_tenth", "idless"))
    lines.append(f"INFO  one uri without ids: peak RSS from a tenth of the rows to all: {whole / tenth:.2f}x")
    quarter, whole = (data["rows"][k]["peak_rss_mb"] for k in ("content_quarter", "content"))
    lines.append(f"INFO  one content: peak RSS from a quarter of the uris to all: {whole / quarter:.2f}x")
    largest = data["rows"]["content"]["largest_join_element"] or 0
    uris = data["rows"]["content"]["rows"]
    lines.append(
        goal_line(
            largest <= 1.1 * CLAIMS_PER_ELEMENT,
            f"the join's largest element holds {largest:,} claims of one content under {uris:,} uris "
            f"(about {CLAIMS_PER_ELEMENT:,}, CLAIMS_PER_ELEMENT)",
        )
    )
    problems = [f"{r['label']}: {p}" for runs in data["runs"].values() for r in runs for p in r["problems"]]
    lines.append(goal_line(not problems, "every manifest row in exactly one table, once, in every run"))
    lines += [f"      {p}" for p in problems]
    lines += noise_note(sorted({r["label"] for runs in data["runs"].values() for r in runs if disturbed(r)}))
    return lines


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--idless-rows", type=int, default=200_000, help="rows on one uri without ids (default 200,000)"
    )
    parser.add_argument("--content-uris", type=int, default=400_000, help="uris of one content (default 400,000)")
    parser.add_argument("--good-images", type=int, default=200, help="photos of the HTTP rows (default 200)")
    parser.add_argument("--oversize", type=int, default=96, help="bodies refused as TooLarge (default 96)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each row once per round (default 2)")
    parser.add_argument("--idle-wait", type=float, default=20.0, help="wait up to this long for quiet cores")
    parser.add_argument("--commit", help="measure this commit (extracted with git archive) instead of the working tree")
    add_output_options(parser, "hot_keys.md")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    code = checkout(args.commit)
    source = source_of(code)
    WORK.mkdir(parents=True, exist_ok=True)
    warm_model_cache(WORK / "logs", source)
    photos = [f["uri"] for f in build_catalog(max(args.good_images, SPREAD + 1), (800, 600))["files"]]
    server = ImageServer.of_files(photos[: args.good_images])
    oversize = OversizeServer(STREAMED)
    try:
        rows = build_rows(args, [os.path.abspath(p) for p in photos], server, oversize)
        runs = run_rounds(
            {row.key: (lambda row=row: run_row(row, source, args)) for row in rows},
            args.rounds,
            reverse_every_other=True,
        )
    finally:
        server.close()
        oversize.close()
    pairs = {name: pair for name, (_, pair) in RATIOS.items()}
    finish(__file__, argv, args, code, started, goals, report, runs=runs, **paired(runs, "peak_rss_mb", pairs))


if __name__ == "__main__":
    main()
