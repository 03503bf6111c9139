"""Version checks of ``gs://`` uris by listing: a thousand objects a request, instead of one
metadata request per object.

On an incremental night, the uri tasks whose earlier row recorded a ``gs://`` generation
(and that nothing settled before: a declared version, see ``plan_uris``) are grouped into
name ranges of about :data:`NAMES_PER_LISTING` catalog names each, per GCS bucket, and
each range is listed (``objects.list`` from its first to its last name, only the fields
``name``, ``generation`` and ``size``). Then, per uri of the range:

- listed with the earlier night's generation and size: unchanged, the earlier score is
  reused with no request of its own;
- listed with another generation: fetched with that generation's metadata in hand, one
  media request (decode still pins the generation it reads);
- absent from a range listed through its name: ``NotFound``, with no request of its own;
- not reached (the listing stopped, or failed: a service account without
  ``storage.objects.list``): checked one by one, as without listing.

The ranges come from a bounded sample of the candidate names per GCS bucket (the names
with the smallest hashes: uniform, deterministic and mergeable), so one range element
holds about NAMES_PER_LISTING tasks however many objects a bucket has, and the ranges
are listed in parallel on every worker. A range is listed only where that costs less
than the metadata reads it replaces at list prices: a list request (Class A) costs what
:data:`LIST_REQUEST_COST` metadata reads (Class B) cost, so a range with fewer names is
read one by one, and a listing that finds too few of its names among other objects stops
after ``names / LIST_REQUEST_COST`` pages.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import logging
import math
import os
from collections import Counter, defaultdict
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.pvalue import AsDict, TaggedOutput

from aisthetics_transforms.bundles import Batch, batched, in_global_window
from aisthetics_transforms.console import one_line
from aisthetics_transforms.counters import FETCH_ERRORS, URIS_UNCHANGED, counter
from aisthetics_transforms.fetch.connections import watched
from aisthetics_transforms.fetch.gcs import GcsObject, retry_within, split_gcs_uri, storage_client
from aisthetics_transforms.fetch.limits import Deadline, FetchError, FetchLimits, Version
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import OUTCOMES, STATS, URIS_PER_ELEMENT, Failure, UriOutcome, UriTask, reused

NAMES_PER_LISTING = 20_000  # catalog names per range: the tasks one element holds (~6 MB)
SAMPLE_NAMES = 32_768  # names sampled per GCS bucket to cut its ranges
LIST_REQUEST_COST = 12.5  # $0.005 per 1,000 list requests / $0.0004 per 1,000 metadata reads
PAGE_SIZE = 1_000  # objects per list request: GCS's most
_FIELDS = "items(name,generation,size),nextPageToken"
_RANGES = "ranges"
_LOG = logging.getLogger(__name__)


def listable(task: UriTask) -> Optional[tuple[str, str]]:
    """(GCS bucket, object name) of a task whose earlier row recorded a generation, else None."""
    previous = task.previous
    if previous is None or task.known is not None or not (previous.source_version or "").startswith("generation="):
        return None
    try:
        return split_gcs_uri(task.uri)
    except FetchError:
        return None


def _name_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


class NameSample(beam.CombineFn):
    """A GCS bucket's candidate names -> (how many, the SAMPLE_NAMES with the smallest hashes,
    sorted): a uniform sample of bounded size, the same whatever order Beam combines in. The
    accumulator is ``[count, heap]``, the heap holding ``(-hash, name)`` of the sample so that
    its largest hash is the one a smaller newcomer replaces."""

    def create_accumulator(self):
        return [0, []]

    def add_input(self, accumulator, names):
        accumulator[0] += len(names)
        heap = accumulator[1]
        for name in names:
            _keep(heap, (-_name_hash(name), name))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for count, heap in accumulators:
            merged[0] += count
            for item in heap:
                _keep(merged[1], item)
        return merged

    def extract_output(self, accumulator):
        count, heap = accumulator
        return count, sorted(name for _, name in heap)


def _keep(heap: list, item: tuple) -> None:
    """Put ``item`` in the sample if its hash is among the SAMPLE_NAMES smallest (each name comes
    once: the tasks are one per distinct uri)."""
    if len(heap) < SAMPLE_NAMES:
        heapq.heappush(heap, item)
    elif item > heap[0]:
        heapq.heapreplace(heap, item)


def plan_ranges(count: int, sample: list[str]) -> tuple[str, ...]:
    """The names that cut a GCS bucket's ``count`` candidate names into ranges of about
    NAMES_PER_LISTING (range i holds the names from boundary i-1, inclusive, up to boundary
    i); no boundary: one range."""
    ranges = math.ceil(count / NAMES_PER_LISTING)
    if ranges <= 1 or not sample:
        return ()
    cuts = {sample[len(sample) * i // ranges] for i in range(1, ranges)}
    return tuple(sorted(cuts))


class ByRange(beam.DoFn):
    """Batches of UriTasks -> ``((GCS bucket, range), Batch)`` for the listable ones (``ranges``:
    {bucket: boundaries}, a side input), gathered per range within a bundle; the other tasks
    go on (main) in Batches."""

    def __init__(self, held_tasks: int = 4 * URIS_PER_ELEMENT * URIS_PER_ELEMENT):
        self.held_tasks = held_tasks

    def start_bundle(self):
        self._held: dict[tuple, Batch] = defaultdict(Batch)
        self._others = Batch()
        self._total = 0

    def process(self, tasks: list[UriTask], ranges: dict):
        for task in tasks:
            where = listable(task)
            if where is None or where[0] not in ranges:
                self._others.append(task)
                if len(self._others) >= URIS_PER_ELEMENT:
                    yield self._others
                    self._others = Batch()
                continue
            key = (where[0], bisect.bisect_right(ranges[where[0]], where[1]))
            held = self._held[key]
            held.append(task)
            self._total += 1
            if len(held) >= URIS_PER_ELEMENT:
                yield TaggedOutput(_RANGES, (key, self._held.pop(key)))
                self._total -= URIS_PER_ELEMENT
        if self._total >= self.held_tasks:
            yield from self._flush()

    def finish_bundle(self):
        yield from in_global_window(list(self._flush()))

    def _flush(self):
        for key in list(self._held):
            yield TaggedOutput(_RANGES, (key, self._held.pop(key)))
        if self._others:
            yield self._others
        self._others, self._total = Batch(), 0


class Listed(NamedTuple):
    """What listing a range found: each listed name's object, and how far the listing got
    (every name up to ``through`` that exists was listed; None: not even a first page)."""

    found: dict  # name -> GcsObject
    through: Optional[str]
    pages: int
    failed: Optional[str] = None  # why the listing stopped early, if it failed


def list_names(bucket: str, names: list[str], limits: FetchLimits) -> Listed:
    """List ``bucket`` from the first to the last of the sorted ``names``, keeping only those
    names, for at most ``len(names) / LIST_REQUEST_COST`` pages (at least one)."""
    first, last = names[0], names[-1]
    wanted = set(names)
    budget = max(1, int(len(names) / LIST_REQUEST_COST))
    found: dict = {}
    through: Optional[str] = None
    pages = 0
    try:
        iterator = storage_client().list_blobs(
            bucket,
            prefix=os.path.commonprefix([first, last]) or None,
            start_offset=first,
            end_offset=last + "\0",  # exclusive: the least string after ``last``
            fields=_FIELDS,
            page_size=PAGE_SIZE,
            timeout=(limits.connect_timeout, limits.read_timeout),
            retry=retry_within(Deadline(limits.deadline)),
        )
        listing = iterator.pages
        while pages < budget:
            deadline = Deadline(limits.deadline)
            with watched(f"gs://{bucket}", limits, deadline) as watch:
                page = next(listing, None)
            if watch.fired:
                raise deadline.exceeded(f"gs://{bucket}", "listing")
            if page is None:
                return Listed(found, last, pages)  # listed to its end
            pages += 1
            for blob in page:
                if blob.name in wanted:
                    found[blob.name] = GcsObject(bucket, blob.name, str(blob.generation), int(blob.size or 0))
                through = blob.name if through is None or blob.name > through else through
            if iterator.next_page_token is None:
                return Listed(found, last, pages)
    except Exception as exc:  # a listing that fails only means checking one by one
        return Listed(found, through, pages, one_line(exc, with_type=True, limit=300))
    return Listed(found, through, pages)


class ListVersions(beam.DoFn):
    """``((GCS bucket, range), Batches of UriTasks)`` -> per task, its outcome when the listing
    settles it (``OUTCOMES``: unchanged, or NotFound), else the task (main), with the listed
    generation (``known``) when it changed; counts on ``STATS``. See the module doc."""

    def __init__(self, limits: FetchLimits):
        self.limits = limits
        self.unchanged = counter(URIS_UNCHANGED)
        self.errors = counter(FETCH_ERRORS)

    def process(self, element):
        (bucket, _), batches = element
        tasks = sorted((task for batch in batches for task in batch), key=lambda t: t.uri)
        names = [split_gcs_uri(task.uri)[1] for task in tasks]
        stats: Counter = Counter()
        if len(names) < LIST_REQUEST_COST:  # a page would cost more than their metadata reads
            yield from batched(tasks, URIS_PER_ELEMENT)
            return
        listed = list_names(bucket, names, self.limits)
        stats["listing_requests"] += listed.pages
        if listed.failed:
            stats["listings_failed"] += 1
            _LOG.warning(
                "aisthetics: listing gs://%s from %r failed (%s); its %d objects are checked one by one",
                bucket,
                names[0],
                listed.failed,
                len(names),
            )
        outcomes, remaining = Batch(), []
        for task, name in zip(tasks, names):
            found = listed.found.get(name)
            if found is None and (listed.through is None or name > listed.through):
                remaining.append(task)  # not reached: a check of its own
                continue
            stats["versions_listed"] += 1
            previous = task.previous
            assert previous is not None  # listable() holds
            if found is None:
                failure = Failure("fetch", "NotFound", f"no such object: {task.uri} (not in its bucket's listing)")
                outcomes.append((task.buckets, UriOutcome(task.uri, failure=failure)))
                stats["uris"] += 1
                stats["fetch_errors"] += 1
                stats["declared_mismatches"] += task.audit
                inc(self.errors)
            elif found.version == previous.source_version:
                outcomes.append((task.buckets, reused(task.uri, previous)))
                stats["uris"] += 1
                stats["uris_unchanged"] += 1
                inc(self.unchanged)
            else:
                remaining.append(task._replace(known=Version(found.version, None, found)))
        yield from batched(remaining, URIS_PER_ELEMENT)
        for batch in batched(outcomes, URIS_PER_ELEMENT):
            yield TaggedOutput(OUTCOMES, batch)
        if +stats:
            yield TaggedOutput(STATS, dict(+stats))


def candidate_names(tasks: list[UriTask]):
    """A Batch of tasks -> (GCS bucket, [names]) of its listable ones, per bucket."""
    per_bucket = defaultdict(list)
    for task in tasks:
        where = listable(task)
        if where is not None:
            per_bucket[where[0]].append(where[1])
    yield from per_bucket.items()


class ListGcsVersions(beam.PTransform):
    """Batches of UriTasks -> ``{"tasks": Batches of the tasks still to check or fetch,
    OUTCOMES: Batches of (row buckets, UriOutcome) the listings settled, STATS: counts}``."""

    def __init__(self, limits: FetchLimits):
        super().__init__()
        self.limits = limits

    def expand(self, tasks):
        ranges = (
            tasks
            | "CandidateNames" >> beam.FlatMap(candidate_names)
            | "SampleNames" >> beam.CombinePerKey(NameSample())
            | "PlanRanges"
            >> beam.FlatMapTuple(
                lambda bucket, counted: [(bucket, plan_ranges(*counted))] if counted[0] >= LIST_REQUEST_COST else []
            )
        )
        routed = tasks | "ByRange" >> beam.ParDo(ByRange(), AsDict(ranges)).with_outputs(_RANGES, main="others")
        listed = (
            routed[_RANGES]
            | "GroupByRange" >> beam.GroupByKey()
            | "ListRanges" >> beam.ParDo(ListVersions(self.limits)).with_outputs(OUTCOMES, STATS, main="tasks")
        )
        remaining = (routed.others, listed.tasks) | "Remaining" >> beam.Flatten()
        return {"tasks": remaining, OUTCOMES: listed[OUTCOMES], STATS: listed[STATS]}
