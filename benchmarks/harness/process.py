"""Measured child processes: their environment, their one result line, their process tree's memory.

Every row of every benchmark runs in a fresh process, so imports and peak memory of one row do not
leak into another, and is timed from the parent around the whole process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from . import BENCH_DIR, MODEL_CACHE, REPO
from .machine import cpu_snapshot, disturbed, noise_since, own_peak_rss_mb, wait_for_idle

RESULT_MARK = "BENCH_RESULT "  # a child's one result line on stdout: this mark, then JSON


def child_env(source: Path = REPO, extra_path: Sequence[str] = (), unset_openblas: bool = False) -> dict:
    """The environment of every measured child: the code under test (``source``) and this harness
    importable, the model converted once into benchmarks/.cache/aisthetics/, TensorFlow quiet.
    ``unset_openblas`` drops OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE, which slow a current numpy's GEMM."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["AISTHETICS_CACHE_DIR"] = str(MODEL_CACHE)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [*map(str, extra_path), str(source), str(BENCH_DIR), env.get("PYTHONPATH")])
    )
    if unset_openblas:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def emit(result: dict) -> None:
    """Child side: print the result line, with this process's own peak RSS and whether it imported TF."""
    result.setdefault("peak_rss_mb", own_peak_rss_mb())
    result.setdefault("tensorflow_imported", "tensorflow" in sys.modules)
    print(RESULT_MARK + json.dumps(result), flush=True)


def find_result(stdout: str) -> dict | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    return None


def parse_result(proc: subprocess.CompletedProcess, what: str) -> dict:
    """The result line of a child run with ``subprocess.run(capture_output=True, text=True)``."""
    result = find_result(proc.stdout)
    if result is None:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"{what}: no result (exit status {proc.returncode})")
    return result


# --- the process tree's memory ---------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
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


SPAWNER = Path(__file__).with_name("spawn.py")


def role_of(pid: int, ppid: int, root: int, cmd: str) -> str:
    """What a process of a measured tree is; ``root`` is the harness's spawner (harness/spawn.py)."""
    if pid == root:
        return "spawner"
    if ppid == root:
        return "launcher"
    if cmd.startswith(("/bin/sh ", "sh ")):
        return "shell"  # Beam starts each SDK worker through `/bin/sh -c python -m ...sdk_worker_main`
    if "sdk_worker_main" in cmd:
        return "worker"
    return "other"


class TreeSampler(threading.Thread):
    """Every ``interval`` s: VmHWM (peak RSS so far) of ``root`` and all its descendants.

    A process once seen is followed by (pid, start time) even if it is re-parented, and its largest
    VmHWM is kept; VmHWM never decreases, so only a peak reached in the last ``interval`` before a
    process exits can be missed (:func:`run_timed` closes that gap for the launcher with ``wait4``).
    ``root`` is the spawner; its child is the launcher, and the spawner itself is not reported.
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
            kb = _status_kb(pid)
            if "VmHWM" not in kb:
                continue
            rec = self.procs.get((pid, start))
            if rec is None:
                cmd = _cmdline(pid)
                rec = self.procs[(pid, start)] = {
                    "pid": pid,
                    "ppid": ppid,
                    "role": role_of(pid, ppid, self.root, cmd),
                    "cmdline": cmd,
                    "peak_rss_mb": 0.0,
                    "max_rss_mb": 0.0,
                    "first_seen_s": now,
                    "samples": 0,
                    "rss_timeline": [],
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
        """Every process seen, launcher first, then workers by peak; each labelled."""
        order = {"launcher": 0, "worker": 1, "shell": 2, "other": 3}
        measured = [r for r in self.procs.values() if r["role"] != "spawner"]
        procs = sorted(measured, key=lambda r: (order[r["role"]], -r["peak_rss_mb"]))
        workers = 0
        for rec in procs:
            if rec["role"] == "worker":
                workers += 1
                rec["label"] = f"worker {workers}"
            elif rec["role"] == "shell":
                rec["label"] = "sh"
            else:
                rec["label"] = rec["role"] if rec["role"] == "launcher" else f"other ({rec['cmdline'][:60]})"
        return procs


# --- one timed child ----------------------------------------------------------------------------


def run_timed(
    cmd: Sequence[str],
    *,
    env: dict,
    cwd: Path,
    log_dir: Path,
    name: str,
    sample_interval: float | None = 0.5,
    timelines: bool = True,
    label: str | None = None,
) -> dict:
    """Run ``cmd`` to its end, timed around the whole process (start-up included).

    ``cmd`` runs under harness/spawn.py, which times it and takes its exact ``wait4`` figures (wall,
    CPU, the tree's largest peak RSS) from a parent of a few MB. stdout goes to ``log_dir/NAME.stdout``
    (a ``RESULT_MARK`` line there becomes ``result``), stderr to ``NAME.log``. With ``sample_interval``,
    a :class:`TreeSampler` follows the peak RSS of every process in the tree. A non-zero exit ends the
    benchmark with the log's tail.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path, stdout_path, spawn_path = (log_dir / f"{name}{ext}" for ext in (".log", ".stdout", ".spawn.json"))
    spawn_path.unlink(missing_ok=True)
    start = cpu_snapshot()
    with open(stdout_path, "w") as out, open(log_path, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, str(SPAWNER), str(spawn_path), "--", *cmd], stdout=out, stderr=err, env=env, cwd=cwd
        )
        sampler = TreeSampler(proc.pid, sample_interval) if sample_interval else None
        if sampler:
            sampler.start()
        proc.wait()
        outer_wall = time.perf_counter() - t0
    if sampler:
        sampler.stop()
    noise = noise_since(start, outer_wall)
    if proc.returncode != 0 or not spawn_path.exists():
        sys.stderr.write("\n" + log_path.read_text()[-4000:])
        raise SystemExit(f"{label or name}: exit status {proc.returncode}: {' '.join(cmd)} (log: {log_path})")
    spawned = json.loads(spawn_path.read_text())
    stdout = stdout_path.read_text()
    run = {
        "command": " ".join(map(str, cmd)),
        "process_wall_s": spawned["wall_s"],
        "process_cpu_s": spawned["cpu_s"],
        "other_cpu_cores": noise["other_cpu_cores"],
        "steal_cores": noise["steal_cores"],
        "log": str(log_path),
        "result": find_result(stdout),
        "stdout_tail": stdout[-2000:],
    }
    if sampler:
        procs = sampler.result()
        launcher = next((p for p in procs if p["role"] == "launcher"), None)
        if launcher is None:  # it exited before the first sample
            launcher = {
                "pid": spawned["pid"],
                "role": "launcher",
                "label": "launcher",
                "cmdline": " ".join(cmd),
                "peak_rss_mb": 0.0,
                "samples": 0,
                "rss_timeline": [],
            }
            procs.insert(0, launcher)
        launcher["sampled_peak_rss_mb"] = launcher["peak_rss_mb"]
        # wait4's ru_maxrss is the largest peak of the launcher and every descendant it reaped, and at
        # least the spawner's own RSS at the fork: it is the launcher's own when above the spawner's
        # and no other process was seen in the tree.
        if spawned["ru_maxrss_kb"] > spawned["spawner_peak_kb"]:
            run["largest_peak_exact_mb"] = spawned["ru_maxrss_kb"] / 1024
            if len(procs) == 1:
                launcher["peak_rss_mb"] = max(launcher["peak_rss_mb"], run["largest_peak_exact_mb"])
        if not timelines:
            procs = [{k: v for k, v in p.items() if k != "rss_timeline"} for p in procs]
        workers = [p["peak_rss_mb"] for p in procs if p["role"] == "worker"]
        run.update(
            {
                "processes": procs,
                "launcher_peak_rss_mb": launcher["peak_rss_mb"],
                "worker_peak_rss_mb": max(workers, default=None),
                "worker_count": len(workers),
                "tree_peak_rss_mb": sum(p["peak_rss_mb"] for p in procs),  # each process's own peak, added up
                "sampler": {"interval_s": sample_interval, "samples": sampler.samples},
            }
        )
    return run


def describe(run: dict) -> str:
    """One progress line's worth: wall time, memory, and whether others disturbed the run."""
    text = f"{run['process_wall_s']:.1f} s"
    if "processes" in run:
        text += f"; launcher {run['launcher_peak_rss_mb']:.0f} MB"
        if run["worker_count"]:
            text += f", {run['worker_count']} workers, the largest {run['worker_peak_rss_mb']:.0f} MB"
    if disturbed(run):
        text += (
            f"  [disturbed: other processes used {run['other_cpu_cores']:.2f} cores, host stole "
            f"{run.get('steal_cores', 0.0):.2f}]"
        )
    return text


def quietest(run_once: Callable[[], dict], *, label: str, idle_wait: float, retry: bool = True) -> dict:
    """Wait up to ``idle_wait`` s for quiet, run; a run disturbed by other processes is run once more
    (when ``retry`` and ``idle_wait`` > 0) and the quieter run kept. The others are in ``other_attempts``."""
    attempts = []
    for attempt in range(2 if retry and idle_wait > 0 else 1):
        waited = wait_for_idle(idle_wait) if idle_wait > 0 else 0.0
        print(f"  {label}{' (again)' if attempt else ''} ...", end="", file=sys.stderr, flush=True)
        run = run_once()
        run["idle_wait_s"] = waited
        print(f" {describe(run)}", file=sys.stderr, flush=True)
        attempts.append(run)
        if not disturbed(run):
            break
    best = min(attempts, key=lambda r: r["other_cpu_cores"] + r.get("steal_cores", 0.0))
    best["attempts"] = len(attempts)
    others = [{k: v for k, v in r.items() if k != "processes"} for r in attempts if r is not best]
    if others:
        best["other_attempts"] = others
    return best
