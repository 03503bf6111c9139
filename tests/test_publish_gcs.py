"""Publishing a night on gs://, against a real GCS API (gcp-storage-emulator) on loopback:
the same faults at every step as on local disk, concurrent runs, dead claims, stale staging."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from gcs_emulator import gcs  # noqa: F401  (pytest fixture)
from test_publish import (
    DATE,
    NEW,
    OLD,
    STEPS,
    Fault,
    _staging_of,
    assert_settled,
    assert_whole,
    fault_then_recover,
    make_run,
    published,
    stage,
    visible_files,
)

from aisthetics_transforms import layout, publish, queries, storage
from aisthetics_transforms.publish import PublishError, Superseded, publish_night

pytestmark = pytest.mark.slow  # the GCS emulator


@pytest.fixture
def output(gcs) -> str:
    root = gcs.uri(f"publish-{uuid.uuid4().hex[:8]}")
    yield f"{root}/out"
    # The emulator rewrites its whole object index on every write: keep the bucket small.
    storage.delete([e.path for e in storage.list_tree(root)])


@pytest.fixture
def one_file_per_move(monkeypatch):
    """Remote moves go in batches; one file per batch puts a step between any two moves."""
    monkeypatch.setattr(publish, "MOVE_BATCH", 1)


@pytest.mark.parametrize("step", STEPS)
def test_a_fault_at_any_step_then_a_retry_leaves_one_whole_night(output, one_file_per_move, step):
    fault_then_recover(output, step, "retry")


# A new run after a fault (test_publish.py does every step on local disk): before the first
# move, between moves, at the commit, between the prunes, after release.
@pytest.mark.parametrize("step", ["staged", "moved.2", "before_commit", "committed", "pruned.scores", "unstaged"])
def test_a_fault_then_a_new_run_leaves_one_whole_night(output, one_file_per_move, step):
    fault_then_recover(output, step, "rerun")


def test_batched_moves_publish_the_whole_night(output, gcs):
    old = published(output, OLD)
    new = make_run(output)
    fault = Fault("none")
    publish_night(new, *stage(new, NEW, files=3), fault=fault)
    assert [s for s in fault.seen if s.startswith("moved.")] == ["moved.1"]  # 6 files in one batch
    assert assert_whole(output, {old.run_id: OLD, new.run_id: NEW}) == new.run_id
    assert_settled(output, new.run_id)
    prefix = output[len(f"gs://{gcs.bucket}/") :]
    assert not [n for n in gcs.list_names(prefix) if "/_staging/" in n or "/_publish/" in n]


def test_an_older_run_never_replaces_a_newer_runs_night(output):
    older = make_run(output)
    older_files = stage(older, OLD)
    newer = published(output, NEW)
    with pytest.raises(Superseded, match=f"run {older.run_id} of {DATE} superseded by newer run {newer.run_id}"):
        publish_night(older, *older_files)
    assert assert_whole(output, {newer.run_id: NEW, older.run_id: OLD}) == newer.run_id
    assert not storage.list_tree(layout.staging_dir(output, DATE, older.run_id))


def test_two_runs_of_one_date_at_once(output):
    older, newer = make_run(output), make_run(output)
    files = {older.run_id: stage(older, OLD), newer.run_id: stage(newer, NEW)}
    steps: dict[str, list] = {older.run_id: [], newer.run_id: []}
    outcome: dict = {}

    def run_publish(run):
        def fault(step):
            steps[run.run_id].append((step, time.monotonic()))
            if step == "moved.1":
                time.sleep(0.3)

        try:
            outcome[run.run_id] = publish_night(run, *files[run.run_id], fault=fault)
        except PublishError as exc:
            outcome[run.run_id] = exc

    threads = [threading.Thread(target=run_publish, args=(run,)) for run in (older, newer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    # One held the lock while the other waited: their locked stretches do not overlap.
    spans = sorted((dict(s)["locked"], dict(s).get("pruned.errors", dict(s)["locked"])) for s in steps.values())
    assert spans[0][1] < spans[1][0], spans
    assert isinstance(outcome[newer.run_id], dict)
    assert assert_whole(output, {older.run_id: OLD, newer.run_id: NEW}) == newer.run_id
    assert_settled(output, newer.run_id)


def test_a_dead_runs_claim_expires(output):
    dead = layout.join(layout.claims_dir(output, DATE), "20261128T000000000000Z-dead00.claim")
    storage.create_if_absent(dead)
    time.sleep(1.2)  # longer than the test runs' ttl, without a heartbeat
    run = published(output, NEW)
    assert not storage.list_tree(layout.claims_dir(output, DATE))
    assert_settled(output, run.run_id)


def test_stale_staging_is_removed_by_age_never_a_young_one(output):
    now = datetime.now(UTC)
    dead = _staging_of(output, DATE, now - timedelta(hours=80))
    young = _staging_of(output, DATE, now - timedelta(hours=70))
    run = published(output, NEW)
    left = {e.name.split("/", 1)[0] for e in storage.list_tree(layout.join(output, layout.STAGING))}
    assert left == {young}, (left, dead)
    assert_settled(output, run.run_id)


def test_readers_of_a_gs_output_see_published_nights_only(output):
    first = published(output, OLD, "2026-11-26")
    died = make_run(output, "2026-11-27")
    with pytest.raises(publish.PublishFault):
        publish_night(died, *stage(died, NEW), fault=Fault("moved.1"))
    assert visible_files(output, "2026-11-27")  # a file of the died run is in the partition
    assert layout.published_dates(output) == ["2026-11-26"]
    assert layout.previous_night(output, "2026-11-28")["run_id"] == first.run_id
    assert layout.night_files(output, "scores", "2026-11-27") == []
    assert layout.night_pattern(layout.partition_dir(output, "scores", "2026-11-26")).endswith(
        f"/scores/dt=2026-11-26/{first.run_id}-*.parquet"
    )
    assert "read_parquet" in queries.table(output, "scores")
