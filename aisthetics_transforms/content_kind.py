"""What a body of bytes is, named from its first bytes without quoting any of them: decode
errors say what arrived instead of an image ("HTML text (1532 bytes)"), never the bytes.
"""

from __future__ import annotations

import re
from typing import Optional

# Checked in order: distinctive signatures first; text next; then signatures short
# enough to begin a text ("BM").
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x00\x00\x01\x00", "ICO icon"),
    (b"\x00\x00\x02\x00", "CUR cursor"),
    (b"icns", "ICNS icon"),
    (b"8BPS", "Photoshop image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 image"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL image"),
    (b"\xff\x0a", "JPEG XL image"),
    (b"qoif", "QOI image"),
    (b"DDS ", "DDS texture"),
    (b"%PDF-", "PDF document"),
    (b"%!PS", "PostScript document"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"PK\x05\x06", "ZIP archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive"),
    (b"Rar!\x1a\x07", "RAR archive"),
    (b"\x7fELF", "ELF executable"),
    (b"OggS", "Ogg media"),
    (b"ID3", "MP3 audio"),
    (b"fLaC", "FLAC audio"),
    (b"\x1aE\xdf\xa3", "Matroska/WebM video"),
    (b"SQLite format 3\x00", "SQLite database"),
    (b"PAR1", "Parquet file"),
)
_RIFF_KINDS = {b"WEBP": "WebP image", b"WAVE": "WAV audio", b"AVI ": "AVI video"}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
# The kinds that are images this project decodes (a decode failure of one is CorruptImage).
SUPPORTED_KINDS = {
    "JPEG image",
    "PNG image",
    "GIF image",
    "TIFF image",
    "WebP image",
    "HEIF image",
    "AVIF image",
    "BMP image",
}
# Text: no control characters but tab, newline, carriage return and form feed.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def _text_kind(head: bytes) -> Optional[str]:
    text = head.decode("utf-8", errors="ignore") if head else ""
    # A multi-byte character cut at the end of ``head`` is fine; anything else undecodable is not text.
    if len(text.encode("utf-8")) < len(head) - 3 or _CONTROL.search(text):
        return None
    start = text.lstrip("\ufeff \t\r\n").lower()
    if start.startswith(("<!doctype html", "<html")) or "<body" in start or "<head" in start:
        return "HTML text"
    if start.startswith("<svg") or (start.startswith("<?xml") and "<svg" in start):
        return "SVG image (XML text)"
    if start.startswith("<"):
        return "XML text"
    if start.startswith(("{", "[")):
        return "JSON text"
    return "plain text"


def content_kind(data: bytes) -> str:
    """A MIME-style name for what ``data`` holds ("PNG image", "HTML text", "ZIP archive",
    "binary data"...), from its first bytes; never any of the bytes themselves."""
    if not data:
        return "empty"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    if data[:4] == b"RIFF" and data[8:12] in _RIFF_KINDS:
        return _RIFF_KINDS[data[8:12]]
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _AVIF_BRANDS:
            return "AVIF image"
        return "HEIF image" if brand in _HEIF_BRANDS else "MP4 or QuickTime media"
    text = _text_kind(data[:4096])
    if text:
        return text
    if (
        data[:2] == b"BM"
        and len(data) >= 18
        and int.from_bytes(data[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    ):
        return "BMP image"
    return "binary data"


def describe_content(data: bytes) -> str:
    """``content_kind`` and the size, e.g. "HTML text (1532 bytes)"."""
    return f"{content_kind(data)} ({len(data)} bytes)"
