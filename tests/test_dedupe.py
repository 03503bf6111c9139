"""The dedupe stage's plain functions: the first row of each image_id, a bounded and
order-free choice of copies per content, and each content's outcome sent back to every row
bucket of every uri that has it (one task per uri: test_plan_uris.py)."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.dedupe import (
    READABLE_COPIES,
    FirstClaims,
    failure_for,
    keep_first_of_each_id,
    outcomes_of_content,
)
from aisthetics_transforms.manifest import ManifestFile
from aisthetics_transforms.progress import TALLY
from aisthetics_transforms.records import (
    ERRORS,
    URIS_PER_ELEMENT,
    ContentClaim,
    ContentResult,
    Failure,
    ImageRef,
    Score,
    UriOutcome,
    errors_schema,
    refs_table,
)

SCORED_AT = datetime(2026, 11, 27, 2, 0, tzinfo=timezone.utc)
SCORE = Score(5.5, 1.25, (0.1,) * 10, "nima-test", SCORED_AT, None)


# --- FirstClaims --------------------------------------------------------------------------------


def combined(fn: FirstClaims, claims: list[ContentClaim], parts: int) -> tuple:
    """Combine ``claims`` as Beam may: in ``parts`` partial accumulators, then merged."""
    accumulators = [
        list(itertools.accumulate(claims[i::parts], fn.add_input, initial=fn.create_accumulator()))[-1]
        for i in range(parts)
    ]
    return fn.extract_output(fn.merge_accumulators(accumulators))


def test_a_content_keeps_a_few_readable_copies_whatever_the_combine_order():
    """However many uris share a content, decode gets the same few (the smallest uris),
    whichever order Beam's combine sees the claims in: bounded, and deterministic."""
    claims = [ContentClaim(f"http://h/{i:03d}.jpg", None, None, (i % 5,)) for i in range(40)]
    expected = tuple(claims[:READABLE_COPIES])
    rng = random.Random(7)
    for _ in range(20):
        assert combined(FirstClaims(), rng.sample(claims, len(claims)), parts=3) == expected


def test_local_copies_come_first_as_they_are_cheapest_to_read_again():
    remote = [ContentClaim(f"http://h/{i}.jpg", None, None, (0,)) for i in range(5)]
    remote += [ContentClaim("gs://bucket/a.jpg", None, "17", (0,))]
    local = [ContentClaim("/var/photos/z.jpg", None, None, (1,)), ContentClaim("file:///srv/y.jpg", None, None, (2,))]
    kept = combined(FirstClaims(), remote + local, parts=2)
    assert len(kept) == READABLE_COPIES
    assert kept[:2] == tuple(sorted(local, key=lambda c: c.uri))
    assert kept[2] == min(remote, key=lambda c: c.uri)


def test_fewer_claims_than_the_bound_are_all_kept():
    claims = [ContentClaim("http://h/b.jpg", None, None, (0,)), ContentClaim("http://h/a.jpg", None, None, (1,))]
    assert combined(FirstClaims(), claims, parts=2) == (claims[1], claims[0])
    assert FirstClaims().extract_output(FirstClaims().create_accumulator()) == ()


# --- outcomes_of_content and failure_for --------------------------------------------------------


def test_a_contents_score_reaches_every_row_bucket_of_every_uri_with_it():
    sha = "ab" * 32
    claims = [
        ContentClaim("http://h/a.jpg", 'etag="1"', None, (0, 4)),
        ContentClaim("/photos/a.jpg", "size=9", None, (2,)),
    ]
    result = ContentResult(sha, SCORE, reused=True)
    outcomes = [o for listed in outcomes_of_content((sha, {"claims": claims, "results": [result]})) for o in listed]
    assert sorted(outcomes) == sorted(
        [
            ((0, 4), UriOutcome("http://h/a.jpg", sha, 'etag="1"', SCORE, True, None)),
            ((2,), UriOutcome("/photos/a.jpg", sha, "size=9", SCORE, True, None)),
        ]
    )


def test_a_contents_failure_is_told_to_each_uri_in_its_own_words():
    sha = "cd" * 32
    failure = Failure("decode", "CorruptImage", "http://h/a.jpg: truncated JPEG")
    claims = [ContentClaim("http://h/a.jpg", None, None, (1,)), ContentClaim("http://h/copy.jpg", None, None, (3,))]
    [listed] = outcomes_of_content((sha, {"claims": claims, "results": [ContentResult(sha, failure=failure)]}))
    outcomes = dict(listed)
    assert outcomes[(1,)].failure == failure and outcomes[(1,)].score is None
    assert outcomes[(3,)].failure == Failure(
        "decode", "CorruptImage", "http://h/copy.jpg: same content as http://h/a.jpg: truncated JPEG"
    )


def test_a_content_under_many_uris_sends_their_outcomes_in_bounded_lists():
    sha = "aa" * 32
    claims = [ContentClaim(f"/photos/{i}.jpg", None, None, (i % 4,)) for i in range(URIS_PER_ELEMENT + 1)]
    lists = list(outcomes_of_content((sha, {"claims": claims, "results": [ContentResult(sha, SCORE)]})))
    assert [len(listed) for listed in lists] == [URIS_PER_ELEMENT, 1]
    assert sorted(o.uri for listed in lists for _, o in listed) == sorted(c.uri for c in claims)


@pytest.mark.parametrize("results", [0, 2])
def test_a_content_without_exactly_one_result_fails_loudly(results):
    sha = "ef" * 32
    claims = [ContentClaim("/a.jpg", None, None, (0,))]
    element = (sha, {"claims": claims, "results": [ContentResult(sha, SCORE)] * results})
    with pytest.raises(RuntimeError, match=f"content {sha} has {results} results, expected 1"):
        list(outcomes_of_content(element))


def test_failure_for_names_the_uri_the_rows_hold():
    failure = Failure("fetch", "ChangedDuringRun", "/a.jpg: changed since it was fetched")
    assert failure_for(None, "/a.jpg") is None
    assert failure_for(failure, "/a.jpg") is failure
    assert failure_for(failure, "/b.jpg").message == "/b.jpg: same content as /a.jpg: changed since it was fetched"
    assert failure_for(failure, "/b.jpg")[:2] == failure[:2]


# --- keep_first_of_each_id ----------------------------------------------------------------------

FILES = [ManifestFile(0, "/m/a.csv", 100, "csv", "line"), ManifestFile(1, "/m/b.jsonl", 100, "jsonl", "byte")]
KEEP = ("category",)


def refs_piece(file_index: int, *rows: tuple[str, str, str, int]) -> bytes:
    """A packed refs table of manifest file ``file_index``: (image_id, uri, category, line)."""
    path = FILES[file_index].path
    refs = [ImageRef(i, uri, {"category": category}, f"{path}:{line}") for i, uri, category, line in rows]
    return buckets.pack(refs_table(refs, KEEP, manifest_file=file_index))


def test_the_first_row_of_each_id_in_manifest_order_is_kept_and_the_others_are_error_rows():
    pieces = [
        refs_piece(1, ("x", "/b-x.jpg", "late", 40), ("y", "/b-y.jpg", "only", 80)),
        refs_piece(0, ("x", "/a-x-second.jpg", "second", 9), ("z", "/a-z.jpg", "z", 2), ("x", "/a-x.jpg", "first", 3)),
    ]
    TALLY.clear()
    outputs = list(keep_first_of_each_id((6, pieces), FILES, KEEP))
    [kept] = [o for o in outputs if isinstance(o, pa.Table)]
    tables = [o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == ERRORS]
    assert len(outputs) == 1 + len(tables)
    assert all(t.schema == errors_schema(KEEP) for t in tables)  # tables, never a dict per row
    errors = [row for t in tables for row in t.to_pylist()]
    assert kept.schema.names == ["image_id", "uri", "category"]  # the manifest position is not carried on
    assert sorted(kept.to_pylist(), key=lambda r: r["image_id"]) == [
        {"image_id": "x", "uri": "/a-x.jpg", "category": "first"},
        {"image_id": "y", "uri": "/b-y.jpg", "category": "only"},
        {"image_id": "z", "uri": "/a-z.jpg", "category": "z"},
    ]
    assert sorted(errors, key=lambda e: e["uri"]) == [
        {
            "image_id": "x",
            "uri": "/a-x-second.jpg",
            "stage": "manifest",
            "error_type": "DuplicateImageId",
            "category": "second",
            "error_message": "/m/a.csv:9: image_id 'x' (uri /a-x-second.jpg) is already used at "
            "/m/a.csv:3; only the first row of an image_id is scored",
        },
        {
            "image_id": "x",
            "uri": "/b-x.jpg",
            "stage": "manifest",
            "error_type": "DuplicateImageId",
            "category": "late",
            "error_message": "/m/b.jsonl:byte 40: image_id 'x' (uri /b-x.jpg) is already used at "
            "/m/a.csv:3; only the first row of an image_id is scored",
        },
    ]
    assert TALLY.snapshot()["manifest_errors"] == len(errors)  # counted, for the progress line


def test_a_bucket_of_distinct_ids_is_passed_on_whole():
    pieces = [refs_piece(0, ("b", "/b.jpg", "1", 2), ("a", "/a.jpg", "2", 3)), refs_piece(1, ("c", "/c.jpg", None, 0))]
    [kept] = keep_first_of_each_id((0, pieces), FILES, KEEP)
    assert sorted(kept.column("image_id").to_pylist()) == ["a", "b", "c"]
    assert kept.num_rows == 3


def test_a_piece_sends_on_one_row_per_id_however_many_rows_share_it():
    """The rows of one image_id (a manifest without ids, one uri on many rows) are cut down
    where a bundle splits them into pieces: one row goes on, the others are error tables at
    once, never a Python object per row held for its key."""
    from aisthetics_transforms.dedupe import ERROR_ROWS_PER_TABLE, SplitById

    Tagged = TaggedOutput

    rows = [("/p.jpg", "/p.jpg", "c", line) for line in range(1, 120_001)]
    split = SplitById(FILES, KEEP)
    split.start_bundle()
    outputs = list(split.process(buckets.unpack(refs_piece(0, *rows)), 7))
    outputs += [o.value if not isinstance(o, Tagged) else Tagged(o.tag, o.value.value) for o in split.finish_bundle()]
    pieces = [o for o in outputs if not isinstance(o, Tagged)]
    errors = [o.value for o in outputs if isinstance(o, Tagged)]
    sent = [buckets.unpack(packed) for _, packed in pieces]
    assert sum(t.num_rows for t in sent) == len(pieces)  # one row a piece
    assert sum(t.num_rows for t in errors) == 120_000 - len(pieces)
    assert all(t.num_rows <= ERROR_ROWS_PER_TABLE for t in errors)
    # the final dedupe keeps the first of them, line 1
    [kept, *final_errors] = keep_first_of_each_id((0, [buckets.pack(t) for t in sent]), FILES, KEEP)
    assert kept.to_pylist() == [{"image_id": "/p.jpg", "uri": "/p.jpg", "category": "c"}]
    assert sum(e.value.num_rows for e in final_errors) == len(pieces) - 1
