"""Where a pipeline run spends its time: the whole pipeline in one process, under cProfile or not;
and py-spy over a whole process tree.

    python -m harness.profiling PROF|- -- PIPELINE_ARGS...

The child runs ``pipeline.run(args)`` in its own process (``--direct_running_mode=in_memory`` puts
the runner and the SDK side together, so the profile sees both) and prints one result line with Beam's
per-transform execution-time counters. The parent side runs it and reads the profile.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
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
    rows = [
        {"function": f"{shorten(filename)}:{line}({func})", "calls": nc, "tottime_s": tt, "cumtime_s": ct}
        for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items()
    ]  # type: ignore[attr-defined]
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


def pyspy_record(cmd: Sequence[str], prof: Path, source: Path) -> dict:
    """``py-spy record --subprocesses`` of ``cmd`` (a speedscope file), summarised per process; py-spy
    is optional (``pip install py-spy``): without it, ``available`` is False and says why."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {"available": False, "reason": "py-spy not installed"}
    full = [spy, "record", "--subprocesses", "--rate", "50", "--format", "speedscope", "-o", str(prof), "--", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(full, env=child_env(source), cwd=source, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not prof.exists():
        return {
            "available": False,
            "wall_s": wall,
            "reason": f"py-spy exit {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}",
        }
    return {
        "available": True,
        "command": " ".join(full),
        "wall_s": wall,
        "file": str(prof),
        **summarize_speedscope(prof),
    }


def summarize_speedscope(path: Path) -> dict:
    """Per process: seconds of non-idle samples, the leaf functions and the functions on the stack.
    py-spy's speedscope profiles are one per thread, named "Process PID Thread TID ...", with
    stacks root first and weights in seconds."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]

    def name(i):
        f = frames[i]
        return f"{f['name']} ({shorten(f.get('file') or '')}{':' + str(f['line']) if f.get('line') else ''})"

    per_proc: dict = defaultdict(lambda: {"seconds": 0.0, "threads": 0, "self": Counter(), "inclusive": Counter()})
    for prof in data["profiles"]:
        pname = prof.get("name", "?")
        pid = int(pname.split()[1]) if pname.startswith("Process ") else -1
        rec = per_proc[pid]
        rec["threads"] += 1
        for stack, w in zip(prof["samples"], prof["weights"]):
            if not stack:
                continue
            rec["seconds"] += w
            rec["self"][name(stack[-1])] += w
            for fn in {name(i) for i in stack if not frames[i]["name"].startswith("process ")}:
                rec["inclusive"][fn] += w
    out = []
    for n, (pid, rec) in enumerate(sorted(per_proc.items())):  # the launcher is the first pid
        out.append(
            {
                "process": f"{'launcher' if n == 0 else 'SDK worker'} (pid {pid})",
                "threads": rec["threads"],
                "seconds": rec["seconds"],
                "top_self": rec["self"].most_common(15),
                "top_inclusive": rec["inclusive"].most_common(25),
            }
        )
    return {"processes": out}


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prof, rest = argv[0], argv[1:]
    profile_child(prof, rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    main()
