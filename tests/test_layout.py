"""layout's plain functions on local disk: paths and their inverse, run ids, the few file
operations publishing needs, and reading nights back. (test_publish.py exercises them
through whole publishes; test_publish_gcs.py on gs://.)"""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest

from aisthetics_transforms import layout, storage

DATE = "2026-11-28"


# --- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, is_date",
    [
        ("2026-11-28", True),
        ("2024-02-29", True),
        ("2025-02-29", False),
        ("2026-13-01", False),
        ("2026-1-28", False),
        ("2026-11-28 ", False),
        ("20261128", False),
        ("", False),
        (None, False),
        ("dt=2026-11-28", False),
    ],
)
def test_is_date_takes_only_real_zero_padded_dates(text, is_date):
    assert layout.is_date(text) is is_date


def test_paths_of_a_night_and_their_inverse():
    for output in ("/data/out", "gs://bucket/nightly/out", "/data/dt=2020-01-01/out"):
        partition = layout.partition_dir(output + "/", "scores", DATE)
        assert partition == f"{output}/scores/dt={DATE}"
        assert layout.split_partition(partition) == (output, "scores", DATE)
        assert layout.split_partition(partition + "/") == (output, "scores", DATE)
        assert layout.summary_path(output, DATE) == f"{output}/runs/dt={DATE}/summary.json"
        assert layout.staging_dir(output, DATE, "RUN") == f"{output}/_staging/{DATE}_RUN"
        assert layout.claims_dir(output, DATE) == f"{output}/_publish/{DATE}"
    assert storage.is_local("/data/out") and storage.is_local("relative/out") and not storage.is_local("gs://b/out")


@pytest.mark.parametrize(
    "path",
    [
        "/data/out/scores",
        "/data/out/scores/dt=2026-02-30",
        "/data/out/scores/2026-11-28",
        "scores/dt=2026-11-28",
        "dt=2026-11-28",
    ],
)
def test_what_is_not_a_partition_is_named_with_the_shape_expected(path):
    with pytest.raises(layout.LayoutError, match=r"is not a partition directory \(OUTPUT/TABLE/dt=YYYY-MM-DD\)"):
        layout.split_partition(path)


def test_run_ids_sort_by_start_time_and_differ_when_started_together():
    now = dt.datetime(2026, 11, 28, 3, 4, 5, 678901, tzinfo=dt.UTC)
    same = {layout.new_run_id(now) for _ in range(20)}
    assert len(same) == 20
    later = layout.new_run_id(now + dt.timedelta(microseconds=1))
    assert all(run_id < later for run_id in same)
    assert layout.run_started(later) == now + dt.timedelta(microseconds=1)
    elsewhere = now.astimezone(dt.timezone(dt.timedelta(hours=-5)))  # the same instant in another zone
    assert layout.run_started(layout.new_run_id(elsewhere)) == now


def test_run_started_is_none_for_names_that_are_not_run_ids():
    for name in ("not-a-run", "20261328T000000000000Z-abc123", "2026-11-28_RUN", ""):
        assert layout.run_started(name) is None, name


def test_a_night_is_the_parquet_files_of_its_run():
    assert layout.is_run_file("RUN1-scores-0.parquet", "RUN1")
    assert not layout.is_run_file("RUN10-scores-0.parquet", "RUN1")  # another run whose id starts alike
    assert not layout.is_run_file("RUN1-scores-0.parquet.tmp", "RUN1")
    assert layout.is_run_file("anything.parquet", None) and layout.is_run_file("anything.parquet", "")
    assert not layout.is_run_file("summary.json", None)


# --- files ------------------------------------------------------------------------------------


def test_listing_names_files_relative_to_the_directory(tmp_path):
    for name in ("a.parquet", "sub/b.parquet", "sub/deeper/c.json"):
        storage.write_atomic(str(tmp_path / "d" / name), name.encode())
    tree = storage.list_tree(str(tmp_path / "d"))
    assert [e.name for e in tree] == ["a.parquet", "sub/b.parquet", "sub/deeper/c.json"]
    assert all(e.path == str(tmp_path / "d" / e.name) and abs(e.updated - time.time()) < 60 for e in tree)
    assert [e.name for e in storage.list_dir(str(tmp_path / "d"))] == ["a.parquet"]
    assert storage.list_tree(str(tmp_path / "absent")) == [] == storage.list_dir(str(tmp_path / "absent"))


def test_an_atomic_write_replaces_the_whole_file_and_leaves_no_temporary_one(tmp_path):
    path = str(tmp_path / "runs" / "summary.json")
    assert storage.read_bytes(path) is None
    storage.write_atomic(path, b"old")
    storage.write_atomic(path, b"new, longer")
    assert storage.read_bytes(path) == b"new, longer"
    assert os.listdir(tmp_path / "runs") == ["summary.json"]
    assert os.stat(path).st_mode & 0o777 == 0o644  # readable by whoever reads the tables


def test_create_if_absent_creates_once(tmp_path):
    claim = str(tmp_path / "_publish" / DATE / "RUN.claim")
    assert storage.create_if_absent(claim) is True
    assert storage.create_if_absent(claim) is False
    assert storage.read_bytes(claim) == b""


def test_touch_creates_and_refreshes_without_changing_the_contents(tmp_path):
    beat = tmp_path / "RUN.alive"
    storage.touch(str(beat))
    assert beat.read_bytes() == b""
    beat.write_bytes(b"kept")
    os.utime(beat, (1, 1))
    storage.touch(str(beat))
    assert beat.read_bytes() == b"kept" and time.time() - beat.stat().st_mtime < 60


def test_moves_replace_their_destination_and_deletes_accept_what_is_gone(tmp_path):
    staged = [tmp_path / "staging" / f"{i}.parquet" for i in range(3)]
    for i, path in enumerate(staged):
        storage.write_atomic(str(path), f"new {i}".encode())
    published = tmp_path / "scores" / f"dt={DATE}"
    storage.write_atomic(str(published / "0.parquet"), b"old")
    storage.move([(str(path), str(published / path.name)) for path in staged])
    assert sorted(os.listdir(published)) == ["0.parquet", "1.parquet", "2.parquet"]
    assert (published / "0.parquet").read_bytes() == b"new 0"
    assert os.listdir(tmp_path / "staging") == []
    storage.move([])
    storage.delete([str(published / "0.parquet"), str(published / "never-was.parquet")])
    storage.delete([])
    assert sorted(os.listdir(published)) == ["1.parquet", "2.parquet"]


def test_removing_a_tree_and_empty_directories(tmp_path):
    storage.write_atomic(str(tmp_path / "_staging" / "RUN" / "scores" / "a.parquet"), b"x")
    storage.write_atomic(str(tmp_path / "_publish" / DATE / "OTHER.claim"), b"")
    storage.remove_tree(str(tmp_path / "_staging" / "RUN"))
    storage.remove_tree(str(tmp_path / "_staging" / "RUN"))  # already gone: no error
    storage.remove_empty_dirs(str(tmp_path / "_staging"), str(tmp_path / "_publish" / DATE), str(tmp_path / "none"))
    assert not (tmp_path / "_staging").exists()
    assert (tmp_path / "_publish" / DATE / "OTHER.claim").exists()  # not empty: another run uses it


# --- reading nights back ----------------------------------------------------------------------


def publish_by_hand(output: str, run_date: str, run_id: str, files: list[str]) -> None:
    for name in files:
        storage.write_atomic(layout.join(layout.partition_dir(output, "scores", run_date), name), b"PAR1")
    storage.write_atomic(layout.summary_path(output, run_date), json.dumps({"run_id": run_id, "rows": 1}).encode())


def test_a_nights_files_are_its_summarys_run_and_a_date_without_summary_is_no_night(tmp_path):
    output = str(tmp_path / "out")
    publish_by_hand(output, DATE, "RUNB", ["RUNB-scores-0.parquet", "RUNB-scores-1.parquet"])
    storage.write_atomic(layout.join(layout.partition_dir(output, "scores", DATE), "RUNA-scores-0.parquet"), b"PAR1")
    names = sorted(os.path.basename(p) for p in layout.night_files(output, "scores", DATE))
    assert names == ["RUNB-scores-0.parquet", "RUNB-scores-1.parquet"]
    partition = layout.partition_dir(output, "scores", DATE)
    assert layout.night_pattern(partition) == f"{partition}/RUNB-*.parquet"
    assert layout.night_files(output, "errors", DATE) == []  # no file of that table

    storage.write_atomic(layout.join(layout.partition_dir(output, "scores", "2026-11-29"), "RUNC-x.parquet"), b"PAR1")
    assert layout.night_files(output, "scores", "2026-11-29") == []
    with pytest.raises(layout.LayoutError, match="has no published night"):
        layout.night_pattern(layout.partition_dir(output, "scores", "2026-11-29"))


def test_a_summary_that_is_not_an_object_is_named_with_the_fix(tmp_path):
    output = str(tmp_path / "out")
    assert layout.read_summary(output, DATE) is None
    storage.write_atomic(layout.summary_path(output, DATE), b"[1, 2]")
    with pytest.raises(layout.LayoutError, match=f"summary.json is not a run summary .*rerun {DATE}"):
        layout.read_summary(output, DATE)


def test_published_dates_come_from_summaries_under_runs_only(tmp_path):
    output = str(tmp_path / "out")
    for run_date in ("2026-11-27", "2026-11-25"):
        publish_by_hand(output, run_date, f"RUN{run_date}", [])
    for stray in (
        "runs/dt=2026-02-30/summary.json",
        "runs/dt=2026-11-26/nested/summary.json",
        "runs/2026-11-24/summary.json",
        "scores/dt=2026-11-23/summary.json",
    ):
        storage.write_atomic(os.path.join(output, stray), b"{}")
    assert layout.published_dates(output) == ["2026-11-25", "2026-11-27"]
    assert layout.previous_night(output, "2026-11-27")["run_date"] == "2026-11-25"
    newest = {"run_id": "RUN2026-11-27", "rows": 1, "run_date": "2026-11-27"}
    assert layout.previous_night(output, "2026-11-28") == newest
    assert layout.previous_night(output, "2026-11-25") is None
    assert layout.published_dates(str(tmp_path / "nothing-here")) == []


@pytest.mark.parametrize(
    "path, local",
    [
        ("/data/out", True),
        ("relative/out", True),
        ("file:///data/out", True),
        ("FILE://localhost/data/out", True),
        ("gs://bucket/out", False),
        ("https://cdn.example.com/a.jpg", False),
    ],
)
def test_storage_and_fetch_agree_on_what_is_on_this_machine(path, local):
    from aisthetics_transforms.fetch import is_local_file

    assert storage.is_local(path) is local
    assert is_local_file(path) is local


def test_a_file_uri_works_wherever_a_local_path_does(tmp_path):
    from urllib.parse import quote

    plain = str(tmp_path / "a night" / "run 1.json")
    uri = "file://" + quote(plain)
    assert storage.os_path(uri) == plain and storage.shown(uri) == plain
    storage.write_atomic(uri, b"written through a uri")
    assert storage.read_bytes(plain) == b"written through a uri" == storage.read_bytes(uri)
    assert [e.path for e in storage.list_tree("file://" + quote(str(tmp_path)))] == [plain]
    storage.delete([uri])
    assert not storage.exists(plain)
    with pytest.raises(ValueError, match="file uri names host 'elsewhere'; only local files can be read"):
        storage.os_path("file://elsewhere/data/out")
