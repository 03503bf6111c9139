"""Where a pipeline run spends its time: the whole pipeline in one process, under cProfile or not.

    python -m harness.profiling PROF|- -- PIPELINE_ARGS...

The child runs ``pipeline.run(args)`` in its own process (``--direct_running_mode=in_memory`` puts
the runner and the SDK side together, so the profile sees both) and prints one result line with Beam's
per-transform execution-time counters. The parent side runs it and reads the profile.
"""
from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .machine import own_peak_rss_mb
from .process import child_env, emit, parse_result


def profile_child(prof_path: str, argv: list[str]) -> None:
    import cProfile
    import logging

    import pipeline

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    profiler = cProfile.Profile() if prof_path != "-" else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    outcome = pipeline.run(argv)
    if profiler:
        profiler.disable()
        profiler.dump_stats(prof_path)
    wall = time.perf_counter() - t0
    msecs: dict[str, int] = defaultdict(int)
    try:
        for counter in outcome.result.monitoring_metrics().query()["counters"]:
            if counter.key.metric.name.endswith("ptransform_execution_time:total_msecs:v1") and counter.key.step:
                msecs[counter.key.step] += counter.committed or 0
    except Exception as exc:  # metrics are a diagnostic; never fail the run for them
        print(f"no transform metrics: {exc}", file=sys.stderr)
    emit({"wall_s": wall, "transform_msecs": msecs, "summary": outcome.summary, "peak_rss_mb": own_peak_rss_mb()})


def run_profile(prof: Path | None, pipeline_argv: Sequence[str], source: Path) -> dict:
    """The pipeline in one fresh process (under cProfile when ``prof`` is given), timed from here."""
    cmd = [sys.executable, "-m", "harness.profiling", str(prof) if prof else "-", "--", *pipeline_argv]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(source), cwd=source, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    result = parse_result(proc, "profile" + (" (cProfile)" if prof else ""))
    result["process_wall_s"] = wall
    return result


def top_functions(prof_path: str, key: str, n: int) -> list[dict]:
    import pstats

    stats = pstats.Stats(prof_path)
    rows = [{"function": f"{shorten(filename)}:{line}({func})", "calls": nc, "tottime_s": tt, "cumtime_s": ct}
            for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items()]  # type: ignore[attr-defined]
    rows.sort(key=lambda r: r[key], reverse=True)
    return rows[:n]


def shorten(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def stage_of(step: str) -> str:
    """Group Beam's transform names by the pipeline's stages (and the sub-steps that matter)."""
    return "/".join(step.split("/")[:2])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prof, rest = argv[0], argv[1:]
    profile_child(prof, rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    main()
