"""http(s) fetches and version checks: every wait inside one per-image deadline.

A request goes through a session of ``connections`` (checked, pinned and watched
sockets). Each attempt first takes a turn at its host (``hosts``: connections at once,
a request rate, the breaker of a host that stopped answering, the host's Retry-After),
and its sockets are shut down by the watchdog when the deadline passes: a server that
dribbles its status line, headers, ``100 Continue`` lines or body cannot outlast it.
Retries (connection failures, timeouts, 408, 429, 5xx) and redirects run in our own
loop, so that back-off and ``Retry-After`` waits stay inside the deadline and each hop
is checked. A ``Retry-After`` longer than what is left of the deadline ends the fetch
at once.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import re
import time
from typing import Callable, NamedTuple, Optional
from urllib.parse import urljoin, urlsplit

import requests
from urllib3.exceptions import HTTPError, LocationParseError, ReadTimeoutError

from aisthetics_transforms.fetch.connections import watched
from aisthetics_transforms.fetch.guards import BYTES_IN_FLIGHT, body_buffer, refuse_host_by_name
from aisthetics_transforms.fetch.hosts import HOSTS
from aisthetics_transforms.fetch.limits import (
    Deadline,
    Fetched,
    FetchError,
    FetchLimits,
    Version,
    too_large,
)

_CHUNK = 256 * 1024
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also takes "²" and "٣"


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
    last: Optional[_Retryable] = None
    while True:
        if deadline.expired():
            raise deadline.exceeded(uri, f"before requesting {url}")
        try:
            outcome = _attempt(session, method, url, uri, limits, deadline, read)
        except _Retryable as exc:
            failures, last = failures + 1, exc
            if failures > limits.retries:
                raise FetchError(exc.error.error_type, f"{exc.error} (gave up after {failures} attempts)") from None
            _sleep_before_retry(exc, failures, limits, deadline)
            continue
        except FetchError as exc:
            if exc.error_type == "HostUnavailable" and last is not None:  # this uri's own attempts tripped it
                message = f"{last.error} (gave up after {failures} attempts: the host's breaker is now open)"
                raise FetchError(last.error.error_type, message) from None
            raise
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
        wait = exc.retry_after  # the server's word, honoured whole, or not at all
        if wait >= deadline.remaining():
            raise FetchError(
                exc.error.error_type,
                f"{exc.error}: the server asks to retry after {wait:.0f}s, past the deadline of "
                f"{deadline.seconds:g}s (deadline)",
            )
    else:
        # "Equal jitter": half fixed, half random, so clients that failed together
        # do not come back together.
        step = min(limits.backoff * 2 ** (failures - 1), limits.max_backoff)
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
    refuse_host_by_name(host, limits, where)  # before waiting for a turn or resolving
    with HOSTS.turn(f"{host}:{port}", limits, deadline, where) as turn, watched(where, limits, deadline) as watch:
        try:
            response = _send(session, method, url, where, limits, deadline)
            turn.got_answer()
            with response:
                outcome = _answer(response, where, limits, deadline, read)
            # A cut connection can look like a whole answer (a status line or a body
            # without a length ends at EOF): whatever was read after the cut is void.
            if watch.fired:
                raise deadline.exceeded(where, "waiting for the response", unanswered=True)
        except _Retryable as exc:
            _tell_host(turn, exc.error, exc.retry_after)
            raise
        except FetchError as exc:
            _tell_host(turn, exc, None)
            raise
        return outcome


def _tell_host(turn, error: FetchError, retry_after: Optional[float]) -> None:
    if error.unanswered:
        turn.got_no_answer(str(error))
    if retry_after is not None:
        turn.asked_to_wait(retry_after)


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
    except requests.exceptions.InvalidHeader as exc:  # the request's are ours and checked: the answer's
        raise FetchError("InvalidResponse", f"malformed response from {where}: {exc}") from None
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidSchema,
        LocationParseError,
        ValueError,
    ) as exc:
        raise FetchError("InvalidUri", f"invalid url {where}: {exc}") from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError, OSError) as exc:
        raise _failure(deadline, where, "waiting for the response", "ConnectionFailed", _root_cause(exc)) from None


def _failure(deadline: Deadline, where: str, doing: str, error_type: str, cause=None) -> Exception:
    """The error for a wait the host left unanswered: the deadline's when it has passed
    (the watchdog cut the connection), else a retryable ``error_type``."""
    if deadline.expired():
        return deadline.exceeded(where, doing, unanswered=True)
    if error_type == "Timeout":
        return _Retryable(FetchError("Timeout", f"timed out {doing} for {where}", unanswered=True))
    return _Retryable(FetchError(error_type, f"connection failed {doing} for {where}: {cause}", unanswered=True))


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
    if _DIGITS.fullmatch(value):
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
    declared = int(text) if _DIGITS.fullmatch(text) else None
    if declared is not None and declared > limits.max_bytes:
        raise too_large(where, limits, f"Content-Length {declared}")
    # Unknown length: reserve the cap, so that no reader ever waits for more while
    # holding some (readers growing their reservations could wait on each other).
    reserve = declared if declared is not None else limits.max_bytes + 1
    with (
        BYTES_IN_FLIGHT.reserve(reserve, limits.max_bytes_in_flight, deadline, where),
        body_buffer(declared, limits.max_bytes) as buffer,
    ):
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
        return buffer.take()
