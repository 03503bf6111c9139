"""Publishing a night: whole or not at all, under retries, crashes and concurrent runs.

A run writes its Parquet files under ``_staging/DATE_RUNID/`` (write.py). :func:`publish_night`
then makes them the night of DATE in steps that can each be repeated, after a fault at any
point, with the same result, on local disk and on ``gs://`` alike:

0. take the date's publish lock (``publish_lock.DateLock``);
1. if the date's summary already names this run, go to 4; if it names a newer run, or
   another run holds the date's claim (``night_claim``), fail: this run's night is not
   the one to publish;
2. delete the staged files of bundle attempts that did not commit; give a table without a
   file one empty file carrying its schema; move every staged file into its partition
   directory under the same name (one already moved is skipped);
3. write ``summary.json``, naming the run: the commit point. Readers trust a night only
   through it (layout.py), so before it they see the previous night whole, after it the new;
4. delete from the partition directories every file not of this run: the previous run's,
   and those left by publishes that died between 2 and 3; release the date's claim;
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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Callable, Mapping, Optional, Sequence

import pyarrow.parquet as pq

from aisthetics_transforms import layout, storage
from aisthetics_transforms.night_claim import read_claim, release_claim
from aisthetics_transforms.publish_lock import DateLock, LockTimes, PublishError, no_fault
from aisthetics_transforms.records import table_schemas

FAULT_ENV = "AISTHETICS_PUBLISH_FAULT"
MOVE_BATCH = 100  # files per remote move (Beam batches GCS copies and deletes by 100)
STAGING_TTL_HOURS = 72.0  # staging older than this is a dead run's (longer than any run lives)
_log = logging.getLogger(__name__)


class Superseded(PublishError):
    """A newer run of the date has published: this run's night would be older."""


class PublishFault(RuntimeError):
    """A fault injected at a named step (tests)."""


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
    staging_ttl_hours: float = STAGING_TTL_HOURS
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
        staging_ttl_hours: float = STAGING_TTL_HOURS,
        lock: Optional[LockTimes] = None,
    ) -> RunInfo:
        now = datetime.now(UTC)
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


# ---------------------------------------------------------------------------
# The steps


def publish_night(run: RunInfo, committed: Sequence[str], summary: Mapping, *, fault=None) -> dict:
    """Publish run ``run``'s staged files (``committed``: the paths of the files its
    committed bundles wrote) with ``summary`` as the night of ``run.run_date``, or resume a
    publish of the same run that failed anywhere. Returns the summary as published."""
    fault = fault or fault_from_env() or no_fault
    try:
        with DateLock(run.output, run.run_date, run.run_id, run.lock, fault) as lock:
            fault("locked")
            published = layout.read_summary(run.output, run.run_date)
            if published is None or _run_of(published) != run.run_id:
                _refuse_if_superseded(run, published)
                _refuse_if_claimed(run)
                expected = stage_and_move(run, committed, fault)
                published = _commit(run, summary, expected, lock, fault)
            if lock.holds():  # else another run took over the date after us, and prunes it
                prune(run, fault)
            release_claim(run.output, run.run_date, run.run_id)
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
    storage.remove_tree(layout.staging_dir(run.output, run.run_date, run.run_id))
    storage.remove_empty_dirs(layout.join(run.output, layout.STAGING))


def _refuse_if_superseded(run: RunInfo, published: Optional[dict]) -> None:
    other = _run_of(published)
    if published is not None and other and other > run.run_id:
        when = published.get("published_at") or published.get("finished_at") or "an unknown time"
        raise Superseded(
            f"run {run.run_id} of {run.run_date} superseded by newer run {other} published at {when}; "
            f"nothing of run {run.run_id} was published"
        )


def _refuse_if_claimed(run: RunInfo) -> None:
    """A run publishes only while no other run holds the date's claim (``night_claim``)."""
    held = read_claim(run.output, run.run_date)
    if held is not None and held.run_id != run.run_id and not held.expired(datetime.now(UTC)):
        raise Superseded(
            f"run {run.run_id} of {run.run_date} no longer holds the date: {held.describe()} claimed it "
            f"(until {held.expires_at}); nothing of run {run.run_id} was published"
        )


def _empty_parquet(schema) -> bytes:
    buffer = io.BytesIO()
    pq.ParquetWriter(buffer, schema, compression="snappy").close()
    return buffer.getvalue()


def stage_and_move(run: RunInfo, committed: Sequence[str], fault=no_fault) -> dict[str, set]:
    """Step 2; returns {table: the file names of the run's night}."""
    staging = layout.staging_dir(run.output, run.run_date, run.run_id)
    names: dict[str, set] = {table: set() for table in layout.TABLES}
    for path in committed:
        table, _, name = path[len(staging) + 1 :].partition("/")
        if not path.startswith(staging + "/") or table not in names or not layout.is_run_file(name, run.run_id):
            raise PublishError(f"{path} is not a staged file of run {run.run_id} under {staging}")
        names[table].add(name)
    schemas = table_schemas(run.keep_columns)
    moves = []
    for table in layout.TABLES:
        staged_dir = layout.join(staging, table)
        visible_dir = layout.partition_dir(run.output, table, run.run_date)
        staged = {e.name: e.path for e in storage.list_dir(staged_dir)}
        visible = {e.name for e in storage.list_dir(visible_dir)}
        storage.delete([path for name, path in staged.items() if name not in names[table]])  # failed attempts
        if not names[table]:  # no rows: one empty file with the schema
            empty = f"{run.run_id}-empty.parquet"
            names[table] = {empty}
            if empty not in visible:
                staged[empty] = layout.join(staged_dir, empty)
                storage.write_atomic(staged[empty], _empty_parquet(schemas[table]), "application/x-parquet")
        for name in sorted(names[table]):
            if name in staged:
                moves.append((staged[name], layout.join(visible_dir, name)))
            elif name not in visible:
                raise PublishError(
                    f"{layout.join(staged_dir, name)} of run {run.run_id} is neither staged nor "
                    f"published (deleted by another hand?); rerun {run.run_date}"
                )
    fault("staged")
    batch = 1 if storage.is_local(run.output) else MOVE_BATCH
    for i, start in enumerate(range(0, len(moves), batch), 1):
        storage.move(moves[start : start + batch])
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
        missing = names - {e.name for e in storage.list_dir(layout.partition_dir(run.output, table, run.run_date))}
        if missing:
            raise PublishError(
                f"{len(missing)} files of run {run.run_id} vanished from "
                f"{layout.partition_dir(run.output, table, run.run_date)} before the commit, e.g. "
                f"{sorted(missing)[0]}; nothing was committed: rerun {run.run_date}"
            )
    published = {**summary, "run_id": run.run_id, "published_at": datetime.now(UTC).isoformat()}
    data = json.dumps(published, indent=2, sort_keys=True).encode() + b"\n"
    storage.write_atomic(layout.summary_path(run.output, run.run_date), data, "application/json")
    fault("committed")
    return published


def prune(run: RunInfo, fault=no_fault) -> None:
    """Step 4: the partition directories keep only the files of the run that committed."""
    for table in layout.TABLES:
        visible = storage.list_dir(layout.partition_dir(run.output, table, run.run_date))
        others = [e.path for e in visible if e.name.endswith(".parquet") and not layout.is_run_file(e.name, run.run_id)]
        storage.delete(others)
        fault(f"pruned.{table}")
    runs_dir = layout.partition_dir(run.output, layout.RUNS, run.run_date)
    # Temporary files of summary writes that died (local disk only has them).
    storage.delete([e.path for e in storage.list_dir(runs_dir) if e.name.startswith(f".{layout.SUMMARY}.")])


def remove_old_staging(output: str, ttl_hours: float, now: Optional[datetime] = None) -> list[str]:
    """Delete the staging directories of runs that started more than ``ttl_hours`` ago
    (of any date): their runs are dead. Returns their names."""
    now = now or datetime.now(UTC)
    root = layout.join(output, layout.STAGING)
    if storage.is_local(output):
        try:
            runs = [e.name for e in os.scandir(root) if e.is_dir()]
        except FileNotFoundError:
            return []
    else:
        runs = sorted({e.name.split("/", 1)[0] for e in storage.list_tree(root)})
    removed = []
    for name in runs:
        started = layout.run_started(name.partition("_")[2])
        if started is not None and now - started > timedelta(hours=ttl_hours):
            storage.remove_tree(layout.join(root, name))
            removed.append(name)
    storage.remove_empty_dirs(root)
    return removed
