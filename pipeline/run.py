"""One night: parse the options, pick the local defaults, check what can be checked before
anything is written (options, manifest, weights), find the earlier night, build the graph
and run it, with a progress line when the stages run in this process."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import NamedTuple

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    SetupOptions,
    StandardOptions,
)

from aisthetics_transforms import layout, progress
from aisthetics_transforms.incremental import find_previous_night
from aisthetics_transforms.manifest import (
    ManifestError,
)
from aisthetics_transforms.model import WeightsError, check_model, convert_model, show_logs
from aisthetics_transforms.night_claim import DateClaimed, NightClaim
from aisthetics_transforms.progress import TALLY, Reporter
from aisthetics_transforms.publish import LockTimes
from aisthetics_transforms.write import RunInfo
from pipeline.build import build_pipeline
from pipeline.options import AistheticsOptions, OptionsError, pipeline_options

LOCAL_RUNNERS = (None, "DirectRunner", "FnApiRunner")
# Mistakes in what the user gave (options, manifest, weights), and a date another run is
# running: one line, exit 2, before anything is written.
USAGE_ERRORS = (OptionsError, ManifestError, WeightsError, DateClaimed)


def _local_defaults(options: beam.options.pipeline_options.PipelineOptions, argv: list[str]) -> None:
    """Local runs use Beam's FnApiRunner directly (the DirectRunner would first try to
    download Prism), in one process whose LiteRT interpreter uses every core: one copy of the
    model keeps every core busy, and no image bytes move between processes. ``--direct_running_mode`` and
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


class RemoteJob(NamedTuple):
    """A job submitted to a remote runner, as Ctrl-C on its launcher must name it."""

    job_id: str
    project: str
    region: str

    def left_running(self) -> str:
        return (
            f"the Dataflow job {self.job_id} keeps running in {self.project} ({self.region}); stop it with "
            f"`gcloud dataflow jobs cancel {self.job_id} --project={self.project} --region={self.region}`"
        )


SUBMITTED: list[RemoteJob] = []  # the job this launcher submitted, once it has


def submitted_job(result, options) -> RemoteJob | None:
    """The job ``p.run()`` submitted; None when it made none (a template written, not run)."""
    try:
        job_id = result.job_id()
    except (AttributeError, TypeError):
        return None
    if not job_id:
        return None
    cloud = options.view_as(GoogleCloudOptions)
    return RemoteJob(job_id, cloud.project or "?", cloud.region or "?")


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
    if opts.verbose:  # this process's own model load; workers get it with the model's spec
        show_logs()
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

    version = check_model(opts.engine, opts.weights)  # bad weights fail here, not inside the graph
    previous = find_previous_night(opts.output, opts.run_date) if opts.incremental else None
    info = RunInfo.new(
        opts.output,
        opts.run_date,
        version,
        opts.manifest or opts.images,
        previous.partition if previous else None,
        opts.keep_column_list,
        opts.staging_ttl_hours,
        LockTimes(ttl_s=opts.publish_lock_ttl_seconds),
    )
    if opts.incremental and previous is None:
        reason = f"no night published under {info.output} before {opts.run_date}"
        info = dataclasses.replace(info, incremental_reason=reason)
        progress.clear()
        print(f"aisthetics: --incremental: {reason}; every image is scored", file=sys.stderr)
    p = beam.Pipeline(runner=runner, options=options)
    staged = None
    if not local:  # converted (or found) here, staged with the job: no worker converts
        cloud = options.view_as(GoogleCloudOptions)
        staged = convert_model(opts.engine, opts.weights, stage_at=cloud.temp_location or cloud.staging_location)
    build_pipeline(p, opts, info, previous, staged_model=staged)
    if local:  # after the graph's own checks (the manifest): convert once here, workers only load it
        convert_model(opts.engine, opts.weights)
    # The stages count into this process's tally: a progress line can follow them only
    # when they run here (the in-memory runner, the local default).
    in_process = local and options.view_as(DirectOptions).direct_running_mode == "in_memory"
    waits = local or opts.wait_until_finish
    # One night per date: claimed now, renewed while this process runs or waits for the job;
    # a job left running holds it for --night_claim_hours, until its publish releases it.
    claim = NightClaim(
        info.output,
        info.run_date,
        info.run_id,
        ttl_s=opts.publish_lock_ttl_seconds,
        hold_s=None if waits else opts.night_claim_hours * 3600,
    )
    claim.take()
    TALLY.clear()
    reporter = Reporter(every=opts.progress_seconds if in_process else 0).start()
    try:
        if waits:
            claim.keep()
        result = p.run()
        job = None if local else submitted_job(result, options)
        if job is not None:
            SUBMITTED.append(job)
            print(f"aisthetics: submitted {job.job_id} ({job.project}, {job.region})", file=sys.stderr)
        if waits:
            result.wait_until_finish()
    finally:
        reporter.stop()
        if waits:
            claim.release()  # the publish released it if the night was published; else it ends here
    if not local:
        return RunOutcome(result, {}, info.output)
    summary = layout.read_summary(info.output, info.run_date)
    if summary is None:  # the run said it published: a missing summary is a bug, not bad input
        raise RuntimeError(f"no readable summary.json for {info.run_date} under {info.output} after the run")
    return RunOutcome(result, summary, info.output)
