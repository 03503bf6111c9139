"""The converted model's way to a worker (``model_cache``): a worker given the launcher's
staged copy never converts (nor imports TensorFlow); processes of one machine that must
convert take turns, and only the first converts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aisthetics_transforms.model import load_model, local_weights
from aisthetics_transforms.model_cache import cache_dir, litert_file_name, stage_litert_model

pytestmark = pytest.mark.slow  # fresh worker processes, one conversion

WORKER = """
import sys, numpy as np
from aisthetics_transforms.model import load_model
model = load_model(staged=sys.argv[1] or None)
out = model.predict(np.zeros((1, 224, 224, 3), np.float32))
print("tensorflow imported:", "tensorflow" in sys.modules)
print("first:", float(out[0][0]))
"""


def worker(cache: Path, staged: str = "") -> subprocess.Popen:
    env = {**os.environ, "AISTHETICS_CACHE_DIR": str(cache)}
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, staged], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_worker_with_the_staged_model_never_converts(tmp_path, model_cache):
    sha = local_weights(None)[1]
    converted = cache_dir() / litert_file_name(sha)
    load_model()  # the launcher's cache (this session's)
    staged = stage_litert_model(converted, str(tmp_path / "job-temp"))
    assert staged == str(tmp_path / "job-temp" / "aisthetics-models" / converted.name)
    fresh = tmp_path / "worker-cache"  # a new worker VM: nothing converted yet
    proc = worker(fresh, staged)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "converting" not in err and "tensorflow imported: False" in out
    assert (fresh / converted.name).read_bytes() == converted.read_bytes()
    expected = load_model().predict(np.zeros((1, 224, 224, 3), np.float32))[0][0]
    assert f"first: {float(expected)}" in out


def test_processes_of_one_machine_convert_once_between_them(tmp_path):
    cache = tmp_path / "shared-cache"
    procs = [worker(cache) for _ in range(3)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), [err[-2000:] for _, err in outputs]
    converting = [err for _, err in outputs if "converting the model for LiteRT once" in err]
    assert len(converting) == 1  # the others waited for its result
    firsts = {line for out, _ in outputs for line in out.splitlines() if line.startswith("first:")}
    assert len(firsts) == 1
