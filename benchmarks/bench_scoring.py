"""Scoring throughput, side by side, on this machine.

    python benchmarks/bench_scoring.py [--images N] [--out FILE] [--idle-wait S]

Every row runs in a fresh subprocess (harness.workers, so imports and peak RSS do not mix) on the
same corpus: the first N files of the cached 800x600 catalog (harness.corpus, crops of real photos).
A short warm-up is run and excluded from each timing. The float32 GEMM rate of this machine, divided
by the FLOPs of one NIMA-MobileNet image, gives the ceiling that LiteRT is compared with. The table
is printed and written to scoring.md (``--out``; ``--reference``: benchmarks/results/), the raw numbers to scoring.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import CACHE, MODEL_CACHE
from harness.code import checkout, source_of
from harness.corpus import build_catalog, paths_file
from harness.machine import NOISE_CORES, busy_elsewhere, disturbed, machine_info, wait_for_idle
from harness.process import RESULT_MARK, child_env, run_timed
from harness.report import (
    add_output_options,
    goal_line,
    machine_line,
    noise_cell,
    noise_note,
    output_path,
    write_results,
)
from harness.workers import WARMUP_IMAGES, run_worker

WORK = CACHE / "scoring"
CORPUS_SIZE = (800, 600)

GOAL_SPEEDUP = 12.0
GOAL_CEILING_FRACTION = 0.80
GOAL_FIRST_SCORE_S = 3.0
GOAL_RSS_MB = 400.0


def mobilenet_v1_flops(alpha: float = 1.0, size: int = 224, classes: int = 10) -> dict:
    """2 x MACs of every conv, depthwise conv and dense layer of NIMA-MobileNet v1, from
    the architecture's layer shapes (BatchNorm, ReLU, bias and pooling are not counted)."""

    def c(n):
        return int(n * alpha)

    macs = {"conv": 0, "depthwise": 0, "pointwise": 0, "dense": 0}
    hw = size // 2  # first conv: 3x3 stride 2, 3 -> 32
    macs["conv"] += hw * hw * 3 * 3 * 3 * c(32)
    channels = c(32)
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for filters, stride in blocks:
        hw //= stride
        macs["depthwise"] += hw * hw * 3 * 3 * channels
        macs["pointwise"] += hw * hw * channels * c(filters)
        channels = c(filters)
    macs["dense"] += channels * classes
    total = sum(macs.values())
    return {"macs": total, "flops": 2 * total, "macs_by_kind": macs}


# Only what a user's first score needs is imported (not the harness): the import time is measured.
FIRST_SCORE_CODE = """\
import json, sys
import aisthetics_transforms
nima = aisthetics_transforms.get_aisthetics_model()
r = nima.predict({path!r}, augmented=True)[0]
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print({mark!r} + json.dumps({{
    "mean_score": r["mean_score_prediction"],
    "model_version": nima.model_version,
    "peak_rss_mb": hwm / 1024.0,
    "tensorflow_imported": "tensorflow" in sys.modules,
}}), flush=True)
"""


def first_score(path: str, source: Path, idle_wait: float) -> dict:
    """A fresh interpreter: import, load the model, score one image; timed from the parent."""
    runs = []
    for i in range(2):
        if idle_wait > 0:
            wait_for_idle(idle_wait)
        run = run_timed(
            [sys.executable, "-c", FIRST_SCORE_CODE.format(path=path, mark=RESULT_MARK)],
            env=child_env(source),
            cwd=Path(tempfile.gettempdir()),
            log_dir=WORK / "logs",
            name=f"first_score_{i + 1}",
            sample_interval=None,
            label="first score",
        )
        runs.append(
            {
                **run["result"],
                "seconds": run["process_wall_s"],
                "other_cpu_cores": run["other_cpu_cores"],
                "steal_cores": run["steal_cores"],
            }
        )
    print(f"  first score: {runs[0]['seconds']:.2f} s, then {runs[1]['seconds']:.2f} s", file=sys.stderr)
    return {"runs": runs, "reported": runs[1]}


def rate(r: dict) -> float:
    return r["images"] / r["seconds"]


def report(data: dict) -> str:
    rows = data["rows"]
    seed = rate(rows["seed"])
    m = data["machine"]
    ceiling = data["ceiling"]
    fs = data["first_score"]["reported"]
    lines = [
        "# Scoring benchmark",
        "",
        machine_line(m),
        "",
        f"Corpus: {data['corpus']['images']} JPEG files of {data['corpus']['size']} "
        f"(~{data['corpus']['mean_jpeg_kb']:.0f} KB each, every file a different image) made from "
        f"{data['corpus']['distinct_photos']} real photos: {data['corpus']['source']}. Each row is a fresh process; a warm-up of "
        f"{WARMUP_IMAGES} images (Keras batched: one batch of 64 and one of {WARMUP_IMAGES}) is excluded.",
        "",
        "| row | images/s | × seed way | peak RSS (MB) | TF imported | passes | other CPU | what is timed |",
        "| --- | ---: | ---: | ---: | :---: | ---: | ---: | --- |",
    ]
    for key, label, what in ROWS:
        if key not in rows:
            continue
        r = rows[key]
        lines.append(
            f"| {label.format(threads=r.get('num_threads'))} | {rate(r):.1f} | {rate(r) / seed:.1f}× | {r['peak_rss_mb']:.0f} | "
            f"{'yes' if r['tensorflow_imported'] else 'no'} | {len(r['pass_seconds'])} | "
            f"{noise_cell(r)} | {what} |"
        )
    lines += [
        "",
        "images/s is the median pass over the whole corpus. `× seed way` divides by the seed way's rate. "
        "Peak RSS is that process's own peak (VmHWM). `other CPU` is how many cores other processes on the machine "
        f"used while the row ran (from /proc/stat, less the row's own CPU time); above {NOISE_CORES:.2f} the row "
        "was disturbed and should be re-run on an idle machine.",
    ]
    lp, lm = rate(rows["litert_predict"]), rate(rows["litert_model"])
    dec = rate(rows["decode"])
    ideal = 1.0 / (1.0 / lm + 1.0 / (dec * m["cores"]))
    lines += [
        "",
        "## Float32 ceiling",
        "",
        f"- numpy float32 GEMM, {ceiling['gemm']['matrix']}² matmul × {ceiling['gemm']['repeats']} on all cores "
        f"in two runs, before the LiteRT rows and at the end "
        f"({ceiling['blas_summary']}): median {ceiling['gemm']['gflops_median']:.1f} GFLOP/s "
        f"(run medians {' and '.join(format(v, '.1f') for v in ceiling['gemm']['gflops_median_per_run'])}; "
        f"min {ceiling['gemm']['gflops_min']:.1f}, max {ceiling['gemm']['gflops_max']:.1f})"
        f"{'; ⚠ other processes used ' + format(ceiling['gemm']['other_cpu_cores'], '.2f') + ' cores meanwhile' if disturbed(ceiling['gemm']) else ''}.",
        f"- NIMA-MobileNet: {ceiling['gflop_per_image']:.4f} GFLOP per image "
        f"(2 × {ceiling['flops']['macs'] / 1e6:.1f} M MACs of conv, depthwise, pointwise and dense layers, "
        f"from the layer shapes{'; the Keras model’s own layers give ' + format(ceiling['keras_flops']['flops'] / 1e9, '.4f') + ' GFLOP' if ceiling.get('keras_flops') else ''}).",
        f"- Ceiling: {ceiling['gemm']['gflops_median']:.1f} / {ceiling['gflop_per_image']:.4f} = "
        f"**{ceiling['img_per_s']:.1f} img/s**. LiteRT predict() reaches {100 * lp / ceiling['img_per_s']:.0f}% of it, "
        f"LiteRT model only {100 * lm / ceiling['img_per_s']:.0f}%.",
        f"- LiteRT predict() runs at {100 * lp / lm:.0f}% of the model-only rate. If decoding ({dec:.0f} img/s on one "
        f"core) simply took its share of the {m['cores']} cores, end to end would be "
        f"1 / (1/{lm:.0f} + 1/({dec:.0f}×{m['cores']})) = {ideal:.0f} img/s.",
        "",
        "## First score with a warm cache",
        "",
        f"A fresh `python -c` that imports aisthetics_transforms, gets the model (engine auto) and predicts one "
        f"image, timed from the parent around `subprocess.run` (interpreter start included), second of two runs: "
        f"**{fs['seconds']:.2f} s** (first run {data['first_score']['runs'][0]['seconds']:.2f} s); peak RSS "
        f"{fs['peak_rss_mb']:.0f} MB; `tensorflow` in sys.modules: {fs['tensorflow_imported']}; "
        f"model {fs['model_version']}.",
        "",
        "## Goals",
        "",
        "```",
        *data["goal_lines"],
        "```",
        "",
    ]
    return "\n".join(lines)


ROWS = [
    (
        "seed",
        "seed way (Keras `model.predict`, batch of 1)",
        "read + decode_image + to_model_input + predict, per image",
    ),
    ("keras_batched", "Keras batched (`engine='keras'`, batch_size=64)", "`predict(paths)`"),
    ("litert_predict", "LiteRT predict() (`engine='litert'`, default {threads} threads)", "`predict(paths)`"),
    ("litert_model", "LiteRT model only ({threads} threads)", "engine on pre-decoded float32 inputs, no decode"),
    ("decode", "decode only (1 core)", "read file + decode_image"),
    ("litert_predict_1t", "LiteRT predict(), 1 thread (diagnostic)", "`predict(paths)` with num_threads=1"),
]


def combine_gemm(runs: list[dict]) -> dict:
    rates = sorted(r for run in runs for r in run["gflops_all"])
    return {
        "matrix": runs[0]["matrix"],
        "repeats": len(rates),
        "gflops_median": statistics.median(rates),
        "gflops_min": rates[0],
        "gflops_max": rates[-1],
        "gflops_median_per_run": [run["gflops_median"] for run in runs],
        "blas": runs[0]["blas"],
        "openblas_env": runs[0]["openblas_env"],
        "other_cpu_cores": max(run["other_cpu_cores"] for run in runs),
        "steal_cores": max(run["steal_cores"] for run in runs),
        "runs": runs,
    }


def goals(data: dict) -> list[str]:
    rows = data["rows"]
    seed, lp = rate(rows["seed"]), rate(rows["litert_predict"])
    frac = lp / data["ceiling"]["img_per_s"]
    fs = data["first_score"]["reported"]
    rss = rows["litert_predict"]["peak_rss_mb"]
    noisy = [k for k, r in rows.items() if disturbed(r)]
    noisy += ["gemm ceiling"] if disturbed(data["ceiling"]["gemm"]) else []
    noisy += ["first score"] if disturbed(fs) else []

    return [
        goal_line(
            lp / seed >= GOAL_SPEEDUP,
            f"LiteRT predict() >= {GOAL_SPEEDUP:.0f}x seed way: {lp:.1f} / {seed:.1f} = {lp / seed:.1f}x",
        ),
        goal_line(
            frac >= GOAL_CEILING_FRACTION,
            f"LiteRT predict() >= {GOAL_CEILING_FRACTION:.0%} of float32 ceiling: "
            f"{lp:.1f} / {data['ceiling']['img_per_s']:.1f} = {frac:.0%}",
        ),
        goal_line(
            fs["seconds"] < GOAL_FIRST_SCORE_S,
            f"first score, warm cache < {GOAL_FIRST_SCORE_S:.0f} s: {fs['seconds']:.2f} s",
        ),
        goal_line(
            rss < GOAL_RSS_MB,
            f"LiteRT path peak RSS < {GOAL_RSS_MB:.0f} MB: predict() over {rows['litert_predict']['images']} "
            f"images {rss:.0f} MB (first-score process {fs['peak_rss_mb']:.0f} MB)",
        ),
    ] + noise_note(noisy)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="corpus size (default 300)")
    add_output_options(parser, "scoring.md")
    parser.add_argument("--gemm-seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=20.0,
        help="before each row, wait up to this many seconds for other processes to "
        "leave the cores alone; a disturbed row is re-run once (0: never wait or re-run)",
    )
    args = parser.parse_args(argv)
    if args.images < WARMUP_IMAGES:
        parser.error(f"--images must be at least {WARMUP_IMAGES}")

    started = time.perf_counter()
    busy = busy_elsewhere(2.0)
    if busy > NOISE_CORES:
        print(
            f"warning: the machine is not idle ({busy:.2f} cores busy in other processes); "
            f"each row first waits up to {args.idle_wait:.0f} s for quiet",
            file=sys.stderr,
        )
    code = checkout()
    source = source_of(code)
    catalog = build_catalog(args.images, CORPUS_SIZE)
    paths = paths_file(catalog, args.images, WORK / f"paths-{args.images}.txt")
    print(f"corpus: {args.images} images of 800x600 in {catalog['directory']}", file=sys.stderr)
    corpus = {
        "source": "write_sample_catalog: crops of scikit-learn's china.jpg and flower.jpg",
        "distinct_photos": 2,
        "images": args.images,
        "size": catalog["size"],
        "mean_jpeg_kb": catalog["mean_jpeg_kb"],
        "directory": catalog["directory"],
    }
    print(f"model cache: {MODEL_CACHE}", file=sys.stderr)
    logs = WORK / "logs"

    def row(name, passes=1, threads=None, **extra):
        result = run_worker(
            name,
            log_dir=logs,
            paths=paths,
            passes=passes,
            threads=threads,
            source=source,
            gemm_seconds=args.gemm_seconds,
            idle_wait=args.idle_wait,
            **extra,
        )
        others = result.pop("other_attempts", [])
        if others:
            result["other_attempt_images_per_s"] = [rate(r) for r in others if "images" in r]
        return result

    prepared = run_worker("warm", log_dir=logs, source=source, retry=False)
    rows = {"decode": row("decode", passes=3)}
    # The GEMM rate is taken twice, next to the LiteRT rows and at the end, so a drift of the
    # (virtual) machine's speed during the run shows.
    gemm_runs = [row("gemm", unset_openblas=True)]
    for name, passes in (("litert_model", 3), ("litert_predict", 3), ("keras_batched", 2), ("seed", 1)):
        rows[name] = row(name, passes=passes)
    rows["litert_predict_1t"] = row("litert_predict", threads=1, passes=2)
    gemm_runs.append(row("gemm", unset_openblas=True))
    gemm = combine_gemm(gemm_runs)
    fs = first_score(catalog["files"][0]["uri"], source, args.idle_wait)

    flops = mobilenet_v1_flops()
    keras_flops = rows["keras_batched"].get("keras_flops")
    gflop = flops["flops"] / 1e9
    blas = gemm["blas"][0] if gemm["blas"] else {}
    data = {
        "machine": machine_info(),
        "code": code,
        "corpus": corpus,
        "busy_before_start": {"other_cpu_cores": busy},
        "cache": {"dir": str(MODEL_CACHE), "prepare": prepared},
        "rows": rows,
        "images_per_s": {k: rate(r) for k, r in rows.items()},
        "ceiling": {
            "gemm": gemm,
            "blas_summary": f"{blas.get('internal_api')} {blas.get('version')}, kernel {blas.get('architecture')}, "
            f"{blas.get('num_threads')} threads",
            "flops": flops,
            "keras_flops": keras_flops,
            "gflop_per_image": gflop,
            "img_per_s": gemm["gflops_median"] / gflop,
        },
        "first_score": fs,
    }
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_results(output_path(args), report(data), data)


if __name__ == "__main__":
    main()
