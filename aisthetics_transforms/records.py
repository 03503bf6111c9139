"""The records that flow between stages, and the one shape every failure takes.

manifest -> ImageRef -> FetchedImage -> DecodedImage -> score row (dict) -> Parquet.
Each stage emits its failures on the ``errors`` tagged output as an error row
(:func:`error_row`), so every manifest row ends in exactly one of the two tables.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

ERRORS = "errors"  # tag of every stage's failure output
STAGES = ("manifest", "fetch", "decode", "score")


class ImageRef(NamedTuple):
    """One manifest row: what to score, and the user's columns to carry through."""

    image_id: str
    uri: str
    kept: dict  # --keep_columns, as strings (None for a missing value)


class FetchedImage(NamedTuple):
    ref: ImageRef
    data: bytes


class DecodedImage(NamedTuple):
    ref: ImageRef
    pixels: np.ndarray  # (224, 224, 3) uint8, see decode.decode_image


def error_row(ref: ImageRef, stage: str, error_type: str, message: str) -> dict:
    """The errors-table row for ``ref`` failing at ``stage``."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    return {
        "image_id": ref.image_id,
        "uri": ref.uri,
        "stage": stage,
        "error_type": error_type,
        "error_message": message,
        **ref.kept,
    }
