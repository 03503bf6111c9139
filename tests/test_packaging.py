"""The Dataflow packaging agrees with the pinned versions and the pipeline's options."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import apache_beam
import pytest

from pipeline.options import AistheticsOptions

REPO = Path(__file__).resolve().parents[1]


def test_worker_image_matches_the_pinned_beam_and_python():
    dockerfile = (REPO / "Dockerfile").read_text()
    [(python, beam)] = re.findall(r"^FROM apache/beam_python(\d+\.\d+)_sdk:(\S+)$", dockerfile, re.M)
    assert beam == apache_beam.__version__  # the workers run the Beam this launcher resolves
    pinned = re.search(r'"apache-beam\[gcp\]>=([\d.]+),', (REPO / "setup.py").read_text()).group(1)
    assert apache_beam.__version__.startswith(pinned)
    # The Flex Template launcher pickles the graph with the workers' Python: the same minor version.
    assert f"python{python.replace('.', '')}-template-launcher-base" in dockerfile
    launch = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/aisthetics/(\S+)", dockerfile).group(1)
    assert (REPO / launch).is_file()


def test_flex_template_parameters_are_pipeline_options():
    """Every template parameter is a pipeline option, and a value of its kind parses (as the
    Flex Template launcher passes them: --name=value)."""
    metadata = json.loads((REPO / "dataflow" / "metadata.json").read_text())
    names = [p["name"] for p in metadata["parameters"]]
    defaults = AistheticsOptions([]).view_as(AistheticsOptions).get_all_options()
    examples = {
        "run_date": "2026-11-28",
        "incremental": "true",
        "allow_private_hosts": "true",
        "wait_until_finish": "false",
    }

    def example(name):
        if name in examples:
            return examples[name]
        return "8" if isinstance(defaults[name], (int, float)) and not isinstance(defaults[name], bool) else "x"

    opts = AistheticsOptions([f"--{name}={example(name)}" for name in names]).view_as(AistheticsOptions)
    parsed = opts.get_all_options()
    for name in names:
        assert name in parsed, name
        assert str(parsed[name]).lower() in (example(name), f"{example(name)}.0"), (name, parsed[name])
    assert opts.incremental is True and opts.batch_size == 8 and opts.run_date == "2026-11-28"
    required = {p["name"] for p in metadata["parameters"] if not p.get("isOptional")}
    assert required == {"manifest", "output"}
    assert {"sdk_container_image", "wait_until_finish", "version_column"} <= set(names)


def test_the_flex_template_launcher_does_not_wait_unless_asked(monkeypatch):
    import runpy

    import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "main", seen.append)
    for argv, wait in ((["--output=gs://b/o"], "--wait_until_finish=false"), (["--wait_until_finish=true"], None)):
        monkeypatch.setattr(sys, "argv", ["launch.py", *argv])
        runpy.run_path(str(REPO / "dataflow" / "launch.py"), run_name="__main__")
        assert (wait in seen[-1]) if wait else seen[-1] == argv


@pytest.mark.parametrize("argv, expected", [([], False), (["--incremental"], True), (["--incremental=false"], False)])
def test_incremental_flag_forms(argv, expected):
    assert AistheticsOptions(argv).view_as(AistheticsOptions).incremental is expected
