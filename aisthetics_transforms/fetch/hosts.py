"""Each host's share of this process's requests: how many at once, how many a second, a
breaker for a host that stops answering, and the wait a server asks for (``Retry-After``).

One :data:`HOSTS` per process, shared by every fetch and decode thread; every http(s)
request takes a :meth:`Hosts.turn` of its ``host:port`` first. The limits come with each
call, from its :class:`~aisthetics_transforms.fetch.limits.FetchLimits`:

- ``max_connections_per_host`` requests at once, and ``max_requests_per_second_per_host``
  starts a second (0: no such limit);
- the breaker: after ``breaker_failures`` requests in a row got no answer from the host (a
  refused or unreachable connection, a timeout, the deadline passing before it answered),
  the host is *tripped*: its requests fail at once with ``HostUnavailable``, and those
  waiting for a turn are woken to fail too, so a dead host costs a few deadlines, not one
  per uri. (Once a request got no answer, no new one starts while others are out: they
  are likely to tell the same.) After ``breaker_cooldown`` seconds one request is let through as a probe: an
  answer closes the breaker, no answer opens it again for twice as long (at most
  :data:`MAX_COOLDOWN`);
- a ``Retry-After`` the server sends holds every request to it until then; a request whose
  deadline ends first fails at once instead of waiting.

Only hosts with something to remember are held (in use, failing, tripped, or asking to
wait), never every host of a catalog.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

from aisthetics_transforms.fetch.limits import Deadline, FetchError, FetchLimits

MAX_COOLDOWN = 600.0  # seconds a tripped host waits for its next probe, at most


@dataclass
class _Host:
    busy: int = 0  # requests in progress
    waiting: int = 0  # requests waiting for their turn (they hold this state: it must stay the host's)
    failures: int = 0  # requests in a row that got no answer
    open_until: float = 0.0  # tripped: requests fail at once until then (monotonic seconds)
    cooldown: float = 0.0  # the last wait before a probe
    tripped_by: str = ""  # the failure that tripped it
    probing: bool = False  # a probe is in progress
    not_before: float = 0.0  # the server asked for no request before then
    next_start: float = 0.0  # the rate limit's next free start

    def forgettable(self, now: float) -> bool:
        return (
            not (self.busy or self.failures or self.open_until or self.probing)
            and max(self.not_before, self.next_start) <= now
        )


class Turn:
    """One request's turn at its host; the request says how the host answered."""

    def __init__(self, probe: bool):
        self.probe = probe
        self.answered: Optional[bool] = None  # None: nothing to say about the host (refused locally...)
        self.failure = ""
        self.retry_after: Optional[float] = None

    def got_answer(self) -> None:
        self.answered, self.failure = True, ""

    def got_no_answer(self, failure: str) -> None:
        self.answered, self.failure = False, failure

    def asked_to_wait(self, seconds: float) -> None:
        self.retry_after = seconds


class Hosts:
    """The per-host state of one process (see the module doc)."""

    def __init__(self):
        self._changed = threading.Condition()
        self._hosts: dict[str, _Host] = {}
        self._tripped: list[str] = []  # hosts tripped since the last :meth:`take_tripped`

    @contextmanager
    def turn(self, host: str, limits: FetchLimits, deadline: Deadline, uri: str) -> Iterator[Turn]:
        """Wait, within ``deadline``, until a request to ``host`` may start; raises
        ``HostUnavailable`` at once while the host is tripped."""
        with self._changed:
            state = self._hosts.setdefault(host, _Host())
            state.waiting += 1
            try:
                probe = self._wait_for_turn(host, state, limits, deadline, uri)
                state.busy += 1
            finally:
                state.waiting -= 1
                self._forget_if_idle(host, state)
        turn = Turn(probe)
        try:
            yield turn
        finally:
            with self._changed:
                state.busy -= 1
                self._settle(host, state, turn, limits)
                self._forget_if_idle(host, state)
                self._changed.notify_all()

    def _wait_for_turn(self, host: str, state: _Host, limits: FetchLimits, deadline: Deadline, uri: str) -> bool:
        """Under the lock: True when this request is the probe of a tripped host."""
        per_second = limits.max_requests_per_second_per_host
        while True:
            now = time.monotonic()
            if state.open_until:
                if now < state.open_until or state.probing:
                    raise _unavailable(host, state, uri, limits)
                if state.busy == 0:  # the cool-down is over: this request is the probe
                    state.probing = True
                    return True
            if state.not_before > deadline.end:
                raise FetchError(
                    "HttpError",
                    f"{host} asked (Retry-After) for no request in the next {state.not_before - now:.0f}s, "
                    f"past the deadline of {uri}",
                )
            ready = max(state.not_before, state.next_start if per_second else 0.0)
            # a host whose last request got no answer gets no new one while others are still out
            free = state.busy < limits.max_connections_per_host and not (state.failures and state.busy)
            if free and not state.open_until and ready <= now:
                if per_second:
                    state.next_start = max(now, state.next_start) + 1.0 / per_second
                return False
            left = deadline.remaining()
            if left <= 0:
                raise deadline.exceeded(uri, f"waiting for its turn at {host} ({_what_it_waited_for(state, limits)})")
            self._changed.wait(min(left, ready - now) if ready > now else left)

    def _settle(self, host: str, state: _Host, turn: Turn, limits: FetchLimits) -> None:
        now = time.monotonic()
        if turn.retry_after is not None:
            state.not_before = max(state.not_before, now + turn.retry_after)
        if turn.probe:
            state.probing = False
        if turn.answered:
            state.failures, state.open_until, state.cooldown, state.tripped_by = 0, 0.0, 0.0, ""
        elif turn.answered is False and limits.breaker_failures:
            state.failures += 1
            if turn.probe:  # still not answering: wait twice as long for the next probe
                state.cooldown = min(2 * state.cooldown, MAX_COOLDOWN)
                state.open_until = now + state.cooldown
            elif state.failures >= limits.breaker_failures and not state.open_until:
                state.cooldown = limits.breaker_cooldown
                state.open_until = now + state.cooldown
                state.tripped_by = turn.failure
                self._tripped.append(host)

    def _forget_if_idle(self, host: str, state: _Host) -> None:
        if state.forgettable(time.monotonic()) and self._hosts.get(host) is state:
            del self._hosts[host]

    def take_tripped(self) -> list[str]:
        """The hosts tripped since the last call (a host tripped again after a probe is not
        counted again): what a bundle reports in the run's summary."""
        with self._changed:
            tripped, self._tripped = self._tripped, []
        return tripped

    def clear(self) -> None:
        """Forget every host (tests: each starts with no host tripped)."""
        with self._changed:
            self._hosts.clear()
            self._tripped.clear()
            self._changed.notify_all()


def _unavailable(host: str, state: _Host, uri: str, limits: FetchLimits) -> FetchError:
    return FetchError(
        "HostUnavailable",
        f"host {host} of {uri} is not answering: {state.failures} requests in a row got no answer "
        f"(tripped by: {state.tripped_by}); its requests fail at once until a probe, at most every "
        f"{state.cooldown or limits.breaker_cooldown:g}s, gets an answer",
    )


def _what_it_waited_for(state: _Host, limits: FetchLimits) -> str:
    if state.busy >= limits.max_connections_per_host:
        return f"one of its {limits.max_connections_per_host} connections (max_connections_per_host)"
    if state.not_before > time.monotonic():
        return "the time its Retry-After asked for"
    rate = limits.max_requests_per_second_per_host
    return f"a start within {rate:g} requests a second (max_requests_per_second_per_host)"


HOSTS = Hosts()
