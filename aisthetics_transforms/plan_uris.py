"""Planning each distinct uri: what tonight must do for it, before any request.

The uri requests of the row buckets (``unique_ids.uri_requests``) meet, in uri buckets, the
earlier night's row of each uri (``--incremental``). Each distinct uri then becomes one of

- an outcome at once, with no request at all: the rows of the uri declare a version
  (``--version_column``) and it is the one the earlier night recorded for the uri, so the
  earlier score is reused (the catalog vouches that the image did not change);
- a :class:`~aisthetics_transforms.records.UriTask` for the fetch stage: a version check
  where the earlier night recorded a version signal, else a fetch (and a fetch at once
  where the declared version changed). The ``gs://`` versions still to check are first
  read by listing, a thousand a request (``fetch.listing``), which settles most of them. A deterministic sample
  of the uris with an unchanged declared version (``--verify_declared_fraction``) goes
  this way too, marked ``audit``, to count declarations that do not hold.

A uri named by millions of rows is one request per row bucket (at most the bucket count),
and tasks and outcomes leave in lists of up to ``URIS_PER_ELEMENT``; a Reshuffle then
spreads the tasks over every worker.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.pvalue import AsSingleton, TaggedOutput

from aisthetics_transforms import buckets
from aisthetics_transforms.buckets import SplitByBucket
from aisthetics_transforms.bundles import batched
from aisthetics_transforms.counters import URIS_PLANNED, URIS_UNCHANGED, counter
from aisthetics_transforms.fetch.listing import ListGcsVersions
from aisthetics_transforms.incremental import earlier_scores
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import OUTCOMES, STATS, URIS_PER_ELEMENT, UriTask, reused

_URIS_PLANNED = counter(URIS_PLANNED)
_UNCHANGED = counter(URIS_UNCHANGED)


class DeclaredAudit(NamedTuple):
    """Which uris with an unchanged declared version are checked for real anyway: a
    ``fraction`` of them, picked by a hash of the uri and ``salt`` (the run date), so a
    rerun picks the same ones and each night another sample."""

    fraction: float = 0.0
    salt: str = ""

    def picks(self, uri: str) -> bool:
        if self.fraction <= 0:
            return False
        digest = hashlib.blake2b(f"{self.salt}\0{uri}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self.fraction * 2**64


def declared_per_uri(grouped: pa.Table) -> list[Optional[str]]:
    """The version each uri's rows declare, or None where they declare none or disagree
    (``grouped``: the uri requests aggregated per uri, see :func:`plan_uris`)."""
    if "declared_min_min" not in grouped.column_names:
        return [None] * grouped.num_rows
    lowest, highest = grouped.column("declared_min_min"), grouped.column("declared_max_max")
    agree = pc.and_(pc.equal(grouped.column("declared_nulls_sum"), 0), pc.equal(lowest, highest))
    return pc.if_else(pc.fill_null(agree, False), lowest, pa.scalar(None, pa.string())).to_pylist()


def plan_uris(element, audit: DeclaredAudit = DeclaredAudit()):
    """(uri bucket, {"requests": pieces of uri requests, "previous": pieces of earlier rows})
    -> per distinct uri, a UriTask, or its outcome (``OUTCOMES``) when its declared version
    is unchanged; the counts of those on ``STATS``."""
    _, sides = element
    requests = buckets.concat(sides["requests"])
    if requests is None:
        return
    known = earlier_scores(sides.get("previous", ()), "uri", pc.unique(requests.column("uri")))
    aggregates = [("bucket", "distinct")]
    if "declared_min" in requests.column_names:
        aggregates += [("declared_min", "min"), ("declared_max", "max"), ("declared_nulls", "sum")]
    grouped = requests.group_by("uri").aggregate(aggregates).sort_by("uri")
    counts: Counter = Counter()
    tasks, outcomes = [], []
    for uri, row_buckets, declared in zip(
        grouped.column("uri").to_pylist(), grouped.column("bucket_distinct").to_pylist(), declared_per_uri(grouped)
    ):
        if uri.startswith("gs://"):
            counts["gcs_uris"] += 1  # the next night lists versions only if there are some
        row_buckets = tuple(sorted(row_buckets))
        previous = known.get(uri)
        if declared is None or previous is None or previous.declared_version is None:
            tasks.append(UriTask(uri, row_buckets, previous))
            continue
        if previous.declared_version != declared:
            # changed, says the catalog: a version check would only say so again, so fetch at
            # once (the bytes may still hash to the earlier content, which is then reused)
            tasks.append(UriTask(uri, row_buckets, previous._replace(source_version=None)))
            counts["declared_changed"] += 1
            continue
        counts["declared_unchanged"] += 1
        if audit.picks(uri):
            counts["declared_audited"] += 1
            tasks.append(UriTask(uri, row_buckets, previous, audit=True))
        else:
            counts["uris"] += 1
            counts["uris_unchanged"] += 1
            outcomes.append((row_buckets, reused(uri, previous)))
    inc(_URIS_PLANNED, len(tasks) + len(outcomes))
    inc(_UNCHANGED, len(outcomes))
    yield from batched(tasks, URIS_PER_ELEMENT)
    for batch in batched(outcomes, URIS_PER_ELEMENT):
        yield TaggedOutput(OUTCOMES, batch)
    if counts:
        yield TaggedOutput(STATS, dict(counts))


class PlanFetches(beam.PTransform):
    """Uri requests -> ``{"tasks": Batches of UriTasks spread over the workers, OUTCOMES:
    Batches of (row buckets, UriOutcome) settled without a request of their own, STATS:
    counts}``. ``join_buckets`` is a singleton PCollection with the bucket count (the one
    ``previous`` is split by); ``previous``: an earlier night's rows, one per uri, as ``(uri
    bucket, packed)``. With ``listing`` (the fetch limits), the ``gs://`` versions still to
    check are read by listing first (``fetch.listing``): give it only when the earlier night
    had ``gs://`` uris (``PreviousNight.may_list``), since only those can be listed."""

    def __init__(self, join_buckets, previous=None, audit: DeclaredAudit = DeclaredAudit(), listing=None):
        super().__init__()
        self.join_buckets = join_buckets
        self.previous = previous
        self.audit = audit
        self.listing = listing

    def expand(self, requests):
        sides = {"requests": requests | "ByUri" >> beam.ParDo(SplitByBucket("uri"), AsSingleton(self.join_buckets))}
        if self.previous is not None:
            sides["previous"] = self.previous
        planned = (
            sides
            | "JoinOnUri" >> beam.CoGroupByKey()
            | "OnePerUri" >> beam.FlatMap(plan_uris, self.audit).with_outputs(OUTCOMES, STATS, main="tasks")
        )
        tasks, outcomes, stats = planned.tasks, planned[OUTCOMES], planned[STATS]
        if self.previous is not None and self.listing is not None:
            listed = tasks | "ListGcsVersions" >> ListGcsVersions(self.listing)
            tasks = listed["tasks"]
            outcomes = (outcomes, listed[OUTCOMES]) | "Settled" >> beam.Flatten()
            stats = (stats, listed[STATS]) | "Counted" >> beam.Flatten()
        return {"tasks": tasks | "SpreadUris" >> beam.Reshuffle(), OUTCOMES: outcomes, STATS: stats}
