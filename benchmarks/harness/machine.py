"""The machine a benchmark ran on, and how much of it other processes used meanwhile.

This project's 2-core machines differ (AVX2 only or AVX-512) and are shared, so every report names
the CPU and flags, and every timed row says how many cores *other* processes used while it ran.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# Other processes using more than this many cores (or the host stealing as much) during a row make it suspect.
NOISE_CORES = 0.10
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
DISTRIBUTIONS = {  # report key -> distribution name
    "apache_beam": "apache-beam",
    "pyarrow": "pyarrow",
    "grpcio": "grpcio",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "ai_edge_litert": "ai-edge-litert",
    "numpy": "numpy",
    "pillow": "pillow",
}


def version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_info() -> dict:
    """The first processor's model name, family, model number and flags from /proc/cpuinfo."""
    info: dict = {"cpu_model": "unknown", "cpu_family": None, "cpu_model_number": None, "flags": []}
    keys = {"model name": "cpu_model", "cpu family": "cpu_family", "model": "cpu_model_number", "flags": "flags"}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return info
    seen = set()
    for line in lines:
        key, _, value = line.partition(":")
        name = keys.get(key.strip())
        if name and name not in seen:
            seen.add(name)
            info[name] = value.split() if name == "flags" else value.strip()
    return info


def machine_info() -> dict:
    cpu = cpu_info()
    flags = set(cpu.pop("flags"))
    return {
        **cpu,
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{key: version(dist) for key, dist in DISTRIBUTIONS.items()},
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def own_peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries the RSS of the parent
    that forked a process into the child's ``ru_maxrss`` across exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class CpuSnapshot:
    busy: float  # machine-wide busy CPU seconds so far (/proc/stat)
    steal: float  # seconds the hypervisor ran something else on our virtual CPUs
    ours: float  # this process and its reaped children: what the benchmark itself used
    children: float  # reaped children alone: the measured processes


def cpu_snapshot() -> CpuSnapshot:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        fields = []
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    children = kids.ru_utime + kids.ru_stime
    return CpuSnapshot(
        (user + nice + system + irq + softirq) / hz, steal / hz, me.ru_utime + me.ru_stime + children, children
    )


def noise_since(start: CpuSnapshot, wall: float) -> dict:
    """Cores used by other processes and stolen by the host over ``wall`` seconds since ``start``,
    and the CPU seconds of the children reaped meanwhile. The benchmark's own threads (a sampler,
    a loopback server) are ours, not noise."""
    end = cpu_snapshot()
    other = max(0.0, end.busy - start.busy - (end.ours - start.ours))
    return {
        "other_cpu_cores": other / wall if wall else 0.0,
        "steal_cores": (end.steal - start.steal) / wall if wall else 0.0,
        "children_cpu_s": end.children - start.children,
    }


def disturbed(run: dict) -> bool:
    return run["other_cpu_cores"] > NOISE_CORES or run.get("steal_cores", 0.0) > NOISE_CORES


def busy_elsewhere(seconds: float = 1.0) -> float:
    """Cores used by other processes over the next ``seconds`` (this process only sleeps)."""
    start = cpu_snapshot()
    time.sleep(seconds)
    return noise_since(start, seconds)["other_cpu_cores"]


def wait_for_idle(limit_s: float) -> float:
    """Wait (at most ``limit_s``) until other processes leave the cores alone; returns the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if busy_elsewhere(1.0) <= NOISE_CORES:
            break
    return time.perf_counter() - t0
