"""A Dataflow job's own mistakes, refused by ``python -m pipeline --runner=DataflowRunner`` in
one line with exit status 2, in seconds, before anything is built or written, and without
a request: Beam would find them late (a traceback, or credentials retried for 90 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a python -m pipeline process each (Beam's imports)

REPO = Path(__file__).resolve().parents[1]
VALID = {
    "--runner": "DataflowRunner",
    "--project": "aisthetics-offline",
    "--region": "us-central1",
    "--temp_location": "gs://aisthetics-test/tmp",
    "--manifest": "gs://aisthetics-test/catalog.parquet",
    "--output": "gs://aisthetics-test/out",
}
MISTAKES = {
    "no project": ({"--project": None}, "needs --project"),
    "no region": ({"--region": None}, "needs --region"),
    "no temp or staging location": ({"--temp_location": None}, "needs --temp_location=gs://"),
    "a local temp location": ({"--temp_location": "/tmp/t"}, "--temp_location /tmp/t is on this machine"),
    "a local manifest": ({"--manifest": "catalog.csv"}, "--manifest catalog.csv is on this machine"),
    "a local output": ({"--output": "out"}, "--output out is on this machine, which Dataflow's workers cannot read"),
    "local weights": ({"--weights": "/w/nima.hdf5"}, "--weights /w/nima.hdf5 is on this machine"),
    "a missing setup file": ({"--setup_file": "./no-setup.py"}, "--setup_file ./no-setup.py does not exist"),
    "a malformed image": ({"--sdk_container_image": "Not An Image"}, "is not an image reference"),
    "no credentials": ({}, "no Google credentials to submit the job with: run `gcloud auth application-default login`"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_a_dataflow_mistake_is_one_line_and_exit_2_before_anything_starts(mistake, tmp_path):
    changes, expected = MISTAKES[mistake]
    args = {**VALID, **changes}
    argv = [f"{name}={value}" for name, value in args.items() if value is not None]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_", "STORAGE_EMULATOR"))}
    env.update(HOME=str(tmp_path), NO_GCE_CHECK="true")  # no gcloud configuration, not asking a VM
    if mistake != "no credentials":
        key = tmp_path / "key.json"
        key.write_text(json.dumps({"type": "authorized_user", "client_id": "x", "client_secret": "x"}))
        env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)
    before = sorted(tmp_path.rglob("*"))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("pipeline: ") and expected in lines[0], proc.stderr
    assert took < 10, took
    assert sorted(tmp_path.rglob("*")) == before  # nothing written
