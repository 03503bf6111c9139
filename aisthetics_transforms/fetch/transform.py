"""Fetch stage: each distinct uri once -> unchanged, the same content, a claim on its content, or a failure.

Per UriTask (they come in lists of up to ``records.URIS_PER_ELEMENT``), on a pool of
threads (fetches wait on the network, not the CPU):

1. with an earlier night's row for the uri, check its version signal (no bytes read);
   equal -> the earlier score is reused;
2. otherwise fetch the bytes, hash them, and drop them: equal to the content recorded
   for the uri -> the earlier score is reused; else a ContentClaim keyed by the hash goes
   on to ``dedupe.DedupeContent``, which picks one uri per content for decode to read again.

No image bytes leave this stage, so no shuffle, combine or side input ever holds them.
Results leave as they finish, not in input order: a dead host holds one thread for one
deadline. Outputs: claims ``(content_sha256, ContentClaim)`` (main), lists of ``(row buckets,
UriOutcome)`` on ``OUTCOMES``, and per-bundle counts on ``STATS``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import Future
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from aisthetics_transforms.bundles import Batch, WorkPool, completed, in_global_window
from aisthetics_transforms.counters import (
    DECLARED_MISMATCHES,
    FETCH_ERRORS,
    FETCHED,
    URIS_UNCHANGED,
    VERSION_CHECKS_FAILED,
    counter,
)
from aisthetics_transforms.fetch import (
    DEFAULT_FETCH_THREADS,
    DEFAULT_LIMITS,
    FetchError,
    FetchLimits,
    ThreadSessions,
    check_version,
    fetch_image,
    is_local_file,
)
from aisthetics_transforms.fetch.hosts import HOSTS
from aisthetics_transforms.progress import inc
from aisthetics_transforms.records import (
    OUTCOMES,
    STATS,
    URIS_PER_ELEMENT,
    ContentClaim,
    Failure,
    UriOutcome,
    UriTask,
    reused,
)

IN_FLIGHT_PER_THREAD = 2  # keeps every thread busy while the bundle's thread emits results


class Examined(NamedTuple):
    """What fetching one uri found (its bytes already dropped)."""

    unchanged: bool  # the version signal equals the earlier night's: nothing was read
    content_sha256: Optional[str] = None
    source_version: Optional[str] = None
    pin: Optional[str] = None
    version_checked: bool = False
    version_check_failed: Optional[str] = None
    failure: Optional[FetchError] = None  # why the uri has no bytes tonight


def examine_uri(task: UriTask, limits: FetchLimits = DEFAULT_LIMITS, session=None) -> Examined:
    """Check ``task.uri``'s version against the earlier night's, else fetch and hash it.
    A check that failed in a way the fetch would only repeat (``Version.settles_the_fetch``:
    a dead host, a missing object) is the uri's failure: one deadline, not two."""
    known, failed = None, None
    previous = task.previous
    checked = previous is not None and previous.source_version is not None and task.known is None
    if previous is not None and previous.source_version is not None:
        # a listing may have told the version already (``fetch.listing``): no check of its own
        version = task.known if task.known is not None else check_version(task.uri, limits, session)
        if version.value is not None and version.value == previous.source_version:
            return Examined(True, previous.content_sha256, previous.source_version, version_checked=checked)
        if version.settles_the_fetch:
            failure = FetchError(version.error_type or "InternalError", version.failed or "")
            return Examined(False, version_checked=checked, version_check_failed=version.failed, failure=failure)
        known, failed = version.info, version.failed
    try:
        fetched = fetch_image(task.uri, limits, session, known=known)
    except FetchError as err:
        # without its traceback: the frames of the failed read (its buffer among them) go now
        failure = err.with_traceback(None)
        return Examined(False, version_checked=checked, version_check_failed=failed, failure=failure)
    sha = hashlib.sha256(fetched.data).hexdigest()
    return Examined(False, sha, fetched.version, fetched.pin, checked, failed)


class FetchImages(beam.DoFn):
    """Lists of UriTasks -> per uri, a claim on its content (main), or its UriOutcome when it
    is reused or cannot be fetched (gathered into lists on ``OUTCOMES``); per-bundle counts
    on ``STATS``. See the module doc."""

    def __init__(self, limits: FetchLimits = DEFAULT_LIMITS, threads: int = DEFAULT_FETCH_THREADS):
        self.limits = limits
        self.threads = max(1, threads)
        self.fetched = counter(FETCHED)
        self.reused = counter(URIS_UNCHANGED)
        self.errors = counter(FETCH_ERRORS)
        self.failed_checks = counter(VERSION_CHECKS_FAILED)
        self.mismatches = counter(DECLARED_MISMATCHES)

    def setup(self):
        self._pool: WorkPool[UriTask] = WorkPool(self.threads, IN_FLIGHT_PER_THREAD, "aisthetics-fetch")
        self._sessions = ThreadSessions(self.limits)

    def teardown(self):
        self._pool.shutdown()
        self._sessions.close()

    def start_bundle(self):
        self._pool.start()
        self._stats: Counter = Counter()
        self._outcomes: Batch = Batch()  # of (row buckets, UriOutcome)

    def process(self, tasks: list[UriTask]):
        for task in tasks:
            if _settled_by_a_stat(task):  # quicker here than a hand-off to a pool thread
                yield from self._outputs(task, completed(self._examine, task))
                continue
            for done in self._pool.submit(task, self._examine, task):
                yield from self._outputs(*done)
        if len(self._outcomes) >= URIS_PER_ELEMENT:
            yield TaggedOutput(OUTCOMES, self._outcomes)
            self._outcomes = Batch()

    def finish_bundle(self):
        outputs = [out for done in self._pool.drain() for out in self._outputs(*done)]
        if self._outcomes:
            outputs.append(TaggedOutput(OUTCOMES, self._outcomes))
        self._stats["hosts_tripped"] += len(HOSTS.take_tripped())
        if +self._stats:
            outputs.append(TaggedOutput(STATS, dict(+self._stats)))
        yield from in_global_window(outputs)

    def _examine(self, task: UriTask) -> Examined:
        return examine_uri(task, self.limits, self._sessions.get())

    def _outputs(self, task: UriTask, examining: Future):
        """A claim, if any (the outcomes are gathered into lists, see process)."""
        self._stats["uris"] += 1
        try:
            found = examining.result()
        except Exception as exc:  # one bad uri must not fail the bundle
            message = f"unexpected {type(exc).__name__} fetching {task.uri}: {exc}"
            found = Examined(False, failure=FetchError("InternalError", message))
        self._stats["version_checks"] += found.version_checked
        if found.version_check_failed:
            self._stats["version_checks_failed"] += 1
            inc(self.failed_checks)
        if found.failure is not None:
            inc(self.errors)
            self._stats["fetch_errors"] += 1
            failure = Failure("fetch", found.failure.error_type, str(found.failure))
            self._outcomes.append((task.buckets, UriOutcome(task.uri, failure=failure)))
            return
        previous = task.previous
        if task.audit and previous is not None:
            self._audited(found, previous)
        if found.unchanged and previous is not None:
            self._stats["uris_unchanged"] += 1
            inc(self.reused)
            self._outcomes.append((task.buckets, reused(task.uri, previous)))
            return
        self._stats["fetched"] += 1
        inc(self.fetched)
        if previous is not None and previous.content_sha256 == found.content_sha256:
            self._stats["uris_same_content"] += 1
            outcome = UriOutcome(task.uri, found.content_sha256, found.source_version, previous.score, True)
            self._outcomes.append((task.buckets, outcome))
            return
        yield found.content_sha256, ContentClaim(task.uri, found.source_version, found.pin, task.buckets)

    def _audited(self, found: Examined, previous) -> None:
        """Count an audited declaration (its version unchanged): it did not hold when the bytes
        are gone or are another content than the earlier night scored."""
        gone = found.failure is not None and found.failure.error_type == "NotFound"
        changed = found.failure is None and not found.unchanged and found.content_sha256 != previous.content_sha256
        if gone or changed:
            self._stats["declared_mismatches"] += 1
            inc(self.mismatches)


def _settled_by_a_stat(task: UriTask) -> bool:
    """A local file with an earlier night's version: most likely unchanged, one stat. A new
    file is read and hashed on a pool thread (a cold read, or a network file system, must
    not hold the bundle's thread)."""
    return task.previous is not None and task.previous.source_version is not None and is_local_file(task.uri)
