"""http(s) fetches and version checks: every wait inside one per-image deadline.

A request goes through a ``requests.Session`` whose adapter (:class:`GuardedAdapter`)
makes urllib3 connections that resolve the host once, refuse it if any address is
link-local, metadata, private or loopback (:func:`fetch_guards.resolve_checked`), and
connect to the address that was checked; TLS still verifies and sends SNI for the host
name, which urllib3 takes from the url, not from the socket. Each attempt holds a slot
of its host (``max_connections_per_host``) and registers its sockets with the watchdog,
which shuts them down when the deadline passes: a server that dribbles its status line,
headers, ``100 Continue`` lines or body cannot outlast it. Retries (connection
failures, timeouts, 408, 429, 5xx) and redirects run in our own loop, so that back-off
and ``Retry-After`` waits stay inside the deadline and each hop is checked.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple, Optional
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from aisthetics_transforms.fetch.guards import (
    BYTES_IN_FLIGHT,
    HOST_SLOTS,
    WATCHDOG,
    Watch,
    buffer_bytes,
    connect_first,
    presized_buffer,
    refuse_host_by_name,
    resolve_checked,
)
from aisthetics_transforms.fetch.limits import (
    DEFAULT_LIMITS,
    Deadline,
    Fetched,
    FetchError,
    FetchLimits,
    Version,
    too_large,
)

_CHUNK = 256 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = f"aisthetics-fetch (requests/{requests.__version__})"


# ---------------------------------------------------------------------------
# Connections that are checked, pinned and watched


class _Attempt(NamedTuple):
    where: str  # the url being requested, for messages
    limits: FetchLimits
    deadline: Deadline
    watch: Watch


_current = threading.local()  # .attempt: the _Attempt this thread is making, if any


# The mixin is combined with urllib3's HTTPConnection or HTTPSConnection (_pool_classes):
# type-check it as one.
if TYPE_CHECKING:
    _Connection = HTTPConnection
else:
    _Connection = object


class _ConnectionMixin(_Connection):
    """What the urllib3 connection classes below add: a checked, pinned, watched socket.
    Outside an attempt (a session used directly) the default limits guard it."""

    check_addresses = True

    def _new_conn(self):
        attempt: Optional[_Attempt] = getattr(_current, "attempt", None)
        if not self.check_addresses:
            sock = super()._new_conn()
        else:
            limits = attempt.limits if attempt else DEFAULT_LIMITS
            deadline = attempt.deadline if attempt else Deadline(limits.deadline)
            where = attempt.where if attempt else f"{self.host}:{self.port}"
            addresses = resolve_checked(self._dns_host, self.port, limits, deadline, where)
            timeout = deadline.timeouts(limits)[0]
            try:
                sock = connect_first(addresses, timeout, self.socket_options, self.source_address)
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out ({exc})") from exc
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        if attempt is not None:
            attempt.watch.add(sock)
        return sock

    def request(self, *args, **kwargs):
        attempt: Optional[_Attempt] = getattr(_current, "attempt", None)
        if attempt is not None and self.sock is not None:
            attempt.watch.add(self.sock)  # a kept-alive connection, opened by an earlier request
        return super().request(*args, **kwargs)


def _pool_classes(check_addresses: bool) -> dict:
    def pool(base_pool, base_connection):
        connection = type(
            f"Watched{base_connection.__name__}",
            (_ConnectionMixin, base_connection),
            {"check_addresses": check_addresses},
        )
        return type(f"Watched{base_pool.__name__}", (base_pool,), {"ConnectionCls": connection})

    return {"http": pool(HTTPConnectionPool, HTTPConnection), "https": pool(HTTPSConnectionPool, HTTPSConnection)}


_CHECKED_POOLS, _UNCHECKED_POOLS = _pool_classes(True), _pool_classes(False)


class GuardedAdapter(HTTPAdapter):
    """An adapter whose connections the watchdog can cut and, with ``check_addresses``
    (all but the GCS client's, whose endpoint is no catalog's host), that connect only
    to checked addresses. It never retries or redirects by itself (the fetch loop does,
    inside the deadline)."""

    def __init__(self, pool_size: int = 16, check_addresses: bool = True):
        self.check_addresses = check_addresses
        super().__init__(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=Retry(0, read=False))

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        pools = _CHECKED_POOLS if self.check_addresses else _UNCHECKED_POOLS
        self.poolmanager.pool_classes_by_scheme = dict(pools)


def make_http_session(limits: FetchLimits) -> requests.Session:
    """A ``requests.Session`` with a guarded connection pool (16 connections per host)."""
    session = requests.Session()
    adapter = GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = limits.max_redirects
    # No proxies or .netrc from the environment: the address guard checks the host we
    # connect to, and a proxy would be that host.
    session.trust_env = False
    # Images do not compress; identity also spares us decompressing a hostile body.
    session.headers.update({"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    return session


def is_guarded(session: requests.Session, url: str) -> bool:
    try:
        adapter = session.get_adapter(url)
    except requests.exceptions.InvalidSchema:
        return False
    return isinstance(adapter, GuardedAdapter) and adapter.check_addresses


@contextmanager
def watched(where: str, limits: FetchLimits, deadline: Deadline) -> Iterator[Watch]:
    """While open, this thread's requests use sockets that are shut down at ``deadline``,
    and connect only to addresses that ``limits`` allow."""
    with WATCHDOG.watch(deadline.end) as watch:
        previous = getattr(_current, "attempt", None)
        _current.attempt = _Attempt(where, limits, deadline, watch)
        try:
            yield watch
        finally:
            _current.attempt = previous


# ---------------------------------------------------------------------------
# Fetch and version check


def http_fetch(uri: str, limits: FetchLimits, session: requests.Session) -> Fetched:
    deadline = Deadline(limits.deadline)
    return _follow(session, "GET", uri, limits, deadline, _read_fetched)


def http_version(uri: str, limits: FetchLimits, session: requests.Session) -> Version:
    """ETag, else Last-Modified with Content-Length, from HEAD requests inside the deadline.
    Raises FetchError (``check_version`` turns it into a failed check)."""
    deadline = Deadline(limits.deadline)
    return _follow(session, "HEAD", uri, limits, deadline, lambda response, *_: Version(version_of(response.headers)))


def version_of(headers) -> Optional[str]:
    etag = headers.get("ETag")
    if etag:
        return f"etag={etag}"
    modified = headers.get("Last-Modified")
    if modified:
        return f"last-modified={modified};length={headers.get('Content-Length', '')}"
    return None


class _Retryable(Exception):
    """One attempt failed in a way worth another try."""

    def __init__(self, error: FetchError, retry_after: Optional[float] = None):
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Redirect(NamedTuple):
    location: str


def _follow(session, method: str, uri: str, limits: FetchLimits, deadline: Deadline, read: Callable):
    """Redirects and retries around :func:`_attempt`; ``read`` makes the result of a 2xx."""
    url = uri
    hops = []  # urls redirected from, in order
    failures = 0
    while True:
        if deadline.expired():
            raise deadline.exceeded(uri, f"before requesting {url}")
        try:
            outcome = _attempt(session, method, url, uri, limits, deadline, read)
        except _Retryable as exc:
            failures += 1
            if failures > limits.retries:
                raise FetchError(exc.error.error_type, f"{exc.error} (gave up after {failures} attempts)") from None
            _sleep_before_retry(exc, failures, limits, deadline)
            continue
        if not isinstance(outcome, _Redirect):
            return outcome
        target = urljoin(url, outcome.location)
        if urlsplit(target).scheme.lower() not in ("http", "https"):
            raise FetchError(
                "RedirectRefused",
                f"refused redirect from {url} to {target}: only http and https are followed (for {uri})",
            )
        hops.append(url)
        if len(hops) > limits.max_redirects:
            loop = " (a redirect loop)" if target in hops else ""
            raise FetchError(
                "TooManyRedirects",
                f"more than {limits.max_redirects} redirects (max_redirects){loop} for {uri}, last to {target}",
            )
        url = target


def _sleep_before_retry(exc: _Retryable, failures: int, limits: FetchLimits, deadline: Deadline):
    if exc.retry_after is not None:
        wait = min(exc.retry_after, limits.max_retry_after)
    else:
        # "Equal jitter": half fixed, half random, so clients that failed together
        # do not come back together.
        step = min(limits.backoff * 2 ** (failures - 1), limits.max_retry_after)
        wait = step / 2 + random.uniform(0, step / 2)
    if wait >= deadline.remaining():
        raise FetchError(
            "DeadlineExceeded",
            f"deadline of {deadline.seconds:g}s (deadline) would pass before retrying after {exc.error} "
            f"(next attempt in {wait:.1f}s)",
        )
    time.sleep(wait)


def _attempt(session, method: str, url: str, uri: str, limits: FetchLimits, deadline: Deadline, read: Callable):
    """One request to ``url``: ``read``'s result, a :class:`_Redirect`, or an exception."""
    where = url if url == uri else f"{url} (redirected from {uri})"
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError as exc:
        raise FetchError("InvalidUri", f"invalid url {where}: {exc}") from None
    if not host:
        raise FetchError("InvalidUri", f"url has no host: {where}")
    refuse_host_by_name(host, limits, where)  # before waiting for a slot or resolving
    with HOST_SLOTS.hold(f"{host}:{port}", limits.max_connections_per_host, deadline, where):
        with watched(where, limits, deadline) as watch:
            response = _send(session, method, url, where, limits, deadline)
            with response:
                outcome = _answer(response, where, limits, deadline, read)
            # A cut connection can look like a whole answer (a status line or a body
            # without a length ends at EOF): whatever was read after the cut is void.
            if watch.fired:
                raise deadline.exceeded(where, "waiting for the response")
            return outcome


def _send(session, method: str, url: str, where: str, limits: FetchLimits, deadline: Deadline) -> requests.Response:
    timeout = deadline.timeouts(limits)
    try:
        return session.request(method, url, stream=True, timeout=timeout, allow_redirects=False)
    except FetchError:
        raise  # refused by the address guard, or the deadline passed while resolving
    except requests.exceptions.ConnectTimeout:
        raise _failure(
            deadline, where, f"connecting (connect_timeout {limits.connect_timeout:g}s)", "Timeout"
        ) from None
    except requests.exceptions.ReadTimeout:
        raise _failure(
            deadline, where, f"waiting for the response (read_timeout {limits.read_timeout:g}s)", "Timeout"
        ) from None
    except requests.exceptions.SSLError as exc:
        if deadline.expired():
            raise deadline.exceeded(where, "during the TLS handshake") from None
        raise FetchError("TlsError", f"TLS failed for {where}: {_root_cause(exc)}") from None
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        requests.exceptions.InvalidHeader,
        LocationParseError,
        ValueError,
    ) as exc:
        raise FetchError("InvalidUri", f"invalid url {where}: {exc}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, OSError) as exc:
        raise _failure(deadline, where, "waiting for the response", "ConnectionFailed", _root_cause(exc)) from None


def _failure(deadline: Deadline, where: str, doing: str, error_type: str, cause=None) -> Exception:
    """The error for a failed wait: the deadline's when it has passed (the watchdog cut
    the connection), else a retryable ``error_type``."""
    if deadline.expired():
        return deadline.exceeded(where, doing)
    if error_type == "Timeout":
        return _Retryable(FetchError("Timeout", f"timed out {doing} for {where}"))
    return _Retryable(FetchError(error_type, f"connection failed {doing} for {where}: {cause}"))


def _answer(response: requests.Response, where: str, limits: FetchLimits, deadline: Deadline, read: Callable):
    status = response.status_code
    if status in _REDIRECT_STATUSES:
        location = response.headers.get("Location")
        if not location:
            raise FetchError("HttpError", f"HTTP {status} {response.reason} without a Location for {where}")
        return _Redirect(location)
    if 200 <= status < 300:
        return read(response, where, limits, deadline)
    message = f"HTTP {status} {response.reason} for {where}"
    if status in (404, 410):
        raise FetchError("NotFound", message)
    if status in (401, 403):
        raise FetchError("PermissionDenied", message)
    if status in (408, 429) or status >= 500:
        raise _Retryable(FetchError("HttpError", message), _retry_after(response))
    raise FetchError("HttpError", message)


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
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None  # unparseable: fall back to our own back-off
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _read_fetched(response: requests.Response, where: str, limits: FetchLimits, deadline: Deadline) -> Fetched:
    return Fetched(_read_body(response, where, limits, deadline), version_of(response.headers), None)


def _read_body(response: requests.Response, where: str, limits: FetchLimits, deadline: Deadline) -> bytes:
    """The body, read into one buffer while its size is reserved in the process's budget."""
    text = (response.headers.get("Content-Length") or "").strip()
    declared = int(text) if text.isdigit() else None
    if declared is not None and declared > limits.max_bytes:
        raise too_large(where, limits, f"Content-Length {declared}")
    # Unknown length: reserve the cap, so that no reader ever waits for more while
    # holding some (readers growing their reservations could wait on each other).
    reserve = declared if declared is not None else limits.max_bytes + 1
    with BYTES_IN_FLIGHT.reserve(reserve, limits.max_bytes_in_flight, deadline, where):
        buffer = presized_buffer(declared)
        total = 0
        try:
            while True:
                chunk = response.raw.read1(_CHUNK)  # whatever has arrived, up to _CHUNK
                if not chunk:
                    break
                total += len(chunk)
                if total > limits.max_bytes:
                    raise too_large(where, limits, "body")
                buffer.write(chunk)
        except FetchError:
            raise
        except (HTTPError, http.client.HTTPException, OSError) as exc:  # timeouts, resets, cut connections
            timeout = isinstance(exc, (ReadTimeoutError, TimeoutError))
            raise _failure(
                deadline,
                where,
                f"reading the body after {total} bytes",
                "Timeout" if timeout else "ConnectionFailed",
                _root_cause(exc),
            ) from None
        if declared is not None and total < declared:
            raise _failure(
                deadline,
                where,
                f"reading the body: {total} of {declared} bytes",
                "ConnectionFailed",
                "the connection closed early",
            )
        return buffer_bytes(buffer)
