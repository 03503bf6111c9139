"""One scoring path? The pipeline's score step (the ScoreImages DoFn) against Beam's
``RunInference(NimaModelHandler())`` on the same images, side by side.

    python benchmarks/bench_handler.py [--images 600] [--rounds 3] [--idle-wait 20] [--commit REV] [--out FILE]

Each row is a fresh process running one Beam pipeline on the local runner (FnApiRunner, in memory),
timed inside it from ``run()`` to its end (the start-up of Python, Beam and the model is the same for
both ways and is left out); both score in batches of 32 with LiteRT on every core.

- after decode: as in ``python -m pipeline``: ``ContentTask``s through the pipeline's own
  ``DecodeImages`` (2 decode threads, the local default) fused with the score step: either
  ``ScoreImages`` or ``RunInference(KeyedModelHandler(NimaModelHandler()))`` over (sha, pixels).
- step only: the 224x224 pixels decoded beforehand (read back by index), through either way alone.

Goal (issue 25): the handler within 5% of the DoFn's wall time, after decode; if it is, the pipeline
scores through it. The step-only pair says whether a difference is the handler's own cost or how the
step sits after decode. Every run must score every image. Report: handler.md (``--out``; ``--reference``: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from harness import CACHE
from harness.code import checkout, code_line, source_of
from harness.corpus import build_catalog
from harness.machine import disturbed, wait_for_idle
from harness.process import child_env, describe, emit, run_timed
from harness.report import (
    add_output_options,
    finish,
    goal_line,
    goals_section,
    machine_line,
    noise_cell,
    noise_note,
    ratio_text,
)
from harness.rounds import paired, run_rounds
from harness.workers import warm_model_cache

WORK = CACHE / "handler"
GOAL = 1.05  # handler wall / DoFn wall
BATCH = 32
DECODE_THREADS = 2
ROWS = {
    "dofn_decode": "after decode: ScoreImages (the pipeline's DoFn)",
    "handler_decode": "after decode: RunInference(NimaModelHandler())",
    "dofn_step": "step only: ScoreImages",
    "handler_step": "step only: RunInference(NimaModelHandler())",
}


def child(way: str, paths_file: str) -> None:
    """One row's pipeline, in this process; emits the run's wall time and what it scored."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from aisthetics_transforms import NimaModelHandler
    from aisthetics_transforms.decode import DecodeImages
    from aisthetics_transforms.preprocess import decode_image
    from aisthetics_transforms.records import ContentTask, DecodedImage
    from aisthetics_transforms.score import ModelSpec, ScoreImages

    paths = [line for line in Path(paths_file).read_text().splitlines() if line]
    tasks = [ContentTask(hashlib.sha256(Path(p).read_bytes()).hexdigest(), ((p, None),)) for p in paths]
    scored = beam.metrics.Metrics.counter("bench", "scored")

    def count(_):
        scored.inc()

    p = beam.Pipeline(runner=FnApiRunner())
    if way.endswith("_decode"):
        images = (
            p
            | beam.Create(tasks)
            | beam.Reshuffle()
            | beam.ParDo(DecodeImages(threads=DECODE_THREADS)).with_outputs("failed", main="images")
        ).images
    else:
        # Pixels decoded before the clock starts, read back by index (Create would pickle and
        # bz2 every array into the job's graph, a cost of Create's, not of either step).
        pixels_file = Path(paths_file).with_suffix(".npy")
        np.save(pixels_file, np.stack([decode_image(Path(t.sources[0][0]).read_bytes()) for t in tasks]))
        shas = [t.content_sha256 for t in tasks]

        class ReadPixels(beam.DoFn):
            def setup(self):
                self.pixels = np.load(pixels_file, mmap_mode="r")

            def process(self, i):
                yield DecodedImage(shas[i], paths[i], np.array(self.pixels[i]))

        images = p | beam.Create(range(len(tasks))) | beam.ParDo(ReadPixels())
    if way.startswith("dofn"):
        results = (images | ScoreImages(ModelSpec(batch_size=BATCH))).results
    else:
        handler = KeyedModelHandler(NimaModelHandler(min_batch_size=1, max_batch_size=BATCH))
        results = images | beam.Map(lambda d: (d.content_sha256, d.pixels)) | RunInference(handler)
    _ = results | beam.Map(count)
    started = time.perf_counter()
    result = p.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    counters = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("bench").with_name("scored"))[
        "counters"
    ]
    emit({"run_s": seconds, "scored": sum(c.committed for c in counters)})


def run_row(key: str, paths_file: Path, source: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", key, "--paths", str(paths_file)]
    waited = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
    print(f"  {ROWS[key]} ...", end="", file=sys.stderr, flush=True)
    run = run_timed(cmd, env=child_env(source), cwd=source, log_dir=WORK / "logs", name=key, timelines=False)
    print(f" {describe(run)}", file=sys.stderr, flush=True)
    result = run["result"] or {}
    return {
        "key": key,
        "run_s": result.get("run_s"),
        "scored": result.get("scored"),
        "process_wall_s": run["process_wall_s"],
        "cpu_s": run["process_cpu_s"],
        "peak_rss_mb": run["tree_peak_rss_mb"],
        "other_cpu_cores": run["other_cpu_cores"],
        "steal_cores": run["steal_cores"],
        "idle_wait_s": waited,
    }


RATIOS = {
    "after_decode": ("handler / DoFn wall, after decode (as in the pipeline)", ("handler_decode", "dofn_decode")),
    "step_only": ("handler / DoFn wall, the step alone", ("handler_step", "dofn_step")),
}


def report(data: dict) -> str:
    n = data["args"]["images"]
    lines = [
        "# The score step: the pipeline's DoFn against RunInference(NimaModelHandler())",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `{data['command']}` ({data['total_wall_s'] / 60:.1f} min in all). {code_line(data['code'])}",
        "",
        f"{n} distinct 800x600 JPEGs of the cached catalog; each row a fresh process running one pipeline on "
        f"FnApiRunner (in memory), timed from `run()` to its end; batches of {BATCH}, LiteRT on every core; "
        f"after decode: the pipeline's `DecodeImages` with {DECODE_THREADS} threads fused ahead of the step.",
        "",
        "| row | images/s | run (s) | runs per round (s) | CPU (s) | peak RSS (MB) | scored | other CPU |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROWS.items():
        r = data["rows"][key]
        lines.append(
            f"| {label} | {n / r['run_s']:.1f} | {r['run_s']:.2f} | "
            f"{', '.join('%.2f' % x['run_s'] for x in data['runs'][key])} | {r['cpu_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {r['scored']} | {noise_cell(r)} |"
        )
    lines += goals_section(data)
    return "\n".join(lines)


def goals(data: dict) -> list[str]:
    lines = []
    for name, (text, _) in RATIOS.items():
        mid, measured = ratio_text(data["ratios"][name])
        line = f"{text}: {measured}"
        lines.append(
            goal_line(mid <= GOAL, f"{line}, goal <= {GOAL:.2f}x") if name == "after_decode" else f"INFO  {line}"
        )
    n = data["args"]["images"]
    short = [f"{r['key']}: {r['scored']}" for runs in data["runs"].values() for r in runs if r["scored"] != n]
    lines.append(
        goal_line(not short, f"every run scored all {n} images" + (f" (not: {', '.join(short)})" if short else ""))
    )
    lines += noise_note(sorted({ROWS[r["key"]] for runs in data["runs"].values() for r in runs if disturbed(r)}))
    return lines


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=600, help="distinct 800x600 images (default 600)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each row once per round (default 3)")
    parser.add_argument("--idle-wait", type=float, default=20.0, help="wait up to this long for quiet cores")
    parser.add_argument("--commit", help="measure this commit (extracted with git archive) instead of the working tree")
    add_output_options(parser, "handler.md")
    parser.add_argument("--child", choices=sorted(ROWS), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.paths)
    started = time.perf_counter()
    code = checkout(args.commit)
    source = source_of(code)
    WORK.mkdir(parents=True, exist_ok=True)
    warm_model_cache(WORK / "logs", source)
    paths_file = WORK / f"paths-{args.images}.txt"
    paths_file.write_text("\n".join(f["uri"] for f in build_catalog(args.images, (800, 600))["files"]) + "\n")
    runs = run_rounds(
        {key: (lambda key=key: run_row(key, paths_file, source, args)) for key in ROWS},
        args.rounds,
        reverse_every_other=True,
    )
    pairs = {name: pair for name, (_, pair) in RATIOS.items()}
    finish(__file__, argv, args, code, started, goals, report, runs=runs, **paired(runs, "run_s", pairs))


if __name__ == "__main__":
    main()
