"""The pipeline on an http catalog: fetching one image at a time against ``--fetch_threads``.

    python benchmarks/bench_fetch.py [--images 500] [--latency-ms 30] [--rounds 2] [--out FILE]

A marketplace's images live behind a CDN or in a bucket, where each fetch mostly waits on
the network. This serves the first ``--images`` files of the cached 800x600 catalog from
memory, from a threaded HTTP server on 127.0.0.1 that answers each GET after ``--latency-ms``
(a CDN round trip; harness.servers.ImageServer), and runs ``python -m pipeline`` on a manifest
of their http uris with ``--fetch_threads=1`` and with the default, alternating, ``--rounds``
times each (process start included, in fresh processes). The server counts the most requests
it had in flight at once. Every run must score every image.

Report: benchmarks/results/fetch.md, raw numbers: fetch.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

from harness import CACHE, RESULTS
from harness.code import checkout, source_of
from harness.corpus import build_catalog, catalog_summary, write_manifest
from harness.machine import machine_info
from harness.pipeline_runs import loopback_flags, pipeline_command, read_summary
from harness.process import child_env, quietest, run_timed
from harness.report import NOISE_EXPLAINED, command_line, machine_line, write_results
from harness.rounds import run_rounds
from harness.servers import ImageServer
from harness.workers import warm_model_cache

WORK = CACHE / "fetch"
DEFAULT_OUT = RESULTS / "fetch.md"
RUN_DATE = "2026-11-28"


def run_pipeline(manifest: str, fetch_threads: int | None, server: ImageServer, images: int, source: Path) -> dict:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    env = child_env(source)
    extra = loopback_flags(source, env) + ([f"--fetch_threads={fetch_threads}"] if fetch_threads else [])
    server.reset()
    label = f"--fetch_threads={fetch_threads or 'default'}"
    run = quietest(
        lambda: run_timed(
            pipeline_command(manifest, out, RUN_DATE, *extra),
            env=env,
            cwd=source,
            log_dir=WORK / "logs",
            name=f"threads-{fetch_threads or 'default'}",
            sample_interval=None,
            label=label,
        ),
        label=label,
        idle_wait=0.0,
        retry=False,
    )
    summary = read_summary(out, RUN_DATE)
    if summary.get("scored") != images or summary.get("errors"):
        raise SystemExit(f"expected {images} scored and no errors, the summary says {summary}")
    served = server.snapshot()
    return {
        "fetch_threads": fetch_threads,
        "wall_s": run["process_wall_s"],
        "images_per_s": images / run["process_wall_s"],
        "server_requests": served["requests"],
        "most_waiting": served["most_in_flight"],
        "other_cpu_cores": run["other_cpu_cores"],
        "steal_cores": run["steal_cores"],
    }


def report(data: dict) -> str:
    lines = [
        "# Fetch benchmark: an http catalog",
        "",
        machine_line(data["machine"]) + f" Command: `{data['command']}`.",
        "",
        f"{data['images']} JPEGs of 800x600 (the cached catalog) served from memory on 127.0.0.1, each GET answered "
        f"after {data['latency_ms']:.0f} ms; `python -m pipeline` on their http uris, process start included, "
        f"alternating, {data['rounds']} rounds.",
        "",
        "| --fetch_threads | runs (s) | median s | images/s | × one at a time | most requests waiting at once | other CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = data["ways"]["1"]["median_s"]
    for way in data["ways"].values():
        runs = way["runs"]
        lines.append(
            f"| {way['label']} | {', '.join('%.1f' % r['wall_s'] for r in runs)} | {way['median_s']:.1f} | "
            f"{data['images'] / way['median_s']:.1f} | {base / way['median_s']:.1f}× | "
            f"{max(r['most_waiting'] for r in runs)} | {max(r['other_cpu_cores'] for r in runs):.2f} |"
        )
    lines += ["", f"- {NOISE_EXPLAINED}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help="images (default 500)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="the server's delay per GET (default 30)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown output; the JSON goes beside it")
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error("--images must be at least 1")

    started = time.perf_counter()
    code = checkout()
    source = source_of(code)
    catalog = build_catalog(args.images, (800, 600))
    warm_model_cache(WORK / "logs", source)
    from aisthetics_transforms.fetch import DEFAULT_FETCH_THREADS

    server = ImageServer.of_files((f["uri"] for f in catalog["files"]), latency=args.latency_ms / 1000)
    try:
        manifest = write_manifest(
            WORK / f"manifest-http-{args.images}.csv",
            ((f"listing-{i:05d}", server.url(f["uri"]), f["category"]) for i, f in enumerate(catalog["files"])),
        )["path"]
        ways = {
            "1": {"label": "1 (one at a time)", "threads": 1},
            "default": {"label": f"{DEFAULT_FETCH_THREADS} (the default)", "threads": None},
        }
        runs = run_rounds(
            {
                key: (lambda way=way: run_pipeline(manifest, way["threads"], server, args.images, source))
                for key, way in ways.items()
            },
            args.rounds,
        )
    finally:
        server.close()
    for key, way in ways.items():
        way["runs"] = runs[key]
        way["median_s"] = statistics.median(r["wall_s"] for r in way["runs"])
    data = {
        "command": command_line(__file__, argv),
        "machine": machine_info(),
        "code": code,
        "catalog": catalog_summary(catalog),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "images": args.images,
        "latency_ms": args.latency_ms,
        "rounds": args.rounds,
        "ways": ways,
        "total_wall_s": time.perf_counter() - started,
    }
    write_results(Path(args.out), report(data), data)


if __name__ == "__main__":
    main()
