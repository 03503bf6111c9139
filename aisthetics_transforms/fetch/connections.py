"""Connections for http(s) requests: checked, pinned to the checked address, and watched.

A ``requests.Session`` from :func:`make_http_session` mounts :class:`GuardedAdapter`, whose
urllib3 connections resolve the host once, refuse it if any address is link-local,
metadata, private or loopback (:func:`guards.resolve_checked`), and connect to the address
that was checked; TLS still verifies and sends SNI for the host name, which urllib3 takes
from the url, not from the socket. While :func:`watched` is open, the thread's sockets are
registered with the process's watchdog, which shuts them down when the image's deadline
passes. The GCS client mounts the same adapter without the address check (its endpoint is
no catalog's host), so that the watchdog can cut its sockets too.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, NamedTuple, Optional

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.util.retry import Retry

from aisthetics_transforms.fetch.guards import WATCHDOG, Watch, connect_first, resolve_checked
from aisthetics_transforms.fetch.limits import DEFAULT_LIMITS, DEFAULT_USER_AGENT, Deadline, FetchLimits


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
    session.headers.update({"User-Agent": limits.user_agent or DEFAULT_USER_AGENT, "Accept-Encoding": "identity"})
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
