"""``gs://`` fetches and version checks with the fewest billed requests.

A version check is one metadata request (generation and size); a fetch is that plus one
media request pinned to the generation it gave (so the bytes and the version agree),
or the media request alone when the caller passes the metadata of its version check
(:class:`GcsObject`, as ``Version.info``). The size cap is checked from the metadata
before downloading. The client is made the way Beam makes its own (so credentials
behave as in Beam's FileSystems), once per process and emulator host, and its
requests sit inside the per-image deadline: timeouts and retries are cut to what is
left of it, and its sockets are registered with the fetch watchdog.
"""

from __future__ import annotations

import os
import threading
from typing import NamedTuple, Optional

from aisthetics_transforms.fetch.connections import GuardedAdapter, watched
from aisthetics_transforms.fetch.guards import (
    BYTES_IN_FLIGHT,
    BodyBuffer,
    body_buffer,
)
from aisthetics_transforms.fetch.limits import (
    Deadline,
    Fetched,
    FetchError,
    FetchLimits,
    Version,
    too_large,
)


class GcsObject(NamedTuple):
    """What one metadata request tells about an object: small and picklable."""

    bucket: str
    name: str
    generation: str
    size: int

    @property
    def version(self) -> str:
        return f"generation={self.generation};size={self.size}"


def split_gcs_uri(uri: str) -> tuple[str, str]:
    # Checked here because the GCS client may first spend many seconds looking
    # for credentials before it notices that the uri could never work.
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket or not name:
        raise FetchError("InvalidUri", f"a GCS uri must look like gs://BUCKET/OBJECT, got {uri}")
    if name.endswith("/"):
        raise FetchError("IsADirectory", f"names a GCS folder, not an object: {uri}")
    return bucket, name


_clients: dict = {}
_clients_lock = threading.Lock()


def storage_client():
    """The process's google-cloud-storage client, made by Beam's ``create_storage_client``.
    One per ``STORAGE_EMULATOR_HOST`` value, so tests that point it elsewhere get a new one."""
    key = os.environ.get("STORAGE_EMULATOR_HOST")
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from apache_beam.io.gcp.gcsio import create_storage_client
            from apache_beam.options.pipeline_options import PipelineOptions

            # google-cloud-storage 3.x looks each bucket up in the background for its
            # tracing attributes: one more billed request per bucket and process, which
            # this supported switch turns off unless the user has set it.
            os.environ.setdefault("DISABLE_GCS_PYTHON_CLIENT_OTEL_BUCKET_METADATA", "true")
            client = create_storage_client(PipelineOptions())
            # Our adapter: sockets the watchdog can cut, and a pool for the default fetch (16)
            # and decode threads of a process together (more threads than that reconnect).
            adapter = GuardedAdapter(pool_size=32, check_addresses=False)
            client._http.mount("https://", adapter)
            client._http.mount("http://", adapter)
            _clients[key] = client
    return client


def gcs_version(uri: str, limits: FetchLimits) -> Version:
    """One metadata request; ``info`` carries it to :func:`gcs_fetch` (``known=``)."""
    found = _metadata(uri, limits, Deadline(limits.deadline))
    return Version(found.version, None, found)


def gcs_fetch(uri: str, limits: FetchLimits, known: Optional[GcsObject] = None) -> Fetched:
    deadline = Deadline(limits.deadline)
    bucket, name = split_gcs_uri(uri)
    if isinstance(known, GcsObject) and (known.bucket, known.name) == (bucket, name):
        try:
            return _fetch_object(uri, known, limits, deadline)
        except FetchError as err:
            if err.error_type not in ("NotFound", "ChangedDuringRun"):
                raise
            # That generation was replaced since the check (GCS: 404 for it; a server that
            # ignores the pin: other bytes than its size): fetch the current one.
    return _fetch_object(uri, _metadata(uri, limits, deadline), limits, deadline)


def _fetch_object(uri: str, found: GcsObject, limits: FetchLimits, deadline: Deadline) -> Fetched:
    if found.size > limits.max_bytes:
        raise too_large(uri, limits, f"object size {found.size} bytes")
    data = _download(uri, found.bucket, found.name, found.generation, found.size, limits, deadline, pinned=False)
    return Fetched(data, found.version, f"{found.generation}:{found.size}")


def gcs_fetch_pinned(uri: str, pin: str, limits: FetchLimits) -> bytes:
    """Only the media request, for the pinned generation; ``ChangedDuringRun`` when it is
    gone. The pin carries the size too, so the read reserves that much of the byte budget,
    not ``max_bytes`` (a generation's bytes never change)."""
    bucket, name = split_gcs_uri(uri)
    generation, size = pinned_generation(pin)
    return _download(uri, bucket, name, generation, size, limits, Deadline(limits.deadline), pinned=True)


def pinned_generation(pin: str) -> tuple[str, int]:
    """(generation, size) of a pin made by :func:`gcs_fetch`."""
    generation, size = pin.split(":")
    return generation, int(size)


def _metadata(uri: str, limits: FetchLimits, deadline: Deadline) -> GcsObject:
    bucket, name = split_gcs_uri(uri)
    try:
        client = storage_client()
        with watched(uri, limits, deadline):
            blob = client.bucket(bucket).get_blob(name, timeout=deadline.timeouts(limits), retry=retry_within(deadline))
    except FetchError:
        raise
    except Exception as exc:  # the client raises many types; classified here
        raise _gcs_error(uri, exc, deadline, "reading the object's metadata") from None
    if blob is None:
        raise FetchError("NotFound", f"no such object: {uri}")
    return GcsObject(bucket, name, str(blob.generation), int(blob.size or 0))


class _CappedWriter:
    """The file object a download writes to: refuses more than ``max_bytes``."""

    def __init__(self, buffer: BodyBuffer, uri: str, limits: FetchLimits):
        self.buffer = buffer
        self.written = 0
        self._uri, self._limits = uri, limits

    def write(self, chunk) -> int:
        self.written += len(chunk)
        if self.written > self._limits.max_bytes:
            raise too_large(self._uri, self._limits, "object")
        return self.buffer.write(chunk)

    def tell(self) -> int:
        return self.buffer.tell()


def _download(uri, bucket, name, generation, size: int, limits, deadline, pinned: bool) -> bytes:
    """The bytes of that generation, which the metadata (or the pin) said are ``size`` long."""
    with BYTES_IN_FLIGHT.reserve(size, limits.max_bytes_in_flight, deadline, uri), body_buffer(size) as buffer:
        writer = _CappedWriter(buffer, uri, limits)
        try:
            client = storage_client()
            blob = client.bucket(bucket).blob(name, generation=int(generation))
            with watched(uri, limits, deadline) as watch:
                # raw_download: the stored bytes, never transcoded (an object saved with
                # Content-Encoding: gzip would otherwise arrive decompressed).
                blob.download_to_file(
                    writer, raw_download=True, timeout=deadline.timeouts(limits), retry=retry_within(deadline)
                )
            if watch.fired:  # what was read after the watchdog cut the connection is void
                raise deadline.exceeded(uri, "downloading the object")
        except FetchError:
            raise
        except Exception as exc:
            if pinned and getattr(exc, "code", None) == 404:
                raise FetchError(
                    "ChangedDuringRun", f"{uri} generation {generation} is gone: the object changed during the run"
                ) from None
            raise _gcs_error(uri, exc, deadline, "downloading the object") from None
        if writer.written != size:
            raise FetchError("ChangedDuringRun", f"{uri}: read {writer.written} bytes, its metadata said {size}")
        return writer.buffer.take()


def retry_within(deadline: Deadline):
    """google-cloud-storage's retry policy, cut to what is left of ``deadline``."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_timeout(max(deadline.remaining(), 0.0))


def _gcs_error(uri: str, exc: Exception, deadline: Deadline, doing: str) -> FetchError:
    import requests
    from google.api_core import exceptions as api_exceptions

    code = getattr(exc, "code", None)  # google.api_core errors carry the HTTP status
    if code == 404:
        return FetchError("NotFound", f"no such object: {uri}")
    if code in (401, 403):
        return FetchError("PermissionDenied", f"permission denied reading {uri}: {exc}")
    if deadline.expired() or isinstance(exc, api_exceptions.RetryError):
        return deadline.exceeded(uri, doing)
    if isinstance(code, int):
        return FetchError("HttpError", f"HTTP {code} {doing} for {uri}: {exc}")
    if isinstance(exc, (requests.exceptions.Timeout, TimeoutError)):
        return FetchError("Timeout", f"timed out {doing} for {uri}: {exc}")
    if isinstance(exc, (requests.exceptions.ConnectionError, OSError)):
        return FetchError("ConnectionFailed", f"connection failed {doing} for {uri}: {exc}")
    return FetchError("ReadFailed", f"could not read {uri} ({doing}): {type(exc).__name__}: {exc}")
