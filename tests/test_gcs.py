"""The whole pipeline on gs:// paths, against a real GCS API (gcp-storage-emulator) on loopback."""

from __future__ import annotations

import collections
import io
import json
import time
import uuid

import pyarrow.parquet as pq
import pytest
from gcs_emulator import gcs  # noqa: F401  (pytest fixture)

import pipeline
from aisthetics_transforms import get_aisthetics_model

pytestmark = pytest.mark.slow  # whole-pipeline runs against the GCS emulator

RUN_DATE = "2026-11-28"
TOLERANCE = 1e-6
PHOTOS = 3
BROKEN_BYTES = b"<!DOCTYPE html><html><body>404 - not an image</body></html>\n"


def read_parquet_dir(gcs, prefix: str) -> list[dict]:
    names = [n for n in gcs.list_names(prefix) if n.endswith(".parquet")]
    assert names, f"no parquet files under gs://{gcs.bucket}/{prefix}: {gcs.list_names()}"
    rows = []
    for name in names:
        rows.extend(pq.read_table(io.BytesIO(gcs.download_bytes(name))).to_pylist())
    return rows


def test_pipeline_on_gcs(gcs, photos, tmp_path):
    started = time.monotonic()
    root = f"gcs-run-{uuid.uuid4().hex[:8]}"
    photos = {f"photo-{i}": photo for i, photo in enumerate(photos[:PHOTOS])}

    manifest = {image_id: gcs.upload_file(f"{root}/imgs/{image_id}.jpg", p) for image_id, p in photos.items()}
    manifest["broken"] = gcs.upload_bytes(f"{root}/imgs/broken.jpg", BROKEN_BYTES, "image/jpeg")
    manifest["missing"] = gcs.uri(f"{root}/imgs/does-not-exist.jpg")
    csv = "image_id,uri\n" + "".join(f"{image_id},{uri}\n" for image_id, uri in manifest.items())
    manifest_uri = gcs.upload_bytes(f"{root}/manifest.csv", csv.encode(), "text/csv")
    output = gcs.uri(f"{root}/out")

    # Expected scores from the public API on local copies (downloaded back, so the
    # bytes are the ones the pipeline reads). This also warms the model cache.
    local = {}
    for image_id in photos:
        copy = tmp_path / f"{image_id}.jpg"
        copy.write_bytes(gcs.download_bytes(manifest[image_id]))
        local[image_id] = copy
    expected = {
        stem: r
        for stem, r in zip(local, get_aisthetics_model().predict([str(c) for c in local.values()], augmented=True))
    }

    run_started = time.monotonic()
    outcome = pipeline.run(
        [
            f"--manifest={manifest_uri}",
            f"--output={output}",
            f"--run_date={RUN_DATE}",
            "--direct_running_mode=in_memory",
        ]
    )
    run_seconds = time.monotonic() - run_started

    scores = read_parquet_dir(gcs, f"{root}/out/scores/dt={RUN_DATE}/")
    assert sorted(r["image_id"] for r in scores) == sorted(expected)
    for row in scores:
        want = expected[row["image_id"]]
        assert row["uri"] == manifest[row["image_id"]]
        assert row["mean_score"] == pytest.approx(want["mean_score_prediction"], abs=TOLERANCE)
        assert row["sd_score"] == pytest.approx(want["sd_score_prediction"], abs=TOLERANCE)
        assert len(row["predictions"]) == 10
        assert row["predictions"] == pytest.approx(list(want["predictions"]), abs=TOLERANCE)
        assert row["scored_at"] is not None and row["model_version"]

    errors = {r["image_id"]: r for r in read_parquet_dir(gcs, f"{root}/out/errors/dt={RUN_DATE}/")}
    assert sorted(errors) == ["broken", "missing"]
    broken, missing = errors["broken"], errors["missing"]
    assert (broken["stage"], broken["uri"]) == ("decode", manifest["broken"])
    assert (missing["stage"], missing["uri"]) == ("fetch", manifest["missing"])
    assert missing["error_type"] == "NotFound"
    assert manifest["missing"] in missing["error_message"]
    assert broken["error_type"] and broken["error_message"]

    summary = json.loads(gcs.download_bytes(f"{root}/out/runs/dt={RUN_DATE}/summary.json"))
    assert summary["rows"] == PHOTOS + 2
    assert (summary["scored"], summary["reused"], summary["errors"]) == (PHOTOS, 0, 2)
    assert summary["errors_by_stage"]["decode"] == 1 and summary["errors_by_stage"]["fetch"] == 1
    assert summary["model_version"] == scores[0]["model_version"]
    assert summary["started_at"] <= summary["finished_at"]
    assert getattr(outcome, "summary", outcome) == summary  # run() returns what it wrote
    assert not gcs.list_names(f"{root}/out/_staging/"), "staged tables were left behind"

    total = time.monotonic() - started
    print(f"\ngcs pipeline run {run_seconds:.1f}s, whole test {total:.1f}s")
    # Without the fixture's credentials file Beam first retries google.auth.default() for
    # 15-30 s (back-off 2+4+8+16 s): the run must find the fixture's credentials at once.
    import google.auth

    credentials, _ = google.auth.default()
    assert credentials.token == "gcs-emulator-token"


def test_billed_requests_per_image_on_a_first_and_an_incremental_night(gcs, tmp_path, monkeypatch):
    """Every request the pipeline makes for the images, counted by a proxy in front of the
    emulator: a new image costs one metadata request and two media requests (fetch hashes
    the bytes and drops them; decode reads the one copy of each content again, pinned to
    the generation fetch saw); an unchanged image on an incremental night costs one
    metadata request and nothing else."""
    from conftest import sample_photo_paths
    from gcs_emulator import counting_proxy

    root = f"gcs-billing-{uuid.uuid4().hex[:8]}"
    local = sample_photo_paths(tmp_path / "sample", 4, (800, 600), seed=7)
    uris = [gcs.upload_file(f"{root}/imgs/{p.name}", p) for p in local]
    uris.append(gcs.upload_file(f"{root}/imgs/copy-of-{local[0].name}", local[0]))  # same bytes, another object
    manifest = gcs.upload_bytes(
        f"{root}/manifest.csv", ("image_id,uri\n" + "".join(f"img-{i},{u}\n" for i, u in enumerate(uris))).encode()
    )
    image_prefix = "/o/" + f"{root}/imgs/".replace("/", "%2F")

    def night(run_date: str, *extra: str) -> tuple[dict, collections.Counter]:
        with counting_proxy(gcs.host) as proxy:
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.host)
            summary = pipeline.run(
                [
                    f"--manifest={manifest}",
                    f"--output={gcs.uri(root + '/out')}",
                    f"--run_date={run_date}",
                    "--direct_running_mode=in_memory",
                    *extra,
                ]
            ).summary
            monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.host)
        kinds = collections.Counter(
            ("media" if "alt=media" in path else "metadata", path.split("?")[0].split(image_prefix)[1])
            for _, path in proxy.requests
            if image_prefix in path
        )
        return summary, kinds

    first, requests = night("2026-11-27")
    assert (first["rows"], first["scored"], first["deduplicated"], first["errors"]) == (5, 4, 1, 0)
    names = [u.rsplit("/", 1)[1] for u in uris]
    assert {name: requests["metadata", name] for name in names} == {name: 1 for name in names}
    media = {name: requests["media", name] for name in names}
    # Every object is read once to hash it; each of the 4 contents once more to decode it.
    assert sum(media.values()) == len(uris) + 4 and set(media.values()) <= {1, 2}
    assert media[names[0]] + media[names[-1]] == 3  # one of the two copies was read again

    second, requests = night("2026-11-28", "--incremental")
    assert (second["rows"], second["scored"], second["reused"], second["version_checks"]) == (5, 0, 5, 5)
    assert requests == collections.Counter({("metadata", name): 1 for name in names})
