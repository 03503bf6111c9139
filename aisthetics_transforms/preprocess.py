"""Image bytes -> the 224x224x3 uint8 array NIMA scores, and that array -> model input.

The preprocessing is the seed's, bit for bit: ``convert('RGB')``, resize to
224x224 with NEAREST, then ``x / 127.5 - 1`` in float32. The resize filter is
not a detail: bilinear moves mean scores by up to a point. ``predict()`` and the
pipeline's decode stage both go through :func:`decode_image` and
:func:`to_model_input`, so their numbers cannot drift apart. This module does not
import Beam, so the one-image API starts fast.

Hostile input. Only the formats in :data:`SUPPORTED_FORMATS` are opened: others
(ICO, ICNS, PSD...) decode embedded images while merely being opened, before any
size can be checked, and a catalog has no use for them. Every image's declared size
is checked against :class:`DecodeLimits` before its pixels are decoded, Pillow's own
limits (frame and tile sizes, PNG text chunks) are set from the same limits, and the
decoded size must equal the checked one. So one image in flight costs at most about
4 bytes per allowed pixel plus its metadata, whatever its bytes claim.

Every failure is an :class:`ImageDecodeError` whose ``error_type`` is one of
:data:`DECODE_ERROR_TYPES`. Messages never quote the input's bytes (it may not be an
image at all: a login page, a private file): they say what kind of content it is and
its size. They do not name the uri either; callers prefix it ("URI: message").
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import pillow_heif
from PIL import ExifTags, Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from aisthetics_transforms import settings
from aisthetics_transforms.console import one_line
from aisthetics_transforms.content_kind import SUPPORTED_KINDS, content_kind, describe_content
from aisthetics_transforms.settings import setting

# HEIC/HEIF photos (iPhones) through the maintained pillow-heif plugin; AVIF and WebP
# are built into Pillow. Thumbnails, depth and auxiliary images are never scored, so
# they are not read.
pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)

# Our limits decide; Pillow's warning below its own hard limit would only add noise.
# (A process-wide filter: catch_warnings() is not safe across decode threads.)
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

MODEL_SIZE = (224, 224)

# Pillow format names that Image.open may use. JPEG includes MPO (JPEGs with extra
# pictures, as many cameras write them): only the first picture is decoded.
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF")
SUPPORTED_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF, HEIF/HEIC, AVIF"

DECODE_ERROR_TYPES = {
    "EmptyImage": "the content is empty (0 bytes)",
    "UnsupportedFormat": "not an image in a supported format (" + SUPPORTED_FORMAT_NAMES + "); the message "
    "says what it looks like instead (HTML text, PDF document, ICO icon...) and its size",
    "CorruptImage": "an image in a supported format whose header or pixel data is damaged or truncated",
    "InvalidImage": "the header declares an empty size (0 pixels wide or high)",
    "ImageTooLarge": "the image (or a frame or tile of it) is larger than --max_pixels or --max_dimension; "
    "refused before its pixels are decoded",
    "MetadataTooLarge": "text or colour-profile metadata beyond the limit (a compressed-text bomb)",
    "DecodeFailed": "decoding failed for another reason (e.g. out of memory); the message says what",
}
"""``error_type`` of every decode failure -> what it means. Stable: tables and reports key on them."""


@dataclass(frozen=True)
class DecodeLimits:
    """What one image may cost. The declared size is checked before any pixel is decoded."""

    max_pixels: int = setting(
        64_000_000,  # e.g. 8000x8000; a 60000x60000 "bomb" is refused
        least=1,
        option="max_pixels",
        help="largest image decoded, in pixels (checked before decoding)",
    )
    max_dimension: int = setting(
        20_000, least=1, option="max_dimension", help="longest side of an image decoded, in pixels"
    )
    # PNG text chunks (tEXt/zTXt/iTXt) in total, decompressed; never scored, only held.
    max_metadata_bytes: int = setting(8 * 2**20, least=1)

    def __post_init__(self):
        settings.check(self)


DEFAULT_LIMITS = DecodeLimits()


class ImageDecodeError(ValueError):
    """An input that is not a scorable image. ``error_type`` is a key of :data:`DECODE_ERROR_TYPES`."""

    def __init__(self, error_type: str, message: str):
        assert error_type in DECODE_ERROR_TYPES, error_type
        super().__init__(message)
        self.error_type = error_type


# Library messages sometimes quote the input (a PNG chunk name, a marker): drop quoted bytes.
_QUOTED_BYTES = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")


def _library_detail(exc: BaseException) -> str:
    if not str(exc).strip():
        return "the decoder gave no reason"
    return _QUOTED_BYTES.sub("(bytes)", one_line(exc))[:200]


# --- opening and decoding ------------------------------------------------------------------


def _apply_pillow_limits(limits: DecodeLimits) -> None:
    """Set Pillow's own guards from ``limits``: they act where our check of the declared
    size cannot (a GIF frame or a TIFF tile larger than the image, PNG text chunks).
    They are process-wide; a process decodes with one set of limits."""
    # Pillow refuses above twice this (below it, it only warns, which we ignore): past our
    # limit, so that our own check of the declared size can name the width and height.
    Image.MAX_IMAGE_PIXELS = limits.max_pixels
    PngImagePlugin.MAX_TEXT_MEMORY = limits.max_metadata_bytes
    PngImagePlugin.MAX_TEXT_CHUNK = min(ImageFile.SAFEBLOCK, limits.max_metadata_bytes)


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _failure(
    data: bytes, exc: BaseException, limits: DecodeLimits, image: Optional[Image.Image] = None
) -> ImageDecodeError:
    """The ImageDecodeError for an exception Pillow raised opening or decoding ``data``."""
    what = (
        f"{image.format} image {image.size[0]}x{image.size[1]}" if image is not None else f"a {describe_content(data)}"
    )
    if isinstance(exc, Image.DecompressionBombError):  # Pillow's guard, at twice our limit
        declared = _BOMB_PIXELS.search(str(exc))
        size = f"declares {declared.group(1)} pixels" if declared else "holds a frame or tile larger than the limit"
        return ImageDecodeError(
            "ImageTooLarge",
            f"{what} {size}; the limit is {limits.max_pixels} pixels (--max_pixels); refused before decoding",
        )
    if isinstance(exc, ValueError) and "MAX_TEXT" in str(exc):  # PngImagePlugin's text limits
        return ImageDecodeError(
            "MetadataTooLarge",
            f"{what} carries more text metadata than the limit ({limits.max_metadata_bytes} bytes in all, "
            f"{PngImagePlugin.MAX_TEXT_CHUNK} per chunk, decompressed); refused",
        )
    if isinstance(exc, MemoryError):
        return ImageDecodeError("DecodeFailed", f"{what}: out of memory while decoding")
    return ImageDecodeError(
        "CorruptImage", f"{what} could not be decoded (damaged or truncated): {_library_detail(exc)}"
    )


def _unidentified(data: bytes) -> ImageDecodeError:
    kind = content_kind(data)
    if kind in SUPPORTED_KINDS:  # the right signature, but Pillow could not read the header
        return ImageDecodeError("CorruptImage", f"a {describe_content(data)} whose header is damaged or truncated")
    return ImageDecodeError(
        "UnsupportedFormat",
        f"not a supported image format: {describe_content(data)}; supported formats: {SUPPORTED_FORMAT_NAMES}",
    )


def _check_size(image: Image.Image, size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError("InvalidImage", f"{image.format} image declares an empty size {width}x{height}")
    if max(width, height) > limits.max_dimension or width * height > limits.max_pixels:
        raise ImageDecodeError(
            "ImageTooLarge",
            f"{image.format} image declares {width}x{height} = {width * height} pixels; limits are "
            f"{limits.max_pixels} pixels (--max_pixels) and {limits.max_dimension} per side (--max_dimension); "
            "refused before decoding",
        )


# Tiles come in fixed sizes (multiples of 16, often 256 or 512), so a tile may overhang
# the image's edge, or exceed a small image, by that much; never more.
_TIFF_TILE_SLACK_PIXELS = 1 << 22


def _round_up_16(n: int) -> int:
    return -(-n // 16) * 16


def _check_container(image: Image.Image) -> None:
    """Guards for what a format decodes beyond its declared size: a TIFF's decoder
    allocates whole tiles, whatever size the image is."""
    if image.format == "TIFF":
        tags = getattr(image, "tag_v2", {})  # a TIFF's tags
        tile = tags.get(322), tags.get(323)  # TileWidth, TileLength
        width, height = image.size
        padded = _round_up_16(width) * _round_up_16(height)
        tile_pixels = tile[0] * tile[1] if isinstance(tile[0], int) and isinstance(tile[1], int) else 0
        if tile_pixels > max(padded, _TIFF_TILE_SLACK_PIXELS):
            raise ImageDecodeError(
                "ImageTooLarge",
                f"TIFF image {width}x{height} is stored in {tile[0]}x{tile[1]} tiles, far larger than the image; "
                "refused before decoding",
            )


def open_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Image.Image:
    """Identify the format and check the declared size; no pixel data is decoded yet."""
    if not data:
        raise ImageDecodeError("EmptyImage", "empty (0 bytes)")
    _apply_pillow_limits(limits)
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Exception as exc:  # a header Pillow recognised but could not read
        raise _failure(data, exc, limits) from None
    _check_size(image, image.size, limits)
    _check_container(image)
    return image


# Modes whose NEAREST resize picks exactly the pixels an RGB resize picks (Pillow's
# fixed-point path; 16-bit modes take a floating-point one that rounds differently).
_RESIZE_FIRST_MODES = frozenset(
    {"1", "L", "P", "LA", "PA", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"}
)


def _model_pixels(image: Image.Image, limits: DecodeLimits) -> Image.Image:
    """Decode the (first frame's) pixels and bring them to 224x224 RGB the seed's way.

    NEAREST picks pixels and converting to RGB maps each pixel on its own, so for most
    modes resizing first gives the seed's ``convert('RGB').resize(...)`` bit for bit
    (tests check every mode) without a full-size RGB copy of the image.
    """
    declared = image.size
    image.load()
    if image.size != declared:  # a format that grew while decoding must not escape the check
        _check_size(image, image.size, limits)
    if image.mode == "RGB":
        return image.resize(MODEL_SIZE, Image.Resampling.NEAREST)
    if image.mode in _RESIZE_FIRST_MODES:
        return image.resize(MODEL_SIZE, Image.Resampling.NEAREST).convert("RGB")
    return image.convert("RGB").resize(MODEL_SIZE, Image.Resampling.NEAREST)


def _orientation(image: Image.Image) -> Optional[int]:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation)
    except Exception:  # a damaged EXIF block does not make the pixels unscorable
        return None
    return value if isinstance(value, int) and 1 <= value <= 8 else None


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
    the pixels are scored unrotated, as the seed scores them, and the tag is recorded.
    Raises nothing but :class:`ImageDecodeError`."""
    image = open_image(data, limits)
    try:
        pixels = np.asarray(_model_pixels(image, limits), dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise _failure(data, exc, limits, image) from None
    # Read after the pixels: for some formats (PNG) reading EXIF decodes the image.
    return pixels, _orientation(image)


def seed_pixels(image) -> np.ndarray:
    """A decoded image (a PIL image, or a uint8 array: HxWx3 RGB, HxW gray, HxWx4 RGBA) as the
    seed prepares it: ``convert('RGB')``, resized to 224x224 with NEAREST, as uint8. Raises
    ValueError naming what it got when it is no such image."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"expected an RGB image as uint8 HxWx3 (or HxW, HxWx4), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    return np.asarray(image.convert("RGB").resize(MODEL_SIZE, Image.Resampling.NEAREST), dtype=np.uint8)


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
