"""Decode stage: ContentTask -> DecodedImage, with the seed's preprocessing.

Fetch hashed the bytes and dropped them; here one uri of each distinct content is read
again (local files from the page cache, http and gs:// with one more request, gs://
pinned to the generation fetch saw) and must still hash to the same content. So image
bytes exist only while their image is in flight, never in a shuffle. Only the declared
size is trusted before decoding, so a decompression bomb costs a header read.
"""

from __future__ import annotations

from concurrent.futures import Future

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.bundles import WorkPool, in_global_window
from aisthetics_transforms.fetch import DEFAULT_LIMITS as DEFAULT_FETCH_LIMITS
from aisthetics_transforms.fetch import FetchError, FetchLimits, ThreadSessions, refetch
from aisthetics_transforms.preprocess import (
    DEFAULT_LIMITS,
    DecodeLimits,
    ImageDecodeError,
    decode_image_and_orientation,
)
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import ContentResult, ContentTask, DecodedImage, Failure

FAILED = "failed"
# Images submitted but not yet emitted, per decode thread: enough for the pool to decode
# about a batch ahead while the stage thread waits on inference; each holds a 150 KB
# array once decoded (and its bytes while decoding).
IN_FLIGHT_PER_THREAD = 16


def decode_content(
    task: ContentTask,
    limits: DecodeLimits = DEFAULT_LIMITS,
    fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    session=None,
) -> DecodedImage | ContentResult:
    """Read ``task``'s content again from the first of its uris that still has it, and
    decode it; a ContentResult with the failure when that is impossible."""
    failure = None
    for uri, pin in task.sources:
        try:
            data = refetch(uri, task.content_sha256, pin, fetch_limits, session)
        except FetchError as exc:
            failure = Failure("fetch", exc.error_type, str(exc))
            continue
        try:
            pixels, orientation = decode_image_and_orientation(data, limits)
        except ImageDecodeError as exc:
            return ContentResult(task.content_sha256, failure=Failure("decode", exc.error_type, f"{uri}: {exc}"))
        return DecodedImage(task.content_sha256, uri, pixels, orientation)
    return ContentResult(task.content_sha256, failure=failure)


class DecodeImages(beam.DoFn):
    """ContentTask -> DecodedImage (main), or a ContentResult with the failure (``FAILED``):
    stage ``decode``, or ``fetch`` when the content cannot be read again.

    Images are read and decoded on a pool of ``threads`` threads (Pillow releases the GIL
    while it decodes and resizes) and emitted as they finish."""

    def __init__(
        self, limits: DecodeLimits = DEFAULT_LIMITS, threads: int = 1, fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS
    ):
        self.limits = limits
        self.threads = max(1, threads)
        self.fetch_limits = fetch_limits
        self.decoded = Metrics.counter("aisthetics", "decoded")
        self.errors = Metrics.counter("aisthetics", "decode_errors")

    def setup(self):
        self._pool: WorkPool[ContentTask] = WorkPool(self.threads, IN_FLIGHT_PER_THREAD, "aisthetics-decode")
        self._sessions = ThreadSessions(self.fetch_limits)

    def teardown(self):
        self._pool.shutdown()
        self._sessions.close()

    def start_bundle(self):
        self._pool.start()

    def process(self, task: ContentTask):
        for done in self._pool.submit(task, self._decode, task):
            yield from self._outputs(*done)

    def finish_bundle(self):
        yield from in_global_window([out for done in self._pool.drain() for out in self._outputs(*done)])

    def _decode(self, task: ContentTask):
        return decode_content(task, self.limits, self.fetch_limits, self._sessions.get())

    def _outputs(self, task: ContentTask, decoding: Future):
        # Counters are only recorded on the bundle's own thread, so count here, not in the pool.
        try:
            result = decoding.result()
        except Exception as exc:  # one strange file must not fail the bundle
            uri = task.sources[0][0]
            result = ContentResult(
                task.content_sha256,
                failure=Failure("decode", "InternalError", f"{uri}: unexpected {type(exc).__name__}: {exc}"),
            )
        if isinstance(result, ContentResult):
            inc(self.errors)
            yield TaggedOutput(FAILED, result)
        else:
            inc(self.decoded)
            yield result
