"""Version checks of gs:// uris by listing (``fetch.listing``): the ranges, then listings and
whole incremental nights against the real GCS emulator, every request counted by the
proxy in between (which pages listings as GCS does: tests/gcs_emulator.py)."""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from apache_beam.pvalue import TaggedOutput
from gcs_emulator import counting_proxy, seeded_emulator

import pipeline
from aisthetics_transforms import fetch
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.fetch import listing as listing_module
from aisthetics_transforms.fetch.gcs import GcsObject
from aisthetics_transforms.fetch.listing import (
    LIST_REQUEST_COST,
    ByRange,
    ListVersions,
    NameSample,
    list_names,
    plan_ranges,
)
from aisthetics_transforms.records import OUTCOMES, STATS, PreviousScore, Score, UriTask

SCORE = Score(5.0, 1.5, (0.1,) * 10, "nima-test", datetime(2026, 11, 27, tzinfo=UTC))
LIMITS = FetchLimits(deadline=20)


def earlier(version: str) -> PreviousScore:
    return PreviousScore("0" * 64, version, SCORE)


# --- ranges, without a pipeline ----------------------------------------------------------------


def test_the_name_sample_is_bounded_uniform_and_the_same_in_any_combine_order(monkeypatch):
    monkeypatch.setattr(listing_module, "SAMPLE_NAMES", 500)
    names = [f"photos/{i:06d}.jpg" for i in range(5_000)]
    fn = NameSample()

    def combined(parts: int, seed: int) -> tuple:
        shuffled = random.Random(seed).sample(names, len(names))
        accumulators = [fn.add_input(fn.create_accumulator(), shuffled[i::parts]) for i in range(parts)]
        return fn.extract_output(fn.merge_accumulators(accumulators))

    count, sample = combined(1, 0)
    assert count == 5_000 and len(sample) == 500 and sample == sorted(sample)
    assert combined(7, 1) == combined(3, 2) == (count, sample)
    # uniform: about a tenth of the sample in each tenth of the names
    tenths = [sum(1 for name in sample if names[i * 500] <= name < names[min(i * 500 + 500, 4_999)]) for i in range(9)]
    assert all(20 <= n <= 85 for n in tenths), tenths


def test_ranges_hold_about_names_per_listing_each(monkeypatch):
    monkeypatch.setattr(listing_module, "NAMES_PER_LISTING", 1_000)
    names = [f"a/{hashlib.sha1(str(i).encode()).hexdigest()}.jpg" for i in range(10_000)]
    count, sample = NameSample().extract_output(NameSample().add_input(NameSample().create_accumulator(), names))
    boundaries = plan_ranges(count, sample)
    assert len(boundaries) == 9 and list(boundaries) == sorted(boundaries)
    sizes = [0] * 10
    for name in names:
        sizes[sum(1 for b in boundaries if name >= b)] += 1
    assert all(700 <= size <= 1_300 for size in sizes), sizes
    assert plan_ranges(999, sample) == ()  # one range


def test_by_range_sends_listable_tasks_to_their_range_and_the_others_on():
    tasks = [
        UriTask("gs://b/x/1.jpg", (0,), earlier("generation=1;size=10")),
        UriTask("gs://b/y/2.jpg", (1,), earlier("generation=1;size=10")),
        UriTask("gs://b/x/new.jpg", (2,)),  # no earlier row: fetched, not checked
        UriTask("gs://other/z.jpg", (3,), earlier("generation=1;size=10")),  # a bucket without ranges
        UriTask("http://h/a.jpg", (4,), earlier('etag="a"')),
    ]
    fn = ByRange()
    fn.start_bundle()
    out = list(fn.process(tasks, {"b": ("y/",)}))
    for item in fn.finish_bundle():  # in the global window: unwrapped
        out.append(TaggedOutput(item.tag, item.value.value) if isinstance(item, TaggedOutput) else item.value)
    ranged = {o.value[0]: [t.uri for t in o.value[1]] for o in out if isinstance(o, TaggedOutput)}
    others = [t.uri for o in out if not isinstance(o, TaggedOutput) for t in o]
    assert ranged == {("b", 0): ["gs://b/x/1.jpg"], ("b", 1): ["gs://b/y/2.jpg"]}
    assert sorted(others) == ["gs://b/x/new.jpg", "gs://other/z.jpg", "http://h/a.jpg"]


# --- listings against the emulator -------------------------------------------------------------


LISTED = [f"listed/{prefix}/{i:05d}.jpg" for prefix in ("a", "b", "c") for i in range(900)]
SPARSE_OTHERS = [f"sparse/{i:05d}-other.jpg" for i in range(3_000)]
SPARSE_WANTED = [f"sparse/{i:05d}.jpg" for i in range(0, 3_000, 100)]  # 30 names among 3,000 objects
RANGE = [f"range/{i:03d}.jpg" for i in range(40)]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """A bucket that holds the objects of the listing tests below."""
    objects = {name: name.encode() for name in [*LISTED, *SPARSE_OTHERS, *SPARSE_WANTED, *RANGE]}
    objects["listed/b/00001-thumb.jpg"] = b"not in the catalog"
    with seeded_emulator(objects, tmp_path_factory.mktemp("listed")) as seeded:
        yield seeded


@pytest.fixture
def proxy(bucket, monkeypatch):
    with counting_proxy(bucket.host) as counting:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", counting.host)
        yield counting


def listings(proxy) -> list[str]:
    made = [path for method, path in proxy.requests if "/o?" in path and method == "GET"]
    proxy.requests.clear()
    return made


@pytest.mark.slow  # the GCS emulator
def test_a_listing_takes_a_request_a_thousand_names_and_says_what_is_absent(bucket, proxy):
    wanted = sorted([*LISTED[::3], "listed/b/gone.jpg"])
    listed = list_names(bucket.bucket, wanted, LIMITS)
    # 2,701 objects from the first wanted name to the last: 3 pages of 1,000, each asking
    # only for the name, generation and size of its objects
    made = listings(proxy)
    assert listed.pages == len(made) == 3 and listed.failed is None
    assert all("fields=items%28name%2Cgeneration%2Csize%29%2CnextPageToken" in path for path in made), made[0]
    assert sorted(listed.found) == sorted(LISTED[::3]) and listed.through == wanted[-1]
    found = listed.found[LISTED[0]]
    assert isinstance(found, GcsObject) and found.size == len(LISTED[0].encode())


@pytest.mark.slow  # the GCS emulator
def test_a_listing_that_finds_too_few_of_its_names_stops_at_its_budget(bucket, proxy):
    listed = list_names(bucket.bucket, sorted(SPARSE_WANTED), LIMITS)
    budget = max(1, int(len(SPARSE_WANTED) / LIST_REQUEST_COST))
    assert listed.pages == len(listings(proxy)) == budget == 2
    assert listed.through is not None and listed.through < max(SPARSE_WANTED)  # the rest: one by one
    assert set(listed.found) == {name for name in SPARSE_WANTED if name <= listed.through}


@pytest.mark.slow  # the GCS emulator
def test_ranges_settle_the_unchanged_and_the_gone_and_hand_on_the_changed_with_their_generation(bucket, proxy):
    uris = [bucket.uri(name) for name in RANGE]
    tasks = [UriTask(uri, (i,), earlier(f"generation=1;size={len(uri)}")) for i, uri in enumerate(uris)]
    tasks[0] = tasks[0]._replace(previous=earlier(fetch.check_version(uris[0], LIMITS).value))  # unchanged
    gone = UriTask(bucket.uri("range/005-gone.jpg"), (99,), earlier("generation=1;size=3"), audit=True)
    proxy.requests.clear()
    out = list(ListVersions(LIMITS).process(((bucket.bucket, 0), [tasks[:20], [gone, *tasks[20:]]])))
    outcomes = [o for item in out if getattr(item, "tag", None) == OUTCOMES for o in item.value]
    stats = next(item.value for item in out if getattr(item, "tag", None) == STATS)
    remaining = [t for item in out if not hasattr(item, "tag") for t in item]
    assert len(listings(proxy)) == 1 and not proxy.requests  # one list request, nothing else
    by_uri = {o.uri: o for _, o in outcomes}
    assert by_uri[uris[0]].reused and by_uri[uris[0]].score == SCORE
    assert by_uri[gone.uri].failure.error_type == "NotFound"
    assert "not in its bucket's listing" in by_uri[gone.uri].failure.message
    # the others changed generation: handed on with it, so that fetching costs one media request
    assert sorted(t.uri for t in remaining) == sorted(uris[1:])
    assert all(t.known.info.generation != "1" and t.known.value.startswith("generation=") for t in remaining)
    assert stats == {
        "listing_requests": 1,
        "versions_listed": 41,
        "uris": 2,
        "uris_unchanged": 1,
        "fetch_errors": 1,
        "declared_mismatches": 1,
    }


@pytest.mark.slow  # the GCS emulator
def test_a_listing_refused_leaves_every_uri_to_a_check_of_its_own(bucket, proxy):
    tasks = [UriTask(f"gs://no-such-bucket/x/{i:03d}.jpg", (0,), earlier("generation=1;size=1")) for i in range(20)]
    out = list(ListVersions(FetchLimits(deadline=5)).process((("no-such-bucket", 0), [tasks])))
    remaining = [t for item in out if not hasattr(item, "tag") for t in item]
    stats = next(item.value for item in out if getattr(item, "tag", None) == STATS)
    assert remaining == sorted(tasks) and stats["listings_failed"] == 1


# --- whole nights ----------------------------------------------------------------------------------


def write_manifest(path: Path, uris: list[str], declared: bool) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_id", "uri", "etag"])
        writer.writerows((f"img-{i:05d}", uri, "v1" if declared else "") for i, uri in enumerate(uris))
    return path


def requests_of(proxy) -> dict:
    """What a night asked of GCS, by kind: list, metadata and media requests (a metadata
    request only ever for the deleted object, 0008.jpg of shoes/)."""
    kinds = {"list": 0, "metadata": 0, "media": 0}
    for method, path in proxy.requests:
        assert method == "GET", (method, path)
        kind = "media" if "alt=media" in path else "list" if "/o?" in path else "metadata"
        kinds[kind] += 1
        assert kind != "metadata" or "shoes%2F0008.jpg" in path or kinds["list"] == 0, path
    proxy.requests.clear()
    return kinds


@pytest.fixture(scope="module")
def catalog(photos, tmp_path_factory):
    """1,500 gs:// images under three prefixes, four contents. Night 1 scores them, night 2
    is unchanged, night 3 follows one object rewritten and one deleted; nights 4 and 5
    declare versions (night 4 records them, night 5 compares)."""
    contents = [p.read_bytes() for p in photos]
    names = [f"catalog/{prefix}/{i:04d}.jpg" for prefix in ("shoes", "bags", "hats") for i in range(500)]
    work = tmp_path_factory.mktemp("listing-nights")
    output = work / "out"
    summaries, requests = {}, {}
    objects = {name: contents[i % 4] for i, name in enumerate(names)}
    with seeded_emulator(objects, work) as gcs, counting_proxy(gcs.host) as proxy:
        uris = [gcs.uri(name) for name in names]
        saved, os.environ["STORAGE_EMULATOR_HOST"] = os.environ["STORAGE_EMULATOR_HOST"], proxy.host

        def night(date: str, declared: bool = False, *extra: str) -> None:
            manifest = write_manifest(work / f"m-{date}.csv", uris, declared)
            proxy.requests.clear()
            args = [f"--manifest={manifest}", f"--output={output}", f"--run_date={date}", "--incremental", *extra]
            if declared:
                args.append("--version_column=etag")
            summaries[date] = pipeline.run(args).summary
            requests[date] = requests_of(proxy)

        try:
            night("2026-11-26")
            night("2026-11-27")
            gcs.upload_bytes(names[7], contents[4])  # rewritten: another content
            gcs._blob(names[8]).delete()  # deleted
            night("2026-11-28")
            night("2026-11-29", True)
            night("2026-11-30", True)
        finally:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
    return {"summaries": summaries, "requests": requests, "output": output, "uris": uris, "contents": contents}


def scores_of(output: Path, date: str) -> dict:
    rows = duckdb.sql(f"SELECT * FROM read_parquet('{output}/scores/dt={date}/*.parquet')").to_arrow_table()
    return {r["image_id"]: r for r in rows.to_pylist()}


@pytest.mark.slow
def test_an_unchanged_night_costs_a_list_request_per_thousand_images(catalog):
    summary, made = catalog["summaries"]["2026-11-27"], catalog["requests"]["2026-11-27"]
    assert made == {"list": 2, "metadata": 0, "media": 0}  # 1,500 objects: two pages
    assert made["list"] / 1_500 <= 0.01
    assert (summary["rows"], summary["reused"], summary["scored"], summary["errors"]) == (1_500, 1_500, 0, 0)
    assert (summary["versions_listed"], summary["listing_requests"], summary["version_checks"]) == (1_500, 2, 0)


@pytest.mark.slow
def test_a_rewritten_object_is_scored_again_and_a_deleted_one_is_a_not_found_row(catalog):
    summary, made = catalog["summaries"]["2026-11-28"], catalog["requests"]["2026-11-28"]
    # the listing told the new generation: one media request to hash it, one to decode it
    assert made == {"list": 2, "metadata": 0, "media": 2}
    assert (summary["scored"], summary["reused"], summary["errors"]) == (1, 1_498, 1)
    rows = scores_of(catalog["output"], "2026-11-28")
    assert rows["img-00007"]["content_sha256"] == hashlib.sha256(catalog["contents"][4]).hexdigest()
    assert not rows["img-00007"]["reused"]
    errors = duckdb.sql(
        f"SELECT image_id, error_type FROM read_parquet('{catalog['output']}/errors/dt=2026-11-28/*.parquet')"
    ).fetchall()
    assert errors == [("img-00008", "NotFound")]


@pytest.mark.slow
def test_with_declared_versions_an_unchanged_night_asks_gcs_nothing(catalog):
    # The deleted object has no score to reuse: every night it is looked for again (one
    # metadata request, NotFound). Night 4 has no declaration recorded yet, so the listing
    # checks, and the declarations are kept; night 5 asks nothing of the 1,499 others.
    assert catalog["requests"]["2026-11-29"] == {"list": 2, "metadata": 1, "media": 0}
    assert catalog["summaries"]["2026-11-29"]["declared_unchanged"] == 0
    summary, made = catalog["summaries"]["2026-11-30"], catalog["requests"]["2026-11-30"]
    assert made == {"list": 0, "metadata": 1, "media": 0}
    assert (summary["declared_unchanged"], summary["reused"], summary["versions_listed"]) == (1_499, 1_499, 0)
    assert summary["errors"] == 1


@pytest.mark.slow
def test_every_night_accounts_for_every_row(catalog):
    first = catalog["summaries"]["2026-11-26"]
    assert (first["scored"], first["deduplicated"], first["gcs_uris"]) == (4, 1_496, 1_500)
    for date, summary in catalog["summaries"].items():
        assert summary["rows"] == 1_500, date
        assert summary["rows"] == summary["scored"] + summary["deduplicated"] + summary["reused"] + summary["errors"]


def test_a_night_lists_only_after_a_night_that_had_gs_uris():
    from aisthetics_transforms.incremental import PreviousNight

    night = PreviousNight("2026-11-27", "RUN", "OUT/scores/dt=2026-11-27", [], 10)
    assert night.may_list  # a night from before the count: it may have had some
    assert night._replace(gcs_uris=3).may_list and not night._replace(gcs_uris=0).may_list


# --- an --images glob on gs://, listed in parallel ------------------------------------------------


@pytest.mark.slow  # the GCS emulator
def test_a_gs_image_glob_is_listed_in_ranges_that_cover_every_match_once(bucket, proxy):
    from aisthetics_transforms.manifest.images import RANGE_CUTS, glob_ranges, list_range

    pattern = bucket.uri("listed/*/0001*.jpg")
    ranges = glob_ranges(pattern)
    assert len(ranges) == len(RANGE_CUTS) + 1  # one per next character, and the ranges between
    proxy.requests.clear()
    listed = [path for r in ranges for table in list_range(r) for path in table.column("uri").to_pylist()]
    expected = sorted(bucket.uri(name) for name in LISTED if re.fullmatch(r"listed/[abc]/0001\d\.jpg", name))
    assert sorted(listed) == expected and len(listed) == len(set(listed)) == 30
    assert "listed/b/00001-thumb.jpg" not in {p.split("/", 3)[3] for p in listed}  # matched as Beam matches
    # each range asked the store for its own names only (one page each)
    assert len(listings(proxy)) == len(ranges)
    local = glob_ranges("/photos/*.jpg")
    assert [(r.start, r.end) for r in local] == [(None, None)]  # a local glob: one listing
