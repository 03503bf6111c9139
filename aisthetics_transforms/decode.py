"""Decode stage: FetchedImage -> DecodedImage, with the seed's preprocessing."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.preprocess import DEFAULT_LIMITS, DecodeLimits, ImageDecodeError, decode_image
from aisthetics_transforms.records import ERRORS, DecodedImage, FetchedImage, error_row


class DecodeImages(beam.DoFn):
    """FetchedImage -> DecodedImage, or an error row (stage ``decode``) naming what is wrong.

    Only the declared size is trusted before decoding, so a decompression bomb costs a
    header read, not gigabytes.
    """

    def __init__(self, limits: DecodeLimits = DEFAULT_LIMITS):
        self.limits = limits
        self.decoded = Metrics.counter("aisthetics", "decoded")
        self.errors = Metrics.counter("aisthetics", "decode_errors")

    def process(self, fetched: FetchedImage):
        try:
            pixels = decode_image(fetched.data, self.limits)
        except ImageDecodeError as exc:
            self.errors.inc()
            yield TaggedOutput(ERRORS, error_row(fetched.ref, "decode", exc.error_type, str(exc)))
            return
        except Exception as exc:  # one strange file must not fail the bundle
            self.errors.inc()
            yield TaggedOutput(ERRORS, error_row(fetched.ref, "decode", type(exc).__name__, str(exc)))
            return
        self.decoded.inc()
        yield DecodedImage(fetched.ref, pixels)
