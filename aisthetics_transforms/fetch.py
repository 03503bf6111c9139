"""Fetching: a uri -> the image's bytes, with limits on everything (the stage's DoFn is in ``fetch_stage``).

Local paths (and ``file://`` uris) are read with ``open()``, ``gs://`` with
google-cloud-storage (:mod:`fetch_gcs`), ``http(s)://`` through a guarded
``requests.Session`` (:mod:`fetch_http`). Every fetch is bounded by :class:`FetchLimits`:
a byte cap checked against the declared size first and again while reading, one total
deadline per image that nothing a server does can extend (a watchdog shuts its sockets
down), a guard on the addresses and paths that may be read, a limit on requests at once
per host and on body bytes being read at once in the process (:mod:`fetch_guards`).
Each failure is a :class:`FetchError` whose ``error_type`` is one of
:data:`FETCH_ERROR_TYPES` and whose message names the uri and what went wrong.

Entry points: :func:`check_version` (the cheap "has it changed?" signal, never raises),
:func:`fetch_image` (bytes, version and pin), :func:`refetch` (the same bytes again).
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Optional
from urllib.parse import unquote, urlsplit

import requests

from aisthetics_transforms.fetch_gcs import gcs_fetch, gcs_fetch_pinned, gcs_version, split_gcs_uri
from aisthetics_transforms.fetch_guards import BYTES_IN_FLIGHT, buffer_bytes, presized_buffer, refuse_path
from aisthetics_transforms.fetch_http import http_fetch, http_version, is_guarded, make_http_session
from aisthetics_transforms.fetch_types import (  # the public names are used from here
    DEFAULT_LIMITS,
    FETCH_ERROR_TYPES,
    Deadline,
    FetchError,
    Fetched,
    FetchLimits,
    MiB,
    Version,
    too_large,
)

__all__ = [
    "DEFAULT_FETCH_THREADS", "DEFAULT_LIMITS", "FETCH_ERROR_TYPES", "FetchError", "FetchLimits", "Fetched",
    "ThreadSessions", "Version", "check_version", "fetch_bytes", "fetch_image", "is_local_file", "make_http_session",
    "refetch",
]

_CHUNK = 1 * MiB
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


# ---------------------------------------------------------------------------
# Entry points


def fetch_image(
    uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None, *, known=None
) -> Fetched:
    """The bytes at ``uri``, their version (as :func:`check_version` gives it) and pin, or
    a :class:`FetchError`.

    ``uri`` is a local path, a ``file://`` uri, ``gs://bucket/object`` or ``http(s)://``.
    ``session`` (from :func:`make_http_session` or :class:`ThreadSessions`) is used for
    http(s); without one a temporary session is made and closed. ``known`` is the
    ``info`` of a :func:`check_version` of the same uri: for ``gs://`` it saves the
    metadata request.
    """
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        with _guarded_session(uri, limits, session) as guarded:
            return http_fetch(uri, limits, guarded)
    if scheme == "gs":
        return gcs_fetch(uri, limits, known)
    return _fetch_local(_local_path(uri, scheme), uri, limits)


def check_version(uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None) -> Version:
    """The cheapest trustworthy "has it changed?" signal for ``uri``, without reading it.

    Files: size and modification time; ``gs://``: generation and size (one metadata
    request); http(s): the ETag, else Last-Modified with Content-Length, from HEAD
    requests. ``value`` is None when there is no such signal; ``failed`` says why when
    the check itself failed (timeout, refused, 5xx, missing...). Never raises.
    """
    try:
        scheme = _scheme(uri)
        if scheme in ("http", "https"):
            with _guarded_session(uri, limits, session) as guarded:
                return http_version(uri, limits, guarded)
        if scheme == "gs":
            return gcs_version(uri, limits)
        return Version(_stat_version(_checked_stat(_local_path(uri, scheme), uri)))
    except FetchError as err:
        return Version(None, f"version check failed ({err.error_type}): {err}")
    except Exception as exc:  # a check must never fail the caller's bundle
        return Version(None, f"version check failed (InternalError): {type(exc).__name__} checking {uri!r}: {exc}")


def refetch(
    uri: str,
    content_sha256: str,
    pin: Optional[str],
    limits: FetchLimits = DEFAULT_LIMITS,
    session: Optional[requests.Session] = None,
) -> bytes:
    """The bytes of ``uri`` again, as long as they still hash to ``content_sha256``
    (``gs://`` with a ``pin``: that generation only, one media request); otherwise
    ``FetchError("ChangedDuringRun")``."""
    if pin is not None and _scheme(uri) == "gs":
        data = gcs_fetch_pinned(uri, pin, limits)
    else:
        data = fetch_image(uri, limits, session).data
    if hashlib.sha256(data).hexdigest() != content_sha256:
        raise FetchError("ChangedDuringRun", f"{uri} changed between two reads in this run (sha256 differs)")
    return data


def fetch_bytes(uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None) -> bytes:
    """Return the bytes at ``uri`` or raise :class:`FetchError`."""
    return fetch_image(uri, limits, session).data


def is_local_file(uri: str) -> bool:
    """A local path or ``file://`` uri: bytes that are cheaper to read again than to carry."""
    return _scheme(uri) in ("", "file")


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise FetchError("InvalidUri", f"uri must be a non-empty string, got {uri!r}")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else ""
    if scheme == "gs":
        split_gcs_uri(uri)
    return scheme


def _local_path(uri: str, scheme: str) -> str:
    if scheme == "file":
        return _file_uri_to_path(uri)
    if scheme:
        raise FetchError(
            "UnsupportedScheme",
            f"unsupported uri scheme {scheme + '://'!r} in {uri} (use a local path, file://, gs://, http:// or https://)",
        )
    return uri


@contextmanager
def _guarded_session(uri: str, limits: FetchLimits, session: Optional[requests.Session]) -> Iterator[requests.Session]:
    """``session`` when it is one of ours; else a temporary one (a plain Session would
    skip the address guard and the watchdog)."""
    if session is not None and is_guarded(session, uri):
        yield session
        return
    temporary = make_http_session(limits)
    try:
        yield temporary
    finally:
        temporary.close()


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


# ---------------------------------------------------------------------------
# Local files


def _file_uri_to_path(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise FetchError("InvalidUri", f"file uri names host {parts.netloc!r}; only local files can be read: {uri}")
    if not parts.path:
        raise FetchError("InvalidUri", f"file uri has no path: {uri}")
    return unquote(parts.path)


def _stat_version(info: os.stat_result) -> str:
    return f"size={info.st_size};mtime_ns={info.st_mtime_ns}"


def _checked_stat(path: str, uri: str) -> os.stat_result:
    """The stat of a regular file that is not under /proc, /sys or /dev, else FetchError.
    Checked before opening: opening a FIFO blocks, opening a device may do something."""
    try:
        refuse_path(os.path.realpath(path), uri)
        info = os.stat(path)
    except OSError as exc:
        raise _os_error(uri, exc) from None
    except ValueError as exc:  # e.g. an embedded NUL byte in the path
        raise FetchError("InvalidUri", f"invalid local path {uri!r}: {exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
    if not stat.S_ISREG(info.st_mode):
        raise FetchError("NotAFile", f"not a regular file (device, FIFO or socket): {uri}")
    return info


def _fetch_local(path: str, uri: str, limits: FetchLimits) -> Fetched:
    deadline = Deadline(limits.deadline)
    info = _checked_stat(path, uri)
    if info.st_size > limits.max_bytes:
        raise too_large(uri, limits, f"file size {info.st_size} bytes")
    try:
        # O_NONBLOCK: a FIFO swapped in since the stat does not block the open.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            opened = os.fstat(f.fileno())
            # What was opened, not what the path named a moment ago: a symlink swapped
            # in since the check is caught here.
            refuse_path(_opened_path(f.fileno(), path), uri)
            if not stat.S_ISREG(opened.st_mode):
                raise FetchError("NotAFile", f"not a regular file (device, FIFO or socket): {uri}")
            with BYTES_IN_FLIGHT.reserve(opened.st_size, limits.max_bytes_in_flight, deadline, uri):
                data = _read_file(f, uri, limits, deadline, opened.st_size)
            return Fetched(data, _stat_version(opened), None)
    except FetchError:
        raise
    except OSError as exc:
        raise _os_error(uri, exc) from None


def _opened_path(fd: int, path: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc (not Linux): the check before opening stands alone
        return os.path.realpath(path)


def _read_file(f: BinaryIO, uri: str, limits: FetchLimits, deadline: Deadline, size: int) -> bytes:
    # Ask for one byte more than the stat said: that notices a file that grew since.
    buffer = presized_buffer(size)
    total = 0
    while total <= size:
        if deadline.expired():
            raise deadline.exceeded(uri, f"after reading {total} bytes")
        chunk = f.read(min(_CHUNK, size + 1 - total))
        if not chunk:
            break
        total += len(chunk)
        if total > size:
            raise FetchError("ChangedDuringRun", f"{uri} grew past its size of {size} bytes while it was read")
        buffer.write(chunk)
    return buffer_bytes(buffer)


def _os_error(uri: str, exc: OSError) -> FetchError:
    if isinstance(exc, FileNotFoundError):
        return FetchError("NotFound", f"no such file: {uri}")
    if isinstance(exc, IsADirectoryError):
        return FetchError("IsADirectory", f"is a directory, not an image file: {uri}")
    if isinstance(exc, PermissionError):
        return FetchError("PermissionDenied", f"permission denied reading {uri}")
    if isinstance(exc, NotADirectoryError):
        return FetchError("NotFound", f"no such file (a parent is not a directory): {uri}")
    return FetchError("ReadFailed", f"could not read {uri}: {exc.strerror or exc}")


# Waiting on the network costs no CPU: this many fetches at once per worker process.
DEFAULT_FETCH_THREADS = 16
