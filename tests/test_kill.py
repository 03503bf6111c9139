"""``python -m pipeline`` killed while it republishes a date, and two runs of one date started
together: a reader always sees the old night or the new one, whole. The output path holds ``dt=...``
itself, which must not confuse --incremental, the publish or the readers."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_publish import assert_whole

from aisthetics_transforms import layout
from aisthetics_transforms.publish import FAULT_ENV
from aisthetics_transforms.sample import write_sample_catalog

pytestmark = pytest.mark.slow  # subprocesses of python -m pipeline, killed

DATE, EARLIER = "2026-11-28", "2026-11-27"
# Named points of the publish (test_publish.py injects at every one in-process; here the
# whole process dies): the first change to the visible partition, then its last steps.
KILL_AT = ["moved.1", "before_commit", "committed", "pruned.scores", "released", "unstaged"]
BEFORE_COMMIT = {"moved.1", "before_commit"}


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image_id", "uri", "category"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> dict:
    """Two manifests of one small catalog: ``old`` (5 good rows) and ``new`` (other ids, 6
    good rows and 3 broken), each with the ids it must publish."""
    root = tmp_path_factory.mktemp("kill")
    rows = list(csv.DictReader(open(write_sample_catalog(root / "catalog", count=8, size=(320, 240)))))
    good = [r for r in rows if r["category"] != "broken"]
    broken = [r for r in rows if r["category"] == "broken"]
    new_rows = [{**r, "image_id": f"v2-{r['image_id']}"} for r in good[2:] + broken]
    manifests = {
        "old": (write_manifest(root / "old.csv", good[:5]), ([r["image_id"] for r in good[:5]], [])),
        "new": (
            write_manifest(root / "new.csv", new_rows),
            ([r["image_id"] for r in new_rows[:6]], [r["image_id"] for r in new_rows[6:]]),
        ),
    }
    return {"root": root, "manifests": manifests}


def pipeline_args(manifest: Path, output: Path, run_date: str = DATE, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        f"--manifest={manifest}",
        f"--output={output}",
        f"--run_date={run_date}",
        "--direct_running_mode=in_memory",
        "--incremental",
        "--publish_lock_ttl_seconds=1",
        *extra,
    ]


def start(args: list[str], logs: Path, fault: str = "") -> subprocess.Popen:
    env = {**os.environ, FAULT_ENV: fault} if fault else {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    logs.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(args, env=env, stdout=open(f"{logs}.out", "w"), stderr=open(f"{logs}.err", "w"))


def finish(proc: subprocess.Popen, logs: Path, want: int = 0, timeout: float = 240) -> None:
    proc.wait(timeout=timeout)
    assert proc.returncode == want, f"exit {proc.returncode}, not {want}:\n{Path(f'{logs}.err').read_text()[-3000:]}"


def whole_night(output: Path, manifests: dict) -> str:
    """Which manifest's night the date shows ("old" or "new"), checked whole."""
    summary = layout.read_summary(str(output), DATE)
    name = next(n for n, (path, _) in manifests.items() if summary["source"] == str(path))
    assert_whole(str(output), {summary["run_id"]: manifests[name][1]})
    return name


def kill_after_claim(proc: subprocess.Popen, claims: Path, delay: float) -> None:
    """SIGKILL ``proc`` ``delay`` seconds after its publish claims the date (the first thing
    a publish does; it moves files ~0.05 s later and is done in well under a second)."""

    def listed() -> set:
        try:
            return {n for n in os.listdir(claims) if n.endswith(".claim")}
        except FileNotFoundError:
            return set()

    earlier = listed()  # claims of runs killed before this one
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if listed() - earlier:
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(timeout=60)


def test_killed_republishes_leave_a_whole_night_and_a_rerun_publishes_the_new_one(catalog):
    manifests, output = catalog["manifests"], catalog["root"] / "dt=2020-01-01" / "out"
    logs = catalog["root"] / "logs"
    proc = start(pipeline_args(manifests["old"][0], output, EARLIER), logs / "earlier")
    finish(proc, logs / "earlier")
    proc = start(pipeline_args(manifests["old"][0], output), logs / "old")
    finish(proc, logs / "old")
    assert whole_night(output, manifests) == "old"
    summary = layout.read_summary(str(output), DATE)
    assert summary["incremental_from"] == layout.partition_dir(str(output), "scores", EARLIER)
    assert summary["reused"] == 5  # the earlier night was found under an output holding "dt="

    for step in KILL_AT:
        proc = start(pipeline_args(manifests["new"][0], output), logs / step, fault=f"{step}:kill")
        finish(proc, logs / step, want=-signal.SIGKILL)
        assert whole_night(output, manifests) == ("old" if step in BEFORE_COMMIT else "new"), step

    # The old night again, then SIGKILLs from outside at moments through the end of a run.
    proc = start(pipeline_args(manifests["old"][0], output), logs / "old-again")
    finish(proc, logs / "old-again")
    for delay in (0.0, 0.03, 0.06, 0.1, 0.2, 0.4):
        proc = start(pipeline_args(manifests["new"][0], output), logs / f"after-{delay}")
        kill_after_claim(proc, output / "_publish" / DATE, delay)
        # Killed mid-publish, or (a later kill) finished first; at once after the claim, always killed.
        assert proc.returncode in ((-signal.SIGKILL,) if delay == 0.0 else (0, -signal.SIGKILL)), proc.returncode
        seen = whole_night(output, manifests)
        print(f"killed {delay:.2f} s after its claim (exit {proc.returncode}): the {seen} night, whole")

    # A plain rerun, which also removes the dead runs' staging (older than 0.0001 h = 0.36 s).
    proc = start(pipeline_args(manifests["new"][0], output, DATE, "--staging_ttl_hours=0.0001"), logs / "rerun")
    finish(proc, logs / "rerun")
    assert whole_night(output, manifests) == "new"
    run_id = layout.read_summary(str(output), DATE)["run_id"]
    visible = [p.name for table in ("scores", "errors") for p in (output / table / f"dt={DATE}").iterdir()]
    assert visible and all(name.startswith(f"{run_id}-") for name in visible)  # glob readers too
    leftovers = [str(p.relative_to(output)) for d in ("_staging", "_publish") for p in (output / d).rglob("*")]
    assert not leftovers, leftovers


def test_two_runs_of_one_date_started_together_the_second_refuses_at_once(catalog):
    """One night per date, decided at launch: of two runs started together, the one that
    claims the date second refuses in one line naming the holder and when its claim expires,
    before it reads or writes anything; the other publishes a whole night."""
    manifests, output = catalog["manifests"], catalog["root"] / "concurrent" / "out"
    logs = catalog["root"] / "logs-concurrent"
    procs = {name: start(pipeline_args(manifests[name][0], output, DATE), logs / name) for name in ("old", "new")}
    ended: dict = {}
    deadline = time.monotonic() + 240
    while len(ended) < len(procs) and time.monotonic() < deadline:
        ended.update(
            {name: time.monotonic() for name, proc in procs.items() if name not in ended and proc.poll() is not None}
        )
        time.sleep(0.05)
    codes = {name: proc.returncode for name, proc in procs.items()}
    assert sorted(codes.values()) == [0, 2], codes
    winner = next(name for name, code in codes.items() if code == 0)
    loser = next(name for name, code in codes.items() if code == 2)
    lines = Path(f"{logs / loser}.err").read_text().strip().splitlines()
    claimed = rf"pipeline: {DATE} is being run by run (\S+) \(host .*\) under .*: its claim .* expires at \S+ unless"
    refused = re.match(claimed, lines[-1])
    assert refused and len([line for line in lines if line.startswith("pipeline: ")]) == 1, lines[-3:]
    assert ended[loser] < ended[winner]  # it refused at once, not after a night of its own
    summary = layout.read_summary(str(output), DATE)
    assert summary["run_id"] == refused.group(1) == json.loads(Path(f"{logs / winner}.out").read_text())["run_id"]
    assert whole_night(output, manifests) == winner
    visible = [p.name for table in ("scores", "errors") for p in (output / table / f"dt={DATE}").iterdir()]
    assert all(name.startswith(f"{summary['run_id']}-") for name in visible)
    assert not (output / "_staging").exists() and not (output / "_publish").exists()  # the claim released too
