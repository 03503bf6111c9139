"""Fetch stage: an ImageRef's uri -> the image's bytes, with limits on everything.

Local paths (and ``file://`` uris) are read with plain ``open()``, ``gs://`` through
Beam's ``FileSystems``, ``http(s)://`` through a pooled ``requests.Session``. Every
fetch is bounded by :class:`FetchLimits`: a byte cap checked against the declared
size first and again while reading, per-request connect/read timeouts, and one total
deadline per image that covers retries, back-off sleeps and a slowly dribbled body.
HTTP retries (connection failures, timeouts, 408, 429, 5xx) run in our own loop
rather than urllib3's ``Retry`` because only the loop can keep its sleeps and
``Retry-After`` waits inside the per-image deadline; redirects are followed by hand
so that each hop is checked (http/https only, at most ``max_redirects``). Each
failure is a :class:`FetchError` whose ``error_type`` is a short stable tag for the
errors table and whose message names the uri and what went wrong.
"""
from __future__ import annotations

import email.utils
import hashlib
import os
import random
import re
import stat
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, NamedTuple, Optional
from urllib.parse import unquote, urljoin, urlsplit

import requests
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    DecodeError,
    LocationParseError,
    NameResolutionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.retry import Retry


MiB = 1024 * 1024
_CHUNK = 1 * MiB
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = f"aisthetics-fetch (requests/{requests.__version__})"


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one image's fetch. Times are in seconds."""

    max_bytes: int = 50 * MiB
    connect_timeout: float = 5.0
    read_timeout: float = 15.0  # longest silence tolerated between two reads
    deadline: float = 60.0  # total per image: retries, back-off and body included
    retries: int = 3  # further attempts after the first, over the whole fetch
    backoff: float = 0.5  # base of the jittered exponential back-off
    max_retry_after: float = 30.0  # a longer Retry-After is waited only this long
    max_redirects: int = 5

    def __post_init__(self):
        for name in ("max_bytes", "connect_timeout", "read_timeout", "deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FetchLimits.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "backoff", "max_retry_after", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"FetchLimits.{name} must be >= 0, got {getattr(self, name)!r}")


DEFAULT_LIMITS = FetchLimits()


class FetchError(Exception):
    """A uri that could not be fetched. ``error_type`` is a stable CamelCase tag."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self):
        return type(self), (self.error_type, str(self))


class _Retryable(Exception):
    """One HTTP attempt failed in a way worth another try."""

    def __init__(self, error: FetchError, retry_after: Optional[float] = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Clock:
    """The per-image deadline."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def exceeded(self, uri: str, doing: str) -> FetchError:
        return FetchError(
            "DeadlineExceeded",
            f"deadline of {self.seconds:g}s (deadline) exceeded {doing} for {uri}",
        )


# ---------------------------------------------------------------------------
# Entry point


class Fetched(NamedTuple):
    data: bytes
    version: Optional[str]  # the change signal seen while fetching, see source_version()
    pin: Optional[str] = None  # what a refetch needs to get exactly these bytes (gs: generation)


def fetch_bytes(
    uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None
) -> bytes:
    """Return the bytes at ``uri`` or raise :class:`FetchError`."""
    return fetch_image(uri, limits, session).data


def fetch_image(
    uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None, *, known=None
) -> Fetched:
    """Return the bytes at ``uri`` and their version signal, or raise :class:`FetchError`.

    ``uri`` is a local path, a ``file://`` uri, ``gs://bucket/object`` or ``http(s)://``.
    ``session`` (from :func:`make_http_session`) is used for http(s); without one a
    temporary session is made and closed.
    """
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        if session is not None:
            return _fetch_http(uri, limits, session)
        with make_http_session(limits) as temporary:
            return _fetch_http(uri, limits, temporary)
    if scheme == "gs":
        _check_gcs_uri(uri)
        return _fetch_filesystems(uri, limits)
    return _fetch_local(_local_path(uri, scheme), uri, limits)


def is_local_file(uri: str) -> bool:
    """A local path or ``file://`` uri: bytes that are cheaper to read again than to carry."""
    return _scheme(uri) in ("", "file")


def read_again(uris: Iterable[str], content_sha256: str, limits: FetchLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of the first of ``uris`` (local files, already fetched once) that still
    hash to ``content_sha256``; when none does, the last one's :class:`FetchError`.

    :class:`FetchImages` does not carry local files' bytes through the shuffle that
    groups rows by content (the local runner holds every shuffled byte in memory, in
    several copies); decode reads them here instead, from the page cache.
    """
    failure = None
    for uri in uris:
        try:
            data = fetch_image(uri, limits).data
        except FetchError as err:
            failure = err
            continue
        if hashlib.sha256(data).hexdigest() == content_sha256:
            return data
        failure = FetchError("ChangedDuringRun", f"{uri} changed between two reads in this run (sha256 differs)")
    raise failure or FetchError("NotFound", "no uri to read")


def source_version(
    uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None
) -> Optional[str]:
    """The cheapest trustworthy "has it changed?" signal for ``uri``, without reading it.

    Files: size and modification time; ``gs://``: size and update time; http(s): the
    ETag, else Last-Modified (with Content-Length), from a HEAD request. None when
    there is no such signal or the check fails: the caller then fetches the bytes and
    compares their hash. Equal to :func:`fetch_image`'s ``version`` for an unchanged
    source.
    """
    try:
        scheme = _scheme(uri)
        if scheme in ("http", "https"):
            return _head_version(uri, limits, session or make_http_session(limits))
        if scheme == "gs":
            _check_gcs_uri(uri)
            return _filesystems_version(uri)
        return _stat_version(os.stat(_local_path(uri, scheme)))
    except (FetchError, OSError, ValueError, requests.RequestException, BeamIOError):
        return None


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise FetchError("InvalidUri", f"uri must be a non-empty string, got {uri!r}")
    match = _SCHEME.match(uri)
    return match.group(1).lower() if match else ""


def _local_path(uri: str, scheme: str) -> str:
    if scheme == "file":
        return _file_uri_to_path(uri)
    if scheme:
        raise FetchError(
            "UnsupportedScheme",
            f"unsupported uri scheme {scheme + '://'!r} in {uri} "
            "(use a local path, file://, gs://, http:// or https://)",
        )
    return uri


def _stat_version(info: os.stat_result) -> str:
    return f"size={info.st_size};mtime_ns={info.st_mtime_ns}"


def _filesystems_version(uri: str) -> Optional[str]:
    [metadata] = FileSystems.match([uri], limits=[1])[0].metadata_list or [None]
    if metadata is None or metadata.path != uri:
        return None
    return f"size={metadata.size_in_bytes};updated={metadata.last_updated_in_seconds!r}"


def _http_version(headers) -> Optional[str]:
    etag = headers.get("ETag")
    if etag:
        return f"etag={etag}"
    modified = headers.get("Last-Modified")
    if modified:
        return f"last-modified={modified};length={headers.get('Content-Length', '')}"
    return None


def _head_version(uri: str, limits: FetchLimits, session: requests.Session) -> Optional[str]:
    """One HEAD per hop, following redirects by the same rules as a fetch; no retries
    (a failed check only means the bytes get fetched and hashed)."""
    url = uri
    for _ in range(limits.max_redirects + 1):
        timeout = (limits.connect_timeout, limits.read_timeout)
        with session.head(url, timeout=timeout, allow_redirects=False) as response:
            if response.status_code in _REDIRECT_STATUSES and response.headers.get("Location"):
                url = urljoin(url, response.headers["Location"])
                if urlsplit(url).scheme.lower() not in ("http", "https"):
                    return None
                continue
            return _http_version(response.headers) if response.status_code == 200 else None
    return None


# ---------------------------------------------------------------------------
# Local files and Beam FileSystems


def _file_uri_to_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise FetchError(
            "InvalidUri",
            f"file uri names host {parts.netloc!r}; only local files can be read: {uri}",
        )
    if not parts.path:
        raise FetchError("InvalidUri", f"file uri has no path: {uri}")
    return unquote(parts.path)


def _too_large(uri: str, limits: FetchLimits, what: str) -> FetchError:
    return FetchError(
        "TooLarge", f"{what} exceeds {limits.max_bytes} bytes (max_bytes) for {uri}"
    )


def _read_capped(
    fileobj: BinaryIO, uri: str, limits: FetchLimits, clock: _Clock, size_hint: Optional[int]
) -> bytes:
    # Ask for one byte more than expected: that reads a whole file in one call and
    # still notices a file that is longer than it claimed (or a device like /dev/zero).
    first = min(size_hint, limits.max_bytes) + 1 if size_hint is not None else _CHUNK
    parts = []
    total = 0
    want = first
    while True:
        if clock.expired():
            raise clock.exceeded(uri, f"after reading {total} bytes")
        chunk = fileobj.read(min(want, limits.max_bytes + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
        if total > limits.max_bytes:
            raise _too_large(uri, limits, "file")
        want = _CHUNK
    return b"".join(parts)


def _fetch_local(path: str, uri: str, limits: FetchLimits) -> Fetched:
    clock = _Clock(limits.deadline)
    try:
        # stat before open: opening a FIFO would block until someone writes to it.
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
        if not stat.S_ISREG(info.st_mode):
            raise FetchError("NotAFile", f"not a regular file (device, FIFO or socket): {uri}")
        if info.st_size > limits.max_bytes:
            raise _too_large(uri, limits, f"file size {info.st_size} bytes")
        with open(path, "rb") as f:
            return Fetched(_read_capped(f, uri, limits, clock, info.st_size), _stat_version(info))
    except FetchError:
        raise
    except OSError as exc:
        raise _os_error(uri, exc) from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise FetchError("InvalidUri", f"invalid local path {uri!r}: {exc}") from None


def _os_error(uri: str, exc: OSError) -> FetchError:
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError):
        return FetchError("NotFound", f"no such file: {uri}")
    if isinstance(exc, IsADirectoryError):
        return FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
    if isinstance(exc, PermissionError):
        return FetchError("PermissionDenied", f"permission denied reading {uri}")
    if isinstance(exc, NotADirectoryError):
        return FetchError("NotFound", f"no such file (a parent is not a directory): {uri}")
    return FetchError("ReadFailed", f"could not read {uri}: {reason}")


def _check_gcs_uri(uri: str) -> None:
    # Checked here because the GCS client may first spend many seconds looking
    # for credentials before it notices that the uri could never work.
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket or not name:
        raise FetchError("InvalidUri", f"a GCS uri must look like gs://BUCKET/OBJECT, got {uri}")
    if name.endswith("/"):
        raise FetchError("IsADirectory", f"names a GCS folder, not an object: {uri}")


def _fetch_filesystems(uri: str, limits: FetchLimits) -> Fetched:
    clock = _Clock(limits.deadline)
    try:
        version = _filesystems_version(uri)
        # UNCOMPRESSED: AUTO would silently gunzip an object whose name ends in .gz.
        with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            size = _seekable_size(f)
            if size is not None and size > limits.max_bytes:
                raise _too_large(uri, limits, f"object size {size} bytes")
            return Fetched(_read_capped(f, uri, limits, clock, size), version)
    except FetchError:
        raise
    except Exception as exc:  # the GCS client raises many types; classify them here
        raise _filesystems_error(uri, exc) from None


def _seekable_size(f: BinaryIO) -> Optional[int]:
    try:
        if not f.seekable():
            return None
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        return size
    except (OSError, ValueError, AttributeError):
        return None


def _filesystems_error(uri: str, exc: Exception) -> FetchError:
    if isinstance(exc, BeamIOError) and exc.exception_details:
        inner = next(iter(exc.exception_details.values()))
        if isinstance(inner, Exception):
            exc = inner
    code = getattr(exc, "code", None)  # google.api_core errors carry the HTTP status
    if code == 404 or isinstance(exc, FileNotFoundError):
        return FetchError("NotFound", f"no such object: {uri}")
    if code in (401, 403) or isinstance(exc, PermissionError):
        return FetchError("PermissionDenied", f"permission denied reading {uri}: {exc}")
    if isinstance(exc, ValueError):
        return FetchError("InvalidUri", f"invalid uri {uri}: {exc}")
    return FetchError(type(exc).__name__, f"could not read {uri}: {exc}")


# ---------------------------------------------------------------------------
# HTTP


def make_http_session(
    limits: FetchLimits = DEFAULT_LIMITS, pool_size: int = 16
) -> requests.Session:
    """A ``requests.Session`` with a connection pool of ``pool_size`` per host.

    The adapter itself never retries or redirects: :func:`fetch_bytes` does both
    so that they stay inside ``limits.deadline``.
    """
    session = requests.Session()
    adapter = HTTPAdapter(
        pool_connections=pool_size, pool_maxsize=pool_size, max_retries=Retry(0, read=False)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = limits.max_redirects
    # Images do not compress; identity also spares us decompressing a hostile body.
    session.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    return session


class ThreadSessions:
    """One ``requests.Session`` per thread (a Session is not documented thread-safe), for
    DoFns that fetch or check many uris at once on a thread pool; ``close`` closes all."""

    def __init__(self, limits: FetchLimits = DEFAULT_LIMITS):
        self.limits = limits
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = make_http_session(self.limits)
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()
            self._all.clear()


def _fetch_http(uri: str, limits: FetchLimits, session: requests.Session) -> Fetched:
    clock = _Clock(limits.deadline)
    url = uri
    hops = []  # urls redirected from, in order
    failures = 0
    while True:
        if clock.expired():
            raise clock.exceeded(uri, f"before requesting {url}")
        try:
            body, location = _http_attempt(session, url, uri, limits, clock)
        except _Retryable as exc:
            failures += 1
            if failures > limits.retries:
                raise FetchError(
                    exc.error.error_type, f"{exc.error} (gave up after {failures} attempts)"
                ) from None
            _sleep_before_retry(exc, failures, limits, clock)
            continue
        if location is None:
            return body
        target = urljoin(url, location)
        scheme = urlsplit(target).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchError(
                "RedirectRefused",
                f"refused redirect from {url} to {target}: "
                f"only http and https are followed (for {uri})",
            )
        hops.append(url)
        if len(hops) > limits.max_redirects:
            loop = " (a redirect loop)" if target in hops else ""
            raise FetchError(
                "TooManyRedirects",
                f"more than {limits.max_redirects} redirects (max_redirects){loop} for {uri}, "
                f"last to {target}",
            )
        url = target


def _sleep_before_retry(exc: _Retryable, failures: int, limits: FetchLimits, clock: _Clock):
    if exc.retry_after is not None:
        wait = min(exc.retry_after, limits.max_retry_after)
    else:
        # "Equal jitter": half fixed, half random, so clients that failed together
        # do not come back together.
        step = min(limits.backoff * 2 ** (failures - 1), limits.max_retry_after)
        wait = step / 2 + random.uniform(0, step / 2)
    if wait >= clock.remaining():
        raise FetchError(
            "DeadlineExceeded",
            f"deadline of {clock.seconds:g}s (deadline) would pass before retrying "
            f"after {exc.error} "
            f"(next attempt in {wait:.1f}s)",
        )
    time.sleep(wait)


def _http_attempt(
    session: requests.Session, url: str, uri: str, limits: FetchLimits, clock: _Clock
) -> tuple:
    """One request: returns ``(Fetched, None)``, ``(None, location)`` or raises."""
    remaining = clock.remaining()
    where = url if url == uri else f"{url} (redirected from {uri})"
    timeout = (min(limits.connect_timeout, remaining), min(limits.read_timeout, remaining))
    try:
        response = session.get(url, stream=True, timeout=timeout, allow_redirects=False)
    except requests.exceptions.ConnectTimeout:
        raise _timeout_error(
            clock, where, f"connecting (connect_timeout {limits.connect_timeout:g}s)"
        ) from None
    except requests.exceptions.ReadTimeout:
        raise _timeout_error(
            clock, where, f"waiting for the response (read_timeout {limits.read_timeout:g}s)"
        ) from None
    except requests.exceptions.SSLError as exc:
        raise FetchError("TlsError", f"TLS failed for {where}: {_root_cause(exc)}") from None
    except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema, LocationParseError) as exc:
        raise FetchError("InvalidUri", f"invalid url {where}: {exc}") from None
    except requests.exceptions.ConnectionError as exc:
        cause = _root_cause(exc)
        error = FetchError("ConnectionFailed", f"could not connect to {where}: {cause}")
        if isinstance(cause, NameResolutionError):
            raise error from None  # an unknown host stays unknown for the next few seconds
        raise _Retryable(error) from None

    with response:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("Location")
            if not location:
                raise FetchError(
                    "HttpError", f"HTTP {status} {response.reason} without a Location for {where}"
                )
            return None, location
        if 200 <= status < 300:
            body = _read_http_body(response, where, limits, clock)
            return Fetched(body, _http_version(response.headers)), None
        message = f"HTTP {status} {response.reason} for {where}"
        if status in (404, 410):
            raise FetchError("NotFound", message)
        if status in (401, 403):
            raise FetchError("PermissionDenied", message)
        if status in (408, 429) or status >= 500:
            raise _Retryable(FetchError("HttpError", message), _retry_after(response))
        raise FetchError("HttpError", message)


def _timeout_error(clock: _Clock, where: str, doing: str) -> Exception:
    if clock.expired():
        return clock.exceeded(where, doing)
    return _Retryable(FetchError("Timeout", f"timed out {doing} for {where}"))


def _root_cause(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "reason", None)
        if not isinstance(inner, BaseException) and exc.args:
            inner = exc.args[0]
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _retry_after(response: requests.Response) -> Optional[float]:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own back-off
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class _DeadlinePassed(Exception):
    pass


def _read_http_body(
    response: requests.Response, where: str, limits: FetchLimits, clock: _Clock
) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(where, limits, f"Content-Length {int(declared)}")
    raw = response.raw
    parts = []
    total = 0
    try:
        for chunk in _read_body_chunks(raw, limits, clock):
            parts.append(chunk)
            total += len(chunk)
            if total > limits.max_bytes:
                raise _too_large(where, limits, "body")
    except ReadTimeoutError:
        raise _timeout_error(
            clock,
            where,
            f"reading the body after {total} bytes (read_timeout {limits.read_timeout:g}s)",
        ) from None
    except (ProtocolError, SSLError) as exc:
        raise _Retryable(
            FetchError(
                "ConnectionFailed",
                f"connection broken after {total} bytes of the body for {where}: {exc}",
            )
        ) from None
    except DecodeError as exc:
        raise FetchError(
            "ContentDecodingFailed", f"could not decode the body of {where}: {exc}"
        ) from None
    except _DeadlinePassed:
        raise clock.exceeded(where, f"while reading the body after {total} bytes") from None
    return b"".join(parts)


def _read_body_chunks(raw, limits: FetchLimits, clock: _Clock) -> Iterator[bytes]:
    # The read timeout restarts with every byte received, so a server dribbling a
    # byte every few seconds would never trip it. Before each read we shrink the
    # socket timeout to what is left of the deadline; read1 returns whatever has
    # arrived instead of waiting for a full chunk.
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    while True:
        remaining = clock.remaining()
        if remaining <= 0:
            raise _DeadlinePassed()
        if sock is not None:
            try:
                sock.settimeout(min(limits.read_timeout, remaining))
            except OSError:
                sock = None  # already closed: the read below reports it
        chunk = raw.read1(256 * 1024)
        if not chunk:
            return
        yield chunk


# ---------------------------------------------------------------------------
# Beam


# Waiting on the network costs no CPU: this many fetches at once per worker process.
DEFAULT_FETCH_THREADS = 16


# ---------------------------------------------------------------------------
# Interim: the interface the per-uri stages call (replaced by the fetch branch).


class Version(NamedTuple):
    value: Optional[str]  # the change signal; None when there is none or the check failed
    failed: Optional[str] = None  # why the check failed; None when it did not
    info: object = None  # opaque: pass to fetch_image(known=...)


def check_version(uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None) -> Version:
    return Version(source_version(uri, limits, session))


def refetch(
    uri: str, content_sha256: str, pin: Optional[str], limits: FetchLimits = DEFAULT_LIMITS,
    session: Optional[requests.Session] = None,
) -> bytes:
    data = fetch_image(uri, limits, session).data
    if hashlib.sha256(data).hexdigest() != content_sha256:
        raise FetchError("ChangedDuringRun", f"{uri} changed between two reads in this run (sha256 differs)")
    return data
