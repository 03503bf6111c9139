"""Decode stage: UniqueImage -> DecodedImage, with the seed's preprocessing."""
from __future__ import annotations

from concurrent.futures import Future

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.bundles import OrderedPool, in_global_window
from aisthetics_transforms.fetch import DEFAULT_LIMITS as DEFAULT_FETCH_LIMITS
from aisthetics_transforms.fetch import FetchError, FetchLimits, read_again
from aisthetics_transforms.preprocess import DEFAULT_LIMITS, DecodeLimits, ImageDecodeError, decode_image_and_orientation
from aisthetics_transforms.records import ERRORS, DecodedImage, UniqueImage, error_row

# Images submitted but not yet emitted, per decode thread. Enough for the pool to decode
# about a batch ahead while the stage thread waits on inference; each holds a 150 KB
# array once decoded (and its bytes while decoding).
IN_FLIGHT_PER_THREAD = 16


def decode_unique_image(image: UniqueImage, limits: DecodeLimits, fetch_limits: FetchLimits):
    """(pixels, EXIF orientation) of one distinct image; a local file's bytes, which
    fetch does not carry, are read again first (:func:`fetch.read_again`)."""
    data = image.data
    if data is None:
        data = read_again(dict.fromkeys(m.ref.uri for m in image.members), image.content_sha256, fetch_limits)
    return decode_image_and_orientation(data, limits)


class DecodeImages(beam.DoFn):
    """UniqueImage -> DecodedImage, or an error row naming what is wrong for each manifest
    row with that content: stage ``decode``, or ``fetch`` when a local file read again
    has gone or changed since it was fetched.

    Only the declared size is trusted before decoding, so a decompression bomb costs a
    header read, not gigabytes.

    Images are decoded on a pool of ``threads`` threads (Pillow releases the GIL while it
    decodes and resizes), at most ``IN_FLIGHT_PER_THREAD`` per thread at a time, and
    emitted in the order they came; ``finish_bundle`` emits the ones still in flight.
    """

    def __init__(
        self, limits: DecodeLimits = DEFAULT_LIMITS, threads: int = 1, fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS
    ):
        self.limits = limits
        self.threads = max(1, threads)
        self.fetch_limits = fetch_limits
        self.decoded = Metrics.counter("aisthetics", "decoded")
        self.errors = Metrics.counter("aisthetics", "decode_errors")
        self.fetch_errors = Metrics.counter("aisthetics", "fetch_errors")

    def setup(self):
        self._pool = OrderedPool(self.threads, IN_FLIGHT_PER_THREAD, "aisthetics-decode")

    def teardown(self):
        self._pool.shutdown()

    def start_bundle(self):
        self._pool.start()

    def process(self, image: UniqueImage):
        for done in self._pool.submit(image, decode_unique_image, image, self.limits, self.fetch_limits):
            yield from self._outputs(*done)

    def finish_bundle(self):
        for done in self._pool.drain():
            yield from in_global_window(self._outputs(*done))

    def _outputs(self, image: UniqueImage, decoding: Future):
        # Counters are only recorded on the bundle's own thread, so count here, not in the pool.
        try:
            pixels, orientation = decoding.result()
        except FetchError as exc:  # reading a local file again failed
            self.fetch_errors.inc(len(image.members))
            yield from self._errors(image, "fetch", exc.error_type, exc)
            return
        except Exception as exc:  # one strange file must not fail the bundle
            self.errors.inc(len(image.members))
            error_type = exc.error_type if isinstance(exc, ImageDecodeError) else type(exc).__name__
            yield from self._errors(image, "decode", error_type, exc)
            return
        self.decoded.inc()
        yield DecodedImage(image.content_sha256, image.members, pixels, orientation)

    def _errors(self, image: UniqueImage, stage: str, error_type: str, exc: Exception):
        for member in image.members:
            yield TaggedOutput(ERRORS, error_row(member.ref, stage, error_type, str(exc)))
