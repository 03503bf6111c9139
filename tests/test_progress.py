"""A local run says what it is doing from its first second, and ends with one summary line."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from aisthetics_transforms.progress import describe, summary_line
from aisthetics_transforms.sample import write_sample_catalog


def test_the_line_follows_the_phase_the_counts_show():
    counts = Counter(manifest_rows=1200)
    assert "reading the manifest" in describe(counts, 1.0) and "1,200 rows" in describe(counts, 1.0)
    counts.update(uris_planned=300, uris_unchanged=100, fetched=50, fetch_errors=2)
    line = describe(counts, 2.0)
    assert "checking and fetching" in line and "152/300" in line and "300 distinct uris (100 unchanged)" in line
    assert "2 errors" in line
    counts.update(contents_planned=40, scored=10, decode_errors=1)
    line = describe(counts, 3.0, rate=5.0)
    assert "scoring" in line and "11/40" in line and "40 new images" in line and "3 errors" in line
    assert "00:05" in line  # 29 images left at 5 a second: tqdm's remaining time
    counts.update(rows_written=600)
    assert "writing tables" in describe(counts, 4.0) and "600/1200" in describe(counts, 4.0)


def test_the_summary_line_accounts_for_every_row_and_says_where_the_tables_are():
    summary = {
        "rows": 51,
        "scored": 40,
        "deduplicated": 5,
        "reused": 3,
        "errors": 3,
        "run_date": "2026-11-28",
        "errors_by_stage": {"manifest": 0, "fetch": 1, "decode": 2, "score": 0},
    }
    line = summary_line(summary, 4.2, "/data/out")
    assert line.startswith("aisthetics: 51 rows in 4.2 s: 40 scored, 5 deduplicated, 3 reused from an earlier night")
    assert "3 errors (fetch 1, decode 2)" in line and "/data/out/runs/dt=2026-11-28/summary.json" in line
    assert f" {os.getcwd()}/out/scores/dt=2026-11-28/" in summary_line(summary, 1.0, "out")  # absolute, always
    assert " gs://b/out/scores/" in summary_line(summary, 1.0, "gs://b/out")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return write_sample_catalog(tmp_path_factory.mktemp("progress") / "catalog", count=24)


@pytest.mark.slow  # python -m pipeline
def test_in_a_log_a_run_prints_plain_progress_lines_and_ends_with_the_summary(catalog, tmp_path):
    output = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", f"--manifest={catalog}", f"--output={output}", "--progress_seconds=0.5"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = [(time.monotonic() - started, line.rstrip("\n")) for line in proc.stderr]
    assert proc.wait(timeout=300) == 0, lines
    assert all(line.startswith("aisthetics: ") for _, line in lines), lines
    progress = [line for _, line in lines if "reading the manifest" in line or "%|" in line]
    assert progress, lines
    assert all("\r" not in line for _, line in lines)  # not a terminal: plain lines
    last = lines[-1][1]
    assert last.startswith("aisthetics: 27 rows in ") and "24 scored" in last and "3 errors" in last, last
    assert f"{output}/scores/dt=" in last
    assert not [line for line in progress if " 0 rows" in line and "errors" not in line]  # no line of nothing
    assert not [line for _, line in lines if "Traceback" in line or "WARNING" in line]


@pytest.mark.slow  # python -m pipeline
def test_on_a_terminal_a_run_says_what_it_does_within_two_seconds_and_updates_the_line_in_place(catalog, tmp_path):
    parent, child = pty.openpty()
    chunks: list[tuple[float, bytes]] = []

    def read():
        while True:
            try:
                data = os.read(parent, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append((time.monotonic() - started, data))

    reader = threading.Thread(target=read, daemon=True)
    started = time.monotonic()
    reader.start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", f"--manifest={catalog}", f"--output={tmp_path / 'out'}"],
        stdout=subprocess.DEVNULL,
        stderr=child,
    )
    os.close(child)
    assert proc.wait(timeout=300) == 0
    reader.join(5)
    os.close(parent)
    assert chunks and chunks[0][0] < 2.0 and chunks[0][1].startswith(b"\raisthetics: "), chunks[:2]
    text = b"".join(data for _, data in chunks).decode(errors="replace")
    assert text.count("\r") >= 3, text[-500:]  # redrawn in place several times
    assert "aisthetics: 27 rows in " in text


@pytest.mark.slow  # python -m pipeline
def test_incremental_with_no_earlier_night_says_so_in_one_line(catalog, tmp_path):
    output = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"--manifest={catalog}",
            f"--output={output}",
            "--incremental",
            "--run_date=2026-11-28",
            "--progress_seconds=0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert (
        f"aisthetics: --incremental: no night published under {output} before 2026-11-28; every image is scored"
        in lines
    )
