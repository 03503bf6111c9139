"""Fetching: a uri -> the image's bytes, with limits on everything (the stage's DoFn is ``transform``).

Local paths (and ``file://`` uris) are read with ``open()`` (``files``), ``gs://`` with
google-cloud-storage (``gcs``), ``http(s)://`` through a guarded ``requests.Session``
(``http``). Every fetch is bounded by :class:`FetchLimits`:
a byte cap checked against the declared size first and again while reading, one total
deadline per image that nothing a server does can extend (a watchdog shuts its sockets
down), a guard on the addresses and paths that may be read, a limit on requests at once
per host and on body bytes being read at once in the process (``guards``; the limits
themselves and the error types are in ``limits``).
Each failure is a :class:`FetchError` whose ``error_type`` is one of
:data:`FETCH_ERROR_TYPES` and whose message names the uri and what went wrong.

Entry points: :func:`check_version` (the cheap "has it changed?" signal, never raises),
:func:`fetch_image` (bytes, version and pin), :func:`refetch` (the same bytes again).
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import requests

from aisthetics_transforms import storage
from aisthetics_transforms.fetch.connections import is_guarded, make_http_session
from aisthetics_transforms.fetch.files import (
    checked_stat,
    fetch_local_file,
    file_uri_to_path,
    file_version,
)
from aisthetics_transforms.fetch.gcs import (
    gcs_fetch,
    gcs_fetch_pinned,
    gcs_version,
    split_gcs_uri,
)
from aisthetics_transforms.fetch.http import http_fetch, http_version
from aisthetics_transforms.fetch.limits import (  # the public names are used from here
    DEFAULT_LIMITS,
    FETCH_ERROR_TYPES,
    Fetched,
    FetchError,
    FetchLimits,
    Version,
)

__all__ = [
    "DEFAULT_FETCH_THREADS",
    "DEFAULT_LIMITS",
    "FETCH_ERROR_TYPES",
    "FetchError",
    "FetchLimits",
    "Fetched",
    "ThreadSessions",
    "Version",
    "check_version",
    "fetch_bytes",
    "fetch_image",
    "is_local_file",
    "make_http_session",
    "refetch",
]


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
    return fetch_local_file(_local_path(uri, scheme), uri, limits)


def check_version(
    uri: str, limits: FetchLimits = DEFAULT_LIMITS, session: Optional[requests.Session] = None
) -> Version:
    """The cheapest trustworthy "has it changed?" signal for ``uri``, without reading it.

    Files: size and modification time; ``gs://``: generation and size (one metadata
    request); http(s): the ETag, else Last-Modified with Content-Length, from HEAD
    requests. ``value`` is None when there is no such signal; ``failed`` and
    ``error_type`` say why when the check itself failed (timeout, refused, 5xx,
    missing...). Never raises.
    """
    try:
        scheme = _scheme(uri)
        if scheme in ("http", "https"):
            with _guarded_session(uri, limits, session) as guarded:
                return http_version(uri, limits, guarded)
        if scheme == "gs":
            return gcs_version(uri, limits)
        return Version(file_version(checked_stat(_local_path(uri, scheme), uri)))
    except FetchError as err:
        return Version(None, f"version check failed ({err.error_type}): {err}", error_type=err.error_type)
    except Exception as exc:  # a check must never fail the caller's bundle
        message = f"version check failed (InternalError): {type(exc).__name__} checking {uri!r}: {exc}"
        return Version(None, message, error_type="InternalError")


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
    """A local path or ``file://`` uri: bytes that are cheaper to read again than to carry.
    False for a malformed uri, which fetching then reports as InvalidUri."""
    try:
        _scheme(uri)
    except FetchError:
        return False
    return storage.is_local(uri)


def _scheme(uri: str) -> str:
    if not isinstance(uri, str) or not uri.strip():
        raise FetchError("InvalidUri", f"uri must be a non-empty string, got {uri!r}")
    scheme = storage.scheme(uri)
    if scheme == "gs":
        split_gcs_uri(uri)
    return scheme


def _local_path(uri: str, scheme: str) -> str:
    if scheme == "file":
        return file_uri_to_path(uri)
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


# Waiting on the network costs no CPU: this many fetches at once per worker process.
DEFAULT_FETCH_THREADS = 16
