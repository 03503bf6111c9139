"""Publishing a night on local disk: a fault at every step, then a retry or a new run, always
leaves one whole night visible; concurrent runs of a date; the lock; stale staging; readers
that parse dates only from the partition's own folder (a dt= inside --output is harmless)."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aisthetics_transforms import layout, publish, queries, report, storage
from aisthetics_transforms.incremental import find_previous_night
from aisthetics_transforms.publish import (
    DateLock,
    LockTimes,
    PublishError,
    PublishFault,
    RunInfo,
    Superseded,
    publish_night,
)
from aisthetics_transforms.records import errors_schema, scores_schema

DATE = "2026-11-28"
FAST = LockTimes(ttl_s=1.0, wait_s=30.0, poll_s=0.05, settle_s=0.01)
OLD = ([f"old-{i}" for i in range(5)], ["old-bad-0", "old-bad-1"])  # (score ids, error ids)
NEW = ([f"new-{i}" for i in range(7)], ["new-bad-0", "new-bad-1", "new-bad-2"])
# Every step of a publish with 2 staged files per table (local moves are one file each).
STEPS = [
    "claimed",
    "locked",
    "staged",
    "moved.1",
    "moved.2",
    "moved.3",
    "moved.4",
    "before_commit",
    "committed",
    "pruned.scores",
    "pruned.errors",
    "released",
    "unstaged",
    "cleaned",
]


# ---------------------------------------------------------------------------
# Helpers, shared with test_publish_gcs.py


def make_run(output: str, run_date: str = DATE, lock: LockTimes = FAST, staging_ttl_hours: float = 72.0) -> RunInfo:
    time.sleep(0.001)  # run ids sort by start time, to the microsecond
    return RunInfo.new(output, run_date, "nima-test", "manifest.csv", lock=lock, staging_ttl_hours=staging_ttl_hours)


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer)
    return buffer.getvalue()


def _rows(table: str, ids: list[str]) -> list[dict]:
    if table == "scores":
        return [{"image_id": i, "uri": f"/catalog/{i}.jpg", "mean_score": 5.0 + n / 10} for n, i in enumerate(ids)]
    return [{"image_id": i, "uri": f"/catalog/{i}.jpg", "stage": "fetch", "error_type": "NotFound"} for i in ids]


def stage(run: RunInfo, ids: tuple, files: int = 2, leftover: bool = True) -> tuple[list[str], dict]:
    """Write ``run``'s staged files as its writers would: ``files`` per table, plus (with
    ``leftover``) one file per table of a bundle attempt that failed and is not committed.
    Returns (the committed paths, the run's summary)."""
    staging = layout.staging_dir(run.output, run.run_date, run.run_id)
    schemas = {"scores": scores_schema(), "errors": errors_schema()}
    committed = []
    for table, table_ids in zip(layout.TABLES, ids):
        for i in range(files):
            part = table_ids[i::files]
            if part:
                path = layout.join(staging, table, f"{run.run_id}-{table}-{uuid.uuid4().hex}.parquet")
                storage.write_atomic(path, parquet_bytes(_rows(table, part), schemas[table]))
                committed.append(path)
        if leftover:
            path = layout.join(staging, table, f"{run.run_id}-{table}-failed-attempt.parquet")
            storage.write_atomic(path, parquet_bytes(_rows(table, [f"ghost-{table}"]), schemas[table]))
    scores, errors = ids
    summary = {
        "run_date": run.run_date,
        "run_id": run.run_id,
        "rows": len(scores) + len(errors),
        "scored": len(scores),
        "reused": 0,
        "deduplicated": 0,
        "errors": len(errors),
        "model_version": "nima-test",
    }
    return committed, summary


def published(output: str, ids: tuple = OLD, run_date: str = DATE) -> RunInfo:
    run = make_run(output, run_date)
    publish_night(run, *stage(run, ids))
    return run


def read_ids(paths: list[str]) -> list[str]:
    ids = []
    for path in paths:
        ids += pq.read_table(io.BytesIO(storage.read_bytes(path))).column("image_id").to_pylist()
    return ids


def assert_whole(output: str, runs: dict, run_date: str = DATE) -> str:
    """The night a summary-reader sees is exactly one of ``runs`` ({run_id: ids}), its rows,
    counts and summary agreeing; returns that run's id."""
    summary = layout.read_summary(output, run_date)
    assert summary is not None, f"no night visible for {run_date}"
    assert summary["run_id"] in runs, f"the summary names {summary['run_id']}, not one of {sorted(runs)}"
    scores = read_ids(layout.night_files(output, "scores", run_date, summary))
    errors = read_ids(layout.night_files(output, "errors", run_date, summary))
    want_scores, want_errors = runs[summary["run_id"]]
    assert sorted(scores) == sorted(want_scores) and len(scores) == len(set(scores))
    assert sorted(errors) == sorted(want_errors) and len(errors) == len(set(errors))
    assert (summary["rows"], summary["errors"]) == (len(scores) + len(errors), len(errors))
    assert summary["scored"] + summary["deduplicated"] + summary["reused"] == len(scores)
    return summary["run_id"]


def visible_files(output: str, run_date: str = DATE) -> list[str]:
    return [e.name for table in layout.TABLES for e in storage.list_dir(layout.partition_dir(output, table, run_date))]


def assert_settled(output: str, run_id: str, run_date: str = DATE) -> None:
    """After a completed publish: only ``run_id``'s files are visible (glob readers see the
    night exactly too), its staging is gone, and no claim is left."""
    names = visible_files(output, run_date)
    assert names and all(n.startswith(f"{run_id}-") for n in names), names
    assert not storage.list_tree(layout.staging_dir(output, run_date, run_id))
    assert not storage.list_tree(layout.claims_dir(output, run_date))


class Fault:
    """Raises at one named step and records every step it was called at."""

    def __init__(self, step: str):
        self.step, self.seen = step, []

    def __call__(self, name: str) -> None:
        self.seen.append(name)
        if name == self.step:
            raise PublishFault(f"injected at {name}")


def fault_then_recover(output: str, step: str, then: str) -> None:
    """Publish OLD; publish NEW with a fault at ``step``; check the night; then retry the
    same run or publish a new run of NEW; check again."""
    old = published(output, OLD)
    new = make_run(output)
    committed, summary = stage(new, NEW)
    fault = Fault(step)
    with pytest.raises(PublishFault):
        publish_night(new, committed, summary, fault=fault)
    assert fault.seen[-1] == step
    runs = {old.run_id: OLD, new.run_id: NEW}
    committed_already = STEPS.index(step) >= STEPS.index("committed")
    assert assert_whole(output, runs) == (new.run_id if committed_already else old.run_id)
    if step.startswith("moved."):  # files of the new run sit in the partitions: readers skip them
        assert any(n.startswith(new.run_id) for n in visible_files(output))
    if then == "retry":  # the same run again, as Beam retries a failed step
        publish_night(new, committed, summary)
        final = new
    else:  # a new run of the date (it waits for the failed run's claim to go stale)
        final = make_run(output)
        publish_night(final, *stage(final, NEW))
        runs[final.run_id] = NEW
    assert assert_whole(output, runs) == final.run_id
    assert_settled(output, final.run_id)


# ---------------------------------------------------------------------------
# Faults


# A new run waits for the failed run's claim to go stale (a second each): the slow set.
@pytest.mark.parametrize("then", ["retry", pytest.param("rerun", marks=pytest.mark.slow)])
@pytest.mark.parametrize("step", STEPS)
def test_a_fault_at_any_step_leaves_one_whole_night(tmp_path, step, then):
    fault_then_recover(str(tmp_path / "out"), step, then)


def test_the_steps_named_in_the_tests_are_the_publish_steps(tmp_path):
    output = str(tmp_path / "out")
    run = make_run(output)
    fault = Fault("none")
    publish_night(run, *stage(run, NEW), fault=fault)
    assert fault.seen == STEPS
    assert_settled(output, run.run_id)


def test_the_environment_names_a_fault(monkeypatch):
    assert publish.fault_from_env({}) is None
    fault = publish.fault_from_env({publish.FAULT_ENV: "moved.2"})
    fault("moved.1")  # other steps pass
    with pytest.raises(PublishFault, match="moved.2"):
        fault("moved.2")
    with pytest.raises(ValueError, match="STEP:kill"):
        publish.fault_from_env({publish.FAULT_ENV: "moved.2:explode"})


def test_files_of_failed_attempts_are_never_published_and_an_empty_table_has_its_schema(tmp_path):
    output = str(tmp_path / "out")
    run = make_run(output)
    committed, summary = stage(run, (NEW[0], []))  # no error rows tonight
    publish_night(run, committed, summary)
    assert not any("ghost" in i for i in read_ids(layout.night_files(output, "scores", DATE)))
    [empty] = layout.night_files(output, "errors", DATE)
    assert empty.endswith(f"{run.run_id}-empty.parquet")
    table = pq.read_table(empty)
    assert table.num_rows == 0 and table.schema.names == errors_schema().names
    assert_whole(output, {run.run_id: (NEW[0], [])})


def test_a_committed_path_outside_the_runs_staging_is_refused(tmp_path):
    output = str(tmp_path / "out")
    run = make_run(output)
    committed, summary = stage(run, NEW)
    with pytest.raises(PublishError, match="is not a staged file of run"):
        publish_night(run, [*committed, str(tmp_path / "elsewhere.parquet")], summary)
    assert layout.read_summary(output, DATE) is None


# ---------------------------------------------------------------------------
# Runs of one date


def test_an_older_run_never_replaces_a_newer_runs_night(tmp_path):
    output = str(tmp_path / "out")
    older = make_run(output)
    older_files = stage(older, OLD)
    newer = published(output, NEW)
    with pytest.raises(Superseded) as caught:
        publish_night(older, *older_files)
    message = str(caught.value)
    assert "\n" not in message
    assert f"run {older.run_id} of {DATE} superseded by newer run {newer.run_id} published at 20" in message
    assert assert_whole(output, {newer.run_id: NEW, older.run_id: OLD}) == newer.run_id
    assert not storage.list_tree(layout.staging_dir(output, DATE, older.run_id))  # nothing of it will ever publish
    assert_settled(output, newer.run_id)


def test_a_superseded_run_that_cleans_up_last_leaves_no_staging_folder(tmp_path):
    output = str(tmp_path / "out")
    older = make_run(output)
    older_files = stage(older, OLD)
    published(output, NEW)  # the newer run finishes first: the older run's staging is still there
    with pytest.raises(Superseded):
        publish_night(older, *older_files)
    assert not os.path.exists(layout.join(output, layout.STAGING))


@pytest.mark.parametrize("first", ["older", "newer"])
def test_two_runs_of_one_date_at_once(tmp_path, first):
    """Both runs finish staging together; the first to claim holds the lock through a slow
    publish while the other waits. The newest run's night is the one left, whole."""
    output = str(tmp_path / "out")
    older, newer = make_run(output), make_run(output)
    files = {older.run_id: stage(older, OLD), newer.run_id: stage(newer, NEW)}
    events: list[tuple[str, str, float]] = []
    outcome: dict = {}
    leader_holds, follower_claimed = threading.Event(), threading.Event()

    def run_publish(run: RunInfo, leads: bool) -> None:
        def fault(step):
            events.append((run.run_id, step, time.monotonic()))
            if leads and step == "moved.1":  # hold the lock until the other run has claimed
                leader_holds.set()
                follower_claimed.wait(30)
            if not leads and step == "claimed":
                follower_claimed.set()

        try:
            outcome[run.run_id] = publish_night(run, *files[run.run_id], fault=fault)
        except PublishError as exc:
            outcome[run.run_id] = exc

    leader, follower = (older, newer) if first == "older" else (newer, older)
    threads = [threading.Thread(target=run_publish, args=(leader, True))]
    threads[0].start()
    assert leader_holds.wait(30)
    threads.append(threading.Thread(target=run_publish, args=(follower, False)))
    threads[1].start()
    for thread in threads:
        thread.join(60)

    def at(run, step):
        return next(t for r, s, t in events if r == run.run_id and s == step)

    # The follower claimed while the leader held the lock, and got it only after the leader's last locked step.
    assert at(follower, "claimed") < at(leader, "pruned.errors") < at(follower, "locked")
    assert isinstance(outcome[newer.run_id], dict)
    if first == "older":
        assert isinstance(outcome[older.run_id], dict)  # published, then replaced by the newer run
    else:
        assert isinstance(outcome[older.run_id], Superseded)
    assert assert_whole(output, {older.run_id: OLD, newer.run_id: NEW}) == newer.run_id
    assert_settled(output, newer.run_id)


def test_a_waiting_run_gives_up_after_its_wait_with_one_clear_line(tmp_path):
    output = str(tmp_path / "out")
    holder = DateLock(output, DATE, "20261128T000000000000Z-holder", FAST)
    holder.acquire()
    try:
        run = make_run(output, lock=LockTimes(ttl_s=1.0, wait_s=0.5, poll_s=0.05, settle_s=0.01))
        files = stage(run, NEW)
        with pytest.raises(PublishError) as caught:
            publish_night(run, *files)
        message = str(caught.value)
        assert "\n" not in message and f"run {run.run_id} of {DATE} waited 0 s for the publish lock" in message
        assert "held by run 20261128T000000000000Z-holder" in message
        assert layout.read_summary(output, DATE) is None
        assert storage.list_tree(layout.staging_dir(output, DATE, run.run_id))  # kept: a retry may still publish
    finally:
        holder.release()
    publish_night(run, *files)  # the lock is free now
    assert_whole(output, {run.run_id: NEW})


@pytest.mark.slow  # waits out a lock's time to live
def test_a_dead_runs_claim_expires_and_a_live_one_is_kept(tmp_path):
    output = str(tmp_path / "out")
    claims = layout.claims_dir(output, DATE)
    dead = layout.join(claims, "20261128T000000000000Z-dead00.claim")
    storage.create_if_absent(dead)
    past = time.time() - 3600
    os.utime(dead, (past, past))  # its run stopped an hour ago, and never beat since
    run = published(output, NEW)
    assert not os.path.exists(dead)
    assert_settled(output, run.run_id)
    # A claim that is old but whose run beats is alive: it holds the lock.
    live = DateLock(output, DATE, "20261128T000000000001Z-live00", LockTimes(ttl_s=1.0, settle_s=0.01))
    live.acquire()
    try:
        os.utime(live.claim, (past, past))
        time.sleep(0.6)  # past half the ttl: heartbeats, not the claim, keep it alive
        waiting = make_run(output, lock=LockTimes(ttl_s=1.0, wait_s=1.5, poll_s=0.05, settle_s=0.01))
        with pytest.raises(PublishError, match="held by run 20261128T000000000001Z-live00"):
            publish_night(waiting, *stage(waiting, OLD))
    finally:
        live.release()


# ---------------------------------------------------------------------------
# Staging left behind


def _staging_of(output: str, run_date: str, started: datetime) -> str:
    run_id = layout.new_run_id(started)
    directory = layout.staging_dir(output, run_date, run_id)
    storage.write_atomic(layout.join(directory, "scores", f"{run_id}-scored-x.parquet"), b"PAR1")
    return f"{run_date}_{run_id}"


def test_stale_staging_is_removed_by_age_never_a_young_one(tmp_path):
    output = str(tmp_path / "out")
    now = datetime.now(UTC)
    dead = [
        _staging_of(output, DATE, now - timedelta(hours=73)),
        _staging_of(output, "2026-11-01", now - timedelta(days=20)),
    ]
    young = [
        _staging_of(output, DATE, now - timedelta(hours=71)),
        _staging_of(output, "2026-11-27", now - timedelta(minutes=1)),
    ]
    foreign = layout.join(output, layout.STAGING, "not-a-run")
    storage.write_atomic(layout.join(foreign, "file"), b"x")
    run = published(output, NEW)
    left = sorted(os.listdir(layout.join(output, layout.STAGING)))
    assert left == sorted([*young, "not-a-run"]), (left, dead)
    assert_settled(output, run.run_id)
    assert publish.remove_old_staging(output, 72.0, now + timedelta(hours=2)) == [young[0]]


# ---------------------------------------------------------------------------
# Readers: a night is its summary's run; dates come from the partition folder only


def test_readers_see_published_nights_only_even_with_dt_inside_the_output_path(tmp_path):
    output = str(tmp_path / "dt=2020-01-01" / "out")
    first = published(output, OLD, "2026-11-26")
    second = published(output, NEW, "2026-11-27")
    # A first publish of 2026-11-28 that died after moving its files, before its summary.
    died = make_run(output, "2026-11-28")
    with pytest.raises(PublishFault):
        publish_night(died, *stage(died, NEW), fault=Fault("before_commit"))
    assert storage.list_dir(layout.partition_dir(output, "scores", "2026-11-28"))

    assert layout.published_dates(output) == ["2026-11-26", "2026-11-27"] == report.nights(output)
    assert layout.night_files(output, "scores", "2026-11-28") == []
    assert layout.previous_night(output, "2026-11-28")["run_id"] == second.run_id
    assert layout.previous_night(output, "2026-11-27")["run_id"] == first.run_id
    assert layout.previous_night(output, "2026-11-26") is None
    night = find_previous_night(output, "2026-11-29")
    partition = layout.partition_dir(output, "scores", "2026-11-27")
    assert (night.run_date, night.run_id, night.partition) == ("2026-11-27", second.run_id, partition)
    assert night.files and all(f.startswith(layout.join(partition, f"{second.run_id}-")) for f in night.files)
    assert layout.night_pattern(partition) == layout.join(partition, f"{second.run_id}-*.parquet")

    rows = queries.distribution_per_night(output)
    assert [(r["dt"].isoformat(), r["images"]) for r in rows] == [("2026-11-26", 5), ("2026-11-27", 7)]
    assert [r["dt"].isoformat() for r in queries.runs(output)] == ["2026-11-26", "2026-11-27"]
    data = report.collect(output, thumbnails=False)
    assert (data.run_date, data.table_rows, data.error_rows) == ("2026-11-27", 7, 3)
    assert data.comparison.previous_date == "2026-11-26"
    with pytest.raises(report.ReportError, match="no run for 2026-11-28"):
        report.collect(output, "2026-11-28", thumbnails=False)


def test_a_summary_without_a_run_id_covers_every_file_and_a_broken_one_is_named(tmp_path):
    output = str(tmp_path / "out")
    directory = layout.partition_dir(output, "scores", DATE)
    for name in ("a.parquet", "b.parquet"):
        storage.write_atomic(layout.join(directory, name), parquet_bytes(_rows("scores", [name]), scores_schema()))
    storage.write_atomic(layout.summary_path(output, DATE), b'{"rows": 2}')
    assert sorted(read_ids(layout.night_files(output, "scores", DATE))) == ["a.parquet", "b.parquet"]
    storage.write_atomic(layout.summary_path(output, DATE), b'{"rows": 2')
    with pytest.raises(layout.LayoutError, match=f"summary.json is not valid JSON .*rerun {DATE}"):
        layout.night_files(output, "scores", DATE)
