"""The benchmark harness measures what it says: real child processes, a real loopback server and
real sockets, real Parquet tables. Fast (a few seconds); no pipeline run."""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# The benchmark scripts import their shared code as `harness` (benchmarks/ is first on their path).
# Not a conftest.py: the project's tests import their own `conftest` module by name.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_scale  # noqa: E402
from harness.machine import own_peak_rss_mb  # noqa: E402
from harness.pipeline_runs import accounting_problems  # noqa: E402
from harness.process import child_env, run_timed  # noqa: E402
from harness.rounds import median_run, run_rounds, within_rounds  # noqa: E402
from harness.servers import ImageServer, SilentHosts  # noqa: E402

# Touches N MB, holds them a moment (so a sampler sees the process at its peak), prints done.
ALLOCATE = (
    "import sys, time; x = bytearray(int(sys.argv[1]) * 2**20); x[::4096] = b'1' * len(x[::4096]); "
    "time.sleep(0.3); print('done')"
)


def test_run_timed_takes_the_childs_own_peak_even_when_the_benchmark_is_larger(tmp_path):
    ballast = bytearray(400 * 2**20)  # this process now far above the child's peak
    ballast[::4096] = b"1" * len(ballast[::4096])
    assert own_peak_rss_mb() > 400
    run = run_timed(
        [sys.executable, "-c", ALLOCATE, "120"],
        env=child_env(),
        cwd=tmp_path,
        log_dir=tmp_path,
        name="alloc",
        sample_interval=0.05,
    )
    del ballast
    launcher = run["launcher_peak_rss_mb"]
    assert 120 < launcher < 200, run["processes"]  # the child's own 120 MB, not our 400+
    assert [p["role"] for p in run["processes"]] == ["launcher"]  # the spawner is not part of the tree
    assert run["tree_peak_rss_mb"] == launcher
    assert (tmp_path / "alloc.stdout").read_text() == "done\n"


def test_run_timed_follows_every_process_of_the_tree(tmp_path):
    parent = (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1], '150']); "
        "x = bytearray(60 * 2**20); x[::4096] = b'1' * len(x[::4096]); "
        "import time; time.sleep(0.5)"
    )  # long enough for the sampler to see it
    run = run_timed(
        [sys.executable, "-c", parent, ALLOCATE],
        env=child_env(),
        cwd=tmp_path,
        log_dir=tmp_path,
        name="tree",
        sample_interval=0.05,
    )
    peaks = {p["role"]: p["peak_rss_mb"] for p in run["processes"]}
    assert 60 < peaks["launcher"] < 130  # its own, not its child's (which wait4 would have given)
    assert peaks["other"] > 150
    assert run["largest_peak_exact_mb"] > 150
    assert run["tree_peak_rss_mb"] == pytest.approx(peaks["launcher"] + peaks["other"])


def test_run_timed_ends_the_benchmark_with_the_log_when_the_child_fails(tmp_path):
    with pytest.raises(SystemExit, match="exit status 3"):
        run_timed(
            [sys.executable, "-c", "import sys; print('bad input', file=sys.stderr); sys.exit(3)"],
            env=child_env(),
            cwd=tmp_path,
            log_dir=tmp_path,
            name="fails",
            sample_interval=None,
        )
    assert "bad input" in (tmp_path / "fails.log").read_text()


def test_image_server_serves_from_memory_and_counts(tmp_path):
    files = {"/a.jpg": b"A" * 5000, "/b.jpg": b"B" * 7}
    server = ImageServer(files)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        bodies = []
        for path in ("/a.jpg", "/b.jpg", "/a.jpg"):  # one keep-alive connection
            conn.request("GET", path)
            response = conn.getresponse()
            bodies.append((response.status, response.read()))
        conn.request("GET", "/missing.jpg")
        missing = conn.getresponse()
        missing.read()
        conn.close()
        time.sleep(0.2)  # the connection's thread adds its count as it ends
        counts = server.snapshot()
    finally:
        server.close()
    assert bodies == [(200, files["/a.jpg"]), (200, files["/b.jpg"]), (200, files["/a.jpg"])]
    assert missing.status == 404
    assert counts["requests"] == 4 and counts["not_found"] == 1 and counts["connections"] == 1
    assert counts["bytes_sent"] > 10007  # the bodies plus their headers


def test_silent_hosts_accept_and_never_answer():
    hosts = SilentHosts(2)
    try:
        uris = hosts.uris()
        assert [u.split("/")[2].split(":")[0] for u in uris] == ["127.0.0.2", "127.0.0.3"]
        host, port = uris[0].split("/")[2].split(":")
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            conn.sendall(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(1)
        time.sleep(0.3)
        assert hosts.reset() == 1
    finally:
        hosts.close()


def write_run(output: Path, run_date: str, scores: list[str], errors: list[tuple[str, str]], summary: dict):
    for table, ids in (("scores", scores), ("errors", [e[0] for e in errors])):
        folder = output / table / f"dt={run_date}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"image_id": pa.array(ids, pa.string())}), folder / "part-0.parquet")
    runs = output / "runs" / f"dt={run_date}"
    runs.mkdir(parents=True)
    by_stage = {"manifest": 0, "fetch": 0, "decode": 0, "score": 0}
    for _, stage in errors:
        by_stage[stage] += 1
    (runs / "summary.json").write_text(
        json.dumps({"rows": len(scores) + len(errors), "errors": len(errors), "errors_by_stage": by_stage, **summary})
    )


def test_accounting_passes_a_run_that_holds_every_row_once(tmp_path):
    write_run(tmp_path, "2026-11-28", ["r0", "r1"], [("r2", "fetch")], {"scored": 1})
    assert accounting_problems(tmp_path, "2026-11-28", ["r0", "r1", "r2"], scored=1, errors_by_stage={"fetch": 1}) == []


@pytest.mark.parametrize(
    "scores, errors, expected",
    [
        (["r0", "r1"], [], "manifest rows are in no table"),
        (["r0", "r1", "r2", "r2"], [], "more than once"),
        (["r0", "r1", "r2", "r9"], [], "ids the manifest does not have"),
        (["r0", "r1"], [("r2", "decode")], "errors by stage"),
    ],
)
def test_accounting_names_what_is_wrong(tmp_path, scores, errors, expected):
    write_run(tmp_path, "2026-11-28", scores, errors, {"scored": 1})
    problems = accounting_problems(tmp_path, "2026-11-28", ["r0", "r1", "r2"], scored=1)
    assert any(expected in p for p in problems), problems


def test_rounds_alternate_rows_and_pair_ratios():
    order, clock = [], iter(range(100))
    rows = {name: (lambda name=name: order.append(name) or {"wall_s": float(next(clock))}) for name in ("a", "b")}
    runs = run_rounds(rows, 3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert within_rounds(runs, lambda r: r["b"]["wall_s"] - r["a"]["wall_s"]) == [1.0, 1.0, 1.0]
    assert median_run(runs["a"], key=lambda r: r["wall_s"]) == {"wall_s": 2.0}
    order.clear()
    run_rounds(rows, 3, reverse_every_other=True)
    assert order == ["a", "b", "b", "a", "a", "b"]


def test_skewed_manifest_puts_half_the_rows_on_one_uri_and_spreads_the_rest():
    index = bench_scale.skewed_index(400_000, 400)
    counts = [0] * 400
    for i in index:
        counts[i] += 1
    assert counts[0] == 200_000
    assert min(counts[1:]) >= 501 and max(counts[1:]) <= 502


def test_dead_uris_are_spread_through_the_catalog():
    uris = bench_scale.with_dead([f"u{i}" for i in range(400)], ["d0", "d1", "d2", "d3"])
    positions = [uris.index(d) for d in ("d0", "d1", "d2", "d3")]
    assert len(uris) == 404
    assert positions == sorted(positions) and positions[0] > 50 and positions[-1] < 350


def test_a_report_goes_outside_the_repository_unless_the_run_is_named_the_reference(tmp_path, monkeypatch):
    import argparse
    import importlib

    import harness
    from harness import report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    importlib.reload(harness)
    try:
        parser = argparse.ArgumentParser()
        report.add_output_options(parser, "costs.md")
        scratch = report.output_path(parser.parse_args([]))
        assert scratch == tmp_path / "cache" / "aisthetics" / "benchmark-results" / "costs.md"
        assert harness.REPO not in scratch.parents
        reference = report.output_path(parser.parse_args(["--reference"]))
        assert reference == harness.REPO / "benchmarks" / "results" / "costs.md"
        assert report.output_path(parser.parse_args(["--out", str(tmp_path / "x.md")])) == tmp_path / "x.md"
        with pytest.raises(SystemExit, match="not both"):
            report.output_path(parser.parse_args(["--out", "x.md", "--reference"]))
    finally:
        monkeypatch.undo()
        importlib.reload(harness)
