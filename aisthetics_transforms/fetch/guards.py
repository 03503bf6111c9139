"""Process-wide guards of the fetch layer: which addresses and paths may be read, how many
body bytes are read at once, and a watchdog that ends a connection when its image's
deadline passes (what each host may take is ``hosts``).

Each is one object shared by every fetch thread of the process (``BYTES_IN_FLIGHT``,
``WATCHDOG``); the limits come with each call, from its
:class:`~aisthetics_transforms.fetch.limits.FetchLimits`.
"""

from __future__ import annotations

import heapq
import io
import ipaddress
import itertools
import mmap
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional, Union

from aisthetics_transforms.fetch.limits import Deadline, FetchError, FetchLimits

# ---------------------------------------------------------------------------
# Addresses

# Cloud metadata services answer with credentials: never fetched, whatever the flags.
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "metadata.goog"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254"))
_NEVER = tuple(ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10", "0.0.0.0/8"))
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_FLAG = "--allow_private_hosts (FetchLimits.allow_private_hosts)"


IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def _embedded_ipv4(ip: IPAddress) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 address an IPv6 one routes to (mapped, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped or ip.sixtofour:
        return ip.ipv4_mapped or ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress, allow_private: bool) -> Optional[str]:
    """Why ``ip`` must not be fetched from ("a link-local address; never fetched"), or None."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        return address_problem(inner, allow_private)
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address; never fetched"
    if any(ip in net for net in _NEVER) or ip.is_link_local or ip.is_unspecified:
        return "a link-local or unspecified address; never fetched"
    if ip.is_loopback:  # before is_reserved, which holds ::1
        return None if allow_private else f"a loopback address; pass {_FLAG} to fetch from it"
    if ip.is_multicast or ip.is_reserved:
        return "not a unicast host address; never fetched"
    if allow_private:
        return None
    if any(ip in net for net in _PRIVATE):
        return f"a private address; pass {_FLAG} to fetch from it"
    return None


def _literal(host: str) -> Optional[IPAddress]:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


def refuse_host_by_name(host: str, limits: FetchLimits, uri: str) -> None:
    """Refuse what can be refused without DNS: metadata host names and address literals."""
    name = host.strip("[]").rstrip(".").lower()
    if name in METADATA_HOSTS:
        raise FetchError("AddressRefused", f"refused {uri}: {name} is a cloud metadata host; never fetched")
    ip = _literal(name)
    problem = ip is not None and address_problem(ip, limits.allow_private_hosts)
    if problem:
        raise FetchError("AddressRefused", f"refused {uri}: {ip} is {problem}")


def resolve_checked(host: str, port: int, limits: FetchLimits, deadline: Deadline, uri: str) -> list:
    """Every address ``host`` resolves to, as ``(family, sockaddr)``, once each has passed
    :func:`address_problem`; the caller connects to these, so a second lookup cannot
    swap in another address (DNS rebinding)."""
    refuse_host_by_name(host, limits, uri)
    name = host.strip("[]")
    infos = _getaddrinfo_within(name, port, deadline, uri)
    if not infos:
        raise FetchError("ConnectionFailed", f"host {name} of {uri} has no address", unanswered=True)
    for _, _, _, _, sockaddr in infos:
        ip = _literal(sockaddr[0])
        problem = "not an IP address" if ip is None else address_problem(ip, limits.allow_private_hosts)
        if problem:
            raise FetchError("AddressRefused", f"refused {uri}: host {name} resolves to {ip}, {problem}")
    return list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))


def _getaddrinfo_within(host: str, port: int, deadline: Deadline, uri: str) -> list:
    # getaddrinfo takes no timeout: it runs on a daemon thread, abandoned if the deadline
    # passes first (a daemon thread does not hold up the interpreter's exit).
    if _literal(host) is not None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    box: dict = {}
    done = threading.Event()

    def lookup():
        try:
            box["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=lookup, name="aisthetics-resolve", daemon=True).start()
    if not done.wait(max(0.0, deadline.remaining())):
        raise deadline.exceeded(uri, f"resolving {host}", unanswered=True)
    if "error" in box:
        raise FetchError("ConnectionFailed", f"could not resolve host {host} of {uri}: {box['error']}", unanswered=True)
    return box["infos"]


def connect_first(addresses: list, timeout: float, socket_options=None, source_address=None) -> socket.socket:
    """A socket connected to the first of ``addresses`` that accepts; raises the last OSError."""
    error: Optional[OSError] = None
    for family, sockaddr in addresses:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error or OSError(f"no address to connect to among {addresses}")


# ---------------------------------------------------------------------------
# Local paths

REFUSED_ROOTS = ("/proc", "/sys", "/dev")


def refuse_path(real_path: str, uri: str) -> None:
    """Pseudo-files (process environments, kernel state, devices) are no images."""
    for root in REFUSED_ROOTS:
        if real_path == root or real_path.startswith(root + "/"):
            raise FetchError(
                "PathRefused", f"refused {uri}: it is under {root} (resolved to {real_path}); only image files are read"
            )


# ---------------------------------------------------------------------------
# Bytes in flight


class ByteBudget:
    """Bytes of bodies being read at once in this process: a reader reserves what it may
    read (a declared size, else the cap) and waits, within its deadline, for room."""

    def __init__(self):
        self._changed = threading.Condition()
        self.in_use = 0
        self.peak = 0  # the most ever reserved at once, for tests and benchmarks

    @contextmanager
    def reserve(self, size: int, capacity: int, deadline: Deadline, uri: str) -> Iterator[None]:
        size = min(size, capacity)
        with self._changed:
            while self.in_use + size > capacity:
                left = deadline.remaining()
                if left <= 0:
                    raise deadline.exceeded(
                        uri, f"waiting for {size} bytes of the {capacity}-byte budget (max_bytes_in_flight)"
                    )
                self._changed.wait(left)
            self.in_use += size
            self.peak = max(self.peak, self.in_use)
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= size
                self._changed.notify_all()


class UnsizedBody:
    """A body of unknown length, written into an anonymous memory map of the cap: the pages
    are taken as bytes arrive and all given back to the system when it closes. A BytesIO
    grown to megabytes chunk by chunk is reallocated as it grows, and glibc serves such
    buffers from per-thread arenas that keep the memory of every refused body (measured in
    docs/performance.md, bench_hot_keys' refused bodies)."""

    def __init__(self, cap: int):
        self._map = mmap.mmap(-1, max(cap, 1))
        self._size = 0

    def write(self, chunk: bytes) -> int:
        end = self._size + len(chunk)
        self._map[self._size : end] = chunk  # past the cap: IndexError (callers refuse before)
        self._size = end
        return len(chunk)

    def tell(self) -> int:
        return self._size

    def close(self) -> None:
        self._map.close()

    def take(self) -> bytes:
        data = self._map[: self._size]
        self._map.close()
        return data


class SizedBody(io.BytesIO):
    def take(self) -> bytes:
        # CPython's BytesIO hands its own bytes object out when nothing else shares it, so a
        # body is held once, not twice.
        self.truncate()
        data = self.getvalue()
        self.close()
        return data


BodyBuffer = Union[SizedBody, UnsizedBody]


@contextmanager
def body_buffer(size: Optional[int], cap: int = 0) -> Iterator[BodyBuffer]:
    """Where a body is written as it is read: a buffer already ``size`` bytes long when the
    size is known, else a memory map of ``cap`` bytes; ``take()`` gives the bytes. A read that fails
    closes it, which frees its memory at once, whatever still refers to it: the traceback of
    a stored error keeps every frame of the read alive until the garbage collector finds the
    cycle, and with them the buffer."""
    buffer: BodyBuffer
    if size is None:
        buffer = UnsizedBody(cap)
    else:
        buffer = SizedBody()
        if size:
            buffer.seek(size - 1)
            buffer.write(b"\0")
            buffer.seek(0)
    try:
        yield buffer
    except BaseException:
        buffer.close()
        raise


# ---------------------------------------------------------------------------
# Deadline watchdog


class Watch:
    """The sockets one request uses; shut down when its deadline passes, which ends any
    read or write blocked on them however the server dribbles its bytes."""

    def __init__(self, end: float):
        self.end = end
        self.fired = False
        self._closed = False
        self._lock = threading.Lock()
        self._socks: dict[int, socket.socket] = {}

    def add(self, sock) -> None:
        """Watch ``sock`` (plain or TLS) through a duplicate of its descriptor: shutting
        the duplicate down ends the connection, and closing it never touches a
        descriptor number that the connection's owner may have closed and reused."""
        with self._lock:
            if self._closed or sock is None:
                return
            try:
                fd = sock.fileno()
                if fd < 0 or fd in self._socks:
                    return
                dup = socket.fromfd(fd, sock.family, sock.type)
            except OSError:
                return
            self._socks[fd] = dup
            if self.fired:
                _shut(dup)

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            if not self._closed:
                for dup in self._socks.values():
                    _shut(dup)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for dup in self._socks.values():
                dup.close()
            self._socks.clear()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by its peer


class Watchdog:
    """One thread and a heap of deadlines for all requests of the process (a Timer per
    request would be a thread per request)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._heap: list = []
        self._order = itertools.count()
        self._pid = None

    @contextmanager
    def watch(self, end: float) -> Iterator[Watch]:
        watch = Watch(end)
        with self._changed:
            if self._pid != os.getpid():  # first use, or a forked child without the thread
                self._pid = os.getpid()
                self._heap = []
                threading.Thread(target=self._run, name="aisthetics-fetch-watchdog", daemon=True).start()
            heapq.heappush(self._heap, (end, next(self._order), watch))
            self._changed.notify()
        try:
            yield watch
        finally:
            watch.close()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._heap:
                    self._changed.wait()
                end, _, watch = self._heap[0]
                wait = end - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._heap)
            watch.fire()


BYTES_IN_FLIGHT = ByteBudget()
WATCHDOG = Watchdog()
