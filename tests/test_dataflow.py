"""The real DataflowRunner translating the pipeline offline into a job spec (a template).

Staging goes to gcp-storage-emulator; ``--template_location`` makes the runner write
the job spec to a local file instead of submitting it, so Google is never contacted.
With runner v2 (the only one for Python) the spec carries no ``steps``: the graph
is the Beam pipeline proto staged as ``pipeline.pb`` and named by ``pipelineUrl``.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import apache_beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.portability.api import beam_runner_api_pb2
from gcs_emulator import PROJECT, gcs  # noqa: F401  (gcs is a pytest fixture)
from packaging.specifiers import SpecifierSet

from aisthetics_transforms.model import engine_name, local_weights, model_version
from aisthetics_transforms.model_cache import cache_dir, litert_file_name
from aisthetics_transforms.records import scores_schema

pytestmark = pytest.mark.slow  # the real DataflowRunner translating the graph, staging to the emulator

REPO = Path(__file__).resolve().parents[1]
RUN_DATE = "2026-11-28"
TIMEOUT = 110  # seconds per translation; each takes ~6 s here
STAGES = (
    "UniqueImageIds",
    "PlanFetches",
    "FetchImages",
    "DedupeContent",
    "DecodeImages",
    "ScoreImages",
    "JoinRows",
    "WriteTables",
)
PACKAGE_FILES = (
    "setup.py",
    "pipeline/__init__.py",
    "pipeline/options.py",
    "aisthetics_transforms/score.py",
    "aisthetics_transforms/write.py",
    "aisthetics_transforms/unique_ids.py",
)


def translate(gcs, tmp_path: Path, source_args: list[str], root: str) -> tuple[dict, float]:
    """Run ``python -m pipeline`` with the DataflowRunner into a template; return the spec."""
    template = tmp_path / "job.json"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "--runner=DataflowRunner",
        # "p" would fail Beam's project-id validation (6-30 chars); any valid id works offline.
        f"--project={PROJECT}",
        "--region=us-central1",
        f"--template_location={template}",
        f"--staging_location={gcs.uri(root + '/staging')}",
        f"--temp_location={gcs.uri(root + '/temp')}",
        f"--setup_file={REPO / 'setup.py'}",
        *source_args,
        f"--output={gcs.uri(root + '/out')}",
        f"--run_date={RUN_DATE}",
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=TIMEOUT)
    seconds = time.monotonic() - started
    print(f"\nDataflow translation took {seconds:.1f}s")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert template.is_file(), f"no job spec at {template}\nstderr:\n{proc.stderr}"
    return json.loads(template.read_text()), seconds


def gcs_name(gcs, location: str) -> str:
    """``storage.googleapis.com/BUCKET/NAME`` or ``gs://BUCKET/NAME`` -> NAME."""
    bucket, _, name = re.sub(r"^(gs://|(https?://)?storage\.googleapis\.com/)", "", location).partition("/")
    assert bucket == gcs.bucket, location
    return name


def step_names(gcs, job: dict) -> set[str]:
    """Top-level step labels: from ``steps`` (runner v1 specs) or the staged pipeline proto."""
    if job.get("steps"):
        return {s["properties"]["user_name"].split("/")[0] for s in job["steps"]}
    url = job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    proto = beam_runner_api_pb2.Pipeline.FromString(gcs.download_bytes(gcs_name(gcs, url)))
    # Nested transforms are named "Outer/Inner"; the top-level ones have no slash.
    return {t.unique_name for t in proto.components.transforms.values() if "/" not in t.unique_name}


def staged_proto(gcs, job: dict) -> beam_runner_api_pb2.Pipeline:
    url = job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    return beam_runner_api_pb2.Pipeline.FromString(gcs.download_bytes(gcs_name(gcs, url)))


def nearest_shuffle(proto: beam_runner_api_pb2.Pipeline, name: str) -> str:
    """The GroupByKey that feeds the transform ``name`` most directly: walking up its
    input through the transforms fused with it (anything but a GroupByKey)."""
    transforms = proto.components.transforms
    producer = {
        pcoll: t.unique_name for t in transforms.values() if not t.subtransforms for pcoll in t.outputs.values()
    }
    by_name = {t.unique_name: t for t in transforms.values()}
    current = by_name[name]
    for _ in range(100):
        [pcoll] = [p for tag, p in current.inputs.items() if not tag.startswith("side")]
        current = by_name[producer[pcoll]]
        if current.spec.urn == "beam:transform:group_by_key:v1":
            return current.unique_name
    raise AssertionError(f"no shuffle above {name}")


def display_values(gcs, job: dict, prefix: str, key: str) -> set[str]:
    """The string display data ``key`` of the staged pipeline proto's transforms under ``prefix``."""
    url = job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    proto = beam_runner_api_pb2.Pipeline.FromString(gcs.download_bytes(gcs_name(gcs, url)))
    found = set()
    for transform in proto.components.transforms.values():
        if transform.unique_name.startswith(prefix):
            for item in transform.display_data:
                payload = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
                if payload.key == key:
                    found.add(payload.string_value or str(payload.int_value))
    return found


def check_spec(gcs, job: dict, root: str, source_stage: str) -> None:
    assert job["type"] == "JOB_TYPE_BATCH"

    # The graph: our stage labels, by name.
    names = step_names(gcs, job)
    assert {source_stage, *STAGES} <= names, sorted(names)

    # The per-image stages sit behind a shuffle of one element per uri / per content, not a
    # bucket of rows: Dataflow spreads them over every worker and can split them.
    proto = staged_proto(gcs, job)
    assert nearest_shuffle(proto, "FetchImages").startswith("PlanFetches/SpreadUris/"), nearest_shuffle(
        proto, "FetchImages"
    )
    assert nearest_shuffle(proto, "DecodeImages").startswith("SpreadContents/")
    if source_stage == "ReadManifest":  # manifests are read in pieces spread over the workers
        assert nearest_shuffle(proto, "ReadManifest/ReadSplits").startswith("ReadManifest/SpreadSplits/")

    # Staged files: the sdist built from setup.py, next to the pipeline proto.
    staged = gcs.list_names(f"{root}/staging/")
    pool = job["environment"]["workerPools"][0]
    packages = {p["name"]: gcs_name(gcs, p["location"]) for p in pool["packages"]}
    assert "workflow.tar.gz" in packages, packages
    for name in packages.values():
        assert name in staged, (name, staged)
    pipeline_pb = gcs_name(gcs, job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"])
    assert pipeline_pb in staged and pipeline_pb.endswith("/pipeline.pb")
    # run() sets save_main_session=False: the DoFns live in the package, nothing else is pickled.
    assert not [n for n in staged if n.endswith("pickled_main_session")], staged
    with tarfile.open(fileobj=io.BytesIO(gcs.download_bytes(packages["workflow.tar.gz"]))) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert set(PACKAGE_FILES) <= members, sorted(members)

    # The SDK container: this interpreter's Python and the Beam version setup.py pins.
    beam_version = apache_beam.__version__
    pin = re.search(r'"apache-beam\[gcp\]([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert beam_version in SpecifierSet(pin), (beam_version, pin)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    image = f"beam_python{py}_sdk:{beam_version}"
    assert pool["workerHarnessContainerImage"].endswith("/" + image), pool["workerHarnessContainerImage"]
    assert [c["containerImage"].rsplit("/", 1)[1] for c in pool["sdkHarnessContainerImages"]] == [image]
    assert job["environment"]["userAgent"] == {"name": f"Apache Beam Python {py} SDK", "version": beam_version}

    # The model: converted by the launcher (or found in its cache) and staged with the job, so
    # that no worker converts (model_cache).
    [model] = [n for n in gcs.list_names(f"{root}/temp/aisthetics-models/")]
    assert model.endswith(litert_file_name(local_weights(None)[1]))
    assert gcs.download_bytes(model) == (cache_dir() / litert_file_name(local_weights(None)[1])).read_bytes()

    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["run_date"] == RUN_DATE and options["output"] == gcs.uri(root + "/out")
    assert options["inference_threads"] == 1  # one SDK process per vCPU on Dataflow
    assert options["save_main_session"] is False


def test_dataflow_template_from_manifest(gcs, photos, tmp_path):
    root = f"dataflow-manifest-{uuid.uuid4().hex[:8]}"
    uris = [gcs.upload_file(f"{root}/imgs/photo-{i}.jpg", p) for i, p in enumerate(photos[:2])]
    manifest = gcs.upload_bytes(f"{root}/manifest.csv", ("uri\n" + "\n".join(uris) + "\n").encode(), "text/csv")
    job, seconds = translate(gcs, tmp_path, [f"--manifest={manifest}"], root)
    check_spec(gcs, job, root, "ReadManifest")
    assert job["environment"]["sdkPipelineOptions"]["options"]["manifest"] == manifest
    assert seconds < 100


def test_dataflow_template_from_image_glob(gcs, photos, tmp_path):
    root = f"dataflow-images-{uuid.uuid4().hex[:8]}"
    for i, p in enumerate(photos[:2]):
        gcs.upload_file(f"{root}/imgs/photo-{i}.jpg", p)
    pattern = gcs.uri(f"{root}/imgs/*.jpg")
    job, seconds = translate(gcs, tmp_path, [f"--images={pattern}"], root)
    check_spec(gcs, job, root, "ListImages")
    assert job["environment"]["sdkPipelineOptions"]["options"]["images"] == pattern
    assert seconds < 100


def scores_partition_bytes(uris: list[str]) -> bytes:
    """A real earlier scores partition: a Parquet file in the scores schema, one row per uri."""
    version = model_version(local_weights(None)[1], engine_name("auto"))
    scored_at = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    predictions = [0.0, 0.0, 0.05, 0.15, 0.3, 0.3, 0.15, 0.05, 0.0, 0.0]
    rows = [
        {
            "image_id": uri,
            "uri": uri,
            "mean_score": 5.5,
            "sd_score": 1.4,
            "predictions": predictions,
            "model_version": version,
            "scored_at": scored_at,
            "content_sha256": f"{i:064x}",
            "source_version": f"size=1;updated={i}.0",
            "reused": False,
        }
        for i, uri in enumerate(uris)
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=scores_schema()), buffer, compression="snappy")
    return buffer.getvalue()


def test_dataflow_template_incremental(gcs, photos, tmp_path):
    root = f"dataflow-incremental-{uuid.uuid4().hex[:8]}"
    uris = [gcs.upload_file(f"{root}/imgs/photo-{i}.jpg", p) for i, p in enumerate(photos[:2])]
    manifest = gcs.upload_bytes(f"{root}/manifest.csv", ("uri\n" + "\n".join(uris) + "\n").encode(), "text/csv")
    run_id = "20261127T030000000000Z-abc123"  # a published night: its files and the summary naming their run
    previous = gcs.upload_bytes(
        f"{root}/out/scores/dt=2026-11-27/{run_id}-scores-0.parquet", scores_partition_bytes(uris)
    )
    # A file of a run that died while publishing: in the partition, but not of the published night.
    gcs.upload_bytes(
        f"{root}/out/scores/dt=2026-11-27/20261127T020000000000Z-dead00-scores-0.parquet", scores_partition_bytes(uris)
    )
    summary = {"run_id": run_id, "run_date": "2026-11-27", "rows": len(uris)}
    gcs.upload_bytes(f"{root}/out/runs/dt=2026-11-27/summary.json", json.dumps(summary).encode(), "application/json")
    job, seconds = translate(gcs, tmp_path, [f"--manifest={manifest}", "--incremental"], root)
    check_spec(gcs, job, root, "ReadManifest")
    names = step_names(gcs, job)
    assert "ReadPreviousNight" in names, sorted(names)
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert options["incremental"] is True
    assert options["manifest"] == manifest
    # The launcher found the published night on gs:// and the job reads exactly its run's file.
    assert display_values(gcs, job, "ReadPreviousNight/", "night") == {previous.rsplit("/", 1)[0]}
    assert display_values(gcs, job, "ReadPreviousNight/", "run") == {run_id}
    assert display_values(gcs, job, "ReadPreviousNight/", "files") == {"1"}
    assert seconds < 100
