"""The scoring core: seed parity for both engines, through the API and the CLI, and its errors.

Only the seed-parity tests read the seed's photos (``ava``, from ../shared); they skip,
saying so, where that folder is absent. Everything else scores the package's sample photos."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zlib

import h5py
import numpy as np
import pytest
from conftest import SEED_SCORES
from PIL import Image

from aisthetics_transforms import ImageScoringError, get_aisthetics_model
from aisthetics_transforms.model import (
    DEFAULT_WEIGHTS_SHA256,
    WeightsError,
    default_weights_path,
    file_sha256,
    load_model,
    tflite_model_path,
)
from aisthetics_transforms.preprocess import ImageDecodeError, decode_image, to_model_input

# The Keras reference imports TensorFlow (seconds): its runs are in the slow set.
ENGINES = ["litert", pytest.param("keras", marks=pytest.mark.slow)]
TOLERANCE = 1e-5  # the issue asks for 1e-4; both engines are within ~2e-6 of the seed


def assert_matches_seed(result: dict, name: str) -> None:
    expected = SEED_SCORES[name]
    assert result["mean_score_prediction"] == pytest.approx(expected["mean"], abs=TOLERANCE)
    assert result["sd_score_prediction"] == pytest.approx(expected["sd"], abs=TOLERANCE)
    assert result["predictions"] == pytest.approx(expected["predictions"], abs=TOLERANCE)


def assert_same_scores(printed: dict, expected: dict) -> None:
    """A result that went through JSON (a CLI's or another process's) equals one made here."""
    assert printed["mean_score_prediction"] == pytest.approx(expected["mean_score_prediction"], abs=1e-6)
    assert printed["sd_score_prediction"] == pytest.approx(expected["sd_score_prediction"], abs=1e-6)
    assert printed["predictions"] == pytest.approx(list(expected["predictions"]), abs=1e-6)


def seed_pixels(path) -> np.ndarray:
    """The seed's preprocessing, written out independently of decode.py."""
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.NEAREST))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aisthetics_transforms.cli", *args], capture_output=True, text=True, timeout=300
    )


def test_default_weights_are_the_seeds_file():
    assert file_sha256(default_weights_path()) == DEFAULT_WEIGHTS_SHA256


@pytest.mark.parametrize("engine", ENGINES)
def test_api_matches_seed_readme(request, ava, engine):
    model = request.getfixturevalue(f"{engine}_model")  # the LiteRT run never loads Keras
    for name in SEED_SCORES:
        path = str(ava / name)
        [result] = model.predict(images=path, augmented=True)
        assert result["image"] == path
        assert_matches_seed(result, name)


@pytest.mark.parametrize("engine", ENGINES)
def test_cli_matches_seed_readme(ava, engine):
    paths = [str(ava / name) for name in SEED_SCORES]
    proc = run_cli("score", "--engine", engine, *paths)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == paths
    for result, name in zip(results, SEED_SCORES):
        assert_matches_seed(result, name)


@pytest.mark.slow  # loads the Keras reference network (imports TensorFlow)
def test_engines_agree_on_every_photo(models, photos):
    paths = [str(p) for p in photos]
    litert = np.stack(models["litert"].predict(images=paths))
    keras = np.stack(models["keras"].predict(images=paths))
    assert litert.shape == (len(paths), 10)
    np.testing.assert_allclose(litert, keras, atol=2e-6)
    np.testing.assert_allclose(litert.sum(axis=1), 1.0, atol=1e-5)


def test_plain_predict_returns_arrays_and_batches_like_single_calls(litert_model, photos):
    paths = [str(p) for p in photos] * 3  # more than one batch of 4
    small_batches = get_aisthetics_model(engine="litert", batch_size=4)
    batched = small_batches.predict(images=paths)
    assert len(batched) == len(paths)
    assert all(isinstance(p, np.ndarray) and p.shape == (10,) for p in batched)
    for path, p in zip(paths, batched):
        np.testing.assert_array_equal(p, litert_model.predict(images=path)[0])


@pytest.mark.slow  # loads the Keras reference network
def test_model_version_names_weights_and_engine(models):
    assert models["litert"].model_version == f"nima-mobilenet-{DEFAULT_WEIGHTS_SHA256[:12]}-litert"
    assert models["keras"].model_version == f"nima-mobilenet-{DEFAULT_WEIGHTS_SHA256[:12]}-keras"


def test_preprocessing_is_the_seeds(photos):
    for path in photos:
        pixels = decode_image(path.read_bytes())
        np.testing.assert_array_equal(pixels, seed_pixels(path))
        seed_input = (seed_pixels(path).astype(np.float64) / 127.5 - 1).astype(np.float32)
        np.testing.assert_array_equal(to_model_input(pixels)[0], seed_input)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "LA", "1", "I;16"])
def test_other_colour_modes_are_scored_like_the_seed(tmp_path, photos, litert_model, mode):
    source = Image.open(photos[0])
    converted = source.convert(mode) if mode != "I;16" else source.convert("L").convert("I;16")
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    path = tmp_path / f"image.{fmt.lower()}"
    converted.save(path, fmt)
    assert Image.open(path).mode == mode
    np.testing.assert_array_equal(decode_image(path.read_bytes()), seed_pixels(path))
    [p] = litert_model.predict(images=str(path))
    expected = litert_model.model.predict(to_model_input(seed_pixels(path)))[0]
    np.testing.assert_array_equal(p, expected)


def test_bad_images_are_errors_and_the_rest_is_scored(tmp_path, photos, litert_model):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(photos[0].read_bytes()[:3000])
    html = tmp_path / "page.jpg"
    html.write_text("<html><body>not a photo</body></html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.jpg"
    good = str(photos[1])
    inputs = [str(truncated), good, str(html), str(empty), str(missing), str(tmp_path)]
    [alone] = litert_model.predict(images=good, augmented=True)

    results = litert_model.score(inputs)
    assert [r["image"] for r in results] == inputs
    assert results[1] == alone  # scored among bad images as on its own
    errors = {r["image"]: r["error"] for r in results if "error" in r}
    assert set(errors) == set(inputs) - {good}
    assert "could not be decoded" in errors[str(truncated)]
    assert "not a supported image format" in errors[str(html)]
    assert "empty" in errors[str(empty)]
    assert "No such file" in errors[str(missing)]
    assert "directory" in errors[str(tmp_path)].lower()
    for path, message in errors.items():
        assert message.startswith(path)

    with pytest.raises(ImageScoringError, match="truncated.jpg"):
        litert_model.predict(images=[good, str(truncated)])

    proc = run_cli("score", *inputs)
    assert proc.returncode == 1
    printed = json.loads(proc.stdout)
    assert [("error" in r) for r in printed] == [r["image"] != good for r in printed]
    assert_same_scores(printed[1], alone)
    assert str(missing) in proc.stderr


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header (correct CRC) whose IHDR claims width x height."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_decompression_bomb_header_is_refused_before_decoding():
    with pytest.raises(ImageDecodeError, match="3600000000 pixels") as caught:
        decode_image(png_declaring(60000, 60000))
    assert caught.value.error_type == "ImageTooLarge"
    with pytest.raises(ImageDecodeError, match="9000x9000 = 81000000 pixels") as caught:
        decode_image(png_declaring(9000, 9000))
    assert caught.value.error_type == "ImageTooLarge"


def _weights_copy(tmp_path, name="weights.hdf5"):
    path = tmp_path / name
    shutil.copy(default_weights_path(), path)
    return path


def _wrong_head(tmp_path):
    path = _weights_copy(tmp_path, "five_classes.hdf5")
    with h5py.File(path, "r+") as f:
        group = f["dense_1"]["dense_1"]
        del group["kernel:0"]
        group["kernel:0"] = np.zeros((1024, 5), np.float32)
    return path


def _truncated(tmp_path):
    path = tmp_path / "truncated.hdf5"
    path.write_bytes(open(default_weights_path(), "rb").read()[: 1 << 20])
    return path


def _not_hdf5(tmp_path):
    path = tmp_path / "notes.hdf5"
    path.write_text("these are not weights")
    return path


@pytest.mark.parametrize(
    "make_weights, message",
    [
        (lambda tmp: tmp / "absent.hdf5", "not found"),
        (_truncated, "truncated"),
        (_not_hdf5, "not a readable HDF5"),
        (_wrong_head, r"layer 'dense_1' has shapes \[\(1024, 5\), \(10,\)\], expected \[\(1024, 10\), \(10,\)\]"),
    ],
    ids=["missing", "truncated", "not-hdf5", "wrong-shape"],
)
def test_bad_weights_are_one_clear_line(tmp_path, photos, make_weights, message):
    weights = make_weights(tmp_path)
    with pytest.raises(WeightsError, match=message) as caught:
        load_model("keras", str(weights))
    assert str(weights) in str(caught.value)
    proc = run_cli("score", "--weights", str(weights), str(photos[0]))
    assert proc.returncode == 2
    assert proc.stdout == ""
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("aisthetics: ") and str(weights) in last
    assert "Traceback" not in proc.stderr


def test_warm_cache_process_neither_converts_nor_imports_tensorflow(litert_model, model_cache, photos):
    cached = tflite_model_path(default_weights_path(), DEFAULT_WEIGHTS_SHA256)
    assert cached.parent == model_cache
    before, files = cached.stat().st_mtime_ns, set(model_cache.iterdir())
    code = (
        "import sys, json, aisthetics_transforms as a;"
        f"r = a.get_aisthetics_model().predict(images={str(photos[1])!r}, augmented=True);"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'keras': 'keras' in sys.modules, 'r': r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["tf"] is False and out["keras"] is False
    [here] = litert_model.predict(images=str(photos[1]), augmented=True)
    assert_same_scores(out["r"][0], here)  # the cached model is the one converted here
    assert cached.stat().st_mtime_ns == before and set(model_cache.iterdir()) == files


def test_weights_from_another_path_share_the_cache_by_content(tmp_path, litert_model, model_cache):
    files = set(model_cache.iterdir())
    copy = _weights_copy(tmp_path)
    loaded = load_model("litert", str(copy))
    assert loaded.weights_sha256 == DEFAULT_WEIGHTS_SHA256
    assert set(model_cache.iterdir()) == files  # nothing converted again
    assert os.path.basename(str(copy)) != os.path.basename(default_weights_path())
