"""The pipeline end to end against the seed's way and Beam's own RunInference, one corpus.

    python benchmarks/bench_pipeline.py [--images 2000] [--large-images 1000] [--rounds 3]
                                        [--seed-images 100] [--runinference-images 500] [--out FILE]

A corpus of catalog-like JPEGs (harness.corpus: crops of the photos scikit-learn ships),
``--images`` of 800x600 and ``--large-images`` of 1600x1200, is written once under
benchmarks/.cache/catalogs/. On it, per size, each
in a fresh process timed from the parent (process start included where said):

- seed way: one Keras ``model.predict`` per image (harness.workers, on ``--seed-images``);
- RunInference + Keras: Beam's ``TFModelHandlerNumpy`` loading the NIMA Keras model from a
  ``.keras`` file saved once in the cache; read -> decode_image -> to_model_input -> RunInference,
  counted with a Beam counter; FnApiRunner, multi_processing, one worker per core (process start
  included);
- end to end: ``python -m pipeline --manifest=M --output=O --progress_seconds=0`` with its local
  defaults (process start included), plus a 16-image run for the fixed cost;
- LiteRT model only (threads = cores, pre-decoded) and decode only (one core), from
  harness.workers. Ideal end to end = 1 / (1/model + 1/(cores x decode)).

The rows behind the goals (800x600 seed way; end to end and decode of each size; model only)
run ``--rounds`` times, one of each per round, and each keeps its median run: this machine's
speed drifts from minute to minute, so the goal ratios are also reported within each round.

A thread samples VmHWM of every process in each run's tree (harness.process.TreeSampler).
Then a parity check (20 Parquet rows against ``get_aisthetics_model().predict()``), a cProfile
of one in_memory run (top 30 by tottime -> results/pipeline-profile.txt) and, if py-spy is
installed, a py-spy record of one multi_processing run (summary appended to the same file).

Report: pipeline.md (``--out``; ``--reference``: benchmarks/results/), raw numbers: pipeline.json.
``--worker NAME`` is the script's own child (one BENCH_RESULT line on stdout).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness import CACHE, MODEL_CACHE, REPO
from harness.code import checkout
from harness.corpus import build_catalog, catalog_summary, first_files_manifest, paths_file
from harness.machine import NOISE_CORES, busy_elsewhere, disturbed, machine_info, wait_for_idle
from harness.pipeline_runs import pipeline_command, read_summary
from harness.process import child_env, emit, parse_result, quietest, run_timed
from harness.profiling import pyspy_record, run_profile, stage_of, top_functions
from harness.report import (
    add_output_options,
    command_line,
    goal_line,
    machine_line,
    noise_cell,
    noise_note,
    output_path,
    write_results,
)
from harness.rounds import median_run, run_rounds
from harness.workers import run_worker, warm_model_cache

WORK = CACHE / "pipeline"
RUN_DATE = "2026-11-28"
SIZES = {"800x600": (800, 600), "1600x1200": (1600, 1200)}
FIXED_COST_IMAGES = 16
MODEL_ONLY_IMAGES = 300  # float32 inputs are 0.6 MB each: keep the pre-decoded set small

GOAL_VS_SEED = 10.0
GOAL_VS_RUNINFERENCE = 2.0
GOAL_IDEAL_800 = 0.80
GOAL_IDEAL_1600 = 0.70
GOAL_WORKER_RSS_MB = 600.0


# --- workers (fresh processes) ----------------------------------------------------------------


def _uris(manifest: str) -> list[str]:
    with open(manifest, newline="") as f:
        return [row["uri"] for row in csv.DictReader(f)]


def worker_prepare_keras(args) -> None:
    """Save the NIMA Keras model (seed weights) as a .keras file once; check it reloads equal."""
    import numpy as np

    from aisthetics_transforms.model import build_keras_model, default_weights_path, load_hdf5_weights

    t0 = time.perf_counter()
    path = Path(args.keras_model)
    model = build_keras_model()
    load_hdf5_weights(model, default_weights_path())
    if not path.exists():
        tmp = path.with_name(path.stem + ".part.keras")
        model.save(tmp)
        os.replace(tmp, path)
    import tensorflow as tf

    loaded = tf.keras.models.load_model(str(path))
    x = np.random.default_rng(0).uniform(-1, 1, (4, 224, 224, 3)).astype(np.float32)
    diff = float(np.abs(np.asarray(loaded(x)) - np.asarray(model(x, training=False))).max())
    emit({"keras_model": str(path), "reload_max_abs_diff": diff, "seconds": time.perf_counter() - t0})


def _decode_for_model(uri):
    from aisthetics_transforms.preprocess import decode_image, to_model_input

    with open(uri, "rb") as f:
        return to_model_input(decode_image(f.read()))[0]


def worker_runinference(args) -> None:
    """Beam-native: RunInference(TFModelHandlerNumpy(.keras)) on the local runner, counted."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.metrics import Metrics
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerNumpy
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    scored = Metrics.counter("bench", "scored")
    weights = np.arange(1, 11, dtype=np.float64)

    def mean_score(result):
        scored.inc()
        p = np.asarray(result.inference, dtype=np.float64)
        return float((p * weights).sum())

    uris = _uris(args.manifest)
    handler = TFModelHandlerNumpy(args.keras_model, min_batch_size=1, max_batch_size=args.batch_size)
    cores = os.cpu_count() or 1
    options = PipelineOptions(flags=[], direct_running_mode="multi_processing", direct_num_workers=cores)
    p = beam.Pipeline(runner=FnApiRunner(), options=options)
    _ = (
        p
        | "Uris" >> beam.Create(uris)
        | "Spread" >> beam.Reshuffle()
        | "Decode" >> beam.Map(_decode_for_model)
        | "RunInference" >> RunInference(handler)
        | "MeanScore" >> beam.Map(mean_score)
    )
    result = p.run()
    result.wait_until_finish()
    count = sum(c.committed or 0 for c in result.metrics().query()["counters"] if c.key.metric.name == "scored")
    import importlib.util

    hub = importlib.util.find_spec("tensorflow_hub")
    emit(
        {
            "images": len(uris),
            "scored": count,
            "workers": cores,
            "batch_size": args.batch_size,
            "tensorflow_hub": "stub" if hub and str(WORK) in str(hub.origin) else "installed",
        }
    )


def worker_parity(args) -> None:
    """The Parquet scores of the end-to-end run against get_aisthetics_model().predict()."""
    import numpy as np
    import pyarrow.parquet as pq

    import aisthetics_transforms

    table = pq.read_table(str(Path(args.output) / "scores" / f"dt={RUN_DATE}")).to_pylist()
    table.sort(key=lambda r: r["image_id"])
    sample = random.Random(0).sample(table, min(args.parity_images, len(table)))
    nima = aisthetics_transforms.get_aisthetics_model()
    got = nima.predict([r["uri"] for r in sample], augmented=True)
    d_mean = max(abs(r["mean_score"] - g["mean_score_prediction"]) for r, g in zip(sample, got))
    d_sd = max(abs(r["sd_score"] - g["sd_score_prediction"]) for r, g in zip(sample, got))
    d_pred = max(
        float(np.abs(np.asarray(r["predictions"]) - np.asarray(g["predictions"])).max()) for r, g in zip(sample, got)
    )
    emit(
        {
            "rows_in_parquet": len(table),
            "compared": len(sample),
            "max_abs_diff_mean": d_mean,
            "max_abs_diff_sd": d_sd,
            "max_abs_diff_predictions": d_pred,
            "model_version": nima.model_version,
            "parquet_model_versions": sorted({r["model_version"] for r in table}),
        }
    )


WORKERS = {"prepare_keras": worker_prepare_keras, "runinference": worker_runinference, "parity": worker_parity}


# --- parent: running things ----------------------------------------------------------------------


def hub_stub_path() -> list[str]:
    """Beam's tensorflow_inference imports tensorflow_hub at module level (it only uses
    ``hub.resolve`` on the model path). When it is not installed, a stub whose ``resolve`` returns
    a local path unchanged goes on the RunInference row's PYTHONPATH."""
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('tensorflow_hub') else 1)",
        ]
    )
    if probe.returncode == 0:
        return []
    stub = WORK / "stubs" / "tensorflow_hub"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text(
        '"""Stub for the benchmark: Beam imports tensorflow_hub only for hub.resolve()."""\n'
        "import os\n\n\ndef resolve(handle):\n"
        "    if os.path.exists(handle):\n        return handle\n"
        "    raise ValueError(f'tensorflow_hub stub: only local model paths, got {handle!r}')\n"
    )
    return [str(stub.parent)]


def run_tree(label: str, cmd: list[str], args, env: dict, log_name: str) -> dict:
    """One process (and its children) timed from the parent, VmHWM of the tree sampled; a run
    disturbed by other processes is re-run once and the quieter run kept."""

    def once() -> dict:
        run = run_timed(
            cmd,
            env=env,
            cwd=REPO,
            log_dir=WORK / "logs",
            name=log_name,
            sample_interval=args.sample_interval,
            timelines=False,
            label=label,
        )
        run["label"] = label
        run["worker_result"] = run.pop("result")
        return run

    return quietest(once, label=label, idle_wait=args.idle_wait)


def subset_manifest(catalog: dict, n: int) -> str:
    return first_files_manifest(catalog, n, WORK / f"manifest-{catalog['size']}-first-{n}.csv")["path"]


def e2e_row(label, manifest, n, args, key) -> dict:
    out = WORK / f"out-{key}"
    shutil.rmtree(out, ignore_errors=True)
    r = run_tree(label, pipeline_command(manifest, out, RUN_DATE), args, child_env(), key)
    r["images"] = n
    r["seconds"] = r["process_wall_s"]
    r["output"] = str(out)
    r["summary"] = read_summary(out, RUN_DATE)
    if r["summary"].get("scored") != n or r["summary"].get("errors"):
        r["problem"] = (
            f"summary says scored {r['summary'].get('scored')}, errors {r['summary'].get('errors')} (expected {n}, 0)"
        )
        print(f"    WARNING {label}: {r['problem']}", file=sys.stderr)
    return r


def runinference_row(label, manifest, n, args, key, keras_model, stub) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        "runinference",
        "--manifest",
        manifest,
        "--keras-model",
        keras_model,
        "--batch-size",
        str(args.batch_size),
    ]
    r = run_tree(label, cmd, args, child_env(extra_path=stub), key)
    r["images"] = n
    r["seconds"] = r["process_wall_s"]
    got = r.get("worker_result", {}).get("scored")
    if got != n:
        r["problem"] = f"RunInference counted {got} of {n} images"
        print(f"    WARNING {label}: {r['problem']}", file=sys.stderr)
    return r


def worker_row(name, catalog, n, args, passes=1, threads=None) -> dict:
    """A harness.workers row (seed, litert_model, decode) on the first ``n`` files of a catalog."""
    paths = paths_file(catalog, n, WORK / f"paths-{catalog['size']}-{n}.txt")
    return run_worker(
        name,
        log_dir=WORK / "logs",
        paths=paths,
        passes=passes,
        threads=threads,
        gemm_seconds=1.0,
        idle_wait=args.idle_wait,
    )


# --- profiles ------------------------------------------------------------------------------------


def cprofile_run(manifest: str, n: int, args) -> dict:
    out = WORK / "out-profile"
    shutil.rmtree(out, ignore_errors=True)
    prof = WORK / "pipeline_in_memory.prof"
    argv = pipeline_command(manifest, out, RUN_DATE, "--direct_running_mode=in_memory")[3:]
    if args.idle_wait > 0:
        wait_for_idle(args.idle_wait)
    print(f"  cProfile, in_memory, {n} images ...", end="", file=sys.stderr, flush=True)
    result = run_profile(prof, argv, REPO)
    wall = result["process_wall_s"]
    print(f" {wall:.1f} s", file=sys.stderr, flush=True)
    stages = defaultdict(float)
    for step, ms in result["transform_msecs"].items():
        stages[stage_of(step)] += ms / 1000
    return {
        "command": "python -m pipeline " + " ".join(argv),
        "images": n,
        "process_wall_s": wall,
        "pipeline_wall_s": result["wall_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "stages_s": dict(sorted(stages.items(), key=lambda kv: -kv[1])),
        "top_tottime": top_functions(str(prof), "tottime_s", 30),
        "top_cumtime": top_functions(str(prof), "cumtime_s", 15),
        "prof_file": str(prof),
    }


def pyspy_run(manifest: str, n: int, args) -> dict:
    out = WORK / "out-pyspy"
    shutil.rmtree(out, ignore_errors=True)
    if args.idle_wait > 0:
        wait_for_idle(args.idle_wait)
    print(f"  py-spy record --subprocesses, multi_processing, {n} images ...", end="", file=sys.stderr, flush=True)
    result = pyspy_record(
        pipeline_command(manifest, out, RUN_DATE), WORK / "pipeline_multi_processing.speedscope.json", REPO
    )
    print(
        f" {result.get('wall_s', 0.0):.1f} s ({'recorded' if result['available'] else result['reason'][:60]})",
        file=sys.stderr,
        flush=True,
    )
    return {**result, "images": n}


def profile_path(out: Path) -> Path:
    """The profile's text file beside the report: results/pipeline.md -> results/pipeline-profile.txt."""
    return out.with_name(out.stem + "-profile.txt")


def write_profile_text(data: dict) -> str:
    cp = data["profile"]["cprofile"]
    lines = [
        "# Profile of one local end-to-end run (benchmarks/bench_pipeline.py)",
        "",
        f"{data['machine']['date']}; {data['machine']['cpu_model']}, {data['machine']['cores']} cores.",
        f"cProfile: {cp['command']}",
        f"  {cp['images']} images of 800x600; whole pipeline in one process; {cp['pipeline_wall_s']:.1f} s under the "
        f"profiler (process {cp['process_wall_s']:.1f} s), peak RSS {cp['peak_rss_mb']:.0f} MB.",
        "",
        "Beam per-transform execution time (under cProfile), by stage:",
    ]
    for stage, s in list(cp["stages_s"].items())[:12]:
        lines.append(f"  {s:8.2f} s  {stage}")
    lines += ["", "Top 30 functions by tottime:", f"  {'tottime s':>10} {'cumtime s':>10} {'calls':>10}  function"]
    for r in cp["top_tottime"]:
        lines.append(f"  {r['tottime_s']:10.2f} {r['cumtime_s']:10.2f} {r['calls']:10d}  {r['function']}")
    lines += ["", "Top 15 by cumtime:"]
    for r in cp["top_cumtime"]:
        lines.append(f"  {r['tottime_s']:10.2f} {r['cumtime_s']:10.2f} {r['calls']:10d}  {r['function']}")
    spy = data["profile"].get("pyspy", {})
    lines += ["", "py-spy (multi_processing run, all processes):"]
    if not spy.get("available"):
        lines.append(f"  not available: {spy.get('reason')}")
    else:
        lines.append(f"  {spy['command']}")
        lines.append(
            f"  {spy['images']} images, {spy['wall_s']:.1f} s under py-spy at 50 Hz; speedscope file {spy['file']}"
        )
        for p in spy["processes"]:
            lines += [
                "",
                f"  {p['process']}: {p['seconds']:.1f} s of non-idle samples over {p['threads']} threads",
                "    self (leaf):",
            ]
            for fn, sec in p["top_self"][:12]:
                lines.append(f"      {sec:6.2f} s {100 * sec / p['seconds']:5.1f}%  {fn}")
            lines.append("    on the stack (inclusive):")
            for fn, sec in p["top_inclusive"][:18]:
                lines.append(f"      {sec:6.2f} s {100 * sec / p['seconds']:5.1f}%  {fn}")
    return "\n".join(lines) + "\n"


# --- report --------------------------------------------------------------------------------------


def rate(r: dict) -> float:
    return r["images"] / r["seconds"]


def ideal_rate(model: float, decode: float, cores: int) -> float:
    return 1.0 / (1.0 / model + 1.0 / (cores * decode))


def derived(data: dict) -> dict:
    rows, cores = data["rows"], data["machine"]["cores"]
    model = rate(rows["litert_model"])
    out = {"model_only": model}
    for size in data["sizes"]:
        dec = rate(rows[f"decode_{size}"])
        out[size] = {
            "decode": dec,
            "ideal": ideal_rate(model, dec, cores),
            "seed": rate(rows[f"seed_{size}"]),
            "runinference": rate(rows[f"runinference_{size}"]),
            "e2e": rate(rows[f"e2e_{size}"]),
        }
    out["rounds"] = []
    for i in range(len(rows["litert_model"].get("round_rates", []))):
        at = {key: r["round_rates"][i] for key, r in rows.items() if "round_rates" in r}
        paired = {"e2e_vs_seed": at["e2e_800x600"] / at["seed_800x600"]}
        for size in data["sizes"]:
            ideal = ideal_rate(at["litert_model"], at[f"decode_{size}"], cores)
            paired[f"e2e_vs_ideal_{size}"] = at[f"e2e_{size}"] / ideal
        out["rounds"].append(paired)
    fixed = rows.get("e2e_fixed")
    big = rows.get("e2e_800x600")
    if fixed and big and big["images"] > fixed["images"]:
        out["fixed_cost_s"] = fixed["seconds"]
        out["marginal_800x600"] = (big["images"] - fixed["images"]) / max(1e-9, big["seconds"] - fixed["seconds"])
    return out


def goals(data: dict) -> list[str]:
    d, rows = data["derived"], data["rows"]
    s, large = d["800x600"], d.get("1600x1200")

    # In the default single-process mode the launcher is the worker: it scores the images.
    worker_rss = [
        (k, r.get("worker_peak_rss_mb") or r["launcher_peak_rss_mb"]) for k, r in rows.items() if k.startswith("e2e_")
    ]
    peak = max(worker_rss, key=lambda kv: kv[1]) if worker_rss else ("-", float("nan"))

    def in_rounds(key, fmt):
        values = [fmt(r[key]) for r in d.get("rounds", [])]
        return f" (medians of {len(values)} rounds; within each round: {', '.join(values)})" if len(values) > 1 else ""

    out = [
        goal_line(
            s["e2e"] / s["seed"] >= GOAL_VS_SEED,
            f"end to end 800x600 >= {GOAL_VS_SEED:.0f}x seed way: "
            f"{s['e2e']:.1f} / {s['seed']:.1f} = {s['e2e'] / s['seed']:.1f}x"
            + in_rounds("e2e_vs_seed", lambda v: f"{v:.1f}x"),
        ),
        goal_line(
            s["e2e"] / s["runinference"] >= GOAL_VS_RUNINFERENCE,
            f"end to end 800x600 >= {GOAL_VS_RUNINFERENCE:.0f}x "
            f"RunInference+Keras: {s['e2e']:.1f} / {s['runinference']:.1f} = {s['e2e'] / s['runinference']:.1f}x",
        ),
        goal_line(
            s["e2e"] / s["ideal"] >= GOAL_IDEAL_800,
            f"end to end 800x600 >= {GOAL_IDEAL_800:.0%} of ideal: "
            f"{s['e2e']:.1f} / {s['ideal']:.1f} = {s['e2e'] / s['ideal']:.0%}"
            + in_rounds("e2e_vs_ideal_800x600", lambda v: f"{v:.0%}"),
        ),
    ]
    if large:
        out.append(
            goal_line(
                large["e2e"] / large["ideal"] >= GOAL_IDEAL_1600,
                f"end to end 1600x1200 >= {GOAL_IDEAL_1600:.0%} of "
                f"ideal: {large['e2e']:.1f} / {large['ideal']:.1f} = {large['e2e'] / large['ideal']:.0%}"
                + in_rounds("e2e_vs_ideal_1600x1200", lambda v: f"{v:.0%}"),
            )
        )
    out.append(
        goal_line(
            peak[1] < GOAL_WORKER_RSS_MB,
            f"end to end peak RSS per worker < {GOAL_WORKER_RSS_MB:.0f} MB: {peak[1]:.0f} MB (largest, in {peak[0]})",
        )
    )
    par = data.get("parity")
    if par:
        worst = max(par["max_abs_diff_mean"], par["max_abs_diff_sd"], par["max_abs_diff_predictions"])
        out.append(
            goal_line(
                worst <= 1e-6,
                f"parity: {par['compared']} Parquet rows vs get_aisthetics_model().predict(): "
                f"max |diff| mean {par['max_abs_diff_mean']:.1e}, sd {par['max_abs_diff_sd']:.1e}, "
                f"predictions {par['max_abs_diff_predictions']:.1e} (<= 1e-6)",
            )
        )
    out += noise_note([k for k, r in rows.items() if disturbed(r)])
    problems = [f"{k}: {r['problem']}" for k, r in rows.items() if r.get("problem")]
    out += [f"NOTE  {p}" for p in problems]
    return out


def report(data: dict) -> str:
    m, rows, d, cores = data["machine"], data["rows"], data["derived"], data["machine"]["cores"]
    lines = [
        "# Pipeline benchmark",
        "",
        machine_line(m),
        "",
        "Corpus (`write_sample_catalog`, crops of scikit-learn's two photos, every file distinct): "
        + "; ".join(
            f"{c['distinct_files']} JPEGs of {c['size']} (~{c['mean_jpeg_kb']:.0f} KB each)"
            for c in data["catalogs"].values()
        )
        + f". Command: `{data['command']}`.",
        "",
        "| way | size | images | images/s | × seed way | % of ideal | peak RSS per worker (MB) | launcher / process (MB) | other CPU | what is timed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def add(key, label, size, what, ideal=True, seed=True):
        if key not in rows:
            return
        r = rows[key]
        rt = rate(r)
        dd = d.get(size, {}) if size else {}
        xs = f"{rt / dd['seed']:.1f}×" if seed and dd else ""
        pi = f"{100 * rt / dd['ideal']:.0f}%" if ideal and dd else ""
        wk = r.get("worker_peak_rss_mb")
        wkc = f"{wk:.0f} ({r['worker_count']} workers)" if wk else "—"
        launcher = r.get("launcher_peak_rss_mb") or r.get("peak_rss_mb")
        lines.append(
            f"| {label} | {size or 'any'} | {r['images']} | {rt:.1f} | {xs} | {pi} | {wkc} | {launcher:.0f} | "
            f"{noise_cell(r)} | {what} |"
        )

    for size in data["sizes"]:
        add(
            f"seed_{size}",
            "seed way: Keras `model.predict` per image",
            size,
            "harness.workers: read + decode + `predict` batch of 1, after 8 warm-up images (no process start)",
        )
        add(
            f"runinference_{size}",
            "Beam RunInference + `TFModelHandlerNumpy` (.keras)",
            size,
            f"process start to end; FnApiRunner multi_processing, {cores} workers, batches <= {data['args']['batch_size']}",
        )
        add(
            f"e2e_{size}",
            "**this pipeline, end to end** (manifest -> Parquet)",
            size,
            "`python -m pipeline --progress_seconds=0`, process start to end",
        )
        add(
            f"decode_{size}",
            "decode only, 1 core",
            size,
            "read + decode_image (harness.workers)",
            ideal=False,
            seed=False,
        )
        if size in d:
            lines.append(
                f"| ideal = 1 / (1/model + 1/({cores} × decode)) | {size} | | {d[size]['ideal']:.1f} | "
                f"{d[size]['ideal'] / d[size]['seed']:.1f}× | 100% | | | | computed |"
            )
    add(
        "litert_model",
        f"LiteRT model only, {cores} threads",
        None,
        "loaded engine on pre-decoded float32 (harness.workers)",
        ideal=False,
        seed=False,
    )
    add("e2e_fixed", "end to end, fixed cost", "800x600", "the same command on 16 images", ideal=False, seed=False)
    lines += [
        "",
        "- images/s: images / wall seconds. Rows marked *process start* include interpreter start-up, Beam's "
        "pipeline construction, worker start and model load; the seed, model-only and decode rows time only the loop "
        "(so they flatter the seed way).",
        "- peak RSS per worker: the largest VmHWM of any SDK worker process (`sdk_worker_main`) in the run's "
        "process tree, sampled from /proc every "
        f"{data['args']['sample_interval']} s (harness.process.TreeSampler); launcher / process: the launching "
        "process (or the single benchmark process, its own VmHWM).",
        f"- other CPU: cores other processes used during the row; above {NOISE_CORES:.2f} (⚠) the row was disturbed.",
    ]
    in_rounds = [
        f"{k} {', '.join('%.1f' % v for v in r['round_rates'])}"
        for k, r in rows.items()
        if len(r.get("round_rates", [])) > 1
    ]
    if in_rounds:
        lines.append(
            f"- Rounds: the 800x600 seed row, the end-to-end and decode rows of each size and the model-only row "
            f"ran {len(d['rounds'])} times, "
            "one of each per round (this machine's speed drifts from minute to minute); each row shows its "
            f"median run. Images/s per round: {'; '.join(in_rounds)}."
        )
    if "marginal_800x600" in d:
        lines.append(
            f"- Fixed cost of an end-to-end run: {d['fixed_cost_s']:.1f} s (16 images). Beyond it, the 800x600 run "
            f"scores {d['marginal_800x600']:.1f} img/s ({100 * d['marginal_800x600'] / d['800x600']['ideal']:.0f}% of ideal)."
        )
    sub = [
        f"{k}: {rows[k]['images']} of {data['catalogs'][k.split('_')[-1]]['distinct_files']}"
        for k in rows
        if k.split("_")[0] in ("seed", "runinference")
        and k.split("_")[-1] in data["catalogs"]
        and rows[k]["images"] < data["catalogs"][k.split("_")[-1]]["distinct_files"]
    ]
    if sub:
        lines.append(f"- Subsets (to keep the run short): {'; '.join(sub)} images.")
    ri = next((r for k, r in rows.items() if k.startswith("runinference_")), None)
    if ri:
        lines.append(
            f"- RunInference: the handler loads `{data['keras_model']['keras_model']}` with "
            f"`tf.keras.models.load_model` (reload check: max |diff| {data['keras_model']['reload_max_abs_diff']:.1e}); "
            f"tensorflow_hub: {ri.get('worker_result', {}).get('tensorflow_hub')} "
            "(Beam's tensorflow_inference imports it at module level; not installed here, so a stub whose "
            "`resolve()` returns a local path is put on that row's PYTHONPATH)."
        )
    lines += ["", "## Goals", "", "```", *data["goal_lines"], "```", ""]
    cp = data.get("profile", {}).get("cprofile")
    if cp:
        lines += [
            "## Profile",
            "",
            f"`{profile_path(Path(data['report_path'])).name}`: cProfile of `{cp['command']}` "
            f"({cp['images']} images), top 30 by tottime; py-spy: "
            f"{'recorded' if data['profile'].get('pyspy', {}).get('available') else 'not available'}. "
            "Stages (Beam execution time under cProfile):",
            "",
        ]
        for stage, s in list(cp["stages_s"].items())[:8]:
            lines.append(f"- {stage}: {s:.1f} s")
        lines.append("")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="800x600 corpus size (default 2000)")
    parser.add_argument("--large-images", type=int, default=1000, help="1600x1200 corpus size (default 1000; 0: skip)")
    parser.add_argument(
        "--seed-images", type=int, default=100, help="seed way on this many images per size (default 100)"
    )
    parser.add_argument(
        "--runinference-images",
        type=int,
        default=500,
        help="RunInference on at most this many images per size (default 500; 0: all). It runs "
        "at a few images/s, so the whole corpus would take most of the time box",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the rows behind the goals: 800x600 seed, end to end, model only, decode (default 3)",
    )
    parser.add_argument(
        "--profile-images", type=int, default=300, help="images of the cProfile / py-spy runs (default 300)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="RunInference max batch size (default 32, as ours)")
    parser.add_argument("--parity-images", type=int, default=20)
    parser.add_argument("--no-profile", action="store_true")
    add_output_options(parser, "pipeline.md")
    parser.add_argument("--sample-interval", type=float, default=0.5, help="seconds between /proc samples")
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=20.0,
        help="before each row wait up to this many seconds for quiet; a disturbed row is re-run once",
    )
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--keras-model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return

    started = time.perf_counter()
    busy = busy_elsewhere(2.0)
    if busy > NOISE_CORES:
        print(
            f"warning: the machine is not idle ({busy:.2f} cores busy elsewhere); each row waits up to "
            f"{args.idle_wait:.0f} s for quiet",
            file=sys.stderr,
        )
    WORK.mkdir(parents=True, exist_ok=True)
    code = checkout()
    print(f"model cache: {MODEL_CACHE}", file=sys.stderr)
    warm = warm_model_cache(WORK / "logs")  # LiteRT conversion cached before anything is timed
    from aisthetics_transforms.model import default_weights_path, file_sha256

    keras_path = WORK / f"nima_mobilenet_{file_sha256(default_weights_path())[:12]}.keras"
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "prepare_keras", "--keras-model", str(keras_path)],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    keras_info = parse_result(proc, "prepare .keras")
    stub = hub_stub_path()

    counts = {"800x600": args.images, "1600x1200": args.large_images}
    sizes = [s for s in SIZES if counts[s] > 0]
    catalogs = {}
    for size in sizes:
        catalogs[size] = build_catalog(counts[size], SIZES[size])
        print(
            f"corpus: {counts[size]} JPEGs of {size} in {catalogs[size]['directory']}, "
            f"{'cached' if catalogs[size]['cached'] else 'written in %.0f s' % catalogs[size]['build_s']}, "
            f"{catalogs[size]['mean_jpeg_kb']:.0f} KB each",
            file=sys.stderr,
        )

    first = catalogs["800x600"]
    # The rows behind the goals run in rounds, one of each per round (harness.rounds): each row
    # keeps its median run, and the ratios are also taken within each round (paired).
    in_rounds = {
        "litert_model": lambda: worker_row(
            "litert_model", first, min(MODEL_ONLY_IMAGES, counts["800x600"]), args, passes=3
        )
    }
    for size in sizes:
        cat, n = catalogs[size], counts[size]
        in_rounds[f"decode_{size}"] = lambda cat=cat, n=n: worker_row("decode", cat, n, args, passes=3)
        in_rounds[f"e2e_{size}"] = lambda cat=cat, n=n, size=size: e2e_row(
            f"end to end, {size}, {n} images", subset_manifest(cat, n), n, args, f"e2e_{size}"
        )
    in_rounds["seed_800x600"] = lambda: worker_row("seed", first, min(counts["800x600"], args.seed_images), args)
    rows = {}
    for key, runs in run_rounds(in_rounds, args.rounds).items():
        rows[key] = median_run(runs, key=rate)
        rows[key]["round_rates"] = [rate(r) for r in runs]
    for size in sizes:
        cat, n = catalogs[size], counts[size]
        if size != "800x600":  # its seed row is not behind a goal: one run
            rows[f"seed_{size}"] = worker_row("seed", cat, min(n, args.seed_images), args)
        ri_n = min(n, args.runinference_images) if args.runinference_images else n
        rows[f"runinference_{size}"] = runinference_row(
            f"RunInference + Keras, {size}, {ri_n} images",
            subset_manifest(cat, ri_n),
            ri_n,
            args,
            f"runinference_{size}",
            str(keras_path),
            stub,
        )
    rows["e2e_fixed"] = e2e_row(
        f"end to end, fixed cost, {FIXED_COST_IMAGES} images",
        subset_manifest(first, FIXED_COST_IMAGES),
        FIXED_COST_IMAGES,
        args,
        "e2e_fixed",
    )

    print("parity ...", file=sys.stderr)
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "parity",
            "--output",
            rows["e2e_800x600"]["output"],
            "--parity-images",
            str(args.parity_images),
        ],
        env=child_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    parity = parse_result(proc, "parity")

    data = {
        "machine": machine_info(),
        "command": command_line(__file__, argv),
        "code": code,
        "args": vars(args),
        "busy_before_start": busy,
        "warm": warm,
        "keras_model": keras_info,
        "sizes": sizes,
        "catalogs": {k: catalog_summary(v) for k, v in catalogs.items()},
        "rows": rows,
        "parity": parity,
    }
    data["derived"] = derived(data)
    data["images_per_s"] = {k: rate(r) for k, r in rows.items()}
    data["goal_lines"] = goals(data)
    out = output_path(args)
    data["report_path"] = str(out)
    write_results(out, report(data), data)  # the table first: the profiles below are diagnostics

    if not args.no_profile:
        n = min(args.profile_images, counts["800x600"])
        data["profile"] = {"cprofile": cprofile_run(subset_manifest(first, n), n, args)}
        try:
            data["profile"]["pyspy"] = pyspy_run(subset_manifest(first, n), n, args)
        except Exception as exc:  # a diagnostic; never lose the table for it
            data["profile"]["pyspy"] = {"available": False, "reason": repr(exc)}
        profile_path(out).write_text(write_profile_text(data))
        print(f"wrote {profile_path(out)}", file=sys.stderr)
    data["total_wall_s"] = time.perf_counter() - started
    out.write_text(report(data))
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')} ({data['total_wall_s'] / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
