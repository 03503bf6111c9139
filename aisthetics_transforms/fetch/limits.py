"""What the fetch layer takes and gives: limits, results, errors and the per-image deadline.

Kept apart from :mod:`aisthetics_transforms.fetch` so that its helper modules (guards,
http, gcs) can share them without importing each other in a circle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Mapping, NamedTuple, Optional

from aisthetics_transforms import settings
from aisthetics_transforms.settings import setting

MiB = 1024 * 1024


def _package_version() -> str:
    try:
        return metadata.version("aisthetics")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "dev"


# What every http(s) request says it is (``FetchLimits.user_agent`` replaces it, e.g. with a contact).
DEFAULT_USER_AGENT = f"aisthetics/{_package_version()} (catalog image aesthetics scoring)"

# Every ``error_type`` a fetch can report (the errors table's ``error_type`` for stage
# ``fetch``). Stable: dashboards and queries filter on them.
FETCH_ERROR_TYPES: tuple[str, ...] = (
    "InvalidUri",  # not a uri we can parse (empty, no bucket, bad host...)
    "UnsupportedScheme",  # a scheme other than a local path, file://, gs://, http(s)://
    "NotFound",  # no such file or object; HTTP 404/410
    "PermissionDenied",  # file permissions; HTTP 401/403; GCS 401/403
    "IsADirectory",  # a local directory or a gs:// "folder/"
    "NotAFile",  # a device, FIFO or socket
    "PathRefused",  # a local file under /proc, /sys or /dev (symlinks resolved)
    "AddressRefused",  # a host on a link-local, metadata, private or loopback address
    "TooLarge",  # more than max_bytes, declared or read
    "Timeout",  # a connect or read timeout, after the retries
    "DeadlineExceeded",  # the per-image deadline passed, whatever was being waited for
    "ConnectionFailed",  # refused, reset, unknown host, broken mid-body
    "HostUnavailable",  # the host's breaker is open: its last requests got no answer (fetch.hosts)
    "TlsError",  # certificate or handshake failure
    "HttpError",  # any other HTTP status (5xx after the retries, 400...)
    "InvalidResponse",  # a response whose headers cannot be read as one answer (the message names it)
    "RedirectRefused",  # a redirect to a scheme other than http(s)
    "TooManyRedirects",  # more than max_redirects hops
    "ChangedDuringRun",  # the bytes or the pinned generation went away between two reads
    "ReadFailed",  # any other I/O failure
    "InternalError",  # a bug in this code: the message says which exception
)


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on one image's fetch. Times are in seconds.

    ``max_connections_per_host``: 8, as a crawler's usual allowance per domain (Scrapy's
    default), keeps one worker process's scoring busy behind a CDN: a new image costs two
    requests (fetch hashes it, decode reads it again), so 8 connections at 50 ms a request
    give 80 new images/s, about twice what one vCPU scores. An origin that wants less gets
    less with this and ``max_requests_per_second_per_host``. ``breaker_failures`` requests
    in a row without an answer trip a host's breaker, and ``breaker_cooldown`` seconds pass
    before a probe (``fetch.hosts``).
    """

    max_bytes: int = setting(50 * MiB, least=1, option="max_image_bytes", help="largest image file fetched, in bytes")
    connect_timeout: float = setting(5.0, above=0)
    read_timeout: float = setting(
        15.0,
        above=0,
        option="fetch_timeout",
        aliases=("http_timeout",),
        help="seconds of silence allowed per read, from any source (http(s), gs://, files)",
    )
    deadline: float = setting(
        60.0,
        above=0,
        option="fetch_deadline",
        aliases=("http_deadline",),
        help="seconds per image, from any source: every wait, retries and back-off included",
    )
    retries: int = setting(3, least=0)  # further attempts after the first, over the whole fetch
    backoff: float = setting(0.5, least=0)  # base of the jittered exponential back-off
    max_backoff: float = setting(30.0, least=0)  # its longest wait (a server's Retry-After is honoured whole)
    max_redirects: int = setting(5, least=0)
    allow_private_hosts: bool = setting(
        False,
        option="allow_private_hosts",
        help="also fetch from private networks and loopback (link-local and cloud metadata hosts stay refused)",
    )
    max_connections_per_host: int = setting(
        8, least=1, option="max_connections_per_host", help="requests at once to one host:port per worker process"
    )
    max_bytes_in_flight: int = setting(
        256 * MiB,
        least=1,
        option="max_bytes_in_flight",
        help="image body bytes being read at once per worker process (at least --max_image_bytes)",
    )
    max_requests_per_second_per_host: float = setting(
        0.0,
        least=0,
        option="max_requests_per_second_per_host",
        help="request starts a second to one host:port per worker process (0: no limit)",
    )
    breaker_failures: int = setting(
        3,
        least=0,
        option="host_breaker_failures",
        help="after this many requests in a row without an answer, a host's remaining uris fail at once "
        "(HostUnavailable) until a probe gets an answer; 0: never",
    )
    breaker_cooldown: float = setting(
        30.0,
        above=0,
        option="host_breaker_cooldown",
        help="seconds a tripped host waits before a probe (doubling while probes go unanswered)",
    )
    user_agent: str = ""  # empty: DEFAULT_USER_AGENT

    def __post_init__(self):
        settings.check(self)

    @staticmethod
    def cross_problems(values: Mapping[str, Any], name: Callable[[str], str]) -> list[str]:
        if values["max_bytes_in_flight"] >= values["max_bytes"]:
            return []
        return [
            f"{name('max_bytes_in_flight')} must be at least {name('max_bytes')} ({values['max_bytes']}), "
            f"got {values['max_bytes_in_flight']}: one image at the cap must fit"
        ]


DEFAULT_LIMITS = FetchLimits()


class FetchError(Exception):
    """A uri that could not be fetched. ``error_type`` is one of :data:`FETCH_ERROR_TYPES`;
    the message names the uri and never holds bytes of what was read. ``unanswered``: the
    host gave no answer at all (refused, unreachable, silent until a timeout or the
    deadline), which is what trips its breaker (``fetch.hosts``)."""

    def __init__(self, error_type: str, message: str, unanswered: bool = False):
        if error_type not in FETCH_ERROR_TYPES:
            raise ValueError(f"{error_type!r} is not in FETCH_ERROR_TYPES (message: {message})")
        super().__init__(message)
        self.error_type = error_type
        self.unanswered = unanswered

    def __reduce__(self):
        return type(self), (self.error_type, str(self), self.unanswered)


class Fetched(NamedTuple):
    data: bytes
    version: Optional[str]  # equal to check_version(uri).value for an unchanged source
    pin: Optional[str] = None  # what names exactly these bytes for a refetch (gs: generation)


class Version(NamedTuple):
    value: Optional[str]  # the change signal; None when there is none or the check failed
    failed: Optional[str] = None  # why the check failed (one line naming the uri)
    info: object = None  # opaque (gs: the object's metadata): fetch_image(known=...) skips a request
    error_type: Optional[str] = None  # of the failed check, one of FETCH_ERROR_TYPES

    @property
    def settles_the_fetch(self) -> bool:
        """Whether the check failed in a way a fetch in this run would only repeat (the host
        does not answer, the object is missing...), so fetching after it would spend a
        second deadline or request on the same answer. A server that refuses HEAD (405,
        501, 403 on a url signed for GET) or fails it with a 5xx leaves the fetch to try."""
        return self.error_type in CHECK_FAILURES_THAT_SETTLE


CHECK_FAILURES_THAT_SETTLE = frozenset(
    {
        "InvalidUri",
        "UnsupportedScheme",
        "NotFound",
        "IsADirectory",
        "NotAFile",
        "PathRefused",
        "AddressRefused",
        "TooLarge",
        "Timeout",
        "DeadlineExceeded",
        "ConnectionFailed",
        "HostUnavailable",
        "TlsError",
        "RedirectRefused",
        "TooManyRedirects",
    }
)


class Deadline:
    """One image's deadline: every wait of its fetch takes what is left of it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeouts(self, limits: FetchLimits) -> tuple[float, float]:
        """(connect, read) timeouts of the next wait: the limits', cut to what is left."""
        left = max(self.remaining(), 0.001)
        return min(limits.connect_timeout, left), min(limits.read_timeout, left)

    def exceeded(self, uri: str, doing: str, unanswered: bool = False) -> FetchError:
        message = f"deadline of {self.seconds:g}s (deadline) exceeded {doing} for {uri}"
        return FetchError("DeadlineExceeded", message, unanswered)


def too_large(uri: str, limits: FetchLimits, what: str) -> FetchError:
    return FetchError("TooLarge", f"{what} exceeds {limits.max_bytes} bytes (max_bytes) for {uri}")
