"""Decode stage: UniqueImage -> DecodedImage, with the seed's preprocessing."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.preprocess import DEFAULT_LIMITS, DecodeLimits, ImageDecodeError, decode_image_and_orientation
from aisthetics_transforms.records import ERRORS, DecodedImage, UniqueImage, error_row


class DecodeImages(beam.DoFn):
    """UniqueImage -> DecodedImage, or an error row (stage ``decode``) naming what is wrong
    for each manifest row with that content.

    Only the declared size is trusted before decoding, so a decompression bomb costs a
    header read, not gigabytes.
    """

    def __init__(self, limits: DecodeLimits = DEFAULT_LIMITS):
        self.limits = limits
        self.decoded = Metrics.counter("aisthetics", "decoded")
        self.errors = Metrics.counter("aisthetics", "decode_errors")

    def process(self, image: UniqueImage):
        try:
            pixels, orientation = decode_image_and_orientation(image.data, self.limits)
        except Exception as exc:  # one strange file must not fail the bundle
            error_type = exc.error_type if isinstance(exc, ImageDecodeError) else type(exc).__name__
            self.errors.inc(len(image.members))
            for member in image.members:
                yield TaggedOutput(ERRORS, error_row(member.ref, "decode", error_type, str(exc)))
            return
        self.decoded.inc()
        yield DecodedImage(image.content_sha256, image.members, pixels, orientation)
