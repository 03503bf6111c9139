"""``python -m pipeline`` as a user meets it: every option checked before anything runs,
misspelt options caught, and every mistake one line on stderr with a documented exit
status, nothing written under --output."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline
from aisthetics_transforms.console import first_line, one_line
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.preprocess import DecodeLimits
from aisthetics_transforms.settings import option_fields
from pipeline.checks import keep_column_problems, misspelt_option_problems, run_date_problems
from pipeline.options import AistheticsOptions, OptionsError, help_text, pipeline_options

REPO = Path(__file__).resolve().parents[1]


def validated(*args: str) -> list[str]:
    return AistheticsOptions(list(args)).view_as(AistheticsOptions).validate_inputs()


# --- checks without a process -----------------------------------------------------------------


@pytest.mark.parametrize(
    "run_date, good",
    [
        ("2026-01-05", True),
        ("2024-02-29", True),
        ("2026-1-5", False),
        ("2026-01-5", False),
        ("2026-02-30", False),
        ("2025-02-29", False),
        ("20260105", False),
        ("2026-01-05T00:00", False),
        (" 2026-01-05", False),
        ("", False),
        ("2026-01-05/..", False),
        ("2026-01-05\n", False),
        ("２０２６-01-05", False),  # digits, but not ASCII ones
    ],
)
def test_run_date_is_a_real_zero_padded_date(run_date, good):
    problems = run_date_problems(run_date)
    assert (problems == []) is good
    if not good:
        assert problems == [
            f"--run_date must be YYYY-MM-DD, got {run_date!r}; give a real date, zero-padded (e.g. 2026-01-05)"
        ]


@pytest.mark.parametrize(
    "keep, refused",
    [
        (("category", "brand"), []),
        (("DT",), ["DT"]),  # the partition key: a kept dt breaks hive-partitioned reads
        (("Image_ID",), ["Image_ID"]),
        (("manifest_line", "manifest_file"), ["manifest_line", "manifest_file"]),
        (("mean_score", "Stage", "error_message"), ["mean_score", "Stage", "error_message"]),
        (("brand", "brand"), ["brand"]),
        (("brand", "Brand"), ["Brand"]),
    ],
)
def test_kept_columns_may_not_repeat_or_shadow_a_table_column_in_any_case(keep, refused):
    problems = keep_column_problems(keep)
    assert len(problems) == len(refused)
    for problem, name in zip(problems, refused):
        assert problem.startswith(f"--keep_columns cannot keep {name!r}") or problem.startswith(
            f"--keep_columns names {name!r} twice"
        )


def test_politeness_options_reach_the_fetch_limits_and_bad_values_are_named(tmp_path):
    given = (f"--manifest={tmp_path}/m.csv", f"--output={tmp_path}/out")
    limits = AistheticsOptions(
        [
            *given,
            "--max_requests_per_second_per_host=12.5",
            "--host_breaker_failures=0",
            "--host_breaker_cooldown=7",
            "--user_agent=acme-scoring (ops@example.com)",
        ]
    ).view_as(AistheticsOptions)
    assert limits.validate_inputs() == []
    fetch = limits.fetch_limits()
    assert (fetch.max_requests_per_second_per_host, fetch.breaker_failures, fetch.breaker_cooldown) == (12.5, 0, 7)
    assert fetch.user_agent == "acme-scoring (ops@example.com)"
    problems = validated(
        *given, "--max_requests_per_second_per_host=-1", "--host_breaker_cooldown=0", "--user_agent=a\tb"
    )
    assert "--max_requests_per_second_per_host must be at least 0, got -1.0" in problems
    assert "--host_breaker_cooldown must be more than 0, got 0.0" in problems
    assert any(p.startswith("--user_agent must be printable ASCII") for p in problems)


# Each numeric option one step out of its range, and the line that must name it.
OUT_OF_RANGE = {
    "--batch_size=0": "--batch_size must be at least 1, got 0",
    "--inference_threads=-1": "--inference_threads must be at least 0, got -1",
    "--decode_threads=-1": "--decode_threads must be at least 0, got -1",
    "--fetch_threads=0": "--fetch_threads must be at least 1, got 0",
    "--max_image_bytes=0": "--max_image_bytes must be at least 1, got 0",
    "--max_pixels=0": "--max_pixels must be at least 1, got 0",
    "--max_dimension=0": "--max_dimension must be at least 1, got 0",
    "--max_connections_per_host=0": "--max_connections_per_host must be at least 1, got 0",
    "--max_bytes_in_flight=0": "--max_bytes_in_flight must be at least 1, got 0",
    "--host_breaker_failures=-1": "--host_breaker_failures must be at least 0, got -1",
    "--host_breaker_cooldown=-2": "--host_breaker_cooldown must be more than 0, got -2.0",
    "--max_requests_per_second_per_host=inf": "--max_requests_per_second_per_host must be at least 0, got inf",
    "--fetch_timeout=0": "--fetch_timeout must be more than 0, got 0.0",
    "--fetch_deadline=nan": "--fetch_deadline must be more than 0, got nan",
    "--staging_ttl_hours=0": "--staging_ttl_hours must be more than 0, got 0.0",
    "--night_claim_hours=-1": "--night_claim_hours must be more than 0, got -1.0",
    "--publish_lock_ttl_seconds=0.5": "--publish_lock_ttl_seconds must be at least 1, got 0.5",
}


def test_every_number_is_range_checked_and_all_problems_named_at_once(tmp_path):
    given = (f"--manifest={tmp_path}/m.csv", f"--output={tmp_path}/out")
    problems = validated(*given, *OUT_OF_RANGE, "--progress_seconds=-5")
    assert sorted(problems[:-1]) == sorted(OUT_OF_RANGE.values())
    assert problems[-1].startswith("--progress_seconds must be 0 or more")
    assert validated(*given) == []


def test_one_image_at_the_cap_must_fit_in_the_bytes_in_flight(tmp_path):
    given = (f"--manifest={tmp_path}/m.csv", f"--output={tmp_path}/out")
    assert validated(*given, "--max_image_bytes=1000", "--max_bytes_in_flight=999") == [
        "--max_bytes_in_flight must be at least --max_image_bytes (1000), got 999: one image at the cap must fit"
    ]
    assert validated(*given, "--max_image_bytes=1000", "--max_bytes_in_flight=1000") == []


def test_renamed_limits_keep_their_old_names_for_a_release_with_a_warning(tmp_path, capsys):
    given = [f"--images={tmp_path}/*.jpg", f"--output={tmp_path}/out"]
    options = pipeline_options([*given, "--http_timeout=7", "--http_deadline", "90"])
    limits = options.view_as(AistheticsOptions).fetch_limits()
    assert (limits.read_timeout, limits.deadline) == (7.0, 90.0)
    assert capsys.readouterr().err.splitlines() == [
        "python -m pipeline: --http_timeout is deprecated and goes in the next release; write --fetch_timeout",
        "python -m pipeline: --http_deadline is deprecated and goes in the next release; write --fetch_deadline",
    ]
    options = pipeline_options([*given, "--fetch_timeout=8", "--fetch_deadline=80"])
    limits = options.view_as(AistheticsOptions).fetch_limits()
    assert (limits.read_timeout, limits.deadline) == (8.0, 80.0)
    assert capsys.readouterr().err == ""
    with pytest.raises(OptionsError, match="^argument --fetch_timeout/--http_timeout: invalid float value: 'soon'"):
        pipeline_options([*given, "--http_timeout=soon"])


def test_output_must_be_a_directory_or_makeable(tmp_path):
    a_file = tmp_path / "tables.txt"
    a_file.write_text("not a directory")
    assert validated(f"--images={tmp_path}/*.jpg", f"--output={a_file}") == [
        f"--output {a_file} is a file; give a directory (it will hold scores/, errors/ and runs/)"
    ]
    assert validated(f"--images={tmp_path}/*.jpg", f"--output={a_file}/deeper/out") == [
        f"--output {a_file}/deeper/out cannot be made: {a_file} is a file; give a directory"
    ]
    assert validated(f"--images={tmp_path}/*.jpg", f"--output={tmp_path}/new/deeper") == []
    assert validated(f"--images={tmp_path}/*.jpg", "--output=gs://bucket/tables") == []


KNOWN = ["--incremental", "--run_date", "--keep_columns", "--output", "--runner", "--direct_num_workers"]


@pytest.mark.parametrize(
    "unknown, problem",
    [
        (["--incrmental"], "unknown option --incrmental; did you mean --incremental?"),
        (["--run-date=2026-01-05"], "unknown option --run-date; did you mean --run_date?"),
        (["-incremental"], "unknown option -incremental; did you mean --incremental?"),
        (["--Keep_Columns=a"], "unknown option --Keep_Columns; did you mean --keep_columns?"),
        (["--increm"], "unknown option --increm; did you mean --incremental?"),
        (["--runnr", "DataflowRunner"], "unknown option --runnr; did you mean --runner?"),
        (["manifest.csv"], "unexpected argument 'manifest.csv': options are written --name=value"),
    ],
)
def test_an_unknown_option_close_to_a_known_one_is_a_misspelling(unknown, problem):
    [found] = misspelt_option_problems(unknown, KNOWN)
    assert found.startswith(problem)


def test_unknown_options_far_from_any_known_one_pass_on_to_beam():
    """Runners take options the Python SDK does not know; Beam passes them on."""
    assert (
        misspelt_option_problems(["--flink_conf_dir=/etc/flink", "--sdk_harness_log_level_overrides", "{}"], KNOWN)
        == []
    )


def test_beams_own_options_pass_and_ours_are_validated(tmp_path):
    options = pipeline_options(
        [
            f"--images={tmp_path}/*.jpg",
            f"--output={tmp_path}/out",
            "--direct_running_mode=in_memory",
            "--direct_num_workers=2",
            "--runner=FnApiRunner",
        ]
    )
    assert options.get_all_options()["direct_num_workers"] == 2
    with pytest.raises(OptionsError) as refused:
        pipeline_options([f"--images={tmp_path}/*.jpg", "--incrmental", "--run_date=2026-1-5", "--batch_size=0"])
    assert refused.value.problems == [
        "unknown option --incrmental; did you mean --incremental?",
        "--output is required (a directory, local or gs://)",
        "--run_date must be YYYY-MM-DD, got '2026-1-5'; give a real date, zero-padded (e.g. 2026-01-05)",
        "--batch_size must be at least 1, got 0",
    ]


def test_every_view_shares_the_values_and_a_copy_has_its_own(tmp_path):
    import copy
    import pickle

    from apache_beam.options.pipeline_options import StandardOptions, TypeOptions

    options = pipeline_options([f"--images={tmp_path}/*.jpg", f"--output={tmp_path}/out", "--runner=FnApiRunner"])
    options.view_as(TypeOptions)
    options.view_as(StandardOptions).runner = "DataflowRunner"  # a value set through one view...
    assert options.view_as(StandardOptions).runner == "DataflowRunner"  # ...is seen through every other
    assert options.get_all_options()["runner"] == "DataflowRunner"
    for copied in (copy.deepcopy(options), pickle.loads(pickle.dumps(options))):
        assert copied.view_as(StandardOptions).runner == "DataflowRunner"
        copied.view_as(StandardOptions).runner = "FnApiRunner"  # a copy's views are its own values
        assert copied.get_all_options()["runner"] == "FnApiRunner"
        assert options.view_as(StandardOptions).runner == "DataflowRunner"


def described(help_text: str, option: str) -> str:
    """What ``--help`` says of ``option``: its lines, joined, after the option's own names."""
    found = re.search(rf"^  --{option}\b.*?(?=^  -|^\S|\Z)", help_text, re.M | re.S)
    assert found, f"--{option} is not in the help"
    words = found.group(0).split()
    start = next(i for i, w in enumerate(words) if not w.startswith("-") and not w.isupper())
    return " ".join(words[start:]).replace("- ", "-")  # argparse wraps lines after a hyphen too


def test_help_shows_every_option_with_its_help_and_says_beams_are_accepted():
    text = help_text()
    assert text.startswith("usage: python -m pipeline")
    ours = AistheticsOptions([]).get_all_options(current_only=True)
    assert len(ours) >= 30
    for name in ours:
        assert len(described(text, name)) > 10, name
    for cls in (FetchLimits, DecodeLimits):  # the limits' fields give the options' defaults and help
        for field in option_fields(cls):
            said = described(text, field.metadata["option"])
            assert said.startswith(" ".join(field.metadata["help"].split())), said
            if not isinstance(field.default, bool) and field.default:
                assert said.endswith(f"(default: {field.default})"), said
    assert "Any Apache Beam pipeline option is accepted" in text and "Exit status:" in text


def test_bad_options_are_refused_before_anything_runs(tmp_path):
    """Every problem with the options is named at once, and nothing is written."""
    output = tmp_path / "out"
    with pytest.raises(OptionsError) as refused:
        pipeline.run(
            [
                f"--manifest={tmp_path / 'missing.csv'}",
                f"--images={tmp_path}/*.jpg",
                f"--output={output}",
                "--run_date=28.11.2026",
                "--batch_size=0",
                "--fetch_threads=0",
                "--decode_threads=-1",
            ]
        )
    message = str(refused.value)
    for problem in (
        "exactly one of --manifest or --images",
        "--run_date must be YYYY-MM-DD, got '28.11.2026'",
        "--batch_size must be at least 1",
        "--fetch_threads must be at least 1",
        "--decode_threads must be at least 0",
    ):
        assert problem in message
    assert not output.exists()


def test_an_error_reaches_the_user_as_its_first_line_without_beams_additions():
    beam_wrapped = RuntimeError(
        "manifest m.csv: column 'uri' not found [while running 'ReadManifest/Read']\n"
        "Traceback (most recent call last):\n  ..."
    )
    assert first_line(beam_wrapped) == "manifest m.csv: column 'uri' not found"
    problems = ["--batch_size must be at least 1, got 0", "--fetch_threads must be at least 1, got 0"]
    assert first_line(OptionsError(problems)) == "; ".join(problems)
    assert first_line(MemoryError()) == "MemoryError"  # no message: its type says what happened


def test_a_message_is_told_whole_on_one_line_where_it_is_recorded():
    assert one_line(OSError("disk\n   went  away")) == "disk went away"
    assert one_line(OSError("disk\nfull"), with_type=True) == "OSError: disk full"
    assert one_line(ValueError("x" * 500), with_type=True, limit=300) == "ValueError: " + "x" * 300
    assert one_line(MemoryError(), with_type=True) == one_line(MemoryError()) == "MemoryError"


# --- the command a user runs (each a subprocess of ``python -m pipeline``: slow) ------------


def python_m_pipeline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalog")
    rows = []
    for i in range(2):
        path = root / f"photo-{i}.jpg"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(path)
        rows.append({"image_id": f"p{i}", "uri": str(path), "category": "test"})
    for name, columns in (("manifest.csv", ["image_id", "uri", "category"]), ("no-uri.csv", ["image_id", "category"])):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    (root / "notes.hdf5").write_text("these are not weights")
    (root / "tables.txt").write_text("a file where --output should be")
    return root


MISTAKES = {
    # name: (arguments, what the one line must say); {c}: the catalog, {out}: --output
    "wrong-manifest-path": (["--manifest={c}/missing.csv"], "'{c}/missing.csv' matches no file"),
    "manifest-without-uri": (["--manifest={c}/no-uri.csv"], "'uri' not found"),
    "missing-keep-column": (["--manifest={c}/manifest.csv", "--keep_columns=colour"], "'colour' not found"),
    "images-match-nothing": (["--images={c}/nothing/*.jpg"], "matches no file"),
    "wrong-manifest-format": (["--manifest={c}/manifest.csv", "--manifest_format=xml"], "invalid choice: 'xml'"),
    "bad-weights": (
        ["--manifest={c}/manifest.csv", "--weights={c}/notes.hdf5"],
        "'{c}/notes.hdf5' is not a readable HDF5",
    ),
    "misspelt-option": (
        ["--manifest={c}/manifest.csv", "--incrmental"],
        "unknown option --incrmental; did you mean --incremental?",
    ),
    "hyphenated-option": (["--manifest={c}/manifest.csv", "--run-date=2026-01-05"], "did you mean --run_date?"),
    "malformed-number": (
        ["--manifest={c}/manifest.csv", "--batch_size=many"],
        "--batch_size: invalid int value: 'many'",
    ),
    "stray-argument": (["{c}/manifest.csv"], "unexpected argument '{c}/manifest.csv'"),
    "values-that-would-crash-later": (
        [
            "--manifest={c}/manifest.csv",
            "--run_date=2026-1-5",
            "--keep_columns=DT,category,Category",
            "--inference_threads=-3",
        ],
        "--run_date must be YYYY-MM-DD, got '2026-1-5'; give a real date, zero-padded (e.g. 2026-01-05); "
        "--inference_threads must be at least 0, got -3; --keep_columns cannot keep 'DT'",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", MISTAKES)
def test_every_mistake_is_one_line_exit_2_and_nothing_written(name, catalog, tmp_path, litert_model):
    """(``litert_model``: a warm model cache. A mistake found only while the graph runs, as
    in a later file of a glob, comes after a cold cache's one line about converting.)"""
    args, said = MISTAKES[name]
    output = tmp_path / "out"
    fill = {"c": str(catalog), "out": str(output)}
    proc = python_m_pipeline(*(a.format(**fill) for a in args), f"--output={output}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    [line] = proc.stderr.splitlines()
    assert line.startswith("pipeline: ") and said.format(**fill) in line, line
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not output.exists()


@pytest.mark.slow
def test_output_pointing_at_a_file_is_one_line_and_the_file_is_untouched(catalog):
    before = (catalog / "tables.txt").read_bytes()
    proc = python_m_pipeline(f"--manifest={catalog}/manifest.csv", f"--output={catalog}/tables.txt")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"pipeline: --output {catalog}/tables.txt is a file; give a directory (it will hold scores/, errors/ and runs/)"
    ]
    assert (catalog / "tables.txt").read_bytes() == before


@pytest.mark.slow
def test_run_local_sh_passes_its_arguments_and_their_mistakes_on(catalog, tmp_path):
    output = tmp_path / "out"
    proc = subprocess.run(
        [
            str(REPO / "run_local.sh"),
            f"--manifest={catalog}/manifest.csv",
            f"--output={output}",
            "--keep_column=category",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "AISTHETICS_VENV": sys.prefix},
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["pipeline: unknown option --keep_column; did you mean --keep_columns?"]
    assert not output.exists()


@pytest.mark.slow
def test_help_is_ours_and_exits_0():
    proc = python_m_pipeline("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout == help_text()


@pytest.mark.slow
def test_a_run_with_beams_own_options_succeeds_quietly(catalog, tmp_path, litert_model):
    """``litert_model``: the model cache is warm, as it is after a first run."""
    output = tmp_path / "out"
    proc = python_m_pipeline(
        f"--manifest={catalog}/manifest.csv",
        f"--output={output}",
        "--run_date=2026-11-28",
        "--direct_running_mode=in_memory",
        "--keep_columns=category",
    )
    assert proc.returncode == 0, proc.stderr
    assert '"scored": 2' in proc.stdout
    for noise in ("XNNPACK", "TensorSpec", "cuInit", "Traceback", "WARNING"):
        assert noise not in proc.stderr
    assert (output / "runs" / "dt=2026-11-28" / "summary.json").is_file()


class _StallingHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.asked.set()
        self.server.release.wait(60)  # answers only when the test ends

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_ctrl_c_mid_run_is_one_line_exit_130_and_publishes_nothing(catalog, tmp_path, litert_model):
    """The run is stopped while it waits on an image server that does not answer: one
    line, at once, and no night appears under --output."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    server.daemon_threads = True
    server.asked, server.release = threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        f"image_id,uri\nlocal,{catalog}/photo-0.jpg\nslow,http://127.0.0.1:{server.server_port}/x.jpg\n"
    )
    output = tmp_path / "out"
    # Loopback servers are refused unless allowed, once that option exists (the fetch guards).
    loopback = ["--allow_private_hosts"] if "--allow_private_hosts" in help_text() else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"--manifest={manifest}",
            f"--output={output}",
            "--fetch_deadline=60",
            "--fetch_timeout=60",
            *loopback,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        # Ctrl-C as from a terminal: run as a shell's background job (`pytest &`), the test would
        # hand the command SIGINT ignored, which the command then rightly keeps ignoring.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert server.asked.wait(120), "the pipeline never fetched from the server"
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        stdout, stderr = proc.communicate(timeout=30)
        stopped_after = time.monotonic() - started
    finally:
        proc.kill()
        server.release.set()
        server.shutdown()
    assert proc.returncode == 130
    lines = stderr.splitlines()  # the progress lines of the run so far, then one line for Ctrl-C
    assert lines[-1] == "pipeline: interrupted; nothing half-written (a night is published whole or not at all)"
    assert all(line.startswith("aisthetics: ") for line in lines[:-1]) and "Traceback" not in stderr
    assert stdout == "" and stopped_after < 10
    assert not any((output / table).exists() for table in ("scores", "errors", "runs"))


def test_ctrl_c_after_a_dataflow_job_was_submitted_says_it_keeps_running_and_how_to_stop_it():
    code = (
        "import sys, pipeline\n"
        "launched = sys.modules['pipeline.run']  # the module: pipeline.run is its run() function\n"
        "launched.SUBMITTED.append(launched.RemoteJob('2026-12-04_01_02_03-4711', 'acme-catalog', 'europe-west6'))\n"
        "pipeline.interrupted()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stderr.strip().splitlines() == [
        "pipeline: interrupted; the Dataflow job 2026-12-04_01_02_03-4711 keeps running in acme-catalog "
        "(europe-west6); stop it with `gcloud dataflow jobs cancel 2026-12-04_01_02_03-4711 "
        "--project=acme-catalog --region=europe-west6`"
    ]


def test_verbose_travels_with_the_models_spec_to_the_workers(tmp_path):
    given = (f"--manifest={tmp_path}/m.csv", f"--output={tmp_path}/out")
    assert AistheticsOptions([*given, "--verbose"]).view_as(AistheticsOptions).model_spec().verbose is True
    assert AistheticsOptions(list(given)).view_as(AistheticsOptions).model_spec().verbose is False


def test_without_flags_the_options_give_the_libraries_own_limits():
    """The command line's defaults are the limit dataclasses' own (one owner), so a pipeline run
    and a library caller without options fetch and decode alike."""

    opts = AistheticsOptions([]).view_as(AistheticsOptions)
    assert opts.fetch_limits() == FetchLimits()
    assert opts.decode_limits() == DecodeLimits()


def test_file_uris_given_as_paths_become_the_paths_beam_reads(tmp_path):
    options = pipeline_options([f"--images=file://{tmp_path}/*.jpg", f"--output=file://localhost{tmp_path}/out"])
    ours = options.view_as(AistheticsOptions)
    assert (ours.images, ours.output) == (f"{tmp_path}/*.jpg", f"{tmp_path}/out")
    with pytest.raises(OptionsError) as refused:
        pipeline_options([f"--images={tmp_path}/*.jpg", "--output=file://nas/out"])
    assert refused.value.problems == [
        "--output: file uri names host 'nas'; only local files can be read: file://nas/out; "
        "give a path on this machine or gs://"
    ]
