"""The content stage's plain functions: a bounded and order-free choice of copies per
content with the count of its claims, each content's outcome sent back to every row bucket
of every uri that has it, and a content claimed by many uris cut into parts for that."""

from __future__ import annotations

import itertools
import random
import zlib
from collections import Counter
from datetime import UTC, datetime

import pytest

from aisthetics_transforms.contents import (
    CLAIMS_PER_ELEMENT,
    READABLE_COPIES,
    FirstClaims,
    failure_for,
    hot_content,
    outcomes_of_content,
    part_of,
    salts_of,
)
from aisthetics_transforms.records import URIS_PER_ELEMENT, ContentClaim, ContentResult, Failure, Score, UriOutcome

SCORED_AT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
SCORE = Score(5.5, 1.25, (0.1,) * 10, "nima-test", SCORED_AT, None)


# --- FirstClaims --------------------------------------------------------------------------------


def combined(fn: FirstClaims, claims: list[ContentClaim], parts: int) -> tuple:
    """Combine ``claims`` as Beam may: in ``parts`` partial accumulators, then merged."""
    accumulators = [
        list(itertools.accumulate(claims[i::parts], fn.add_input, initial=fn.create_accumulator()))[-1]
        for i in range(parts)
    ]
    count, kept = fn.extract_output(fn.merge_accumulators(accumulators))
    assert count == len(claims)  # every claim counted, whatever the order
    return kept


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
    assert FirstClaims().extract_output(FirstClaims().create_accumulator()) == (0, ())


# --- outcomes_of_content and failure_for --------------------------------------------------------


def test_a_contents_score_reaches_every_row_bucket_of_every_uri_with_it():
    sha = "ab" * 32
    claims = [
        ContentClaim("http://h/a.jpg", 'etag="1"', None, (0, 4)),
        ContentClaim("/photos/a.jpg", "size=9", None, (2,)),
    ]
    result = ContentResult(sha, SCORE, reused=True)
    outcomes = [
        o for listed in outcomes_of_content(((sha, 0), {"claims": claims, "results": [result]})) for o in listed
    ]
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
    [listed] = outcomes_of_content(((sha, 0), {"claims": claims, "results": [ContentResult(sha, failure=failure)]}))
    outcomes = dict(listed)
    assert outcomes[(1,)].failure == failure and outcomes[(1,)].score is None
    assert outcomes[(3,)].failure == Failure(
        "decode", "CorruptImage", "http://h/copy.jpg: same content as http://h/a.jpg: truncated JPEG"
    )


def test_a_content_under_many_uris_sends_their_outcomes_in_bounded_lists():
    sha = "aa" * 32
    claims = [ContentClaim(f"/photos/{i}.jpg", None, None, (i % 4,)) for i in range(URIS_PER_ELEMENT + 1)]
    lists = list(outcomes_of_content(((sha, 0), {"claims": claims, "results": [ContentResult(sha, SCORE)]})))
    assert [len(listed) for listed in lists] == [URIS_PER_ELEMENT, 1]
    assert sorted(o.uri for listed in lists for _, o in listed) == sorted(c.uri for c in claims)


@pytest.mark.parametrize("results", [0, 2])
def test_a_content_without_exactly_one_result_fails_loudly(results):
    sha = "ef" * 32
    claims = [ContentClaim("/a.jpg", None, None, (0,))]
    element = ((sha, 0), {"claims": claims, "results": [ContentResult(sha, SCORE)] * results})
    with pytest.raises(RuntimeError, match=f"content {sha} has {results} results, expected 1"):
        list(outcomes_of_content(element))


def test_failure_for_names_the_uri_the_rows_hold():
    failure = Failure("fetch", "ChangedDuringRun", "/a.jpg: changed since it was fetched")
    assert failure_for(None, "/a.jpg") is None
    assert failure_for(failure, "/a.jpg") is failure
    assert failure_for(failure, "/b.jpg").message == "/b.jpg: same content as /a.jpg: changed since it was fetched"
    assert failure_for(failure, "/b.jpg")[:2] == failure[:2]


# --- a content claimed by many uris ----------------------------------------------------------------


def test_a_content_claimed_by_many_uris_is_cut_into_parts_of_about_claims_per_element():
    assert list(hot_content("a" * 64, (CLAIMS_PER_ELEMENT, ()))) == []  # one part: not hot
    [(sha, parts)] = hot_content("b" * 64, (10 * CLAIMS_PER_ELEMENT + 1, ()))
    assert (sha, parts) == ("b" * 64, 11) and salts_of(1) == 1
    uris = [f"http://cdn/no-photo/{i}" for i in range(200_000)]
    sizes = Counter(part_of(uri, 20) for uri in uris)
    assert sorted(sizes) == list(range(20))
    assert max(sizes.values()) < 1.1 * len(uris) / 20  # each part about as big
    assert part_of(uris[0], 20) == zlib.crc32(uris[0].encode()) % 20  # the same on every worker
    assert part_of(uris[0], 1) == 0


def test_every_part_of_a_hot_content_gets_its_result_and_only_its_own_claims():
    sha = "cc" * 32
    claims = [ContentClaim(f"/photos/{i}.jpg", None, None, (i % 7,)) for i in range(3_000)]
    result = ContentResult(sha, SCORE)
    by_part: dict = {}
    for claim in claims:
        by_part.setdefault(part_of(claim.uri, 3), []).append(claim)
    outcomes = [
        o
        for part, members in by_part.items()
        for listed in outcomes_of_content(((sha, part), {"claims": members, "results": [result]}))
        for o in listed
    ]
    assert sorted(o.uri for _, o in outcomes) == sorted(c.uri for c in claims)
    assert max(len(members) for members in by_part.values()) < 1_100
