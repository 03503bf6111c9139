"""Publishing a night: whole or not at all, under retries, crashes and concurrent runs.

A run writes its Parquet files under ``_staging/DATE_RUNID/`` (write.py). :func:`publish_night`
then makes them the night of DATE in steps that can each be repeated, after a fault at any
point, with the same result, on local disk and on ``gs://`` alike:

0. take the date's publish lock (:class:`DateLock`);
1. if the date's summary already names this run, go to 4; if it names a newer run, fail:
   of the runs of one date, ordered by run id, the newest wins;
2. delete the staged files of bundle attempts that did not commit; give a table without a
   file one empty file carrying its schema; move every staged file into its partition
   directory under the same name (one already moved is skipped);
3. write ``summary.json``, naming the run: the commit point. Readers trust a night only
   through it (layout.py), so before it they see the previous night whole, after it the new;
4. delete from the partition directories every file not of this run: the previous run's,
   and those left by publishes that died between 2 and 3;
5. release the lock; delete this run's staging, and staging older than
   ``staging_ttl_hours`` left by runs that died (never younger: its run may still be alive).

A fault can be injected after each named step (``fault=callable(step)``, or the environment
variable ``AISTHETICS_PUBLISH_FAULT=STEP[:kill]`` in the process that publishes), so tests
can fail or SIGKILL a publish anywhere: ``claimed``, ``locked``, ``staged``, ``moved.N``
(after the N-th move: one file locally, :data:`MOVE_BATCH` files on a remote store),
``before_commit``, ``committed``, ``pruned.scores``, ``pruned.errors``, ``released``,
``unstaged``, ``cleaned``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Mapping, Optional, Sequence

import pyarrow.parquet as pq

from aisthetics_transforms import layout
from aisthetics_transforms.records import errors_schema, scores_schema

FAULT_ENV = "AISTHETICS_PUBLISH_FAULT"
MOVE_BATCH = 100  # files per remote move (Beam batches GCS copies and deletes by 100)
CLAIM, ALIVE = ".claim", ".alive"
_log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A run that cannot publish its night; the message says why and what to do."""


class Superseded(PublishError):
    """A newer run of the date has published: this run's night would be older."""


class PublishFault(RuntimeError):
    """A fault injected at a named step (tests)."""


@dataclass(frozen=True)
class LockTimes:
    ttl_s: float = 120.0  # a claim whose run showed no sign of life for this long is a dead run's
    wait_s: float = 3600.0  # how long a run waits for the lock before it fails
    poll_s: float = 1.0
    settle_s: Optional[float] = None  # see DateLock; None: 0.05 s on local disk, 2 s remote

    def settle(self, output: str) -> float:
        if self.settle_s is not None:
            return self.settle_s
        return 0.05 if layout.is_local(output) else 2.0


@dataclass(frozen=True)
class RunInfo:
    output: str
    run_date: str
    run_id: str
    model_version: str
    started_at: str
    source: str  # the manifest or image glob, for the summary
    previous_partition: Optional[str] = None  # what an incremental run reuses from
    keep_columns: tuple = ()
    staging_ttl_hours: float = 72.0
    lock: LockTimes = field(default_factory=LockTimes)
    incremental_reason: Optional[str] = None  # why an --incremental run reuses nothing

    @classmethod
    def new(
        cls,
        output: str,
        run_date: str,
        model_version: str,
        source: str,
        previous_partition: Optional[str] = None,
        keep_columns: Sequence[str] = (),
        staging_ttl_hours: float = 72.0,
        lock: Optional[LockTimes] = None,
    ) -> RunInfo:
        now = datetime.now(timezone.utc)
        return cls(
            output.rstrip("/"),
            run_date,
            layout.new_run_id(now),
            model_version,
            now.isoformat(),
            source,
            previous_partition,
            tuple(keep_columns),
            staging_ttl_hours,
            lock or LockTimes(),
        )


def _no_fault(step: str) -> None:
    pass


def fault_from_env(environ=os.environ) -> Optional[Callable[[str], None]]:
    """The fault of ``AISTHETICS_PUBLISH_FAULT=STEP[:kill]``: raise :class:`PublishFault`
    at STEP, or SIGKILL this process there."""
    spec = environ.get(FAULT_ENV, "")
    if not spec:
        return None
    step, _, action = spec.partition(":")
    if action not in ("", "raise", "kill"):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected STEP, STEP:raise or STEP:kill")

    def fault(name: str) -> None:
        if name != step:
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise PublishFault(f"fault injected after publish step {name}")

    return fault


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

    def __init__(self, output: str, run_date: str, run_id: str, times: LockTimes, fault=_no_fault):
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
        layout.create_if_absent(self.claim)
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
                layout.create_if_absent(self.claim)
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
        layout.delete([self.alive, self.claim])  # a claim left alone goes stale at once
        layout.remove_empty_dirs(self.directory, layout.join(self.output, layout.PUBLISH))

    def _holder(self, remove_stale: bool) -> Optional[str]:
        """The run that holds the lock now, or None when our own claim is gone."""
        created, alive = {}, {}
        for entry in layout.list_dir(self.directory):
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
            layout.delete([layout.join(self.directory, r + suffix) for r in stale for suffix in (CLAIM, ALIVE)])
        orphans = [r for r, t in alive.items() if r not in created and now - t > self.times.ttl_s]
        if orphans and remove_stale:  # heartbeats of runs that died releasing
            layout.delete([layout.join(self.directory, r + ALIVE) for r in orphans])
        live = {r: t for r, t in created.items() if r not in stale}
        if self.run_id not in live:
            return None
        return min(live, key=lambda r: (live[r], r))

    def _beat(self) -> None:
        layout.touch(self.alive)

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


# ---------------------------------------------------------------------------
# The steps


def publish_night(run: RunInfo, committed: Sequence[str], summary: Mapping, *, fault=None) -> dict:
    """Publish run ``run``'s staged files (``committed``: the paths of the files its
    committed bundles wrote) with ``summary`` as the night of ``run.run_date``, or resume a
    publish of the same run that failed anywhere. Returns the summary as published."""
    fault = fault or fault_from_env() or _no_fault
    try:
        with DateLock(run.output, run.run_date, run.run_id, run.lock, fault) as lock:
            fault("locked")
            published = layout.read_summary(run.output, run.run_date)
            if published is None or _run_of(published) != run.run_id:
                _refuse_if_superseded(run, published)
                expected = stage_and_move(run, committed, fault)
                published = _commit(run, summary, expected, lock, fault)
            if lock.holds():  # else another run took over the date after us, and prunes it
                prune(run, fault)
    except Superseded:  # nothing of this run will ever be published
        _unstage(run)
        raise
    fault("released")
    _unstage(run)
    fault("unstaged")
    remove_old_staging(run.output, run.staging_ttl_hours)
    fault("cleaned")
    return published


def _run_of(summary: Optional[dict]) -> Optional[str]:
    return summary.get("run_id") if summary else None


def _unstage(run: RunInfo) -> None:
    """Remove this run's staging, and the staging folder when it was the last in it."""
    layout.remove_tree(layout.staging_dir(run.output, run.run_date, run.run_id))
    layout.remove_empty_dirs(layout.join(run.output, layout.STAGING))


def _refuse_if_superseded(run: RunInfo, published: Optional[dict]) -> None:
    other = _run_of(published)
    if published is not None and other and other > run.run_id:
        when = published.get("published_at") or published.get("finished_at") or "an unknown time"
        raise Superseded(
            f"run {run.run_id} of {run.run_date} superseded by newer run {other} published at {when}; "
            f"nothing of run {run.run_id} was published"
        )


def _empty_parquet(schema) -> bytes:
    buffer = io.BytesIO()
    pq.ParquetWriter(buffer, schema, compression="snappy").close()
    return buffer.getvalue()


def stage_and_move(run: RunInfo, committed: Sequence[str], fault=_no_fault) -> dict[str, set]:
    """Step 2; returns {table: the file names of the run's night}."""
    staging = layout.staging_dir(run.output, run.run_date, run.run_id)
    names: dict[str, set] = {table: set() for table in layout.TABLES}
    for path in committed:
        table, _, name = path[len(staging) + 1 :].partition("/")
        if not path.startswith(staging + "/") or table not in names or not layout.is_run_file(name, run.run_id):
            raise PublishError(f"{path} is not a staged file of run {run.run_id} under {staging}")
        names[table].add(name)
    schemas = {"scores": scores_schema(run.keep_columns), "errors": errors_schema(run.keep_columns)}
    moves = []
    for table in layout.TABLES:
        staged_dir = layout.join(staging, table)
        visible_dir = layout.partition_dir(run.output, table, run.run_date)
        staged = {e.name: e.path for e in layout.list_dir(staged_dir)}
        visible = {e.name for e in layout.list_dir(visible_dir)}
        layout.delete([path for name, path in staged.items() if name not in names[table]])  # failed attempts
        if not names[table]:  # no rows: one empty file with the schema
            empty = f"{run.run_id}-empty.parquet"
            names[table] = {empty}
            if empty not in visible:
                staged[empty] = layout.join(staged_dir, empty)
                layout.write_atomic(staged[empty], _empty_parquet(schemas[table]), "application/x-parquet")
        for name in sorted(names[table]):
            if name in staged:
                moves.append((staged[name], layout.join(visible_dir, name)))
            elif name not in visible:
                raise PublishError(
                    f"{layout.join(staged_dir, name)} of run {run.run_id} is neither staged nor "
                    f"published (deleted by another hand?); rerun {run.run_date}"
                )
    fault("staged")
    batch = 1 if layout.is_local(run.output) else MOVE_BATCH
    for i, start in enumerate(range(0, len(moves), batch), 1):
        layout.move(moves[start : start + batch])
        fault(f"moved.{i}")
    return names


def _commit(run: RunInfo, summary: Mapping, expected: dict[str, set], lock: DateLock, fault) -> dict:
    """Step 3, after checking that nothing changed under us while the files moved."""
    fault("before_commit")
    if not lock.holds():
        raise PublishError(
            f"run {run.run_id} of {run.run_date} lost its publish lock while publishing (paused "
            f"longer than {run.lock.ttl_s:.0f} s?); nothing was committed: rerun {run.run_date}"
        )
    current = layout.read_summary(run.output, run.run_date)
    if current is not None and _run_of(current) == run.run_id:
        return current
    _refuse_if_superseded(run, current)
    for table, names in expected.items():
        missing = names - {e.name for e in layout.list_dir(layout.partition_dir(run.output, table, run.run_date))}
        if missing:
            raise PublishError(
                f"{len(missing)} files of run {run.run_id} vanished from "
                f"{layout.partition_dir(run.output, table, run.run_date)} before the commit, e.g. "
                f"{sorted(missing)[0]}; nothing was committed: rerun {run.run_date}"
            )
    published = {**summary, "run_id": run.run_id, "published_at": datetime.now(timezone.utc).isoformat()}
    data = json.dumps(published, indent=2, sort_keys=True).encode() + b"\n"
    layout.write_atomic(layout.summary_path(run.output, run.run_date), data, "application/json")
    fault("committed")
    return published


def prune(run: RunInfo, fault=_no_fault) -> None:
    """Step 4: the partition directories keep only the files of the run that committed."""
    for table in layout.TABLES:
        visible = layout.list_dir(layout.partition_dir(run.output, table, run.run_date))
        others = [e.path for e in visible if e.name.endswith(".parquet") and not layout.is_run_file(e.name, run.run_id)]
        layout.delete(others)
        fault(f"pruned.{table}")
    runs_dir = layout.partition_dir(run.output, layout.RUNS, run.run_date)
    # Temporary files of summary writes that died (local disk only has them).
    layout.delete([e.path for e in layout.list_dir(runs_dir) if e.name.startswith(f".{layout.SUMMARY}.")])


def remove_old_staging(output: str, ttl_hours: float, now: Optional[datetime] = None) -> list[str]:
    """Delete the staging directories of runs that started more than ``ttl_hours`` ago
    (of any date): their runs are dead. Returns their names."""
    now = now or datetime.now(timezone.utc)
    root = layout.join(output, layout.STAGING)
    if layout.is_local(output):
        try:
            runs = [e.name for e in os.scandir(root) if e.is_dir()]
        except FileNotFoundError:
            return []
    else:
        runs = sorted({e.name.split("/", 1)[0] for e in layout.list_tree(root)})
    removed = []
    for name in runs:
        started = layout.run_started(name.partition("_")[2])
        if started is not None and now - started > timedelta(hours=ttl_hours):
            layout.remove_tree(layout.join(root, name))
            removed.append(name)
    layout.remove_empty_dirs(root)
    return removed
