"""The measured children that score or decode images, and the parent's call that runs one.

    python -m harness.workers NAME [--paths FILE] [--passes N] [--threads N] [--gemm-seconds S]

Each worker loads what it needs, warms up on a few images (not timed), times its loop ``--passes``
times (the median pass is its figure) and prints one ``BENCH_RESULT {json}`` line. bench_scoring runs
every one of them; bench_pipeline runs seed, litert_model and decode for its ideal and its seed row;
bench_nightly, bench_pipeline and bench_scale run ``warm`` before timing anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

from . import REPO
from .process import child_env, emit, quietest, run_timed

WARMUP_IMAGES = 8
MODEL_ONLY_DISTINCT = 300  # float32 inputs are 0.6 MB each: the model-only row cycles over at most this many


def _paths(args) -> list[str]:
    return [line for line in Path(args.paths).read_text().splitlines() if line]


def _preprocessing():
    """decode_image and to_model_input, wherever this version of the package keeps them."""
    try:
        from aisthetics_transforms.preprocess import decode_image, to_model_input
    except ImportError:  # before the Beam stages moved them out of decode.py
        from aisthetics_transforms.decode import decode_image, to_model_input
    return decode_image, to_model_input


def timed_passes(run, passes: int) -> dict:
    """Time ``run()`` ``passes`` times; the row's figure is the median pass."""
    seconds = []
    for _ in range(passes):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return {"pass_seconds": seconds, "seconds": statistics.median(seconds)}


def worker_warm(args) -> None:
    """Convert the model into the cache and score one image, so that no timed row pays for it."""
    import tempfile

    import aisthetics_transforms
    from aisthetics_transforms.sample import source_photos

    t0 = time.perf_counter()
    path = os.path.join(tempfile.mkdtemp(), "warm.jpg")
    source_photos()["china"].resize((224, 224)).save(path)
    nima = aisthetics_transforms.get_aisthetics_model()
    nima.predict(images=path, augmented=True)
    emit({"seconds": time.perf_counter() - t0, "model_version": nima.model_version})


def worker_seed(args) -> None:
    """The seed's way: Keras Model.predict on a batch of 1 per image, preprocessing included."""
    t_load = time.perf_counter()
    from aisthetics_transforms.model import load_model

    decode_image, to_model_input = _preprocessing()
    model = load_model("keras").engine.model
    load_s = time.perf_counter() - t_load
    paths = _paths(args)

    def one(path):
        with open(path, "rb") as f:
            x = to_model_input(decode_image(f.read()))
        return model.predict(x, verbose=0)

    for p in paths[:WARMUP_IMAGES]:
        one(p)
    timing = timed_passes(lambda: [one(p) for p in paths], args.passes)
    emit({"images": len(paths), "load_s": load_s, **timing})


def keras_layer_flops(model) -> dict:
    """2 x the multiply-adds of every conv, depthwise and dense layer, read off a built Keras model."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * layer.input.shape[-1] * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, out_c = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * layer.input.shape[-1] * out_c
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return {"macs": int(macs), "flops": int(2 * macs)}


def worker_keras_batched(args) -> None:
    t_load = time.perf_counter()
    import aisthetics_transforms

    nima = aisthetics_transforms.get_aisthetics_model(engine="keras", batch_size=64)
    load_s = time.perf_counter() - t_load
    paths = _paths(args)
    # Warm-up traces the tf.function for a full batch and for the relaxed (partial) shape.
    nima.predict(paths[:64])
    nima.predict(paths[:WARMUP_IMAGES])
    timing = timed_passes(lambda: nima.predict(paths), args.passes)
    emit({"images": len(paths), "load_s": load_s, "keras_flops": keras_layer_flops(nima.model.engine.model), **timing})


def worker_litert_predict(args) -> None:
    t_load = time.perf_counter()
    import aisthetics_transforms

    nima = aisthetics_transforms.get_aisthetics_model(engine="litert", num_threads=args.threads)
    load_s = time.perf_counter() - t_load
    paths = _paths(args)
    nima.predict(paths[:WARMUP_IMAGES])
    timing = timed_passes(lambda: nima.predict(paths), args.passes)
    emit({"images": len(paths), "load_s": load_s, "num_threads": nima.model.engine.num_threads, **timing})


def worker_litert_model(args) -> None:
    """The loaded LiteRT engine alone, on inputs decoded and normalised beforehand."""
    t_load = time.perf_counter()
    from aisthetics_transforms.api import read_and_decode
    from aisthetics_transforms.model import load_model

    _, to_model_input = _preprocessing()
    model = load_model("litert", num_threads=args.threads)
    load_s = time.perf_counter() - t_load
    import numpy as np

    paths = _paths(args)
    # Each distinct photo (at most MODEL_ONLY_DISTINCT) is decoded and normalised once, and batches
    # are contiguous windows of a ring of them: the model gets the same float32 tensors predict()
    # would feed it, with no decode or copy inside the timing.
    distinct: dict[str, object] = {}
    for p in paths:
        if len(distinct) >= MODEL_ONLY_DISTINCT:
            break
        key = hashlib.sha256(Path(p).read_bytes()).hexdigest()
        if key not in distinct:
            distinct[key] = to_model_input(read_and_decode(p))[0]
    inputs = list(distinct.values())
    chunk, n = 32, len(inputs)
    ring = np.stack([inputs[j % n] for j in range(chunk + n)])
    batches = [ring[i % n : i % n + min(chunk, len(paths) - i)] for i in range(0, len(paths), chunk)]
    model.predict(batches[0][:WARMUP_IMAGES])
    timing = timed_passes(lambda: [model.predict(b) for b in batches], args.passes)
    emit(
        {
            "images": len(paths),
            "load_s": load_s,
            "num_threads": model.engine.num_threads,
            "distinct_inputs": len(inputs),
            **timing,
        }
    )


def worker_decode(args) -> None:
    """read + decode_image per image, one thread pinned to one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    decode_image, _ = _preprocessing()
    paths = _paths(args)

    def one(path):
        with open(path, "rb") as f:
            return decode_image(f.read())

    for p in paths[:WARMUP_IMAGES]:
        one(p)
    timing = timed_passes(lambda: [one(p) for p in paths], args.passes)
    emit({"images": len(paths), "cores": 1, **timing})


def worker_gemm(args) -> None:
    """float32 GEMM rate on all cores: repeated 2048x2048 @ 2048x2048 with numpy's BLAS."""
    import numpy as np
    import threadpoolctl

    n = 2048
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    for _ in range(3):  # warm-up: thread start, frequency ramp
        np.matmul(a, b, out=c)
    rates = []
    deadline = time.perf_counter() + args.gemm_seconds
    while time.perf_counter() < deadline or len(rates) < 5:
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        rates.append(flop / (time.perf_counter() - t0) / 1e9)
    rates.sort()
    blas = [
        {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads", "threading_layer")}
        for info in threadpoolctl.threadpool_info()
    ]
    emit(
        {
            "matrix": n,
            "repeats": len(rates),
            "gflops_median": rates[len(rates) // 2],
            "gflops_max": rates[-1],
            "gflops_min": rates[0],
            "gflops_all": rates,
            "blas": blas,
            "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        }
    )


WORKERS = {
    "warm": worker_warm,
    "seed": worker_seed,
    "keras_batched": worker_keras_batched,
    "litert_predict": worker_litert_predict,
    "litert_model": worker_litert_model,
    "decode": worker_decode,
    "gemm": worker_gemm,
}


# --- parent side ----------------------------------------------------------------------------------


def run_worker(
    name: str,
    *,
    log_dir: Path,
    paths: str | None = None,
    passes: int = 1,
    threads: int | None = None,
    gemm_seconds: float = 4.0,
    source: Path = REPO,
    unset_openblas: bool = False,
    idle_wait: float = 0.0,
    retry: bool = True,
) -> dict:
    """One worker in a fresh process, timed from here: the worker's result plus process_wall_s,
    process_cpu_s and the noise figures. A run disturbed by other processes is run once more and
    the quieter one kept (see :func:`harness.process.quietest`)."""
    cmd = [sys.executable, "-m", "harness.workers", name, "--passes", str(passes), "--gemm-seconds", str(gemm_seconds)]
    cmd += ["--paths", paths] if paths else []
    cmd += ["--threads", str(threads)] if threads else []
    label = f"{name}{f' ({threads} thread)' if threads else ''}"

    def once() -> dict:
        run = run_timed(
            cmd,
            env=child_env(source, unset_openblas=unset_openblas),
            cwd=source,
            log_dir=log_dir,
            name=label.replace(" ", "_").replace("(", "").replace(")", ""),
            sample_interval=None,
            label=label,
        )
        if run["result"] is None:
            raise SystemExit(f"{label}: no result line (log: {run['log']})")
        keep = ("process_wall_s", "process_cpu_s", "other_cpu_cores", "steal_cores")
        return {**run["result"], **{k: run[k] for k in keep}}

    return quietest(once, label=label, idle_wait=idle_wait, retry=retry)


def warm_model_cache(log_dir: Path, source: Path = REPO) -> dict:
    """Convert the model into the benchmarks' cache and score one image, before anything is timed."""
    return run_worker("warm", log_dir=log_dir, source=source, retry=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worker", choices=sorted(WORKERS))
    parser.add_argument("--paths", help="a file of image paths, one a line")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gemm-seconds", type=float, default=4.0)
    args = parser.parse_args(argv)
    WORKERS[args.worker](args)


if __name__ == "__main__":
    main()
