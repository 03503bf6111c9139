"""Dedupe stage, contents: every content scored once, and its result back to every uri that has it.

Fetch claims each new uri's content by its hash (``(content_sha256, ContentClaim)``):

    claims  --DedupeContent-->  one ContentTask per distinct content (or an earlier night's score)
    content results + claims  --ResultsToUris-->  (row buckets, UriOutcome) per uri

The claims of one content are combined before the shuffle to a count and a few readable
copies, so a content under many uris is no hot key there; the join back to the uris cuts
a content claimed by many uris into parts by a hash of the uri, so no element holds more
than about CLAIMS_PER_ELEMENT claims. Between DedupeContent and decode a shuffle spreads
the image work over every worker. UriOutcomes travel in lists of up to URIS_PER_ELEMENT.
"""

from __future__ import annotations

import itertools
import zlib

import apache_beam as beam
import pyarrow as pa
from apache_beam.pvalue import AsDict, AsSingleton, TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.bundles import batched
from aisthetics_transforms.counters import CLAIMS_PER_JOIN_ELEMENT, CONTENTS_PLANNED, counter, distribution
from aisthetics_transforms.fetch import is_local_file
from aisthetics_transforms.incremental import earlier_scores
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import (
    URIS_PER_ELEMENT,
    ContentClaim,
    ContentResult,
    ContentTask,
    Failure,
    UriOutcome,
)

REUSED = "reused"  # ContentResults an earlier night scored
READABLE_COPIES = 3  # uris a content can be read again from, should one have changed meanwhile
CLAIMS_PER_ELEMENT = 10_000  # claims of one content an element of the join back to the uris holds, about
_CONTENTS_PLANNED = counter(CONTENTS_PLANNED)
# How many claims one element of the join back to the uris held: bounded by CLAIMS_PER_ELEMENT.
_CLAIMS_JOINED = distribution(CLAIMS_PER_JOIN_ELEMENT)


def _cheapest_first(claim: ContentClaim) -> tuple:
    """Local files first (reading one again costs a page-cache hit, not a request), then by uri."""
    return not is_local_file(claim.uri), claim.uri


class FirstClaims(beam.CombineFn):
    """How many uris claim one content, and at most READABLE_COPIES of their claims, local
    files first, then the smallest uris: enough to read the content again, bounded however
    many uris share it (combined before the shuffle, so a content under many uris is not a
    hot key). The count says how far the join back to the uris must spread the content
    (:class:`ResultsToUris`)."""

    def create_accumulator(self):
        return 0, ()

    def add_input(self, accumulator, claim):
        return self.merge_accumulators([accumulator, (1, (claim,))])

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        claims = itertools.chain.from_iterable(claims for _, claims in accumulators)
        return sum(count for count, _ in accumulators), tuple(sorted(claims, key=_cheapest_first)[:READABLE_COPIES])

    def extract_output(self, accumulator):
        return accumulator


def content_task(content_sha256: str, counted: tuple) -> ContentTask:
    """The task to score one content (``counted``: FirstClaims' output), counted as planned."""
    inc(_CONTENTS_PLANNED)
    _, claims = counted
    return ContentTask(content_sha256, tuple((claim.uri, claim.pin) for claim in claims))


def salts_of(claims: int) -> int:
    """Into how many parts the join back to the uris cuts a content with ``claims`` claims."""
    return max(1, -(-claims // CLAIMS_PER_ELEMENT))


def hot_content(content_sha256: str, counted: tuple):
    """(content, parts) of a content claimed by more than CLAIMS_PER_ELEMENT uris."""
    parts = salts_of(counted[0])
    if parts > 1:
        yield content_sha256, parts


def reuse_or_score(element):
    """(content bucket, {"wanted": (content_sha256, readable copies) of each content fetched
    tonight, "previous": pieces of an earlier night's rows}) -> per wanted content, the
    earlier night's score (``REUSED``) or a task to score it."""
    _, sides = element
    wanted = dict(sides["wanted"])
    if not wanted:
        return
    scored = earlier_scores(sides["previous"], "content_sha256", pa.array(list(wanted), pa.string()))
    for sha, copies in wanted.items():
        if sha in scored:
            yield TaggedOutput(REUSED, ContentResult(sha, scored[sha].score, reused=True))
        else:
            yield content_task(sha, copies)


class DedupeContent(beam.PTransform):
    """Claims ``(content_sha256, ContentClaim)`` -> ``{"tasks": one ContentTask per distinct
    content to score, REUSED: ContentResults of contents an earlier night scored, "hot":
    (content, parts) of the contents so many uris claim that the join back to them is cut
    into parts}``.

    ``previous`` (an earlier night's rows, one per content, as ``(content bucket, packed)``
    in as many buckets as the singleton ``join_buckets`` says) meets tonight's contents in
    those buckets, so its rows never become one element each, and only the contents fetched
    tonight are looked up."""

    def __init__(self, previous=None, join_buckets=None):
        super().__init__()
        self.previous = previous
        self.join_buckets = join_buckets

    def expand(self, claims):
        copies = claims | "ReadableCopies" >> beam.CombinePerKey(FirstClaims())
        hot = copies | "HotContents" >> beam.FlatMapTuple(hot_content)
        if self.previous is None:
            return {"tasks": copies | "ToScore" >> beam.MapTuple(content_task), "hot": hot}
        wanted = copies | "ByContent" >> beam.Map(
            lambda content, n: (buckets.bucket_of(content[0], n), content), AsSingleton(self.join_buckets)
        )
        decided = (
            {"wanted": wanted, "previous": self.previous}
            | "JoinPreviousOnContent" >> beam.CoGroupByKey()
            | "ReuseOrScore" >> beam.FlatMap(reuse_or_score).with_outputs(REUSED, main="tasks")
        )
        return {"tasks": decided.tasks, REUSED: decided[REUSED], "hot": hot}


def failure_for(failure: Failure | None, uri: str) -> Failure | None:
    """A content's failure as the rows of ``uri`` see it: messages name the uri that was
    read; another uri with the same bytes says so."""
    if failure is None or failure.message.startswith(uri):
        return failure
    return failure._replace(message=f"{uri}: same content as {failure.message}")


def outcomes_of_content(element):
    """((content_sha256, part), {"claims": [...], "results": [one ContentResult]}) -> lists of
    (row buckets, UriOutcome), one for every uri of that part with that content."""
    (sha, _), sides = element
    results = list(sides["results"])
    if len(results) != 1:  # a wiring bug, never bad input: fail loudly rather than lose rows
        raise RuntimeError(f"content {sha} has {len(results)} results, expected 1")
    [result] = results

    def outcome(claim: ContentClaim) -> UriOutcome:
        failure = failure_for(result.failure, claim.uri)
        return UriOutcome(claim.uri, sha, claim.source_version, result.score, result.reused, failure)

    claims = 0
    for listed in batched(((claim.buckets, outcome(claim)) for claim in sides["claims"]), URIS_PER_ELEMENT):
        claims += len(listed)
        yield listed
    _CLAIMS_JOINED.update(claims)


def part_of(uri: str, parts: int) -> int:
    """Which part of its content's join a uri's claim is in: a hash every worker agrees on."""
    return zlib.crc32(uri.encode("utf-8", "surrogatepass")) % parts if parts > 1 else 0


class ResultsToUris(beam.PTransform):
    """``{"claims": (sha, ContentClaim), "results": ContentResult}`` -> lists of (row buckets,
    UriOutcome). Claims and results meet per (content, part): a content claimed by more than
    CLAIMS_PER_ELEMENT uris (``hot``: (content, parts)) is cut into parts by a hash of the uri,
    and its result is sent to every part, so no element holds more than about that many claims,
    whatever one content's popularity (the "no photo" image of a million dead listings)."""

    def __init__(self, hot):
        super().__init__()
        self.hot = hot

    def expand(self, inputs):
        parts = AsDict(self.hot)
        claims = inputs["claims"] | "ByPart" >> beam.Map(
            lambda kv, parts: ((kv[0], part_of(kv[1].uri, parts.get(kv[0], 1))), kv[1]), parts
        )
        results = inputs["results"] | "ToEachPart" >> beam.FlatMap(
            lambda r, parts: (((r.content_sha256, i), r) for i in range(parts.get(r.content_sha256, 1))), parts
        )
        return (
            {"claims": claims, "results": results}
            | "JoinResultsOnContent" >> beam.CoGroupByKey()
            | "ToUris" >> beam.FlatMap(outcomes_of_content)
        )
