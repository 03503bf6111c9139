"""Nightly scale run: a first night and an incremental night on the local runner.

    python benchmarks/bench_nightly.py [--rows 200000] [--small-rows 50000]
                                       [--distinct 4000] [--size 640x480] [--out FILE]
                                       [--commit REV] [--profile auto|always|never]

A catalog of ``--distinct`` JPEG files (``write_sample_catalog``: crops of the photos
scikit-learn ships) and a CSV manifest of ``--rows`` rows over them (each row its own
image_id; uris drawn over the files with a fixed seed, so most rows repeat a file) are
cached under benchmarks/.cache/nightly/. Then, for ``--small-rows`` and for ``--rows``:

- night 1: ``python -m pipeline --manifest=M --output=O --run_date=2026-11-01 --keep_columns=category``
- night 2: the same with ``--incremental --run_date=2026-11-02`` (nothing changed),

each in a fresh process on the pipeline's local default (Beam's FnApiRunner with its SDK
worker in the same process, LiteRT on every core), timed from the parent around the
whole process. A thread
samples /proc/PID/status VmHWM of every process in the run's tree every
``--sample-interval`` seconds and keeps each process's peak; the launcher's own peak also
comes exact from ``wait4`` when it exits. The two sizes side by side
show whether any process's memory grows with the row count.

If night 2 takes 10% or more of night 1's time (or with ``--profile=always``), night 2
is run once more with ``--direct_running_mode=in_memory`` under cProfile (the whole
pipeline in one process, so the profile sees the runner and the SDK side), and once
more in that mode without the profiler; the report lists the slowest stages (Beam's
per-transform execution time) and the top functions.

The report is printed and written to benchmarks/results/nightly.md, the raw numbers to
nightly.json. ``--profile-worker PROF -- ARGS`` is the script's own profiling child.
"""
from __future__ import annotations

import argparse
import csv
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import bench_scoring as bs  # machine info and the machine-noise helpers

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"
WORK = CACHE / "nightly"
MODEL_CACHE = bs.CACHE_DIR  # benchmarks/.cache/aisthetics, shared with bench_scoring.py
DEFAULT_OUT = BENCH_DIR / "results" / "nightly.md"

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

QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}


# --- corpus --------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def build_catalog(distinct: int, size: tuple[int, int]) -> dict:
    """``distinct`` JPEG files from write_sample_catalog, cached (a marker says it is complete)."""
    from aisthetics_transforms.sample import write_sample_catalog

    directory = WORK / f"catalog-{distinct}-{size[0]}x{size[1]}"
    marker = directory / "catalog.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if all(Path(f["uri"]).exists() for f in info["files"]):
            info["cached"] = True
            return info
    t0 = time.perf_counter()
    manifest = write_sample_catalog(directory, count=distinct, size=size, broken=False)
    with open(manifest, newline="") as f:
        files = [{"uri": r["uri"], "category": r["category"]} for r in csv.DictReader(f)]
    sizes = [Path(f["uri"]).stat().st_size for f in files]
    info = {
        "directory": str(directory),
        "distinct_files": len(files),
        "size": f"{size[0]}x{size[1]}",
        "total_mb": sum(sizes) / 2**20,
        "mean_jpeg_kb": sum(sizes) / len(sizes) / 1024,
        "build_s": time.perf_counter() - t0,
        "files": files,
    }
    marker.write_text(json.dumps(info, indent=1) + "\n")
    info["cached"] = False
    return info


def write_manifest(catalog: dict, rows: int) -> dict:
    """A CSV of ``rows`` rows (image_id, uri, category): every file is used rows/distinct
    times (+-1), in an order shuffled with a fixed seed."""
    import numpy as np

    files = catalog["files"]
    index = np.arange(rows) % len(files)
    np.random.default_rng(MANIFEST_SEED).shuffle(index)
    path = Path(catalog["directory"]) / f"manifest-{rows}.csv"
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "uri", "category"])
    for i, j in enumerate(index.tolist()):
        writer.writerow([f"row-{i:07d}", files[j]["uri"], files[j]["category"]])
    text = buf.getvalue()
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return {"path": str(path), "rows": rows, "distinct_uris": min(rows, len(files)), "bytes": len(text)}


# --- the process tree's memory ----------------------------------------------------------------


def _proc_stat(pid: int):
    """(ppid, starttime) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[19])


def _status_kb(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role_of(pid: int, root: int, cmd: str) -> str:
    if pid == root:
        return "launcher"
    if cmd.startswith(("/bin/sh ", "sh ")):
        return "shell"  # Beam starts each SDK worker through `/bin/sh -c python -m ...sdk_worker_main`
    if "sdk_worker_main" in cmd:
        return "worker"
    return "other"


class TreeSampler(threading.Thread):
    """Every ``interval`` s: VmHWM (peak RSS so far) of ``root`` and all its descendants.

    A process once seen is followed by (pid, start time) even if it is re-parented, and
    its largest VmHWM is kept; VmHWM never decreases, so only a peak reached in the last
    ``interval`` before a process exits can be missed.
    """

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.stop_event = threading.Event()
        self.procs: dict[tuple[int, int], dict] = {}
        self.samples = 0
        self.t0 = time.perf_counter()

    def run(self):
        while True:
            self.sample()
            if self.stop_event.wait(self.interval):
                return

    def stop(self):
        self.stop_event.set()
        self.join()

    def _tree(self) -> dict[int, tuple[int, int]]:
        stats = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                st = _proc_stat(int(entry.name))
                if st:
                    stats[int(entry.name)] = st
        children = defaultdict(list)
        for pid, (ppid, _) in stats.items():
            children[ppid].append(pid)
        tree, todo = {}, [self.root]
        # Processes seen before stay followed if re-parented (same pid and start time).
        todo += [pid for pid, start in self.procs if pid in stats and stats[pid][1] == start]
        while todo:
            pid = todo.pop()
            if pid in tree or pid not in stats:
                continue
            tree[pid] = stats[pid]
            todo += children.get(pid, [])
        return tree

    def sample(self):
        now = time.perf_counter() - self.t0
        for pid, (ppid, start) in self._tree().items():
            key = (pid, start)
            kb = _status_kb(pid)
            if "VmHWM" not in kb:
                continue
            rec = self.procs.get(key)
            if rec is None:
                cmd = _cmdline(pid)
                rec = self.procs[key] = {
                    "pid": pid, "ppid": ppid, "role": role_of(pid, self.root, cmd), "cmdline": cmd,
                    "peak_rss_mb": 0.0, "max_rss_mb": 0.0, "first_seen_s": now, "samples": 0, "rss_timeline": [],
                }
            if kb["VmHWM"] / 1024 > rec["peak_rss_mb"]:
                rec["peak_rss_mb"] = kb["VmHWM"] / 1024
                rec["peak_seen_at_s"] = now  # the peak was reached since the previous sample
            rec["max_rss_mb"] = max(rec["max_rss_mb"], kb.get("VmRSS", 0) / 1024)
            rec["rss_timeline"].append([round(now, 1), round(kb.get("VmRSS", 0) / 1024)])
            rec["last_seen_s"] = now
            rec["samples"] += 1
        self.samples += 1

    def result(self) -> list[dict]:
        order = {"launcher": 0, "worker": 1, "shell": 2, "other": 3}
        procs = sorted(self.procs.values(), key=lambda r: (order[r["role"]], -r["peak_rss_mb"]))
        n = 0
        for rec in procs:
            if rec["role"] == "worker":
                n += 1
                rec["label"] = f"worker {n}"
            elif rec["role"] == "shell":
                rec["label"] = "sh"
            else:
                rec["label"] = rec["role"] if rec["role"] == "launcher" else f"other ({rec['cmdline'][:60]})"
        return procs


# --- one night ---------------------------------------------------------------------------------


SOURCE = REPO  # the code measured: the working tree, or a `git archive` of --commit


def child_env() -> dict:
    env = dict(os.environ)
    env.update(QUIET)
    env["AISTHETICS_CACHE_DIR"] = str(MODEL_CACHE)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
    return env


def git(*args: str) -> str:
    # rstrip only: a porcelain status line starts with a space when the index is clean.
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout.rstrip()


def checkout(commit: str | None) -> dict:
    """Which code the runs use. With ``commit``, that commit's tree is extracted (git archive,
    read-only for the repository) under benchmarks/.cache/nightly/src-SHA/, and every child
    process imports ``pipeline`` and ``aisthetics_transforms`` from there (it is their cwd and
    first on PYTHONPATH), so edits to the working tree during a run cannot mix into it."""
    global SOURCE
    if not commit:
        try:
            head = git("rev-parse", "HEAD")
            dirty = [line[3:] for line in git("status", "--porcelain").splitlines()
                     if not line[3:].startswith("benchmarks/")]
        except (OSError, subprocess.CalledProcessError):  # not a git checkout
            head, dirty = "unknown", []
        return {"source": str(REPO), "commit": head, "working_tree": True, "uncommitted_changes": dirty}
    sha = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    target = WORK / f"src-{sha[:12]}"
    if not (target / "pipeline" / "__init__.py").exists():
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(target)
    SOURCE = target
    return {"source": str(target), "commit": sha, "working_tree": False, "requested": commit,
            "subject": git("log", "-1", "--format=%s", sha)}


def median_run(runs: list[dict], key) -> dict:
    """A copy of the run with the median ``key`` (the lower middle one of an even count)."""
    return dict(sorted(runs, key=key)[(len(runs) - 1) // 2])


def night_args(manifest: str, output: str, night: int) -> list[str]:
    args = [f"--manifest={manifest}", f"--output={output}", "--keep_columns=category"]
    if night == 1:
        return args + [f"--run_date={NIGHT1_DATE}"]
    return args + ["--incremental", f"--run_date={NIGHT2_DATE}"]


def summary_of(output: str, run_date: str) -> dict:
    return json.loads((Path(output) / "runs" / f"dt={run_date}" / "summary.json").read_text())


def run_night(label: str, manifest: dict, output: Path, night: int, args) -> dict:
    cmd = [sys.executable, "-m", "pipeline", *night_args(manifest["path"], str(output), night)]
    waited = bs.wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{label.replace(' (incremental)', '').replace(',', '').replace(' ', '_')}.log"
    print(f"  {label} ...", end="", file=sys.stderr, flush=True)
    with open(log_path, "w") as log:
        cpu0, own0 = bs.cpu_seconds(), bs.children_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=SOURCE)
        sampler = TreeSampler(proc.pid, args.sample_interval)
        sampler.start()
        # wait4 gives the launcher's own exact peak: the sampler can miss one reached in its
        # last interval, which on a 4 s night is often where it is (writing the tables).
        _, status, usage = os.wait4(proc.pid, 0)
        rc = proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        sampler.stop()
        own = bs.children_cpu_seconds() - own0
        noise = bs.machine_noise(cpu0, bs.cpu_seconds(), own, wall)
    if rc != 0:
        sys.stderr.write("\n" + log_path.read_text()[-4000:])
        raise SystemExit(f"{label}: python -m pipeline exited with status {rc} (log: {log_path})")
    run_date = NIGHT1_DATE if night == 1 else NIGHT2_DATE
    summary = summary_of(str(output), run_date)
    procs = sampler.result()
    launcher = next(p for p in procs if p["role"] == "launcher")
    launcher["sampled_peak_rss_mb"] = launcher["peak_rss_mb"]
    launcher["peak_rss_mb"] = max(launcher["peak_rss_mb"], usage.ru_maxrss / 1024)  # ru_maxrss is in KB
    result = {
        "label": label,
        "night": night,
        "rows": manifest["rows"],
        "command": " ".join(["python", "-m", "pipeline", *night_args(manifest["path"], str(output), night)]),
        "wall_s": wall,
        "rows_per_s": manifest["rows"] / wall,
        "cpu_s": own,
        "summary": summary,
        "processes": procs,
        "sampler": {"interval_s": args.sample_interval, "samples": sampler.samples},
        "idle_wait_s": waited,
        "log": str(log_path),
        **noise,
    }
    workers = [p for p in procs if p["role"] == "worker"]
    print(
        f" {wall:.1f} s, {result['rows_per_s']:.0f} rows/s, scored {summary['scored']}, reused {summary['reused']}, "
        f"dedup {summary['deduplicated']}; launcher {procs[0]['peak_rss_mb']:.0f} MB, "
        f"{len(workers)} workers max {max((w['peak_rss_mb'] for w in workers), default=0):.0f} MB"
        f"{'  [disturbed: other processes used %.2f cores]' % noise['other_cpu_cores'] if bs.disturbed(result) else ''}",
        file=sys.stderr, flush=True,
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
                rows.append({"night": night, "process": role, "small_mb": ps[role], "big_mb": pb[role],
                             "ratio": pb[role] / ps[role] if ps[role] else float("nan")})
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


def profile_worker(prof_path: str, argv: list[str]) -> None:
    """Child: run the pipeline in this process (under cProfile when ``prof_path`` is not
    '-') and print per-transform execution times as one JSON line."""
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
    msecs = defaultdict(int)
    try:
        for counter in outcome.result.monitoring_metrics().query()["counters"]:
            if counter.key.metric.name.endswith("ptransform_execution_time:total_msecs:v1") and counter.key.step:
                msecs[counter.key.step] += counter.committed or 0
    except Exception as exc:  # metrics are a diagnostic; never fail the run for them
        print(f"no transform metrics: {exc}", file=sys.stderr)
    print(bs.RESULT_MARK + json.dumps({"wall_s": wall, "transform_msecs": msecs, "summary": outcome.summary,
                                       "peak_rss_mb": bs.peak_rss_mb()}), flush=True)


def top_functions(prof_path: str, key: str, n: int) -> list[dict]:
    import pstats

    stats = pstats.Stats(prof_path)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append({"function": f"{shorten(filename)}:{line}({func})", "calls": nc, "tottime_s": tt, "cumtime_s": ct})
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


def profile_night2(manifest: dict, output: Path, args) -> dict:
    argv = night_args(manifest["path"], str(output), 2) + ["--direct_running_mode=in_memory"]
    prof = WORK / "night2_in_memory.prof"
    out = {"command": " ".join(["python", "-m", "pipeline", *argv]), "runs": {}}
    for name, prof_arg in (("plain", "-"), ("cprofile", str(prof))):
        if args.idle_wait > 0:
            bs.wait_for_idle(args.idle_wait)
        print(f"  night 2, in_memory{' under cProfile' if prof_arg != '-' else ''} ...", end="", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--profile-worker", prof_arg, "--", *argv],
                              env=child_env(), cwd=SOURCE, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        result = bs.parse_result(proc, f"profile ({name})")
        result["process_wall_s"] = wall
        print(f" {wall:.1f} s", file=sys.stderr, flush=True)
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
    out["top_transforms"] = sorted(({"transform": k, "plain_s": v / 1000} for k, v in plain_msecs.items()),
                                   key=lambda r: -r["plain_s"])[:15]
    out["top_tottime"] = top_functions(str(prof), "tottime_s", args.profile_top)
    out["top_cumtime"] = top_functions(str(prof), "cumtime_s", args.profile_top)
    out["prof_file"] = str(prof)
    return out


# --- report --------------------------------------------------------------------------------------


def versions() -> dict:
    def v(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"apache_beam": v("apache-beam"), "pyarrow": v("pyarrow"), "grpcio": v("grpcio")}


def worker_cmd(run: dict) -> str:
    cmd = next((p["cmdline"] for p in run["processes"] if p["role"] == "worker"), "sdk_worker_main")
    return cmd.replace(sys.executable, "python")


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
        f"{'PASS' if frac < GOAL_INCREMENTAL_FRACTION else 'FAIL'}  incremental night < {GOAL_INCREMENTAL_FRACTION:.0%} "
        f"of first night's wall time ({n1['rows']:,} rows): {n2['wall_s']:.1f} s / {n1['wall_s']:.1f} s = {frac:.1%}"
        + (f" (night 2: the median of {len(n2['repeat_walls_s'])} runs, "
           f"{', '.join('%.1f' % w for w in n2['repeat_walls_s'])} s)" if len(n2.get("repeat_walls_s", [])) > 1 else "")
    ]
    small = runs["small_1"]["rows"]
    grown = [g for g in data["memory"] if g["ratio"] >= GOAL_RSS_GROWTH and not g["process"].startswith("all")]
    worst = max((g for g in data["memory"] if not g["process"].startswith("all")), key=lambda g: g["ratio"])
    lines.append(
        f"{'PASS' if not grown else 'FAIL'}  no process's peak RSS grows >= {GOAL_RSS_GROWTH}x from {small:,} to "
        f"{n1['rows']:,} rows: largest ratio {worst['ratio']:.2f}x ({worst['process']}, night {worst['night']}: "
        f"{worst['small_mb']:.0f} -> {worst['big_mb']:.0f} MB)"
    )
    for g in grown:
        lines.append(f"      grows: night {g['night']} {g['process']} {g['small_mb']:.0f} -> {g['big_mb']:.0f} MB "
                     f"({g['ratio']:.2f}x)")
    workers = [g for g in data["memory"] if g["process"] == "largest worker"]
    for g in workers:
        lines.append(f"INFO  night {g['night']}: largest worker {g['big_mb']:.0f} MB at {n1['rows']:,} rows vs "
                     f"{g['small_mb']:.0f} MB at {small:,} ({g['ratio']:.2f}x)")
    cm = data["cost_model"]
    night1_rows = cm["1"]["ms_per_1000_rows"]
    compared = (f"night 2 costs {cm['2']['ms_per_1000_rows'] / night1_rows:.0%} of night 1" if night1_rows > 0
                else "night 1's time does not measurably grow with rows (inference dominates), night 2's does")
    lines.append(
        f"INFO  per extra row, {compared} ({cm['2']['ms_per_1000_rows']:.0f} vs {night1_rows:.0f} ms per 1,000 "
        f"rows). The goal needs night 2 under {GOAL_INCREMENTAL_FRACTION * n1['wall_s']:.1f} s here; its fixed "
        f"part is {cm['2']['fixed_s']:.1f} s (both from two runs each, so only as good as those runs are quiet)"
    )
    problems = [f"{r['label']}: {p}" for r in runs.values() for p in r["problems"]]
    lines += [f"NOTE  wrong counts: {p}" for p in problems]
    noisy = [r["label"] for r in runs.values() if bs.disturbed(r)]
    if noisy:
        lines.append(f"NOTE  disturbed by other processes (re-run on an idle machine): {', '.join(noisy)}")
    return lines


def code_line(code: dict) -> str:
    if code["working_tree"]:
        dirty = code["uncommitted_changes"]
        return (f"Code: the working tree at {code['commit'][:12]}"
                + (f", with uncommitted changes to {', '.join(dirty)}." if dirty else ", clean."))
    return f"Code: commit {code['commit'][:12]} ({code['subject']}), extracted with `git archive`."


def report(data: dict) -> str:
    m, c, runs = data["machine"], data["catalog"], data["runs"]
    lines = [
        "# Nightly benchmark",
        "",
        f"{m['date']} — {m['cpu_model']}, {m['cores']} cores, {m['memory_gb']} GB; Python {m['python']}, "
        f"Apache Beam {m['apache_beam']}, pyarrow {m['pyarrow']}, ai-edge-litert {m['ai_edge_litert']}, "
        f"numpy {m['numpy']}, Pillow {m['pillow']}.",
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
            f"{r['other_cpu_cores']:.2f}{' ⚠' if bs.disturbed(r) else ''} |"
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
        "ru_maxrss at exit) and labelled by command line: launcher = "
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
        lines += ["", "Top functions by cumulative time:", "", "| function | calls | own s | cumulative s |",
                  "| --- | ---: | ---: | ---: |"]
        for r in prof["top_cumtime"]:
            lines.append(f"| `{r['function']}` | {r['calls']:,} | {r['tottime_s']:.1f} | {r['cumtime_s']:.1f} |")
        if data.get("profile_notes"):
            lines += ["", *data["profile_notes"]]
    lines.append("")
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def warm_model_cache() -> dict:
    """Convert the model into the benchmark's cache and score one image, before any timing."""
    code = (
        "import json, sys, time\n"
        "from aisthetics_transforms.sample import source_photos\n"
        "import aisthetics_transforms, tempfile, os\n"
        "t0 = time.perf_counter()\n"
        "path = os.path.join(tempfile.mkdtemp(), 'warm.jpg')\n"
        "source_photos()['china'].resize((224, 224)).save(path)\n"
        "nima = aisthetics_transforms.get_aisthetics_model()\n"
        "r = nima.predict(images=path, augmented=True)[0]\n"
        f"print({bs.RESULT_MARK!r} + json.dumps({{'seconds': time.perf_counter() - t0, "
        "'model_version': nima.model_version, 'tensorflow_imported': 'tensorflow' in sys.modules}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, cwd=SOURCE)
    return bs.parse_result(proc, "model cache warm-up")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--profile-worker"]:
        rest = argv[2:]
        profile_worker(argv[1], rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="manifest rows of the main runs (default 200,000)")
    parser.add_argument("--small-rows", type=int, default=50_000,
                        help="manifest rows of the comparison runs for memory vs row count (default 50,000)")
    parser.add_argument("--distinct", type=int, default=4000, help="distinct JPEG files (default 4000)")
    parser.add_argument("--size", default="640x480", help="catalog image size WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown output; the JSON goes beside it")
    parser.add_argument("--night2-runs", type=int, default=3,
                        help="runs of each incremental night; the median is kept (default 3)")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                        help="profile night 2 in one process: when it misses its goal (auto), always, or never")
    parser.add_argument("--profile-top", type=int, default=20, help="functions to list per profile table")
    parser.add_argument("--commit", help="measure this commit (extracted with git archive) instead of the "
                        "working tree, e.g. HEAD while others edit the tree")
    parser.add_argument("--render", metavar="JSON",
                        help="only rewrite the report (stdout and --out) from a nightly.json written earlier")
    parser.add_argument("--idle-wait", type=float, default=20.0,
                        help="before each run, wait up to this many seconds for other processes to leave the "
                             "cores alone (0: never wait)")
    args = parser.parse_args(argv)
    if args.render:
        data = json.loads(Path(args.render).read_text())
        data["goal_lines"] = goals(data)
        write_report(data, Path(args.out))
        return
    if args.small_rows >= args.rows:
        parser.error("--small-rows must be less than --rows")

    started = time.perf_counter()
    busy = bs.busy_elsewhere(2.0)
    if busy > bs.NOISE_CORES:
        print(f"warning: the machine is not idle ({busy:.2f} cores busy in other processes)", file=sys.stderr)
    WORK.mkdir(parents=True, exist_ok=True)
    code = checkout(args.commit)
    sys.path.insert(0, str(SOURCE))
    print(f"code: {code['source']} ({code['commit'][:12]}{', working tree' if code['working_tree'] else ''})",
          file=sys.stderr)
    print(f"model cache: {MODEL_CACHE}", file=sys.stderr)
    warm = warm_model_cache()
    print(f"  warm: first score {warm['seconds']:.1f} s, {warm['model_version']}", file=sys.stderr)
    size = parse_size(args.size)
    print(f"catalog: {args.distinct} files of {args.size} under {WORK}", file=sys.stderr)
    catalog = build_catalog(args.distinct, size)
    print(f"  {'cached' if catalog['cached'] else 'written in %.0f s' % catalog['build_s']}, "
          f"{catalog['mean_jpeg_kb']:.0f} KB each", file=sys.stderr)
    manifests = {"small": write_manifest(catalog, args.small_rows), "big": write_manifest(catalog, args.rows)}

    runs = {}
    for size_key in ("small", "big"):
        manifest = manifests[size_key]
        output = WORK / f"out-{manifest['rows']}"
        shutil.rmtree(output, ignore_errors=True)
        for night in (1, 2):
            label = f"night {night}{' (incremental)' if night == 2 else ''}, {manifest['rows']:,} rows"
            # Night 2 is a few seconds, as long as this machine's speed takes to drift by 20%:
            # it runs --night2-runs times (each replaces the same partition) and keeps its median run.
            repeats = [run_night(label, manifest, output, night, args)
                       for _ in range(args.night2_runs if night == 2 else 1)]
            chosen = median_run(repeats, key=lambda r: r["wall_s"])
            chosen["repeat_walls_s"] = [r["wall_s"] for r in repeats]
            # Memory is judged on the largest launcher peak of the repeats, not the median run's.
            peaks = [p["peak_rss_mb"] for r in repeats for p in r["processes"] if p["role"] == "launcher"]
            next(p for p in chosen["processes"] if p["role"] == "launcher")["peak_rss_mb"] = max(peaks)
            runs[f"{size_key}_{night}"] = chosen

    machine = bs.machine_info()
    machine.update(versions())
    data = {
        "machine": machine,
        "command": "python benchmarks/bench_nightly.py " + " ".join(argv) if argv else "python benchmarks/bench_nightly.py",
        "args": vars(args),
        "code": code,
        "busy_before_start": busy,
        "model_cache": {"dir": str(MODEL_CACHE), "warm": warm},
        "catalog": {k: v for k, v in catalog.items() if k != "files"},
        "manifests": manifests,
        "runs": runs,
    }
    data["command"] = data["command"].strip()
    data["memory"] = memory_growth(runs)
    data["cost_model"] = cost_model(runs)
    frac = runs["big_2"]["wall_s"] / runs["big_1"]["wall_s"]
    if args.profile == "always" or (args.profile == "auto" and frac >= GOAL_INCREMENTAL_FRACTION):
        data["profile"] = profile_night2(manifests["big"], WORK / f"out-{args.rows}", args)
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_report(data, Path(args.out))


def write_report(data: dict, out: Path) -> None:
    text = report(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    json_path = out.with_suffix(".json")
    new = json.dumps(data, indent=2) + "\n"
    if not json_path.exists() or json_path.read_text() != new:
        json_path.write_text(new)
    print(text)
    print(f"wrote {out} and {json_path} (the run took {data['total_wall_s'] / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
