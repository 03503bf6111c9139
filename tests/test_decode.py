"""The decode stage in a pipeline: a pool of decode threads gives exactly what decoding
one image at a time gives, with every failure still an error row."""
from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from aisthetics_transforms.decode import IN_FLIGHT_PER_THREAD, DecodeImages
from aisthetics_transforms.preprocess import ImageDecodeError, decode_image_and_orientation
from aisthetics_transforms.records import ERRORS, ImageRef, Member, UniqueImage
from test_scoring import png_declaring


def jpeg(seed: int, size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def unique_images() -> list[UniqueImage]:
    """More good images than two threads keep in flight, so outputs leave from ``process``
    as well as ``finish_bundle``; bad ones in between; some contents shared by two rows."""
    contents = [jpeg(i, (320 + 8 * i, 240)) for i in range(2 * IN_FLIGHT_PER_THREAD + 8)]
    contents[5:5] = [b"", b"not an image at all", jpeg(99, (320, 240))[:1500], png_declaring(60000, 60000)]
    images = []
    for i, data in enumerate(contents):
        rows = 2 if i % 7 == 0 else 1
        members = tuple(Member(ImageRef(f"img-{i}-{r}", f"/catalog/{i}-{r}.jpg", {}), None) for r in range(rows))
        images.append(UniqueImage(hashlib.sha256(data).hexdigest(), data, members))
    return images


def summary(decoded) -> tuple:
    ids = tuple(m.ref.image_id for m in decoded.members)
    return decoded.content_sha256, ids, hashlib.sha256(decoded.pixels.tobytes()).hexdigest(), decoded.pixels.shape


def expected_outputs(images: list[UniqueImage]) -> tuple[list, list]:
    """What decoding each image on its own gives: the reference for every thread count."""
    decoded, errors = [], []
    for image in images:
        ids = tuple(m.ref.image_id for m in image.members)
        try:
            pixels, _ = decode_image_and_orientation(image.data)
        except ImageDecodeError as exc:
            errors += [(image_id, "decode", exc.error_type) for image_id in ids]
            continue
        decoded.append((image.content_sha256, ids, hashlib.sha256(pixels.tobytes()).hexdigest(), (224, 224, 3)))
    return decoded, errors


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_decode_threads_give_the_same_outputs_and_error_rows(threads):
    images = unique_images()
    expected_decoded, expected_errors = expected_outputs(images)
    assert len(expected_decoded) > IN_FLIGHT_PER_THREAD * threads or threads > 2
    assert {e[2] for e in expected_errors} == {"EmptyImage", "UnsupportedFormat", "CorruptImage", "ImageTooLarge"}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outputs = p | beam.Create(images) | beam.ParDo(DecodeImages(threads=threads)).with_outputs(ERRORS, main="images")
        assert_that(outputs.images | "Summarize" >> beam.Map(summary), equal_to(expected_decoded), label="CheckDecoded")
        errors = outputs[ERRORS] | "ErrorKeys" >> beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"]))
        assert_that(errors, equal_to(expected_errors), label="CheckErrors")


def test_local_files_are_read_again_and_checked_against_their_hash(tmp_path):
    """Fetch carries no bytes for local files (data is None): decode reads them again, and
    a file that changed or vanished since it was fetched is a fetch error, not a wrong score."""
    images, expected_decoded, expected_errors = [], [], []
    for name, change in (("same", None), ("rewritten", b"other bytes"), ("deleted", "unlink")):
        path = tmp_path / f"{name}.jpg"
        data = jpeg(len(images), (200, 150))
        path.write_bytes(data)
        member = Member(ImageRef(name, str(path), {}), None)
        images.append(UniqueImage(hashlib.sha256(data).hexdigest(), None, (member,)))
        if change is None:
            pixels, _ = decode_image_and_orientation(data)
            expected_decoded.append((images[-1].content_sha256, (name,), hashlib.sha256(pixels.tobytes()).hexdigest(), (224, 224, 3)))
        elif change == "unlink":
            path.unlink()
            expected_errors.append((name, "fetch", "NotFound"))
        else:
            path.write_bytes(change)
            expected_errors.append((name, "fetch", "ChangedDuringRun"))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        outputs = p | beam.Create(images) | beam.ParDo(DecodeImages(threads=2)).with_outputs(ERRORS, main="images")
        assert_that(outputs.images | "Summarize" >> beam.Map(summary), equal_to(expected_decoded), label="CheckDecoded")
        errors = outputs[ERRORS] | "ErrorKeys" >> beam.Map(lambda r: (r["image_id"], r["stage"], r["error_type"]))
        assert_that(errors, equal_to(expected_errors), label="CheckErrors")
