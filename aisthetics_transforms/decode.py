"""Decode stage: ContentTask -> DecodedImage, with the seed's preprocessing.

Fetch hashed the bytes and dropped them; here one uri of each distinct content is read
again (local files from the page cache, http and gs:// with one more request, gs://
pinned to the generation fetch saw) and must still hash to the same content. So image
bytes exist only while their image is in flight, never in a shuffle. Only the declared
size is trusted before decoding, so a decompression bomb costs a header read.

The reads run on I/O threads (``read_threads``, as many as fetch has), ahead of the
decoding threads: with one decode thread per worker process (Dataflow's default) and a
store 50 ms away, the decode thread decodes while the next images are being read,
instead of waiting for each read in turn.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Optional, Union

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.bundles import WorkPool, in_global_window
from aisthetics_transforms.counters import DECODE_ERRORS, DECODED, counter
from aisthetics_transforms.fetch import DEFAULT_FETCH_THREADS, FetchError, FetchLimits, ThreadSessions, refetch
from aisthetics_transforms.fetch import DEFAULT_LIMITS as DEFAULT_FETCH_LIMITS
from aisthetics_transforms.fetch.hosts import HOSTS
from aisthetics_transforms.preprocess import (
    DEFAULT_LIMITS,
    DecodeLimits,
    ImageDecodeError,
    decode_image_and_orientation,
)
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import STATS, ContentResult, ContentTask, DecodedImage, Failure

FAILED = "failed"
# Images submitted but not yet emitted, per decode thread: enough for the pool to decode
# about a batch ahead while the stage thread waits on inference, and for the reads to
# keep ahead of the decoding; each holds its bytes from its read until it is decoded,
# then a 150 KB array.
IN_FLIGHT_PER_THREAD = 16


class Read(NamedTuple):
    """One content's bytes as read again, and the uri they came from."""

    uri: str
    data: bytes


def read_content(
    task: ContentTask, fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS, session=None
) -> Union[Read, ContentResult]:
    """``task``'s bytes from the first of its uris that still has them, or a ContentResult
    with the (fetch) failure of the last one."""
    failure: Optional[Failure] = None
    for uri, pin in task.sources:
        try:
            return Read(uri, refetch(uri, task.content_sha256, pin, fetch_limits, session))
        except FetchError as exc:
            failure = Failure("fetch", exc.error_type, str(exc))
    return ContentResult(task.content_sha256, failure=failure)


def decode_read(
    task: ContentTask, read: Union[Read, ContentResult], limits: DecodeLimits = DEFAULT_LIMITS
) -> DecodedImage | ContentResult:
    """The seed's preprocessing of what :func:`read_content` gave."""
    if isinstance(read, ContentResult):
        return read
    try:
        pixels, orientation = decode_image_and_orientation(read.data, limits)
    except ImageDecodeError as exc:
        return ContentResult(task.content_sha256, failure=Failure("decode", exc.error_type, f"{read.uri}: {exc}"))
    return DecodedImage(task.content_sha256, read.uri, pixels, orientation)


def decode_content(
    task: ContentTask,
    limits: DecodeLimits = DEFAULT_LIMITS,
    fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
    session=None,
) -> DecodedImage | ContentResult:
    """Read ``task``'s content again and decode it, here; a ContentResult with the failure
    when that is impossible."""
    return decode_read(task, read_content(task, fetch_limits, session), limits)


class DecodeImages(beam.DoFn):
    """ContentTask -> DecodedImage (main), or a ContentResult with the failure (``FAILED``):
    stage ``decode``, or ``fetch`` when the content cannot be read again; per-bundle counts
    on ``STATS``.

    Images are read on ``read_threads`` I/O threads, then decoded on ``threads`` threads
    (Pillow releases the GIL while it decodes and resizes), and emitted as they finish."""

    def __init__(
        self,
        limits: DecodeLimits = DEFAULT_LIMITS,
        threads: int = 1,
        fetch_limits: FetchLimits = DEFAULT_FETCH_LIMITS,
        read_threads: int = DEFAULT_FETCH_THREADS,
    ):
        self.limits = limits
        self.threads = max(1, threads)
        self.fetch_limits = fetch_limits
        self.read_threads = max(1, read_threads)
        self.decoded = counter(DECODED)
        self.errors = counter(DECODE_ERRORS)

    def setup(self):
        self._pool: WorkPool[ContentTask] = WorkPool(self.threads, IN_FLIGHT_PER_THREAD, "aisthetics-decode")
        self._reads = ThreadPoolExecutor(self.read_threads, thread_name_prefix="aisthetics-decode-read")
        self._sessions = ThreadSessions(self.fetch_limits)

    def teardown(self):
        self._reads.shutdown(wait=True)
        self._pool.shutdown()
        self._sessions.close()

    def start_bundle(self):
        self._pool.start()

    def process(self, task: ContentTask):
        read = self._reads.submit(self._read, task)
        decoding = self._pool.then(read, lambda content: decode_read(task, content, self.limits))
        for done in self._pool.track(task, decoding):
            yield from self._outputs(*done)

    def finish_bundle(self):
        outputs = [out for done in self._pool.drain() for out in self._outputs(*done)]
        tripped = HOSTS.take_tripped()
        if tripped:
            outputs.append(TaggedOutput(STATS, {"hosts_tripped": len(tripped)}))
        yield from in_global_window(outputs)

    def _read(self, task: ContentTask):
        return read_content(task, self.fetch_limits, self._sessions.get())

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
