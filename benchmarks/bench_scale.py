"""Catalog scale on one machine: the ratios that tell whether the data flow holds at 100 million rows.

    python benchmarks/bench_scale.py [--images 600] [--rows 400000] [--skew-uris 400]
                                     [--good-images 50] [--dead-uris 300] [--busy-uris 50] [--deadline 5]
                                     [--latency 0.05] [--rounds 3] [--idle-wait 20] [--commit REV] [--out FILE]

Each row is a fresh ``python -m pipeline`` on the local defaults (in-memory FnApiRunner), timed from
here around the whole process, with the peak RSS of every process in its tree (harness.process).
The rows run in rounds, each row once per round, every other round in reverse order (harness.rounds),
and every goal is a ratio taken within each round: the goal holds when the median of those ratios does.

- files / http: 4N of the cached catalog's 800x600 JPEGs (N: ``--images``) as files on disk, then
  served over HTTP by a loopback server that holds them in memory (harness.servers), then the first N
  over HTTP. Goals: HTTP wall <= 1.25x the same 4N from disk; HTTP peak RSS at 4N <= 1.15x at N.
- skew: a ``--rows`` manifest over ``--skew-uris`` files on disk, spread evenly, then with half its
  rows on one uri and the other half spread over the rest. Goals: skewed peak RSS <= 1.10x and wall
  <= 1.15x of the even one.
- dead and busy hosts: ``--good-images`` HTTP images with ``--fetch_deadline=DEADLINE``; the same plus
  ``--dead-uris`` uris on a host (127.0.0.2) that accepts connections and never answers; the same plus
  ``--busy-uris`` uris on a host that answers 429 with ``Retry-After: 3600``. Goals: the dead host adds
  at most 3 deadlines of wall time (its breaker trips), the busy host at most 1 (each of its uris ends
  at once), and every one of their uris is a fetch error row.
- latency: N images with Dataflow's thread settings (``--decode_threads=1 --inference_threads=1``),
  as files, then over HTTP from a server that answers each request after ``--latency`` s, with 16
  connections a host (what a CDN allows), then with the default 8. Goal: HTTP wall <= 1.3x the files'
  with 16 (decode's reads run ahead of its one decoding thread). With 8 the ratio is shown: the fetch
  stage then waits N x 2 requests x latency / 8 in all (a new image is read by fetch and again by
  decode), and the stage barrier before decode leaves no CPU work to hide that behind.

Every run must leave every manifest row in exactly one table, once (summary.json and the tables'
image ids are checked; the dead uris must be fetch errors). Report: scale.md (``--out``; ``--reference``: benchmarks/results/),
raw numbers: scale.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import CACHE
from harness.code import checkout, code_line, source_of
from harness.corpus import build_catalog, catalog_summary, write_manifest
from harness.machine import NOISE_CORES, busy_elsewhere, disturbed, machine_info, wait_for_idle
from harness.pipeline_runs import accounting_problems, loopback_flags, pipeline_command, read_summary, summary_counts
from harness.process import child_env, describe, run_timed
from harness.report import (
    NOISE_EXPLAINED,
    add_output_options,
    command_line,
    goal_line,
    machine_line,
    noise_cell,
    noise_note,
    output_path,
    write_results,
)
from harness.rounds import median, median_run, run_rounds, within_rounds
from harness.servers import ImageServer, SilentHosts
from harness.workers import warm_model_cache

WORK = CACHE / "scale"
RUN_DATE = "2026-11-28"
SIZE = (800, 600)

GOAL_HTTP_RSS_4X = 1.15  # HTTP peak RSS at 4N images over N
GOAL_HTTP_VS_FILES_WALL = 1.25  # HTTP wall over the same 4N images from disk
GOAL_SKEW_RSS = 1.10  # half the rows on one uri, over the same rows spread evenly
GOAL_SKEW_WALL = 1.15
GOAL_DEAD_DEADLINES = 3.0  # extra wall of the dead host's uris, in deadlines
GOAL_BUSY_DEADLINES = 1.0  # extra wall of the uris whose host asks for an hour's quiet, in deadlines
GOAL_LATENCY_WALL = 1.3  # HTTP with latency over files, Dataflow's threads


@dataclass
class Row:
    """One way to run the pipeline, and what its run must account for."""

    key: str
    label: str
    uris: list[str]  # one per manifest row, in order; the row's image id is row-NNNNNNN by position
    categories: list[str]
    scored: int  # inferences summary.json must count
    errors_by_stage: dict = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # pipeline flags of this row only

    def manifest(self) -> dict:
        return write_manifest(
            WORK / f"manifest-{self.key}.csv", zip(image_ids(len(self.uris)), self.uris, self.categories)
        )


def image_ids(count: int) -> list[str]:
    return [f"row-{i:07d}" for i in range(count)]


def skewed_index(rows: int, uris: int) -> list[int]:
    """Half the rows (the even positions) on uri 0, the other half spread evenly over the rest."""
    return [0 if i % 2 == 0 else 1 + (i // 2) % (uris - 1) for i in range(rows)]


def with_dead(uris: list[str], dead: list[str]) -> list[str]:
    """``dead`` spread evenly through ``uris``: a dead host is met mid-catalog, not at its end."""
    out = list(uris)
    for j, uri in enumerate(dead):
        out.insert((j + 1) * len(out) // (len(dead) + 1), uri)
    return out


def build_rows(catalog: dict, server: ImageServer, far: ImageServer, dead: list, busy: list, args) -> list[Row]:
    files = catalog["files"]
    paths, cats = [f["uri"] for f in files], [f["category"] for f in files]
    n, u, g = args.images, args.skew_uris, args.good_images
    deadline = [f"--fetch_deadline={args.deadline:g}"]
    dataflow = ["--decode_threads=1", "--inference_threads=1"]
    good = [server.url(p) for p in paths[:g]]
    return [
        Row("files_4n", f"{4 * n} images, files on disk", paths[: 4 * n], cats[: 4 * n], 4 * n),
        Row("http_4n", f"{4 * n} images over HTTP", [server.url(p) for p in paths[: 4 * n]], cats[: 4 * n], 4 * n),
        Row("http_n", f"{n} images over HTTP", [server.url(p) for p in paths[:n]], cats[:n], n),
        Row(
            "even",
            f"{args.rows:,} rows over {u} uris, evenly",
            [paths[i % u] for i in range(args.rows)],
            [cats[i % u] for i in range(args.rows)],
            u,
        ),
        Row(
            "skewed",
            f"{args.rows:,} rows over {u} uris, half on one",
            [paths[i] for i in skewed_index(args.rows, u)],
            [cats[i] for i in skewed_index(args.rows, u)],
            u,
        ),
        Row(
            "http_base", f"{g} images over HTTP, --fetch_deadline={args.deadline:g}", good, cats[:g], g, extra=deadline
        ),
        Row(
            "http_dead",
            f"the same + {args.dead_uris} uris on a host that never answers",
            with_dead(good, dead),
            with_dead(cats[:g], ["never-answers"] * len(dead)),
            g,
            {"fetch": len(dead)},
            extra=deadline,
        ),
        Row(
            "http_busy",
            f"the same + {args.busy_uris} uris whose host sends Retry-After: 3600",
            with_dead(good, busy),
            with_dead(cats[:g], ["busy"] * len(busy)),
            g,
            {"fetch": len(busy)},
            extra=deadline,
        ),
        Row("files_df", f"{n} images, files, Dataflow's threads", paths[:n], cats[:n], n, extra=dataflow),
        Row(
            "http_df",
            f"{n} images over HTTP {args.latency * 1000:.0f} ms away, Dataflow's threads, 16 connections",
            [far.url(p) for p in paths[:n]],
            cats[:n],
            n,
            extra=[*dataflow, "--max_connections_per_host=16"],
        ),
        Row(
            "http_df_default",
            f"{n} images over HTTP {args.latency * 1000:.0f} ms away, Dataflow's threads, 8 connections (default)",
            [far.url(p) for p in paths[:n]],
            cats[:n],
            n,
            extra=dataflow,
        ),
    ]


def run_row(row: Row, manifest: dict, servers: list, dead: SilentHosts, source: Path, args) -> dict:
    out = WORK / f"out-{row.key}"
    shutil.rmtree(out, ignore_errors=True)
    env = child_env(source)
    cmd = pipeline_command(manifest["path"], out, RUN_DATE, *loopback_flags(source, env), *row.extra)
    waited = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
    for server in servers:
        server.reset()
    dead.reset()
    print(f"  {row.label} ...", end="", file=sys.stderr, flush=True)
    run = run_timed(
        cmd,
        env=env,
        cwd=source,
        log_dir=WORK / "logs",
        name=row.key,
        sample_interval=args.sample_interval,
        timelines=False,
        label=row.label,
    )
    snapshots = [server.snapshot() for server in servers]
    served = {key: sum(snap[key] for snap in snapshots) for key in snapshots[0]}
    dead_connections = dead.reset()
    problems = accounting_problems(
        out, RUN_DATE, image_ids(manifest["rows"]), scored=row.scored, errors_by_stage=row.errors_by_stage
    )
    result = {
        "key": row.key,
        "label": row.label,
        "rows": manifest["rows"],
        "distinct_uris": manifest["distinct_uris"],
        "command": run["command"],
        "wall_s": run["process_wall_s"],
        "cpu_s": run["process_cpu_s"],
        "peak_rss_mb": run["tree_peak_rss_mb"],
        "launcher_peak_rss_mb": run["launcher_peak_rss_mb"],
        "processes": run["processes"],
        "other_cpu_cores": run["other_cpu_cores"],
        "steal_cores": run["steal_cores"],
        "idle_wait_s": waited,
        "summary": summary_counts(read_summary(out, RUN_DATE)),
        "server": served,
        "dead_host_connections": dead_connections,
        "problems": problems,
        "log": run["log"],
    }
    print(
        f" {describe(run)}; {served['requests']} HTTP requests served"
        + (f", {dead_connections} connections to dead hosts" if dead_connections else ""),
        file=sys.stderr,
        flush=True,
    )
    for problem in problems:
        print(f"    WARNING {row.label}: {problem}", file=sys.stderr)
    return result


# --- ratios and goals ---------------------------------------------------------------------------------

# name -> (what it compares, its value from one round's runs of every row)
RATIOS = {
    "http_rss_4x": ("HTTP peak RSS, 4N images / N", lambda r: r["http_4n"]["peak_rss_mb"] / r["http_n"]["peak_rss_mb"]),
    "http_vs_files_wall": (
        "HTTP wall / the same 4N files from disk",
        lambda r: r["http_4n"]["wall_s"] / r["files_4n"]["wall_s"],
    ),
    "skew_rss": ("skewed / even manifest, peak RSS", lambda r: r["skewed"]["peak_rss_mb"] / r["even"]["peak_rss_mb"]),
    "skew_wall": ("skewed / even manifest, wall", lambda r: r["skewed"]["wall_s"] / r["even"]["wall_s"]),
    "dead_extra_s": ("wall the dead host adds (s)", lambda r: r["http_dead"]["wall_s"] - r["http_base"]["wall_s"]),
    "busy_extra_s": ("wall the busy host adds (s)", lambda r: r["http_busy"]["wall_s"] - r["http_base"]["wall_s"]),
    "latency_wall": (
        "HTTP 50 ms away / files, Dataflow's threads, 16 connections a host",
        lambda r: r["http_df"]["wall_s"] / r["files_df"]["wall_s"],
    ),
    "latency_wall_default": (
        "the same with the default 8 connections a host",
        lambda r: r["http_df_default"]["wall_s"] / r["files_df"]["wall_s"],
    ),
}


def ratios(runs: dict[str, list[dict]]) -> dict:
    return {name: within_rounds(runs, value) for name, (_, value) in RATIOS.items()}


def goal_limits(args) -> dict:
    return {
        "http_rss_4x": GOAL_HTTP_RSS_4X,
        "http_vs_files_wall": GOAL_HTTP_VS_FILES_WALL,
        "skew_rss": GOAL_SKEW_RSS,
        "skew_wall": GOAL_SKEW_WALL,
        "dead_extra_s": GOAL_DEAD_DEADLINES * args["deadline"],
        "busy_extra_s": GOAL_BUSY_DEADLINES * args["deadline"],
        "latency_wall": GOAL_LATENCY_WALL,
        "latency_wall_default": None,  # shown, not a goal: see the module doc
    }


def fmt_ratio(name: str, value: float) -> str:
    return f"{value:.1f} s" if name.endswith("_extra_s") else f"{value:.2f}x"


def goals(data: dict) -> list[str]:
    per_round, limits, args = data["ratios"], goal_limits(data["args"]), data["args"]
    n = args["images"]
    texts = {
        "http_rss_4x": f"HTTP peak RSS at {4 * n} images <= {GOAL_HTTP_RSS_4X:.2f}x at {n}",
        "http_vs_files_wall": f"HTTP wall <= {GOAL_HTTP_VS_FILES_WALL:.2f}x the same {4 * n} files from disk",
        "skew_rss": f"half of {args['rows']:,} rows on one uri: peak RSS <= {GOAL_SKEW_RSS:.2f}x the even manifest",
        "skew_wall": f"half of {args['rows']:,} rows on one uri: wall <= {GOAL_SKEW_WALL:.2f}x the even manifest",
        "dead_extra_s": f"{args['dead_uris']} uris of a dead host among {args['good_images']} images add <= "
        f"{GOAL_DEAD_DEADLINES:g} x the {args['deadline']:g} s deadline = {limits['dead_extra_s']:.1f} s",
        "busy_extra_s": f"{args['busy_uris']} uris of a host asking for an hour's quiet add <= "
        f"{GOAL_BUSY_DEADLINES:g} x the {args['deadline']:g} s deadline = {limits['busy_extra_s']:.1f} s",
        "latency_wall": f"HTTP {args['latency'] * 1000:.0f} ms away, one decode thread, 16 connections a host: "
        f"wall <= {GOAL_LATENCY_WALL:.2f}x the same {n} files",
        "latency_wall_default": f"the same with the default 8 connections a host, {n} images x 2 requests x "
        f"{args['latency'] * 1000:.0f} ms / 8 = {n * 2 * args['latency'] / 8:.1f} s of waiting no CPU work can hide",
    }
    lines = []
    for name, values in per_round.items():
        mid = median(values)
        rounds = (
            f" (median of {len(values)} rounds: {', '.join(fmt_ratio(name, v) for v in values)})"
            if len(values) > 1
            else ""
        )
        if limits[name] is None:
            lines.append(f"INFO  {texts[name]}: {fmt_ratio(name, mid)}{rounds}")
        else:
            lines.append(goal_line(mid <= limits[name], f"{texts[name]}: {fmt_ratio(name, mid)}{rounds}"))
    problems = [
        f"{r['label']} (round {i + 1}): {p}"
        for runs in data["runs"].values()
        for i, r in enumerate(runs)
        for p in r["problems"]
    ]
    lines.append(
        goal_line(
            not problems,
            "every manifest row in exactly one table, once, in every run"
            + (f": {len(problems)} problems" if problems else ""),
        )
    )
    lines += [f"      {p}" for p in problems]
    lines += noise_note(sorted({r["label"] for runs in data["runs"].values() for r in runs if disturbed(r)}))
    return lines


# --- report ------------------------------------------------------------------------------------------


def report(data: dict) -> str:
    rows, runs, c = data["rows"], data["runs"], data["catalog"]
    lines = [
        "# Catalog-scale benchmark",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `{data['command']}` ({data['total_wall_s'] / 60:.1f} min in all). {code_line(data['code'])}",
        "",
        f"Catalog: the first {c['distinct_files']} JPEGs of {c['size']} of the cached catalog (~{c['mean_jpeg_kb']:.0f} KB "
        "each, every file a different image). HTTP rows fetch them from a threaded keep-alive server on 127.0.0.1 that "
        "holds them in memory; dead hosts accept connections on 127.0.0.2, ... and never answer. Each row is a fresh "
        "`python -m pipeline` on the local defaults (in-memory FnApiRunner), timed from process start to exit, "
        f"{data['args']['rounds']} round{'s' if data['args']['rounds'] > 1 else ''}, each row once per round "
        "(every other round in reverse order).",
        "",
        "| row | manifest rows | distinct uris | wall (s) | peak RSS (MB) | inferences | errors | HTTP requests | "
        "server CPU (s) | walls per round (s) | peaks per round (MB) | other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for key, r in rows.items():
        s = r["summary"]
        lines.append(
            f"| {r['label']} | {r['rows']:,} | {r['distinct_uris']:,} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
            f"{s['scored']:,} | {s['errors']} | {r['server']['requests']:,} | {r['server']['cpu_s']:.1f} | "
            f"{', '.join('%.1f' % x['wall_s'] for x in runs[key])} | "
            f"{', '.join('%.0f' % x['peak_rss_mb'] for x in runs[key])} | {noise_cell(r)} |"
        )
    lines += [
        "",
        "- Each row shows its median run by wall time. peak RSS: each process's VmHWM in the run's tree, added up "
        f"(sampled every {data['args']['sample_interval']} s; the launcher's also exact from `wait4`); with the "
        "in-memory runner the tree is one process.",
        "- HTTP requests: what the loopback server answered during the run (a fetch per uri, and decode reads one "
        "copy of each content again); server CPU: its threads' CPU time, taken from the same 2 cores.",
        f"- {NOISE_EXPLAINED}",
        "",
        "## Ratios within each round",
        "",
        "| ratio | goal | " + " | ".join(f"round {i + 1}" for i in range(data["args"]["rounds"])) + " | median |",
        "| --- | ---: | " + " | ".join("---:" for _ in range(data["args"]["rounds"])) + " | ---: |",
    ]
    limits = goal_limits(data["args"])
    for name, values in data["ratios"].items():
        limit = "" if limits[name] is None else f"<= {fmt_ratio(name, limits[name])}"
        lines.append(
            f"| {RATIOS[name][0]} | {limit} | "
            + " | ".join(fmt_ratio(name, v) for v in values)
            + f" | {fmt_ratio(name, median(values))} |"
        )
    lines += ["", "## Goals", "", "```", *data["goal_lines"], "```", ""]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="N: images of the files / HTTP rows (default 600)")
    parser.add_argument("--rows", type=int, default=400_000, help="manifest rows of the skew rows (default 400,000)")
    parser.add_argument("--skew-uris", type=int, default=400, help="distinct uris of the skew rows (default 400)")
    parser.add_argument("--good-images", type=int, default=50, help="HTTP images of the dead-host rows (default 50)")
    parser.add_argument("--dead-uris", type=int, default=300, help="uris on a host that never answers (default 300)")
    parser.add_argument(
        "--busy-uris", type=int, default=50, help="uris on a host that says Retry-After: 3600 (default 50)"
    )
    parser.add_argument(
        "--deadline", type=float, default=5.0, help="--fetch_deadline of the dead-host rows (default 5)"
    )
    parser.add_argument(
        "--latency", type=float, default=0.05, help="seconds before each answer of the far server (default 0.05)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each row runs once per round (default 3)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for other processes to leave the cores "
        "alone (0: never wait)",
    )
    parser.add_argument("--commit", help="measure this commit (extracted with git archive) instead of the working tree")
    add_output_options(parser, "scale.md")
    args = parser.parse_args(argv)
    for name in ("images", "rows", "good_images", "dead_uris", "busy_uris", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.skew_uris < 2 or args.skew_uris > args.rows:
        parser.error("--skew-uris must be at least 2 and at most --rows")

    started = time.perf_counter()
    busy = busy_elsewhere(2.0)
    if busy > NOISE_CORES:
        print(f"warning: the machine is not idle ({busy:.2f} cores busy in other processes)", file=sys.stderr)
    code = checkout(args.commit)
    source = source_of(code)
    warm = warm_model_cache(WORK / "logs", source)
    catalog = build_catalog(max(4 * args.images, args.skew_uris, args.good_images), SIZE)
    print(
        f"catalog: {catalog['distinct_files']} files of {catalog['size']} in {catalog['directory']} "
        f"({'cached' if catalog['cached'] else 'written in %.0f s' % catalog['build_s']})",
        file=sys.stderr,
    )
    files = [f["uri"] for f in catalog["files"][: max(4 * args.images, args.good_images)]]
    server = ImageServer.of_files(files)
    far = ImageServer.of_files(files[: args.images], latency=args.latency)
    busy_paths = [f"/busy-{i}.jpg" for i in range(args.busy_uris)]
    busy = ImageServer({}, busy=busy_paths)
    dead = SilentHosts(1)
    servers = [server, far, busy]
    try:
        rows = build_rows(
            catalog, server, far, dead.uris(args.dead_uris), [busy.base_url + p for p in busy_paths], args
        )
        manifests = {row.key: row.manifest() for row in rows}
        runs = run_rounds(
            {row.key: (lambda row=row: run_row(row, manifests[row.key], servers, dead, source, args)) for row in rows},
            args.rounds,
            reverse_every_other=True,
        )
    finally:
        for each in servers:
            each.close()
        dead.close()
    data = {
        "machine": machine_info(),
        "command": command_line(__file__, argv),
        "code": code,
        "args": vars(args),
        "busy_before_start": busy,
        "warm": warm,
        "catalog": catalog_summary(catalog),
        "manifests": manifests,
        "runs": runs,
        "rows": {key: median_run(r, key=lambda x: x["wall_s"]) for key, r in runs.items()},
        "ratios": ratios(runs),
    }
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_results(output_path(args), report(data), data)


if __name__ == "__main__":
    main()
