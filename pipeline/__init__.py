"""``python -m pipeline``: manifest -> fetch -> decode -> score -> Parquet tables.

:func:`build_pipeline` only wires the stages of ``aisthetics_transforms``;
:func:`run` parses the options, picks local defaults, and runs it; :func:`main` turns
every mistake a user can make into one line on stderr and a documented exit status
(:data:`pipeline.options.EXIT_STATUS_HELP`).
"""
from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import sys
import time
from typing import NamedTuple

from aisthetics_transforms import progress  # cheap: no Beam yet

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def interrupted(signum=None, frame=None) -> None:
    """The SIGINT handler of ``python -m pipeline``: one line, exit status 130, at once.
    Not an exception: Beam would catch it inside a DoFn, log its traceback and wrap it.
    Leaving at any point is safe, as a night is published whole or not at all."""
    progress.clear()
    print("pipeline: interrupted; nothing half-written (a night is published whole or not at all)",
          file=sys.stderr, flush=True)
    os._exit(EXIT_INTERRUPTED)


def _stop_on_interrupt() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when the caller ignores SIGINT
        signal.signal(signal.SIGINT, interrupted)


_started_at = None  # when the run began to say what it does


def _say_started() -> None:
    """On a terminal, say at once what the run is doing (a status line the progress line or
    an error replaces); elsewhere a mistake stays exactly one line."""
    global _started_at
    if _started_at is None:
        _started_at = time.monotonic()
        progress.show("aisthetics: starting: checking the options, the manifest and the model")


if sys.argv[:1] == ["-m"]:  # ``python -m pipeline`` is importing this package: Beam's imports take a while
    _stop_on_interrupt()
    if not {"-h", "--help"} & set(sys.argv[1:]):
        _say_started()

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, SetupOptions, StandardOptions

from aisthetics_transforms import dedupe
from aisthetics_transforms.buckets import bucket_count
from aisthetics_transforms.decode import FAILED, DecodeImages
from aisthetics_transforms.dedupe import DedupeContent, PlanFetches, ResultsToUris, UniqueImageIds
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.fetch_stage import OUTCOMES, FetchImages
from aisthetics_transforms.incremental import ReadPreviousNight, find_previous_night
from aisthetics_transforms.join import JoinRows
from aisthetics_transforms.manifest import ManifestError, ManifestSpec, ReadImageGlob, ReadManifest
from aisthetics_transforms.model import WeightsError, check_model, convert_model
from aisthetics_transforms.preprocess import DecodeLimits
from aisthetics_transforms.progress import TALLY, Reporter, summary_line
from aisthetics_transforms.publish import LockTimes, PublishError
from aisthetics_transforms.records import ERRORS, STATS
from aisthetics_transforms.score import ModelSpec, ScoreImages
from aisthetics_transforms.layout import summary_path
from aisthetics_transforms.write import RunInfo, WriteTables
from pipeline.options import AistheticsOptions, OptionsError, pipeline_options

LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner")
# Mistakes in what the user gave (options, manifest, weights): one line, exit 2.
USAGE_ERRORS = (OptionsError, ManifestError, WeightsError)


def build_pipeline(p: beam.Pipeline, opts: AistheticsOptions, run: RunInfo, previous=None):
    """Wire the stages; ``previous`` is the earlier night an incremental run reuses.
    Returns the PCollection holding the run summary."""
    keep = opts.keep_column_list
    if opts.manifest:
        spec = ManifestSpec(opts.manifest, opts.manifest_format, opts.uri_column, opts.id_column, keep)
        manifest = p | "ReadManifest" >> (read := ReadManifest(spec))
    else:
        manifest = p | "ListImages" >> (read := ReadImageGlob(opts.images, keep))
    rows = manifest["refs"] | "UniqueImageIds" >> UniqueImageIds(read.files, keep)
    previous_rows = previous.rows if previous else 0
    uri_buckets = rows["row_count"] | "UriBuckets" >> beam.Map(lambda n: bucket_count(max(n, previous_rows)))
    earlier = {}
    if previous:
        earlier = p | "ReadPreviousNight" >> ReadPreviousNight(
            previous, run.model_version, uri_buckets, bucket_count(previous_rows))
    fetch_limits = FetchLimits(
        max_bytes=opts.max_image_bytes, read_timeout=opts.http_timeout, deadline=opts.http_deadline,
        allow_private_hosts=opts.allow_private_hosts, max_connections_per_host=opts.max_connections_per_host,
        max_bytes_in_flight=opts.max_bytes_in_flight,
    )
    fetched = (
        rows[dedupe.URIS]
        | "PlanFetches" >> PlanFetches(uri_buckets, earlier.get("uri"))
        | "FetchImages" >> beam.ParDo(FetchImages(fetch_limits, opts.fetch_threads)).with_outputs(
            OUTCOMES, STATS, main="claims")
    )
    contents = fetched.claims | "DedupeContent" >> DedupeContent(earlier.get("content"), bucket_count(previous_rows))
    decode_limits = DecodeLimits(max_pixels=opts.max_pixels, max_dimension=opts.max_dimension)
    decoded = (
        contents["tasks"]
        | "SpreadContents" >> beam.Reshuffle()
        | "DecodeImages" >> beam.ParDo(DecodeImages(decode_limits, opts.decode_threads, fetch_limits)).with_outputs(
            FAILED, main="images")
    )
    model = ModelSpec(opts.engine, opts.weights, opts.batch_size, opts.inference_threads)
    scored = decoded.images | "ScoreImages" >> ScoreImages(model)
    results, stats = [scored.results, decoded[FAILED]], [fetched[STATS], scored[STATS]]
    if previous:
        results.append(contents[dedupe.REUSED])
        stats.append(earlier[STATS])
    results = results | "Results" >> beam.Flatten()
    outcomes = (
        [fetched[OUTCOMES], {"claims": fetched.claims, "results": results} | "ResultsToUris" >> ResultsToUris()]
        | "Outcomes" >> beam.Flatten()
    )
    joined = {"rows": rows[dedupe.ROWS], "outcomes": outcomes} | "JoinRows" >> JoinRows(keep)
    errors = [manifest[ERRORS], rows[ERRORS], joined[ERRORS]] | "Errors" >> beam.Flatten()
    stats = stats | "Stats" >> beam.Flatten()
    return {"scores": joined.scores, "errors": errors, "stats": stats} | "WriteTables" >> WriteTables(run)


def _local_defaults(options: beam.options.pipeline_options.PipelineOptions, argv: list[str]) -> None:
    """Local runs use Beam's FnApiRunner directly (the DirectRunner would first try to
    download Prism), in one process whose LiteRT interpreter uses every core: measured on
    2 cores, that scores 1.4-1.7x faster than one worker process per core with one thread
    each, and moves no image bytes between processes. ``--direct_running_mode`` and
    ``--direct_num_workers`` still choose otherwise, and the cores are then split between
    the worker processes' interpreters instead of oversubscribed."""
    opts = options.view_as(AistheticsOptions)
    direct = options.view_as(DirectOptions)
    given = {arg.split("=")[0] for arg in argv}
    cores = os.cpu_count() or 1
    if "--direct_running_mode" not in given:
        direct.direct_running_mode = "in_memory"
    multi = direct.direct_running_mode == "multi_processing"
    if multi and "--direct_num_workers" not in given:
        direct.direct_num_workers = cores
    processes = direct.direct_num_workers if multi else 1
    per_process = max(1, cores // max(1, processes))
    opts.inference_threads = opts.inference_threads or per_process
    opts.decode_threads = opts.decode_threads or per_process
    if opts.progress_seconds < 0:
        opts.progress_seconds = 5


class RunOutcome(NamedTuple):
    result: object  # the Beam PipelineResult (metrics: result.metrics())
    summary: dict  # runs/dt=DATE/summary.json; empty when the runner did not run it here
    output: str = ""  # --output


def run(argv: list[str] | None = None) -> RunOutcome:
    """Run one night. Raises :class:`OptionsError` (every problem with the options at once),
    :class:`ManifestError` or :class:`WeightsError` before anything is written."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = pipeline_options(argv)
    opts = options.view_as(AistheticsOptions)
    if opts.verbose:
        os.environ["AISTHETICS_VERBOSE"] = "1"  # read by the model loader, in worker processes too
    options.view_as(SetupOptions).save_main_session = False
    runner = options.view_as(StandardOptions).runner
    local = runner in LOCAL_RUNNERS
    if local:
        _local_defaults(options, argv)
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
    else:
        # Dataflow: one SDK process per vCPU
        opts.inference_threads = opts.inference_threads or 1
        opts.decode_threads = opts.decode_threads or 1
        opts.progress_seconds = max(opts.progress_seconds, 0)

    version = check_model(opts.engine, opts.weights)  # bad weights fail here, not inside the graph
    previous = find_previous_night(opts.output, opts.run_date) if opts.incremental else None
    info = RunInfo.new(opts.output, opts.run_date, version, opts.manifest or opts.images,
                       previous.partition if previous else None, opts.keep_column_list,
                       opts.staging_ttl_hours, LockTimes(ttl_s=opts.publish_lock_ttl_seconds))
    if opts.incremental and previous is None:
        reason = f"no night published under {info.output} before {opts.run_date}"
        info = dataclasses.replace(info, incremental_reason=reason)
        progress.clear()
        print(f"aisthetics: --incremental: {reason}; every image is scored", file=sys.stderr)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, opts, info, previous)
    if local:  # after the graph's own checks (the manifest): convert once here, workers only load it
        convert_model(opts.engine, opts.weights)
    # The stages count into this process's tally: a progress line can follow them only
    # when they run here (the in-memory runner, the local default).
    in_process = local and options.view_as(DirectOptions).direct_running_mode == "in_memory"
    TALLY.clear()
    reporter = Reporter(every=opts.progress_seconds if in_process else 0).start()
    try:
        result = p.run()
        result.wait_until_finish()
    finally:
        reporter.stop()
    if options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        return RunOutcome(result, {}, info.output)
    with beam.io.filesystems.FileSystems.open(summary_path(info.output, info.run_date)) as f:
        return RunOutcome(result, json.loads(f.read()), info.output)


def one_line(exc: BaseException) -> str:
    """An exception's message as one line. Beam re-raises a worker's exception with the
    step and a traceback appended: the first line is the message."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0].split(" [while running")[0]


def main(argv: list[str] | None = None) -> None:
    """Run one night from the command line. Every mistake a user can make ends in one line
    on stderr and exit status 2; Ctrl-C in one line and 130 (see EXIT_STATUS_HELP)."""
    _stop_on_interrupt()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Local workers forward their start-up warnings (no semi-persistent directory...) here.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # A DoFn's exception is logged with its traceback before Beam re-raises it here, where it
    # reaches the user once: one line for a ManifestError, the traceback for anything else.
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    # Beam's modules and the graph are hundreds of thousands of objects that live until exit:
    # frozen, the garbage collector stops walking them during the run (~0.1 s) and at
    # interpreter exit (~0.3 s), a sixth of a local run's fixed cost.
    gc.freeze()
    _say_started()
    try:
        outcome = run(argv)
    except USAGE_ERRORS as exc:
        progress.clear()
        print(f"pipeline: {one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except PublishError as exc:  # superseded by a newer run, or no lock in time: one line, not a traceback
        progress.clear()
        print(f"pipeline: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if outcome.summary:
        print(json.dumps(outcome.summary, indent=2, sort_keys=True))
        print(summary_line(outcome.summary, time.monotonic() - _started_at, outcome.output), file=sys.stderr)
    gc.freeze()
