"""The lock of a date's publish: one run at a time moves files into a date's partitions.

Runs of one date are kept apart at launch by the date's claim (``night_claim``); this lock
guards the publish itself, for what gets past that (a run that took over an expired claim
while the old one was still publishing, a retried publish step) and needs no object-store
preconditions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional

from aisthetics_transforms import layout, storage

CLAIM, ALIVE = ".claim", ".alive"
_log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A run that cannot publish its night; the message says why and what to do."""


def no_fault(step: str) -> None:
    pass


@dataclass(frozen=True)
class LockTimes:
    ttl_s: float = 120.0  # a claim whose run showed no sign of life for this long is a dead run's
    wait_s: float = 3600.0  # how long a run waits for the lock before it fails
    poll_s: float = 1.0
    settle_s: Optional[float] = None  # see DateLock; None: 0.05 s on local disk, 2 s remote

    def settle(self, output: str) -> float:
        if self.settle_s is not None:
            return self.settle_s
        return 0.05 if storage.is_local(output) else 2.0


class DateLock:
    """Mutual exclusion between the runs publishing one date, without object-store
    preconditions (the GCS emulator has none, and nothing here needs them).

    A run R creates its claim ``_publish/DATE/R.claim`` unless it exists (a retried attempt
    of R keeps its place), keeps ``R.alive`` rewritten every ``ttl_s / 4`` while it waits or
    holds, waits ``settle_s``, then lists the claims in one listing. A claim whose run gave no
    sign of life (claim or heartbeat written) for ``ttl_s`` is a dead run's: it is removed.
    Of the others, the claim created first (ties: the smaller name) holds the lock; the rest
    poll until they hold it or ``wait_s`` passes. Release deletes the claim.

    Why two runs never hold it at once. The store stamps each claim c with its creation
    time t(c) (the file's mtime on local disk, ``updated`` of an object written once in GCS),
    and c appears in listings from v(c), with t(c) <= v(c) <= t(c) + d, d being the store's
    delay from stamp to visibility plus its clock granularity. Listings are strongly
    consistent (GCS object listings are; a local directory is): one begun after v(c) shows c.
    A run R lists at L(R) >= v(c_R) + settle_s >= t(c_R) + settle_s. Suppose A and B both
    hold, with (t(c_A), A) < (t(c_B), B). B's listing did not show c_A (else c_A would hold),
    so v(c_A) > L(B) >= t(c_B) + settle_s, and t(c_A) >= v(c_A) - d > t(c_B) + settle_s - d,
    which is >= t(c_B) when settle_s >= d: a contradiction. Hence settle_s is 2 s for GCS
    and 0.05 s on local disk (mtimes tick in milliseconds).

    What that leaves: removing a stale claim is right only if its run is dead. A run stopped
    longer than ``ttl_s`` (heartbeats never that late while its process lives) could wake up
    without the lock, so a holder checks that it still holds (:meth:`holds`) before it
    commits and before it deletes anything, and a run that finds its claim removed while
    waiting queues again. Staleness compares store stamps with this machine's clock, so
    ``ttl_s`` must exceed the clock skew by far (NTP keeps it under a second).
    """

    def __init__(self, output: str, run_date: str, run_id: str, times: LockTimes, fault=no_fault):
        self.directory = layout.claims_dir(output, run_date)
        self.output, self.run_date, self.run_id, self.times, self.fault = output, run_date, run_id, times, fault
        self.claim = layout.join(self.directory, run_id + CLAIM)
        self.alive = layout.join(self.directory, run_id + ALIVE)
        self._stop = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def __enter__(self) -> DateLock:
        try:
            self.acquire()
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None or issubclass(kind, PublishError):
            self.release()
        else:
            # A failed step keeps its claim, so that its retry (same run) resumes first;
            # if no retry comes, the claim goes stale ttl_s after this last heartbeat.
            self._stop_heartbeat()

    def acquire(self) -> None:
        """Wait for the lock; raise :class:`PublishError` after ``wait_s``. The caller
        releases (or, after a fault, stops the heartbeat) whatever happens here."""
        storage.create_if_absent(self.claim)
        self._beat()
        self._stop.clear()
        self._heartbeat = threading.Thread(target=self._beating, name=f"publish-lock-{self.run_id}", daemon=True)
        self._heartbeat.start()
        self.fault("claimed")
        deadline = time.monotonic() + self.times.wait_s
        time.sleep(self.times.settle(self.output))
        while True:
            holder = self._holder(remove_stale=True)
            if holder == self.run_id:
                return
            if holder is None:  # our claim was removed as stale: we were paused too long
                storage.create_if_absent(self.claim)
                time.sleep(self.times.settle(self.output))
                continue
            if time.monotonic() > deadline:
                raise PublishError(
                    f"run {self.run_id} of {self.run_date} waited {self.times.wait_s:.0f} s for the publish lock, "
                    f"held by run {holder} ({layout.join(self.directory, holder + CLAIM)}); a dead run's claim "
                    f"expires {self.times.ttl_s:.0f} s after its last heartbeat: rerun then"
                )
            time.sleep(self.times.poll_s)

    def holds(self) -> bool:
        return self._holder(remove_stale=False) == self.run_id

    def release(self) -> None:
        self._stop_heartbeat()
        storage.delete([self.alive, self.claim])  # a claim left alone goes stale at once
        storage.remove_empty_dirs(self.directory, layout.join(self.output, layout.PUBLISH))

    def _holder(self, remove_stale: bool) -> Optional[str]:
        """The run that holds the lock now, or None when our own claim is gone."""
        created, alive = {}, {}
        for entry in storage.list_dir(self.directory):
            if entry.name.endswith(CLAIM):
                created[entry.name[: -len(CLAIM)]] = entry.updated
            elif entry.name.endswith(ALIVE):
                alive[entry.name[: -len(ALIVE)]] = entry.updated
        now = time.time()
        stale = [r for r, t in created.items() if r != self.run_id and now - max(t, alive.get(r, t)) > self.times.ttl_s]
        if stale and remove_stale:
            _log.warning(
                "publish of %s: removing the claims of runs gone silent for %.0f s: %s",
                self.run_date,
                self.times.ttl_s,
                ", ".join(stale),
            )
            storage.delete([layout.join(self.directory, r + suffix) for r in stale for suffix in (CLAIM, ALIVE)])
        orphans = [r for r, t in alive.items() if r not in created and now - t > self.times.ttl_s]
        if orphans and remove_stale:  # heartbeats of runs that died releasing
            storage.delete([layout.join(self.directory, r + ALIVE) for r in orphans])
        live = {r: t for r, t in created.items() if r not in stale}
        if self.run_id not in live:
            return None
        return min(live, key=lambda r: (live[r], r))

    def _beat(self) -> None:
        storage.touch(self.alive)

    def _beating(self) -> None:
        while not self._stop.wait(self.times.ttl_s / 4):
            try:
                self._beat()
            except Exception as exc:  # a missed beat is survivable; the next one may work
                _log.warning("publish lock heartbeat of run %s failed: %s", self.run_id, exc)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
