"""Planning each distinct uri (``plan_uris``): one task per uri naming each of its row buckets
once, with the earlier night's row of that uri; an unchanged declared version settles the
uri at once, with no task (no request), unless the audit sample picks it."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.plan_uris import DeclaredAudit, plan_uris
from aisthetics_transforms.progress import TALLY
from aisthetics_transforms.records import OUTCOMES, STATS, URIS_PER_ELEMENT, UriTask, scores_schema
from aisthetics_transforms.unique_ids import uri_requests

SCORED_AT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def requests(*pairs: tuple[str, int]) -> bytes:
    """A packed piece of uri requests: (uri, row bucket) pairs."""
    uris, row_buckets = zip(*pairs, strict=True)
    return buckets.pack(pa.table({"uri": list(uris), "bucket": pa.array(row_buckets, pa.int32())}))


def declaring(bucket: int, *rows: tuple[str, str | None]) -> bytes:
    """The packed uri requests of a row bucket whose rows are (uri, declared version)."""
    uris, declared = zip(*rows, strict=True)
    table = pa.table({"uri": list(uris), "declared_version": pa.array(declared, pa.string())})
    return buckets.pack(uri_requests(table, bucket))


def earlier_rows(*uris: str, declared: dict | None = None) -> bytes:
    """A packed piece of an earlier night's scores rows, one per uri."""
    rows = [
        {
            "image_id": f"id-{uri}",
            "uri": uri,
            "mean_score": 4.0 + n,
            "sd_score": 1.0,
            "predictions": [0.1] * 10,
            "model_version": "nima-test",
            "scored_at": SCORED_AT,
            "content_sha256": f"{n:064x}",
            "source_version": f'etag="{n}"',
            "reused": False,
            "exif_orientation": None,
            "declared_version": (declared or {}).get(uri),
        }
        for n, uri in enumerate(uris)
    ]
    return buckets.pack(pa.Table.from_pylist(rows, schema=scores_schema()))


def planned(element, audit=DeclaredAudit()):
    """(tasks, outcomes, stats) of :func:`plan_uris`, flattened."""
    tasks, outcomes, stats = [], [], {}
    for item in plan_uris(element, audit):
        if isinstance(item, TaggedOutput) and item.tag == OUTCOMES:
            outcomes += item.value
        elif isinstance(item, TaggedOutput):
            assert item.tag == STATS and not stats  # one count per element
            stats = item.value
        else:
            assert len(item) <= URIS_PER_ELEMENT
            tasks += item
    return tasks, outcomes, stats


def test_one_task_per_uri_naming_each_row_bucket_once():
    pieces = [
        requests(("http://h/b.jpg", 3), ("http://h/a.jpg", 1), ("http://h/b.jpg", 0)),
        requests(("http://h/a.jpg", 1), ("/local/c.jpg", 2), ("http://h/b.jpg", 3)),
    ]
    tasks, outcomes, stats = planned((5, {"requests": pieces}))  # a first night: no "previous" side at all
    assert tasks == [UriTask("/local/c.jpg", (2,)), UriTask("http://h/a.jpg", (1,)), UriTask("http://h/b.jpg", (0, 3))]
    assert (outcomes, stats) == ([], {})
    assert planned((5, {"requests": pieces, "previous": []}))[0] == tasks


def test_a_task_carries_the_earlier_nights_row_of_its_uri_only():
    pieces = [requests(("http://h/a.jpg", 1), ("http://h/new.jpg", 2))]
    previous = [earlier_rows("http://h/a.jpg", "http://h/no-longer-listed.jpg")]
    tasks = {task.uri: task for task in planned((5, {"requests": pieces, "previous": previous}))[0]}
    assert sorted(tasks) == ["http://h/a.jpg", "http://h/new.jpg"]
    [row] = [r for r in buckets.unpack(previous[0]).to_pylist() if r["uri"] == "http://h/a.jpg"]
    previous_a = tasks["http://h/a.jpg"].previous
    assert (previous_a.content_sha256, previous_a.source_version, previous_a.score.scored_at) == (
        row["content_sha256"],
        row["source_version"],
        row["scored_at"],
    )
    assert tasks["http://h/new.jpg"].previous is None


def test_a_bucket_with_only_earlier_rows_plans_nothing():
    assert planned((5, {"requests": [], "previous": [earlier_rows("http://h/a.jpg")]})) == ([], [], {})


def test_tasks_travel_in_bounded_lists_and_are_counted_as_planned():
    n = 2 * URIS_PER_ELEMENT + 5
    pieces = [requests(*((f"http://h/{i:04}.jpg", i % 3) for i in range(n)))]
    TALLY.clear()
    lists = list(plan_uris((5, {"requests": pieces})))
    assert [len(tasks) for tasks in lists] == [URIS_PER_ELEMENT, URIS_PER_ELEMENT, 5]
    assert TALLY.snapshot()["uris_planned"] == n


# --- declared versions ------------------------------------------------------------------------


def test_an_unchanged_declared_version_settles_the_uri_with_the_earlier_score_and_no_task():
    previous = [
        earlier_rows(
            "http://h/same.jpg",
            "http://h/changed.jpg",
            "http://h/undeclared.jpg",
            declared={"http://h/same.jpg": "2026-11-01", "http://h/changed.jpg": "2026-11-01"},
        )
    ]
    pieces = [
        declaring(1, ("http://h/same.jpg", "2026-11-01"), ("http://h/changed.jpg", "2026-11-27")),
        declaring(2, ("http://h/same.jpg", "2026-11-01"), ("http://h/undeclared.jpg", None), ("http://h/new.jpg", "x")),
    ]
    TALLY.clear()
    tasks, outcomes, stats = planned((5, {"requests": pieces, "previous": previous}))
    assert [task.uri for task in tasks] == ["http://h/changed.jpg", "http://h/new.jpg", "http://h/undeclared.jpg"]
    assert not any(task.audit for task in tasks)
    [(row_buckets, outcome)] = outcomes
    assert row_buckets == (1, 2) and outcome.uri == "http://h/same.jpg" and outcome.reused
    same = {r["uri"]: r for r in buckets.unpack(previous[0]).to_pylist()}["http://h/same.jpg"]
    assert (outcome.content_sha256, outcome.source_version, outcome.score.mean_score) == (
        same["content_sha256"],
        same["source_version"],
        same["mean_score"],
    )
    assert stats == {"declared_unchanged": 1, "declared_changed": 1, "uris": 1, "uris_unchanged": 1}
    # changed, says the catalog: fetched at once, no version check first
    changed = next(task for task in tasks if task.uri == "http://h/changed.jpg")
    earlier = {r["uri"]: r for r in buckets.unpack(previous[0]).to_pylist()}
    assert changed.previous.source_version is None
    assert changed.previous.content_sha256 == earlier["http://h/changed.jpg"]["content_sha256"]
    assert TALLY.snapshot()["uris_planned"] == 4 and TALLY.snapshot()["uris_unchanged"] == 1


@pytest.mark.parametrize(
    "tonight",
    [
        [(1, "v1"), (2, "v2")],  # rows of one uri in two buckets disagree
        [(1, "v1"), (1, "v2")],  # ... or in one bucket
        [(1, "v1"), (2, None)],  # one row declares nothing
    ],
)
def test_rows_of_a_uri_that_disagree_declare_nothing(tonight):
    previous = [earlier_rows("http://h/a.jpg", declared={"http://h/a.jpg": "v1"})]
    pieces = [declaring(bucket, ("http://h/a.jpg", value)) for bucket, value in tonight]
    tasks, outcomes, _ = planned((5, {"requests": pieces, "previous": previous}))
    assert [task.uri for task in tasks] == ["http://h/a.jpg"] and outcomes == []


def test_uri_requests_hold_one_row_per_uri_however_many_rows_declare():
    rows = [("http://h/placeholder.jpg", f"2026-11-{1 + i % 28:02d}") for i in range(10_000)]
    table = buckets.unpack(declaring(7, *rows))
    assert table.num_rows == 1
    assert table.to_pylist() == [
        {
            "uri": "http://h/placeholder.jpg",
            "bucket": 7,
            "declared_min": "2026-11-01",
            "declared_max": "2026-11-28",
            "declared_nulls": 0,
        }
    ]


def test_the_audit_checks_a_deterministic_sample_of_the_unchanged_for_real():
    uris = [f"http://h/{i:05d}.jpg" for i in range(2_000)]
    previous = [earlier_rows(*uris, declared={uri: "v" for uri in uris})]
    pieces = [declaring(0, *((uri, "v") for uri in uris))]
    audit = DeclaredAudit(0.1, "2026-11-28")
    tasks, outcomes, stats = planned((5, {"requests": pieces, "previous": previous}), audit)
    assert all(task.audit and task.previous is not None for task in tasks)
    assert 120 <= len(tasks) <= 280  # 10 % of 2,000
    assert len(tasks) + len(outcomes) == len(uris)
    assert stats == {
        "declared_unchanged": 2_000,
        "declared_audited": len(tasks),
        "uris": len(outcomes),
        "uris_unchanged": len(outcomes),
    }
    again = planned((5, {"requests": pieces, "previous": previous}), audit)[0]
    assert [t.uri for t in again] == [t.uri for t in tasks]  # the same sample for the same night
    other_night = planned((5, {"requests": pieces, "previous": previous}), DeclaredAudit(0.1, "2026-11-29"))[0]
    assert {t.uri for t in other_night} != {t.uri for t in tasks}
    assert planned((5, {"requests": pieces, "previous": previous}), DeclaredAudit(1.0, "x"))[1] == []
