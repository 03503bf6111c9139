"""The ``aisthetics`` command as a user meets it: a quiet first start, and every mistake
one line on stderr with a documented exit status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def aisthetics(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aisthetics_transforms.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "photo.jpg"
    pixels = np.random.default_rng(11).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


@pytest.mark.slow  # converts the model in a subprocess
def test_a_cold_start_says_one_line_and_a_warm_one_nothing(tmp_path, photo):
    """The first scoring converts the model (TensorFlow prints ~150 lines doing it); the
    user sees one line saying so. Later ones print nothing but the results, unless --verbose."""
    cache = {"AISTHETICS_CACHE_DIR": str(tmp_path / "empty-cache")}
    cold = aisthetics("score", str(photo), env=cache)
    assert cold.returncode == 0, cold.stderr
    said = f"aisthetics: converting the model for LiteRT once; cached in {tmp_path / 'empty-cache'}"
    assert cold.stderr.splitlines() == [said]
    [result] = json.loads(cold.stdout)
    assert result["image"] == str(photo) and len(result["predictions"]) == 10

    warm = aisthetics("score", str(photo), env=cache)
    assert warm.returncode == 0 and warm.stderr == ""
    assert json.loads(warm.stdout) == [result]

    verbose = aisthetics("score", "--verbose", str(photo), env=cache)
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stderr  # what is silenced otherwise
    assert json.loads(verbose.stdout) == [result]


MISTAKES = {
    # name: (arguments, what the one line must say)
    "no-command": ((), "the following arguments are required"),
    "unknown-command": (("scroe", "x.jpg"), "invalid choice: 'scroe'"),
    "no-images": (("score",), "required: IMAGE"),
    "zero-batch": (("score", "--batch_size=0", "{photo}"), "--batch_size: must be at least 1, got 0"),
    "bad-engine": (("score", "--engine=tpu", "{photo}"), "--engine: invalid choice: 'tpu'"),
    "missing-weights": (("score", "--weights={tmp}/none.hdf5", "{photo}"), "weights file '{tmp}/none.hdf5' not found"),
    "image-as-weights": (("score", "--weights={photo}", "{photo}"), "is not a readable HDF5 file"),
    "report-of-nothing": (("report", "{tmp}/no-output"), "no published night under {tmp}/no-output"),
    "report-bad-date": (
        ("report", "{tmp}", "--run_date=2026-1-5"),
        "run_date must be a date written YYYY-MM-DD, got '2026-1-5'",
    ),
    "report-bad-top": (("report", "{tmp}", "--top=0"), "--top must be between 1 and"),
}


@pytest.mark.parametrize("name", MISTAKES)
def test_every_mistake_is_one_line_and_exit_status_2(name, tmp_path, photo):
    args, said = MISTAKES[name]
    fill = {"photo": str(photo), "tmp": str(tmp_path)}
    proc = aisthetics(*(a.format(**fill) for a in args))
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("aisthetics: ") and said.format(**fill) in line
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


def test_ctrl_c_is_one_line_and_130_even_with_a_read_blocked(tmp_path, photo, litert_model):
    """A FIFO nobody writes to blocks the reading thread for good (as a hung mount would):
    the command must still end at once on Ctrl-C, without printing half a result.
    (``litert_model``: the shared model cache is warm, so nothing else is said.)"""
    fifo = tmp_path / "never-written.jpg"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aisthetics_transforms.cli", "score", str(photo), str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        # Ctrl-C as from a terminal: run as a shell's background job (`pytest &`), the test would
        # hand the command SIGINT ignored, which the command then rightly keeps ignoring.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # opening for writing succeeds once the command has opened it for reading
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr and proc.stderr.read()
                time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
        os.close(writer)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert stderr.splitlines() == ["aisthetics: interrupted"] and stdout == ""
