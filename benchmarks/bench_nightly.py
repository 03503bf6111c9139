"""Nightly scale run: a first night and an incremental night on the local runner.

    python benchmarks/bench_nightly.py [--rows 200000] [--small-rows 50000]
                                       [--distinct 4000] [--size 640x480] [--out FILE]
                                       [--commit REV] [--profile auto|always|never]

A catalog of ``--distinct`` JPEG files (harness.corpus: crops of the photos scikit-learn
ships, cached under benchmarks/.cache/catalogs/) and a CSV manifest of ``--rows`` rows over
them (each row its own image_id; uris drawn over the files with a fixed seed, so most rows
repeat a file) under benchmarks/.cache/nightly/. Then, for ``--small-rows`` and for ``--rows``:

- night 1: ``python -m pipeline --manifest=M --output=O --run_date=2026-11-01 --keep_columns=category``
- night 2: the same with ``--incremental --run_date=2026-11-02`` (nothing changed),

each in a fresh process on the pipeline's local default (Beam's FnApiRunner with its SDK
worker in the same process, LiteRT on every core), timed from the parent around the
whole process (harness.process.run_timed: VmHWM of every process in the run's tree sampled
every ``--sample-interval`` seconds, the launcher's own peak also exact from ``wait4``). The
two sizes side by side
show whether any process's memory grows with the row count.

If night 2 takes 10% or more of night 1's time (or with ``--profile=always``), night 2
is run once more with ``--direct_running_mode=in_memory`` under cProfile (the whole
pipeline in one process, so the profile sees the runner and the SDK side), and once
more in that mode without the profiler; the report lists the slowest stages (Beam's
per-transform execution time) and the top functions.

The report is printed and written to nightly.md (``--out``; ``--reference``: benchmarks/results/), the raw numbers to
nightly.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import CACHE, MODEL_CACHE
from harness.code import checkout, code_line, source_of
from harness.corpus import build_catalog, catalog_summary, parse_size, write_manifest
from harness.machine import NOISE_CORES, busy_elsewhere, disturbed, machine_info, wait_for_idle
from harness.pipeline_runs import read_summary
from harness.process import child_env, describe, run_timed
from harness.profiling import run_profile, stage_of, top_functions
from harness.report import (
    add_output_options,
    command_line,
    goal_line,
    machine_line,
    noise_cell,
    noise_note,
    output_path,
    write_results,
)
from harness.rounds import median_run
from harness.workers import warm_model_cache

WORK = CACHE / "nightly"

NIGHT1_DATE = "2026-11-01"
NIGHT2_DATE = "2026-11-02"
MANIFEST_SEED = 20261101

GOAL_INCREMENTAL_FRACTION = 0.10  # night 2 wall time / night 1 wall time
# Peak RSS of a process at --rows over its peak at --small-rows (4x fewer by default).
# Each process has a fixed base (interpreter, Beam, pyarrow, LiteRT: 150-400 MB) and
# bounded working buffers (bundles, 32-image batches) that wobble by some percent from
# run to run. A process holding a constant amount per row would grow by about
# (rows - small_rows) x bytes/row: 1.25x on a 300 MB process is 75 MB over 150,000 extra
# rows, i.e. it catches anything holding 0.5 KB or more per row, far less than one
# scores-table row as a Python dict (~1.5 KB).
GOAL_RSS_GROWTH = 1.25


# --- corpus --------------------------------------------------------------------------------


def night_manifest(catalog: dict, rows: int) -> dict:
    """A CSV of ``rows`` rows (image_id, uri, category): every file is used rows/distinct
    times (+-1), in an order shuffled with a fixed seed."""
    import numpy as np

    files = catalog["files"]
    index = np.arange(rows) % len(files)
    np.random.default_rng(MANIFEST_SEED).shuffle(index)
    path = WORK / f"manifest-{len(files)}-{catalog['size']}-{rows}.csv"
    return write_manifest(
        path, ((f"row-{i:07d}", files[j]["uri"], files[j]["category"]) for i, j in enumerate(index.tolist()))
    )


# --- one night ---------------------------------------------------------------------------------


def night_args(manifest: str, output: str, night: int) -> list[str]:
    args = [f"--manifest={manifest}", f"--output={output}", "--keep_columns=category"]
    if night == 1:
        return args + [f"--run_date={NIGHT1_DATE}"]
    return args + ["--incremental", f"--run_date={NIGHT2_DATE}"]


def run_night(label: str, manifest: dict, output: Path, night: int, source: Path, args) -> dict:
    cmd = [sys.executable, "-m", "pipeline", *night_args(manifest["path"], str(output), night)]
    waited = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
    name = label.replace(" (incremental)", "").replace(",", "").replace(" ", "_")
    print(f"  {label} ...", end="", file=sys.stderr, flush=True)
    run = run_timed(
        cmd,
        env=child_env(source),
        cwd=source,
        log_dir=WORK / "logs",
        name=name,
        sample_interval=args.sample_interval,
        label=label,
    )
    summary = read_summary(output, NIGHT1_DATE if night == 1 else NIGHT2_DATE)
    wall = run["process_wall_s"]
    result = {
        "label": label,
        "night": night,
        "rows": manifest["rows"],
        "command": " ".join(["python", "-m", "pipeline", *night_args(manifest["path"], str(output), night)]),
        "wall_s": wall,
        "rows_per_s": manifest["rows"] / wall,
        "cpu_s": run["process_cpu_s"],
        "summary": summary,
        "processes": run["processes"],
        "sampler": run["sampler"],
        "idle_wait_s": waited,
        "log": run["log"],
        "other_cpu_cores": run["other_cpu_cores"],
        "steal_cores": run["steal_cores"],
    }
    print(
        f" {describe(run)}; {result['rows_per_s']:.0f} rows/s, scored {summary['scored']}, reused "
        f"{summary['reused']}, dedup {summary['deduplicated']}",
        file=sys.stderr,
        flush=True,
    )
    check_summary(result, manifest)
    return result


def check_summary(result: dict, manifest: dict) -> None:
    """The counts a correct run must give; a mismatch is reported, not hidden."""
    s = result["summary"]
    problems = []
    if s["rows"] != manifest["rows"]:
        problems.append(f"rows {s['rows']} != manifest rows {manifest['rows']}")
    if s["errors"]:
        problems.append(f"{s['errors']} errors {s['errors_by_stage']}")
    if result["night"] == 1 and s["scored"] != manifest["distinct_uris"]:
        problems.append(f"scored {s['scored']} != distinct files {manifest['distinct_uris']}")
    if result["night"] == 2 and (s["scored"] or s["reused"] != manifest["rows"]):
        problems.append(f"night 2 scored {s['scored']} and reused {s['reused']} (expected 0 and {manifest['rows']})")
    result["problems"] = problems
    for p in problems:
        print(f"    WARNING {result['label']}: {p}", file=sys.stderr)


# --- memory comparison ---------------------------------------------------------------------------


def role_peaks(run: dict) -> dict:
    """The peak RSS of each kind of process in a run: launcher, largest and smallest worker."""
    workers = sorted((p["peak_rss_mb"] for p in run["processes"] if p["role"] == "worker"), reverse=True)
    launcher = next(p["peak_rss_mb"] for p in run["processes"] if p["role"] == "launcher")
    out = {"launcher": launcher}
    if workers:
        out["largest worker"] = workers[0]
        out["smallest worker"] = workers[-1]
    others = [p["peak_rss_mb"] for p in run["processes"] if p["role"] == "other"]
    if others:
        out["other processes (largest)"] = max(others)
    out["all processes (sum of peaks)"] = sum(p["peak_rss_mb"] for p in run["processes"])
    return out


def memory_growth(runs: dict) -> list[dict]:
    rows = []
    for night in (1, 2):
        small, big = runs[f"small_{night}"], runs[f"big_{night}"]
        ps, pb = role_peaks(small), role_peaks(big)
        for role in pb:
            if role in ps:
                rows.append(
                    {
                        "night": night,
                        "process": role,
                        "small_mb": ps[role],
                        "big_mb": pb[role],
                        "ratio": pb[role] / ps[role] if ps[role] else float("nan"),
                    }
                )
    return rows


def cost_model(runs: dict) -> dict:
    """wall = fixed + rows x per-row cost, through the two sizes of each night."""
    out = {}
    for night in (1, 2):
        small, big = runs[f"small_{night}"], runs[f"big_{night}"]
        extra = big["rows"] - small["rows"]
        per_row = (big["wall_s"] - small["wall_s"]) / extra
        out[str(night)] = {
            "ms_per_1000_rows": 1e6 * per_row,
            "cpu_ms_per_1000_rows": 1e6 * (big["cpu_s"] - small["cpu_s"]) / extra,
            "fixed_s": small["wall_s"] - small["rows"] * per_row,
        }
    return out


# --- profiling night 2 ---------------------------------------------------------------------------


def profile_night2(manifest: dict, output: Path, source: Path, args) -> dict:
    argv = night_args(manifest["path"], str(output), 2) + ["--direct_running_mode=in_memory"]
    prof = WORK / "night2_in_memory.prof"
    out = {"command": " ".join(["python", "-m", "pipeline", *argv]), "runs": {}}
    for name, prof_path in (("plain", None), ("cprofile", prof)):
        if args.idle_wait > 0:
            wait_for_idle(args.idle_wait)
        print(f"  night 2, in_memory{' under cProfile' if prof_path else ''} ...", end="", file=sys.stderr, flush=True)
        result = run_profile(prof_path, argv, source)
        print(f" {result['process_wall_s']:.1f} s", file=sys.stderr, flush=True)
        out["runs"][name] = result
    msecs = out["runs"]["cprofile"]["transform_msecs"]
    plain_msecs = out["runs"]["plain"]["transform_msecs"]
    stages = defaultdict(lambda: [0, 0])
    for step, ms in plain_msecs.items():
        stages[stage_of(step)][0] += ms
    for step, ms in msecs.items():
        stages[stage_of(step)][1] += ms
    out["stages"] = sorted(
        ({"stage": k, "plain_s": v[0] / 1000, "cprofile_s": v[1] / 1000} for k, v in stages.items()),
        key=lambda r: -r["plain_s"],
    )
    out["top_transforms"] = sorted(
        ({"transform": k, "plain_s": v / 1000} for k, v in plain_msecs.items()), key=lambda r: -r["plain_s"]
    )[:15]
    out["top_tottime"] = top_functions(str(prof), "tottime_s", args.profile_top)
    out["top_cumtime"] = top_functions(str(prof), "cumtime_s", args.profile_top)
    out["prof_file"] = str(prof)
    return out


# --- report --------------------------------------------------------------------------------------


def fmt_procs(run: dict) -> str:
    procs = [p for p in run["processes"] if p["role"] != "shell"]
    shells = [p for p in run["processes"] if p["role"] == "shell"]
    text = ", ".join(f"{p['label']} {p['peak_rss_mb']:.0f}" for p in procs)
    if shells:
        text += f" (+{len(shells)} sh wrappers, {max(p['peak_rss_mb'] for p in shells):.0f} each at most)"
    return text


def goals(data: dict) -> list[str]:
    runs = data["runs"]
    n1, n2 = runs["big_1"], runs["big_2"]
    frac = n2["wall_s"] / n1["wall_s"]
    lines = [
        goal_line(
            frac < GOAL_INCREMENTAL_FRACTION,
            f"incremental night < {GOAL_INCREMENTAL_FRACTION:.0%} "
            f"of first night's wall time ({n1['rows']:,} rows): {n2['wall_s']:.1f} s / {n1['wall_s']:.1f} s = {frac:.1%}"
            + (
                f" (night 2: the median of {len(n2['repeat_walls_s'])} runs, "
                f"{', '.join('%.1f' % w for w in n2['repeat_walls_s'])} s)"
                if len(n2.get("repeat_walls_s", [])) > 1
                else ""
            ),
        )
    ]
    small = runs["small_1"]["rows"]
    grown = [g for g in data["memory"] if g["ratio"] >= GOAL_RSS_GROWTH and not g["process"].startswith("all")]
    worst = max((g for g in data["memory"] if not g["process"].startswith("all")), key=lambda g: g["ratio"])
    lines.append(
        goal_line(
            not grown,
            f"no process's peak RSS grows >= {GOAL_RSS_GROWTH}x from {small:,} to "
            f"{n1['rows']:,} rows: largest ratio {worst['ratio']:.2f}x ({worst['process']}, night {worst['night']}: "
            f"{worst['small_mb']:.0f} -> {worst['big_mb']:.0f} MB)",
        )
    )
    for g in grown:
        lines.append(
            f"      grows: night {g['night']} {g['process']} {g['small_mb']:.0f} -> {g['big_mb']:.0f} MB "
            f"({g['ratio']:.2f}x)"
        )
    workers = [g for g in data["memory"] if g["process"] == "largest worker"]
    for g in workers:
        lines.append(
            f"INFO  night {g['night']}: largest worker {g['big_mb']:.0f} MB at {n1['rows']:,} rows vs "
            f"{g['small_mb']:.0f} MB at {small:,} ({g['ratio']:.2f}x)"
        )
    cm = data["cost_model"]
    night1_rows = cm["1"]["ms_per_1000_rows"]
    compared = (
        f"night 2 costs {cm['2']['ms_per_1000_rows'] / night1_rows:.0%} of night 1"
        if night1_rows > 0
        else "night 1's time does not measurably grow with rows (inference dominates), night 2's does"
    )
    lines.append(
        f"INFO  per extra row, {compared} ({cm['2']['ms_per_1000_rows']:.0f} vs {night1_rows:.0f} ms per 1,000 "
        f"rows). The goal needs night 2 under {GOAL_INCREMENTAL_FRACTION * n1['wall_s']:.1f} s here; its fixed "
        f"part is {cm['2']['fixed_s']:.1f} s (both from two runs each, so only as good as those runs are quiet)"
    )
    problems = [f"{r['label']}: {p}" for r in runs.values() for p in r["problems"]]
    lines += [f"NOTE  wrong counts: {p}" for p in problems]
    lines += noise_note([r["label"] for r in runs.values() if disturbed(r)])
    return lines


def report(data: dict) -> str:
    m, c, runs = data["machine"], data["catalog"], data["runs"]
    lines = [
        "# Nightly benchmark",
        "",
        machine_line(m),
        "",
        f"Command: `{data['command']}` ({data['total_wall_s'] / 60:.1f} min in all).",
        "",
        code_line(data["code"]),
        "",
        f"Catalog: {c['distinct_files']} distinct JPEG files of {c['size']} (~{c['mean_jpeg_kb']:.0f} KB each, "
        f"{c['total_mb']:.0f} MB) from `write_sample_catalog(broken=False)`; manifests of "
        f"{runs['big_1']['rows']:,} and {runs['small_1']['rows']:,} rows over them (CSV: image_id, uri, category; "
        f"each file used rows/{c['distinct_files']} times, order shuffled with seed {MANIFEST_SEED}). "
        "Local default runner: FnApiRunner with the SDK worker in the same process (`in_memory`), so that one "
        "process is both the runner, which holds every stage's output (the shuffle) in memory, and the worker. "
        "Each run is a fresh `python -m pipeline` process timed from start to exit.",
        "",
        "## Nights",
        "",
        "| run | rows | wall (s) | rows/s | inferences | reused | deduplicated | errors | CPU (s) | peak RSS per process (MB) | other CPU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for key in ("big_1", "big_2", "small_1", "small_2"):
        r = runs[key]
        s = r["summary"]
        lines.append(
            f"| {r['label']} | {r['rows']:,} | {r['wall_s']:.1f} | {r['rows_per_s']:,.0f} | {s['scored']:,} | "
            f"{s['reused']:,} | {s['deduplicated']:,} | {s['errors']} | {r['cpu_s']:.0f} | {fmt_procs(r)} | "
            f"{noise_cell(r)} |"
        )
    lines.append("")
    for size in ("big", "small"):
        n1, n2 = runs[f"{size}_1"], runs[f"{size}_2"]
        lines.append(f"- {n1['rows']:,} rows: night 2 took {n2['wall_s'] / n1['wall_s']:.1%} of night 1's time.")
    for night, cm in data["cost_model"].items():
        lines.append(
            f"- Night {night}, as a straight line through the two sizes: {cm['fixed_s']:.1f} s + "
            f"{cm['ms_per_1000_rows']:.0f} ms per 1,000 rows ({cm['cpu_ms_per_1000_rows']:.0f} CPU-ms per 1,000 rows)."
        )
    lines += [
        "",
        "inferences = summary.json `scored` (distinct contents run through the model); reused = rows given an "
        "earlier night's score; deduplicated = rows scored this night that shared their image with another row. "
        "CPU = user+system seconds of the whole process tree. Peak RSS = VmHWM of each process of the run's tree, "
        f"sampled every {data['args']['sample_interval']} s (the launcher's: the larger of that and wait4's exact "
        "ru_maxrss at exit when it is the run's only process) and labelled by command line: launcher = "
        "`python -m pipeline ...` (the FnApiRunner: it schedules the stages and holds the data between them; "
        "in the default in_memory mode it is also the only worker), worker N = SDK worker processes of the "
        "multi_processing mode, if any (each started through a `/bin/sh -c` wrapper of ~2 MB, not "
        "listed). other CPU = cores used by other processes meanwhile.",
        "",
        "## Peak RSS vs row count",
        "",
        f"| night | process | {runs['small_1']['rows']:,} rows (MB) | {runs['big_1']['rows']:,} rows (MB) | ratio |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for g in data["memory"]:
        lines.append(f"| {g['night']} | {g['process']} | {g['small_mb']:.0f} | {g['big_mb']:.0f} | {g['ratio']:.2f}x |")
    lines += [
        "",
        f"Threshold: {GOAL_RSS_GROWTH}x for {runs['big_1']['rows'] / runs['small_1']['rows']:.0f}x the rows. Every "
        "process has a fixed base and bounded buffers that vary by some percent between runs; a process holding "
        f"~0.5 KB per row would add ~{(runs['big_1']['rows'] - runs['small_1']['rows']) * 0.5 / 1024:.0f} MB, "
        "which 1.25x of a 300 MB process catches.",
        "",
        "## Goals",
        "",
        "```",
        *data["goal_lines"],
        "```",
    ]
    prof = data.get("profile")
    if prof:
        plain, cp = prof["runs"]["plain"], prof["runs"]["cprofile"]
        lines += [
            "",
            "## Where night 2 spends its time",
            "",
            f"Night 2 ({runs['big_2']['rows']:,} rows) again, in one process: `{prof['command']}`. "
            f"Without a profiler: {plain['process_wall_s']:.1f} s (in the timed run above: {runs['big_2']['wall_s']:.1f} s); "
            f"under cProfile: {cp['process_wall_s']:.1f} s. Peak RSS of that one process: "
            f"{plain['peak_rss_mb']:.0f} MB.",
            "",
            "Per stage, Beam's own execution-time counters (SDK side, summed over the stage's transforms; the "
            "runner's shuffling between stages is not in them):",
            "",
            "| stage | s (no profiler) | s (cProfile) |",
            "| --- | ---: | ---: |",
        ]
        sdk = sum(r["plain_s"] for r in prof["stages"])
        for r in prof["stages"][:14]:
            lines.append(f"| {r['stage']} | {r['plain_s']:.1f} | {r['cprofile_s']:.1f} |")
        lines += [
            f"| **sum** | **{sdk:.1f}** | |",
            f"| not in any stage (start-up, runner, shuffles) | {plain['process_wall_s'] - sdk:.1f} | |",
            "",
            "The slowest transforms (no profiler):",
            "",
            "| transform | s |",
            "| --- | ---: |",
            *[f"| `{r['transform']}` | {r['plain_s']:.1f} |" for r in prof["top_transforms"][:10]],
            "",
            f"Top functions by own time (cProfile, {cp['process_wall_s']:.0f} s run):",
            "",
            "| function | calls | own s | cumulative s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in prof["top_tottime"]:
            lines.append(f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.1f} | {r['cumtime_s']:.1f} |")
        lines += [
            "",
            "Top functions by cumulative time:",
            "",
            "| function | calls | own s | cumulative s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in prof["top_cumtime"]:
            lines.append(f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.1f} | {r['cumtime_s']:.1f} |")
        if data.get("profile_notes"):
            lines += ["", *data["profile_notes"]]
    lines.append("")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="manifest rows of the main runs (default 200,000)")
    parser.add_argument(
        "--small-rows",
        type=int,
        default=50_000,
        help="manifest rows of the comparison runs for memory vs row count (default 50,000)",
    )
    parser.add_argument("--distinct", type=int, default=4000, help="distinct JPEG files (default 4000)")
    parser.add_argument("--size", default="640x480", help="catalog image size WIDTHxHEIGHT (default 640x480)")
    add_output_options(parser, "nightly.md")
    parser.add_argument(
        "--night2-runs", type=int, default=3, help="runs of each incremental night; the median is kept (default 3)"
    )
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile night 2 in one process: when it misses its goal (auto), always, or never",
    )
    parser.add_argument("--profile-top", type=int, default=20, help="functions to list per profile table")
    parser.add_argument(
        "--commit",
        help="measure this commit (extracted with git archive) instead of the "
        "working tree, e.g. HEAD while others edit the tree",
    )
    parser.add_argument(
        "--render",
        metavar="JSON",
        help="only rewrite the report (stdout and --out) from a nightly.json written earlier",
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for other processes to leave the "
        "cores alone (0: never wait)",
    )
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        data["goal_lines"] = goals(data)
        write_results(output_path(args), report(data), data)
        return
    if args.small_rows >= args.rows:
        parser.error("--small-rows must be less than --rows")

    started = time.perf_counter()
    busy = busy_elsewhere(2.0)
    if busy > NOISE_CORES:
        print(f"warning: the machine is not idle ({busy:.2f} cores busy in other processes)", file=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)
    code = checkout(args.commit)
    source = source_of(code)
    print(
        f"code: {code['source']} ({code['commit'][:12]}{', working tree' if code['working_tree'] else ''})",
        file=sys.stderr,
    )
    print(f"model cache: {MODEL_CACHE}", file=sys.stderr)
    warm = warm_model_cache(WORK / "logs", source)
    size = parse_size(args.size)
    catalog = build_catalog(args.distinct, size)
    print(f"catalog: {args.distinct} files of {args.size} in {catalog['directory']}", file=sys.stderr)
    print(
        f"  {'cached' if catalog['cached'] else 'written in %.0f s' % catalog['build_s']}, "
        f"{catalog['mean_jpeg_kb']:.0f} KB each",
        file=sys.stderr,
    )
    manifests = {"small": night_manifest(catalog, args.small_rows), "big": night_manifest(catalog, args.rows)}

    runs = {}
    for size_key in ("small", "big"):
        manifest = manifests[size_key]
        output = WORK / f"out-{manifest['rows']}"
        shutil.rmtree(output, ignore_errors=True)
        for night in (1, 2):
            label = f"night {night}{' (incremental)' if night == 2 else ''}, {manifest['rows']:,} rows"
            # Night 2 is a few seconds, as long as this machine's speed takes to drift by 20%:
            # it runs --night2-runs times (each replaces the same partition) and keeps its median run.
            repeats = [
                run_night(label, manifest, output, night, source, args)
                for _ in range(args.night2_runs if night == 2 else 1)
            ]
            chosen = median_run(repeats, key=lambda r: r["wall_s"])
            chosen["repeat_walls_s"] = [r["wall_s"] for r in repeats]
            # Memory is judged on the largest launcher peak of the repeats, not the median run's.
            peaks = [p["peak_rss_mb"] for r in repeats for p in r["processes"] if p["role"] == "launcher"]
            next(p for p in chosen["processes"] if p["role"] == "launcher")["peak_rss_mb"] = max(peaks)
            runs[f"{size_key}_{night}"] = chosen

    machine = machine_info()
    data = {
        "machine": machine,
        "command": command_line(__file__, argv),
        "args": vars(args),
        "code": code,
        "busy_before_start": busy,
        "model_cache": {"dir": str(MODEL_CACHE), "warm": warm},
        "catalog": catalog_summary(catalog),
        "manifests": manifests,
        "runs": runs,
    }
    data["memory"] = memory_growth(runs)
    data["cost_model"] = cost_model(runs)
    frac = runs["big_2"]["wall_s"] / runs["big_1"]["wall_s"]
    if args.profile == "always" or (args.profile == "auto" and frac >= GOAL_INCREMENTAL_FRACTION):
        data["profile"] = profile_night2(manifests["big"], WORK / f"out-{args.rows}", source, args)
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_results(output_path(args), report(data), data)


if __name__ == "__main__":
    main()
