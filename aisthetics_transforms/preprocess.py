"""Image bytes -> the 224x224x3 uint8 array NIMA scores, and that array -> model input.

The preprocessing is the seed's, bit for bit: ``convert('RGB')``, resize to
224x224 with NEAREST, then ``x / 127.5 - 1`` in float32. The resize filter is
not a detail: bilinear moves mean scores by up to a point. ``predict()`` and the
pipeline's decode stage both go through :func:`decode_image` and
:func:`to_model_input`, so their numbers cannot drift apart. This module does not
import Beam, so the one-image API starts fast.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, UnidentifiedImageError

# HEIC/HEIF photos (iPhones) through the maintained pillow-heif plugin; AVIF and WebP
# are built into Pillow.
pillow_heif.register_heif_opener()

MODEL_SIZE = (224, 224)


@dataclass(frozen=True)
class DecodeLimits:
    """Refuse images whose header promises more than this, before decoding pixels."""

    max_pixels: int = 64_000_000  # e.g. 8000x8000; a 60000x60000 "bomb" is refused
    max_dimension: int = 20_000


DEFAULT_LIMITS = DecodeLimits()


class ImageDecodeError(ValueError):
    """An input that is not a scorable image. ``error_type`` is a stable short tag."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def _describe_start(data: bytes) -> str:
    head = data[:16]
    return f"starts with {head!r}"


def open_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Identify the format and check the declared size; no pixel data is decoded yet."""
    if not data:
        raise ImageDecodeError("EmptyImage", "file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit below decides; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(
            "UnsupportedFormat",
            f"not a supported image format ({len(data)} bytes, {_describe_start(data)})",
        ) from None
    except Image.DecompressionBombError as exc:
        # Pillow's own guard (2x its MAX_IMAGE_PIXELS) fires inside open(), before ours.
        raise ImageDecodeError("ImageTooLarge", f"refused before decoding: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError("InvalidImage", f"{image.format} declares an empty size {width}x{height}")
    if max(width, height) > limits.max_dimension or width * height > limits.max_pixels:
        raise ImageDecodeError(
            "ImageTooLarge",
            f"{image.format} declares {width}x{height} = {width * height} pixels; limits are "
            f"{limits.max_pixels} pixels and {limits.max_dimension} per side (refused before decoding)",
        )
    return image


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode image bytes into a (224, 224, 3) uint8 array exactly as the seed does.

    Animated images contribute their first frame. EXIF orientation is ignored, as
    the seed ignores it. Raises :class:`ImageDecodeError` for anything unscorable.
    """
    return decode_image_and_orientation(data, limits)[0]


def decode_image_and_orientation(
    data: bytes, limits: DecodeLimits = DEFAULT_LIMITS
) -> tuple[np.ndarray, Optional[int]]:
    """:func:`decode_image`, plus the EXIF orientation tag (1-8) when the file has one:
    the pixels are scored unrotated, as the seed scores them, and the tag is recorded."""
    image = open_image(data, limits)
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a damaged EXIF block does not make the pixels unscorable
        orientation = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            resized = rgb.resize(MODEL_SIZE, Image.NEAREST)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated or corrupt pixel data as OSError/SyntaxError.
        raise ImageDecodeError(
            "CorruptImage", f"{image.format} {image.size[0]}x{image.size[1]} could not be decoded: {exc}"
        ) from None
    valid = isinstance(orientation, int) and 1 <= orientation <= 8
    return np.asarray(resized, dtype=np.uint8), orientation if valid else None


# The seed normalises in float64 (np.empty defaults to it) and Keras casts to float32;
# a 256-entry table reproduces those values bit for bit and is cheaper than arithmetic.
_MODEL_INPUT_TABLE = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype(np.float32)


def to_model_input(images: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Stack uint8 224x224x3 arrays into the float32 batch NIMA expects: x / 127.5 - 1."""
    batch = images if isinstance(images, np.ndarray) else np.stack(list(images))
    if batch.ndim == 3:
        batch = batch[np.newaxis]
    if batch.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {batch.dtype}")
    return _MODEL_INPUT_TABLE[batch]

