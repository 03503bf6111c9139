"""A small process between a benchmark and the child it measures.

    python -m harness.spawn REPORT.json -- CMD...

Runs CMD (same stdin, stdout, stderr, environment and cwd), waits for it with ``wait4`` and writes
its exit status, wall time, CPU and ``ru_maxrss`` to REPORT.json, then exits with CMD's status.
Why: Linux starts a child's ``ru_maxrss`` at the RSS of the process that forked it, so a benchmark
that holds hundreds of MB (bench_scale's HTTP server holds every image) would read its own size
instead of a smaller child's exact peak. This process stays a few MB, so the figure is the child's.
Only the standard library is imported, to stay small.
"""

import json
import os
import subprocess
import sys
import time


def own_peak_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def main() -> int:
    report, separator, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    if separator != "--" or not cmd:
        raise SystemExit("usage: python -m harness.spawn REPORT.json -- CMD...")
    spawner_kb = own_peak_kb()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(report, "w") as f:
        json.dump(
            {
                "pid": proc.pid,
                "exit_status": proc.returncode,
                "wall_s": wall,
                "ru_maxrss_kb": usage.ru_maxrss,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "spawner_peak_kb": spawner_kb,
            },
            f,
        )
    return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode


if __name__ == "__main__":
    sys.exit(main())
