"""The decode stage in a pipeline: a pool of decode threads gives exactly what decoding
one image at a time gives, with every failure reported for its content."""

from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image
from test_scoring import png_declaring

from aisthetics_transforms.decode import FAILED, IN_FLIGHT_PER_THREAD, DecodeImages
from aisthetics_transforms.preprocess import ImageDecodeError, decode_image_and_orientation
from aisthetics_transforms.records import ContentTask


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def write_contents(directory, contents: list[bytes]) -> list[ContentTask]:
    tasks = []
    for i, data in enumerate(contents):
        path = directory / f"{i}.jpg"
        path.write_bytes(data)
        tasks.append(ContentTask(hashlib.sha256(data).hexdigest(), ((str(path), None),)))
    return tasks


def summary(decoded) -> tuple:
    return (
        decoded.content_sha256,
        decoded.uri,
        hashlib.sha256(decoded.pixels.tobytes()).hexdigest(),
        decoded.pixels.shape,
    )


def failure_key(result) -> tuple:
    return result.content_sha256, result.failure.stage, result.failure.error_type


def expected_outputs(tasks: list[ContentTask], contents: list[bytes]) -> tuple[list, list]:
    """What decoding each image on its own gives: the reference for every thread count."""
    decoded, failed = [], []
    for task, data in zip(tasks, contents):
        try:
            pixels, _ = decode_image_and_orientation(data)
        except ImageDecodeError as exc:
            failed.append((task.content_sha256, "decode", exc.error_type))
            continue
        decoded.append(
            (task.content_sha256, task.sources[0][0], hashlib.sha256(pixels.tobytes()).hexdigest(), (224, 224, 3))
        )
    return decoded, failed


# A Beam pipeline each: the fast set keeps the many-threaded one.
@pytest.mark.parametrize(
    "threads", [pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow), 5]
)
def test_decode_threads_give_the_same_outputs_and_failures(threads, tmp_path):
    """More good images than two threads keep in flight, so outputs leave from ``process``
    as well as ``finish_bundle``; bad ones in between."""
    contents = [jpeg(i, (320 + 8 * i, 240)) for i in range(2 * IN_FLIGHT_PER_THREAD + 8)]
    contents[5:5] = [b"", b"not an image at all", jpeg(99, (320, 240))[:1500], png_declaring(60000, 60000)]
    tasks = write_contents(tmp_path, contents)
    expected_decoded, expected_failed = expected_outputs(tasks, contents)
    assert len(expected_decoded) > IN_FLIGHT_PER_THREAD * threads or threads > 2
    assert {e[2] for e in expected_failed} == {"EmptyImage", "UnsupportedFormat", "CorruptImage", "ImageTooLarge"}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outputs = p | beam.Create(tasks) | beam.ParDo(DecodeImages(threads=threads)).with_outputs(FAILED, main="images")
        assert_that(outputs.images | "Summarize" >> beam.Map(summary), equal_to(expected_decoded), label="CheckDecoded")
        failed = outputs[FAILED] | "FailureKeys" >> beam.Map(failure_key)
        assert_that(failed, equal_to(expected_failed), label="CheckFailed")


def test_contents_are_read_again_and_checked_against_their_hash(tmp_path):
    """Fetch keeps no bytes: decode reads each content again, and a file that changed or
    vanished since it was fetched is a fetch failure, not a wrong score; a content with
    several uris is read from the first that still has its bytes."""
    tasks, expected_decoded, expected_failed = [], [], []
    for name, change in (("same", None), ("rewritten", b"other bytes"), ("deleted", "unlink"), ("second", "first")):
        path = tmp_path / f"{name}.jpg"
        data = jpeg(len(tasks), (200, 150))
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        sources = ((str(path), None),)
        if change is None:
            pixels, _ = decode_image_and_orientation(data)
            expected_decoded.append((sha, str(path), hashlib.sha256(pixels.tobytes()).hexdigest(), (224, 224, 3)))
        elif change == "unlink":
            path.unlink()
            expected_failed.append((sha, "fetch", "NotFound"))
        elif change == "first":
            gone = tmp_path / "gone-copy.jpg"
            sources = ((str(gone), None), (str(path), None))
            pixels, _ = decode_image_and_orientation(data)
            expected_decoded.append((sha, str(path), hashlib.sha256(pixels.tobytes()).hexdigest(), (224, 224, 3)))
        else:
            path.write_bytes(change)
            expected_failed.append((sha, "fetch", "ChangedDuringRun"))
        tasks.append(ContentTask(sha, sources))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outputs = p | beam.Create(tasks) | beam.ParDo(DecodeImages(threads=2)).with_outputs(FAILED, main="images")
        assert_that(outputs.images | "Summarize" >> beam.Map(summary), equal_to(expected_decoded), label="CheckDecoded")
        failed = outputs[FAILED] | "FailureKeys" >> beam.Map(failure_key)
        assert_that(failed, equal_to(expected_failed), label="CheckFailed")
