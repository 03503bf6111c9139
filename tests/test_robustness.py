"""Every kind of bad input a catalog holds: one error row each, or a score, never a failed run."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import apache_beam as beam
import duckdb
import numpy as np
import pytest
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from PIL import Image
from test_preprocess import encoded
from test_scoring import png_declaring

import pipeline
from aisthetics_transforms import score, write
from aisthetics_transforms.preprocess import decode_image, to_model_input
from aisthetics_transforms.records import error_types
from aisthetics_transforms.sample import source_photos
from aisthetics_transforms.write import RunInfo
from pipeline.options import AistheticsOptions

RUN_DATE = "2026-11-28"
SCORED = ("scores", None, None)


def ycck_jpeg(photo: Image.Image) -> bytes:
    """A JPEG whose Adobe marker says YCCK (transform 2), as some print workflows write."""
    data = bytearray(encoded(photo.convert("CMYK"), "JPEG"))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2
    return bytes(data)


def exif_rotated_jpeg(photo: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    return encoded(photo, "JPEG", exif=exif.tobytes())


def animated(photo: Image.Image, fmt: str) -> bytes:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.convert("L").convert("RGB")]
    return encoded(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def corpus(photo: Image.Image) -> dict[str, tuple[bytes, tuple]]:
    """file name -> (bytes, expected (table, stage, error_type))."""
    small = photo.resize((320, 240))
    palette = small.convert("RGBA")
    palette.putalpha(128)
    bad_decode = lambda error_type: ("errors", "decode", error_type)  # noqa: E731
    return {
        "zero-bytes.jpg": (b"", bad_decode("EmptyImage")),
        "truncated.jpg": (encoded(small, "JPEG")[:1500], bad_decode("CorruptImage")),
        "random.jpg": (np.random.default_rng(3).bytes(4096), bad_decode("UnsupportedFormat")),
        "page.jpg": (
            b"<!DOCTYPE html><html><head><title>404</title></head><body>gone</body></html>",
            bad_decode("UnsupportedFormat"),
        ),
        "notes.jpg": (b"plain text, not a picture\n" * 40, bad_decode("UnsupportedFormat")),
        "vector.jpg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
            b'<rect width="10" height="10"/></svg>',
            bad_decode("UnsupportedFormat"),
        ),
        "document.jpg": (
            b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
            bad_decode("UnsupportedFormat"),
        ),
        "bomb.png": (png_declaring(60000, 60000), bad_decode("ImageTooLarge")),
        "one-pixel.png": (encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), SCORED),
        "sixteen-bit.png": (encoded(small.convert("L").convert("I;16"), "PNG"), SCORED),
        "cmyk.jpg": (encoded(small.convert("CMYK"), "JPEG"), SCORED),
        "ycck.jpg": (ycck_jpeg(small), SCORED),
        "palette-transparency.png": (encoded(palette.convert("P"), "PNG", transparency=0), SCORED),
        "grey-alpha.png": (encoded(small.convert("LA"), "PNG"), SCORED),
        "one-bit.png": (encoded(small.convert("1"), "PNG"), SCORED),
        "animated.gif": (animated(small, "GIF"), SCORED),
        "animated.webp": (animated(small, "WEBP"), SCORED),
        "rotated.jpg": (exif_rotated_jpeg(small), SCORED),
        "photo.webp": (encoded(small, "WEBP"), SCORED),
        "photo.heic": (encoded(small, "HEIF"), SCORED),
        "photo.avif": (encoded(small, "AVIF"), SCORED),
    }


@pytest.fixture(scope="module")
def bad_catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("robustness")
    files = root / "files"
    files.mkdir()
    photo = source_photos()["china"]  # a real photograph, 640x427
    expected = {}
    rows = []
    for name, (data, outcome) in corpus(photo).items():
        (files / name).write_bytes(data)
        rows.append((name, str(files / name)))
        expected[name] = outcome
    (files / "a-directory.jpg").mkdir()
    rows.append(("directory", str(files / "a-directory.jpg")))
    expected["directory"] = ("errors", "fetch", "IsADirectory")
    rows.append(("missing", str(files / "missing.jpg")))
    expected["missing"] = ("errors", "fetch", "NotFound")
    rows.append(("long-uri", str(files / ("x" * 5000 + ".jpg"))))
    expected["long-uri"] = ("errors", "fetch", "ReadFailed")
    rows.append(("one-pixel.png", str(files / "one-bit.png")))  # a duplicate image_id
    expected["duplicate"] = ("errors", "manifest", "DuplicateImageId")

    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri"])
        writer.writerows(rows)
        f.write("empty-uri,\n")
        f.write('"unclosed,quote.jpg\n')
    with open(manifest, "ab") as f:
        f.write(b"latin-1," + str(files / "caf\xe9.jpg").encode("latin-1") + b"\n")
    expected.update(
        {
            "empty-uri": ("errors", "manifest", "MissingUri"),
            "unclosed": ("errors", "manifest", "MalformedCsv"),
            "latin-1": ("errors", "manifest", "InvalidEncoding"),
        }
    )
    lines = root / "more.jsonl"
    lines.write_text(
        '{"image_id": "json-ok", "uri": "%s"}\n{"image_id": "broken json", "uri": \n[1, 2]\n' % (files / "photo.webp")
    )
    expected.update(
        {
            "json-ok": SCORED,
            "invalid-json": ("errors", "manifest", "InvalidJson"),
            "not-an-object": ("errors", "manifest", "InvalidRow"),
        }
    )
    return {"root": root, "files": files, "manifest": manifest, "jsonl": lines, "expected": expected}


def classify(row: dict) -> str:
    """The corpus case an output row belongs to (manifest errors have no image_id of their own)."""
    if row.get("error_type") in ("DuplicateImageId",):
        return "duplicate"
    by_type = {
        "MissingUri": "empty-uri",
        "MalformedCsv": "unclosed",
        "InvalidEncoding": "latin-1",
        "InvalidJson": "invalid-json",
        "InvalidRow": "not-an-object",
    }
    if row.get("stage") == "manifest":
        return by_type[row["error_type"]]
    return row["image_id"]


@pytest.mark.slow  # whole-pipeline run
def test_every_bad_input_is_one_clear_error_row_and_the_run_succeeds(bad_catalog, litert_model):
    output = bad_catalog["root"] / "out"
    started = time.monotonic()
    proc = subprocess.run(  # the command a user runs: exit status 0 despite every bad row
        [
            sys.executable,
            "-m",
            "pipeline",
            f"--manifest={bad_catalog['root']}/m*",
            f"--output={output}",
            f"--run_date={RUN_DATE}",
            "--direct_running_mode=in_memory",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.monotonic() - started < 300
    scores = duckdb.sql(f"SELECT * FROM read_parquet('{output}/scores/*/*.parquet')").to_arrow_table().to_pylist()
    errors = duckdb.sql(f"SELECT * FROM read_parquet('{output}/errors/*/*.parquet')").to_arrow_table().to_pylist()
    expected = bad_catalog["expected"]
    seen: dict[str, tuple] = {}
    for row in scores:
        case = classify(row)
        assert case not in seen, f"{case} is in the tables twice"
        seen[case] = SCORED
    for row in errors:
        case = classify(row)
        assert case not in seen, f"{case} is in the tables twice"
        seen[case] = ("errors", row["stage"], row["error_type"])
        assert len(row["error_message"]) > 10, row
        assert row["error_type"] in error_types()[row["stage"]], row  # a documented, stable tag
    assert seen == expected
    summary = json.loads((output / "runs" / f"dt={RUN_DATE}" / "summary.json").read_text())
    assert summary["rows"] == len(expected) == len(scores) + len(errors)

    by_id = {r["image_id"]: r for r in scores}
    assert by_id["rotated.jpg"]["exif_orientation"] == 6
    assert by_id["photo.webp"]["exif_orientation"] is None
    files = bad_catalog["files"]
    for name in ("rotated.jpg", "animated.gif", "ycck.jpg", "photo.heic", "sixteen-bit.png"):
        pixels = decode_image((files / name).read_bytes())
        [expected_p] = litert_model.model.predict(to_model_input(pixels))
        np.testing.assert_allclose(by_id[name]["predictions"], expected_p, atol=1e-6)
    # The first frame of an animation is what is scored.
    first_frame = np.asarray(Image.open(files / "animated.webp").convert("RGB").resize((224, 224), Image.NEAREST))
    np.testing.assert_array_equal(decode_image((files / "animated.webp").read_bytes()), first_frame)
    messages = {classify(r): r["error_message"] for r in errors}
    assert "60000x60000" in messages["bomb.png"] or "3600000000" in messages["bomb.png"]
    assert "not a supported image format" in messages["document.jpg"]
    assert "already used" in messages["duplicate"]


@pytest.mark.slow  # a subprocess measures its peak memory
def test_memory_stays_bounded_on_bombs_and_oversized_files(tmp_path):
    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:  # 2 GB, sparse: costs no disk
        f.truncate(2 * 1024**3)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(60000, 60000))
    huge_jpeg_header = tmp_path / "wide.jpg"
    data = bytearray(encoded(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = (30000).to_bytes(2, "big") + (30000).to_bytes(2, "big")
    huge_jpeg_header.write_bytes(bytes(data))
    code = f"""
import json
from aisthetics_transforms.fetch import FetchError, FetchLimits, fetch_image
from aisthetics_transforms.preprocess import ImageDecodeError, decode_image
outcomes = []
try:
    fetch_image({str(big)!r}, FetchLimits(max_bytes=50 * 2**20))
except FetchError as e:
    outcomes.append(e.error_type)
for path in ({str(bomb)!r}, {str(huge_jpeg_header)!r}):
    try:
        decode_image(open(path, 'rb').read())
    except ImageDecodeError as e:
        outcomes.append(e.error_type)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the (large) parent across exec.
peak_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
print(json.dumps({{"outcomes": outcomes, "peak_mb": peak_kb / 1024}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["outcomes"] == ["TooLarge", "ImageTooLarge", "ImageTooLarge"]
    assert result["peak_mb"] < 250, result  # a decoded 60000x60000 image would need 10 GB


def test_an_unreadable_file_is_permission_denied(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff")
    secret.chmod(0)
    tmp_path.chmod(0o755)
    # Root reads anything, so read as an unprivileged user when we are root.
    code = (
        "import os\n"
        "from aisthetics_transforms.fetch import FetchError, fetch_image\n"
        "if os.geteuid() == 0:\n    os.setgid(65534); os.setuid(65534)\n"
        f"try:\n    fetch_image({str(secret)!r})\nexcept FetchError as e:\n    print(e.error_type, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PermissionDenied permission denied reading"), proc.stdout


@pytest.mark.slow  # whole-pipeline run
def test_a_worker_fault_is_retried_without_duplicates_or_losses(bad_catalog, tmp_path, monkeypatch):
    """The first attempt at each batch holding a marker image fails after emitting part of
    its output; Beam retries the bundle, and the tables must still hold each row once."""
    markers = {
        hashlib.sha256((bad_catalog["files"] / name).read_bytes()).hexdigest() for name in ("rotated.jpg", "cmyk.jpg")
    }
    failed: set[str] = set()
    retried: list[str] = []
    original = score.ScoreBatches.process

    def flaky_process(self, batch):
        marked = markers & {image.content_sha256 for image in batch}
        outputs = original(self, batch)
        if marked - failed:
            failed.update(marked)
            next(outputs, None)  # part of the bundle's output is produced...
            raise RuntimeError("injected worker fault")  # ...then the worker dies
        retried.extend(marked)
        yield from outputs

    monkeypatch.setattr(score.ScoreBatches, "process", flaky_process)
    output = tmp_path / "out"
    argv = [f"--manifest={bad_catalog['manifest']}", f"--output={output}", f"--run_date={RUN_DATE}", "--batch_size=3"]
    opts = AistheticsOptions(argv).view_as(AistheticsOptions)
    info = RunInfo.new(str(output), RUN_DATE, "nima-mobilenet-e563ad91b3d4-litert", str(bad_catalog["manifest"]))
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=opts)
    pipeline.build_pipeline(p, opts, info)
    p.run().wait_until_finish()

    assert failed == markers and set(retried) == markers
    scores = duckdb.sql(f"SELECT image_id, uri FROM read_parquet('{output}/scores/*/*.parquet')").fetchall()
    errors = duckdb.sql(f"SELECT image_id, uri FROM read_parquet('{output}/errors/*/*.parquet')").fetchall()
    # A duplicate image_id is legitimately in both tables, with different uris.
    assert len(scores) == len(set(scores)) and len(errors) == len(set(errors))
    assert len({image_id for image_id, _ in scores}) == len(scores)
    expected_csv_cases = {k for k in bad_catalog["expected"] if k not in ("json-ok", "invalid-json", "not-an-object")}
    assert len(scores) + len(errors) == len(expected_csv_cases)
    assert len(scores) == sum(v == SCORED for k, v in bad_catalog["expected"].items() if k in expected_csv_cases)


@pytest.mark.slow  # whole-pipeline run
def test_files_of_a_failed_write_attempt_are_not_published(bad_catalog, tmp_path, monkeypatch):
    """Each writer's first attempt writes its whole Parquet file and then dies; Beam retries
    the bundle, which writes another file. Only the committed files may be published."""
    attempts: list[str] = []
    original = write.WriteParquetFiles.finish_bundle

    def dying_finish_bundle(self):
        outputs = list(original(self))
        attempts.append(self.path)
        if len(attempts) <= 2 and outputs:  # the first file of each table, written in full
            raise RuntimeError("injected fault after the file was written")
        yield from outputs

    monkeypatch.setattr(write.WriteParquetFiles, "finish_bundle", dying_finish_bundle)
    output = tmp_path / "out"
    argv = [f"--manifest={bad_catalog['manifest']}", f"--output={output}", f"--run_date={RUN_DATE}"]
    opts = AistheticsOptions(argv).view_as(AistheticsOptions)
    info = RunInfo.new(str(output), RUN_DATE, "nima-mobilenet-e563ad91b3d4-litert", str(bad_catalog["manifest"]))
    p = beam.Pipeline(runner=BundleBasedDirectRunner(), options=opts)
    pipeline.build_pipeline(p, opts, info)
    p.run().wait_until_finish()

    failed = attempts[:2]
    assert len(attempts) >= 4, attempts  # both failed bundles were retried
    assert all(path.startswith(str(output / "_staging")) for path in failed)
    published = sorted(str(f.relative_to(output)) for f in output.glob("*/dt=*/*.parquet"))
    assert not any(os.path.basename(path) in " ".join(published) for path in failed), published
    assert not (output / "_staging").exists()
    scores = duckdb.sql(f"SELECT image_id FROM read_parquet('{output}/scores/*/*.parquet')").fetchall()
    errors = duckdb.sql(f"SELECT image_id FROM read_parquet('{output}/errors/*/*.parquet')").fetchall()
    expected_csv_cases = {k for k in bad_catalog["expected"] if k not in ("json-ok", "invalid-json", "not-an-object")}
    assert len(scores) + len(errors) == len(expected_csv_cases)
    assert len(scores) == len(set(scores))
