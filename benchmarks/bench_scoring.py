"""Scoring throughput, side by side, on this machine.

    python benchmarks/bench_scoring.py [--images N] [--out FILE]

Every row runs in a fresh subprocess (so imports and peak RSS do not mix) on the same
corpus of N real photos written to disk as ~800x600 JPEGs. A short warm-up is run and
excluded from each timing. The float32 GEMM rate of this machine, divided by the FLOPs of
one NIMA-MobileNet image, gives the ceiling that LiteRT is compared with. The table is
printed and written to benchmarks/results/scoring.md, the raw numbers to scoring.json.

The same script is its own worker: ``--worker NAME`` runs one row and prints one
``BENCH_RESULT {json}`` line on stdout.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CACHE_DIR = BENCH_DIR / ".cache" / "aisthetics"
DEFAULT_OUT = BENCH_DIR / "results" / "scoring.md"
AVA_DIR = REPO.parent / "shared" / "fixtures" / "ava"
RESULT_MARK = "BENCH_RESULT "
CORPUS_SIZE = (800, 600)
WARMUP_IMAGES = 8
# Other processes using more than this many cores during a row make it suspect.
NOISE_CORES = 0.10

GOAL_SPEEDUP = 12.0
GOAL_CEILING_FRACTION = 0.80
GOAL_FIRST_SCORE_S = 3.0
GOAL_RSS_MB = 400.0


# --- helpers shared by parent and workers ------------------------------------------------


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit(result: dict) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    result.setdefault("tensorflow_imported", "tensorflow" in sys.modules)
    print(RESULT_MARK + json.dumps(result), flush=True)


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


def keras_layer_flops(model) -> dict:
    """The same count, read off a built Keras model's layer shapes."""
    import keras

    macs = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            macs += h * w * kh * kw * in_c * layer.depth_multiplier
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, out_c = layer.output.shape
            kh, kw = layer.kernel_size
            in_c = layer.input.shape[-1]
            macs += h * w * kh * kw * in_c * out_c
        elif isinstance(layer, keras.layers.Dense):
            macs += layer.input.shape[-1] * layer.units
    return {"macs": int(macs), "flops": int(2 * macs)}


# --- workers (each runs in its own process) ----------------------------------------------


def _preprocessing():
    """decode_image and to_model_input, wherever this version of the package keeps them."""
    try:
        from aisthetics_transforms.preprocess import decode_image, to_model_input
    except ImportError:  # before the Beam stages moved them out of decode.py
        from aisthetics_transforms.decode import decode_image, to_model_input
    return decode_image, to_model_input


def _paths(corpus: str, n: int) -> list[str]:
    paths = sorted(str(p) for p in Path(corpus).glob("*.jpg"))
    return paths[:n]


def worker_prepare(args) -> None:
    """Convert the model into the benchmark's cache once, before anything is timed."""
    from aisthetics_transforms.model import default_weights_path, file_sha256, tflite_model_path

    t0 = time.perf_counter()
    weights = default_weights_path()
    path = tflite_model_path(weights, file_sha256(weights))
    emit({"tflite_path": str(path), "seconds": time.perf_counter() - t0})


def timed_passes(run, passes: int) -> dict:
    """Time ``run()`` ``passes`` times; the row's figure is the median pass."""
    seconds = []
    for _ in range(passes):
        t0 = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t0)
    return {"pass_seconds": seconds, "seconds": statistics.median(seconds)}


def worker_seed(args) -> None:
    """The seed's way: Keras Model.predict on a batch of 1 per image, preprocessing included."""
    t_load = time.perf_counter()
    from aisthetics_transforms.model import load_model

    decode_image, to_model_input = _preprocessing()
    model = load_model("keras").engine.model
    load_s = time.perf_counter() - t_load
    paths = _paths(args.corpus, args.images)

    def one(path):
        with open(path, "rb") as f:
            x = to_model_input(decode_image(f.read()))
        return model.predict(x, verbose=0)

    for p in paths[:WARMUP_IMAGES]:
        one(p)
    timing = timed_passes(lambda: [one(p) for p in paths], args.passes)
    emit({"images": len(paths), "load_s": load_s, **timing})


def worker_keras_batched(args) -> None:
    t_load = time.perf_counter()
    import aisthetics_transforms

    nima = aisthetics_transforms.get_aisthetics_model(engine="keras", batch_size=64)
    load_s = time.perf_counter() - t_load
    paths = _paths(args.corpus, args.images)
    # Warm-up traces the tf.function for a full batch and for the relaxed (partial) shape.
    nima.predict(paths[:64])
    nima.predict(paths[:WARMUP_IMAGES])
    timing = timed_passes(lambda: nima.predict(paths), args.passes)
    flops = keras_layer_flops(nima.model.engine.model)
    emit({"images": len(paths), "load_s": load_s, "keras_flops": flops, **timing})


def worker_litert_predict(args) -> None:
    t_load = time.perf_counter()
    import aisthetics_transforms

    nima = aisthetics_transforms.get_aisthetics_model(engine="litert", num_threads=args.threads)
    load_s = time.perf_counter() - t_load
    paths = _paths(args.corpus, args.images)
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

    paths = _paths(args.corpus, args.images)
    # The corpus repeats a few photos, so each distinct photo is decoded and normalised
    # once, and batches are contiguous windows of a ring of them: the model gets the same
    # float32 tensors predict() would feed it, with no decode or copy inside the timing.
    distinct = {}
    for p in paths:
        data = Path(p).read_bytes()
        key = hashlib.sha256(data).hexdigest()
        if key not in distinct:
            distinct[key] = to_model_input(read_and_decode(p))[0]
    inputs = list(distinct.values())
    chunk, n = 32, len(inputs)
    ring = np.stack([inputs[j % n] for j in range(chunk + n)])
    batches = [ring[i % n : i % n + min(chunk, len(paths) - i)] for i in range(0, len(paths), chunk)]
    model.predict(batches[0][:WARMUP_IMAGES])
    timing = timed_passes(lambda: [model.predict(b) for b in batches], args.passes)
    emit({"images": len(paths), "load_s": load_s, "num_threads": model.engine.num_threads,
          "distinct_inputs": len(inputs), **timing})


def worker_decode(args) -> None:
    """read + decode_image per image, one thread pinned to one core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    decode_image, _ = _preprocessing()
    paths = _paths(args.corpus, args.images)

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
    emit({
        "matrix": n,
        "repeats": len(rates),
        "gflops_median": rates[len(rates) // 2],
        "gflops_max": rates[-1],
        "gflops_min": rates[0],
        "gflops_all": rates,
        "blas": blas,
        "openblas_env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
    })


WORKERS = {
    "prepare": worker_prepare,
    "seed": worker_seed,
    "keras_batched": worker_keras_batched,
    "litert_predict": worker_litert_predict,
    "litert_model": worker_litert_model,
    "decode": worker_decode,
    "gemm": worker_gemm,
}

FIRST_SCORE_CODE = """\
import json, resource, sys
import aisthetics_transforms
nima = aisthetics_transforms.get_aisthetics_model()
r = nima.predict({path!r}, augmented=True)[0]
print({mark!r} + json.dumps({{
    "mean_score": r["mean_score_prediction"],
    "model_version": nima.model_version,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    "tensorflow_imported": "tensorflow" in sys.modules,
}}), flush=True)
"""


# --- parent ----------------------------------------------------------------------------


def child_env(unset_openblas: bool = False) -> dict:
    env = dict(os.environ)
    env["AISTHETICS_CACHE_DIR"] = str(CACHE_DIR)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if unset_openblas:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def parse_result(proc: subprocess.CompletedProcess, what: str) -> dict:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"{what}: no result (exit status {proc.returncode})")


def cpu_seconds() -> dict:
    """Machine-wide CPU time so far from /proc/stat: busy (all processes) and stolen by the host."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {"busy": 0.0, "steal": 0.0}
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / hz, "steal": steal / hz}


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def machine_noise(before: dict, after: dict, own_cpu: float, wall: float) -> dict:
    """CPU used by anything other than the measured process, in cores, over ``wall`` seconds."""
    other = max(0.0, after["busy"] - before["busy"] - own_cpu)
    return {"other_cpu_cores": other / wall if wall else 0.0,
            "steal_cores": (after["steal"] - before["steal"]) / wall if wall else 0.0}


def busy_elsewhere(seconds: float = 1.0) -> float:
    """Cores used by other processes over the next ``seconds`` (this process only sleeps)."""
    cpu0, own0 = cpu_seconds(), children_cpu_seconds()
    time.sleep(seconds)
    return machine_noise(cpu0, cpu_seconds(), children_cpu_seconds() - own0, seconds)["other_cpu_cores"]


def wait_for_idle(limit_s: float) -> float:
    """Wait (at most ``limit_s``) until other processes leave the cores alone; returns the wait."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if busy_elsewhere(1.0) <= NOISE_CORES:
            break
    return time.perf_counter() - t0


def run_worker_once(name: str, args, threads: int | None, passes: int, extra: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name,
           "--images", str(args.images), "--corpus", args.corpus, "--passes", str(passes),
           "--gemm-seconds", str(args.gemm_seconds)]
    if threads:
        cmd += ["--threads", str(threads)]
    cpu0, own0, t0 = cpu_seconds(), children_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, env=child_env(**extra), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    own = children_cpu_seconds() - own0
    result = parse_result(proc, name)
    result["process_wall_s"] = wall
    result["process_cpu_s"] = own
    result.update(machine_noise(cpu0, cpu_seconds(), own, wall))
    return result


def disturbed(result: dict) -> bool:
    return result["other_cpu_cores"] > NOISE_CORES or result["steal_cores"] > NOISE_CORES


def run_worker(name: str, args, threads: int | None = None, passes: int = 1, **extra) -> dict:
    """One row in a fresh process. Other processes' CPU use is measured around it; a
    disturbed row is run once more (after waiting for quiet) and the quieter run is kept."""
    label = f"{name}{f' ({threads} thread)' if threads else ''}"
    attempts = []
    for attempt in range(2 if args.idle_wait > 0 else 1):
        waited = wait_for_idle(args.idle_wait) if args.idle_wait > 0 else 0.0
        print(f"  {label}{' (again)' if attempt else ''} ...", end="", file=sys.stderr, flush=True)
        result = run_worker_once(name, args, threads, passes, extra)
        result["idle_wait_s"] = waited
        attempts.append(result)
        note = ""
        if disturbed(result):
            note = (f"  [other processes used {result['other_cpu_cores']:.2f} cores, host stole "
                    f"{result['steal_cores']:.2f}: disturbed]")
        print(f" {result['process_wall_s']:.1f} s{note}", file=sys.stderr, flush=True)
        if not disturbed(result):
            break
    best = min(attempts, key=lambda r: r["other_cpu_cores"] + r["steal_cores"])
    best["attempts"] = len(attempts)
    if len(attempts) > 1:
        best["other_attempt_images_per_s"] = [rate(r) for r in attempts if r is not best]
    return best


def source_photos() -> tuple[str, list]:
    """Real photos available offline: the AVA fixtures, else scikit-learn's sample photos."""
    from PIL import Image

    ava = sorted(AVA_DIR.glob("*.jpg")) if AVA_DIR.is_dir() else []
    if ava:
        return f"AVA fixtures ({AVA_DIR})", [Image.open(p).convert("RGB") for p in ava]
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    names = [os.path.basename(f) for f in data.filenames]
    return f"scikit-learn sample images ({', '.join(names)})", [Image.fromarray(a) for a in data.images]


def build_corpus(directory: str, n: int) -> dict:
    """n JPEG files of 800x600: each real photo centre-cropped to 4:3 and resized."""
    from PIL import Image

    source, photos = source_photos()
    encoded = []
    for im in photos:
        w, h = im.size
        target = CORPUS_SIZE[0] / CORPUS_SIZE[1]
        if w / h > target:
            cw = round(h * target)
            im = im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
        else:
            ch = round(w / target)
            im = im.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))
        im = im.resize(CORPUS_SIZE, Image.LANCZOS)
        path = Path(directory) / f"src_{len(encoded)}.jpg"
        im.save(path, "JPEG", quality=90)
        encoded.append(path.read_bytes())
    for i in range(n):
        (Path(directory) / f"img_{i:05d}.jpg").write_bytes(encoded[i % len(encoded)])
    for i in range(len(encoded)):
        (Path(directory) / f"src_{i}.jpg").unlink()
    sizes = [len(b) for b in encoded]
    return {"source": source, "distinct_photos": len(encoded), "images": n,
            "size": f"{CORPUS_SIZE[0]}x{CORPUS_SIZE[1]}", "mean_jpeg_kb": sum(sizes) / len(sizes) / 1024}


def first_score(args) -> dict:
    """A fresh interpreter: import, load the model, score one image; timed from the parent."""
    path = sorted(Path(args.corpus).glob("*.jpg"))[0]
    code = FIRST_SCORE_CODE.format(path=str(path), mark=RESULT_MARK)
    runs = []
    for _ in range(2):
        if args.idle_wait > 0:
            wait_for_idle(args.idle_wait)
        cpu0, own0 = cpu_seconds(), children_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True,
                              cwd=tempfile.gettempdir())
        wall = time.perf_counter() - t0
        result = parse_result(proc, "first score")
        result["seconds"] = wall
        result.update(machine_noise(cpu0, cpu_seconds(), children_cpu_seconds() - own0, wall))
        runs.append(result)
    print(f"  first score: {runs[0]['seconds']:.2f} s, then {runs[1]['seconds']:.2f} s", file=sys.stderr)
    return {"runs": runs, "reported": runs[1]}


def machine_info() -> dict:
    cpu, flags, family, model = "unknown", set(), None, None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "model name" and cpu == "unknown":
                cpu = value
            elif key == "flags" and not flags:
                flags = set(value.split())
            elif key == "cpu family" and family is None:
                family = value
            elif key == "model" and model is None:
                model = value
    except OSError:
        pass

    def version(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": cpu,
        "cpu_family": family,
        "cpu_model_number": model,
        "simd": [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16") if f in flags],
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": version("tensorflow"),
        "keras": version("keras"),
        "ai_edge_litert": version("ai-edge-litert"),
        "numpy": version("numpy"),
        "pillow": version("pillow"),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


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
        f"{m['date']} — {m['cpu_model']} (family {m['cpu_family']} model {m['cpu_model_number']}), "
        f"{m['cores']} cores, SIMD {'/'.join(m['simd']) or 'none'}; Python {m['python']}, "
        f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, ai-edge-litert {m['ai_edge_litert']}, "
        f"numpy {m['numpy']}, Pillow {m['pillow']}.",
        "",
        f"Corpus: {data['corpus']['images']} JPEG files of {data['corpus']['size']} "
        f"(~{data['corpus']['mean_jpeg_kb']:.0f} KB each) made from {data['corpus']['distinct_photos']} "
        f"real photos: {data['corpus']['source']}. Each row is a fresh process; a warm-up of "
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
            f"{r['other_cpu_cores']:.2f}{' ⚠' if disturbed(r) else ''} | {what} |"
        )
    lines += [
        "",
        "images/s is the median pass over the whole corpus. `× seed way` divides by the seed way's rate. "
        "Peak RSS is that process's `ru_maxrss`. `other CPU` is how many cores other processes on the machine "
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
    ("seed", "seed way (Keras `model.predict`, batch of 1)", "read + decode_image + to_model_input + predict, per image"),
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

    def line(ok, text):
        return f"{'PASS' if ok else 'FAIL'}  {text}"

    return [
        line(lp / seed >= GOAL_SPEEDUP, f"LiteRT predict() >= {GOAL_SPEEDUP:.0f}x seed way: {lp:.1f} / {seed:.1f} = {lp / seed:.1f}x"),
        line(frac >= GOAL_CEILING_FRACTION, f"LiteRT predict() >= {GOAL_CEILING_FRACTION:.0%} of float32 ceiling: "
             f"{lp:.1f} / {data['ceiling']['img_per_s']:.1f} = {frac:.0%}"),
        line(fs["seconds"] < GOAL_FIRST_SCORE_S, f"first score, warm cache < {GOAL_FIRST_SCORE_S:.0f} s: {fs['seconds']:.2f} s"),
        line(rss < GOAL_RSS_MB, f"LiteRT path peak RSS < {GOAL_RSS_MB:.0f} MB: predict() over {rows['litert_predict']['images']} "
             f"images {rss:.0f} MB (first-score process {fs['peak_rss_mb']:.0f} MB)"),
    ] + ([f"NOTE  disturbed by other processes (re-run on an idle machine): {', '.join(noisy)}"] if noisy else [])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="corpus size (default 300)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown output; the JSON goes beside it")
    parser.add_argument("--gemm-seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--passes", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--idle-wait", type=float, default=20.0,
                        help="before each row, wait up to this many seconds for other processes to "
                             "leave the cores alone; a disturbed row is re-run once (0: never wait or re-run)")
    args = parser.parse_args(argv)
    if args.images < WARMUP_IMAGES:
        parser.error(f"--images must be at least {WARMUP_IMAGES}")

    if args.worker:
        WORKERS[args.worker](args)
        return

    started = time.perf_counter()
    busy = busy_elsewhere(2.0)
    idle = {"other_cpu_cores": busy}
    if busy > NOISE_CORES:
        print(f"warning: the machine is not idle ({busy:.2f} cores busy in other processes); "
              f"each row first waits up to {args.idle_wait:.0f} s for quiet", file=sys.stderr)
    out = Path(args.out)
    tmp = tempfile.mkdtemp(prefix="aisthetics-bench-")
    try:
        args.corpus = tmp
        print(f"corpus: writing {args.images} images to {tmp}", file=sys.stderr)
        corpus = build_corpus(tmp, args.images)
        print(f"  from {corpus['source']}", file=sys.stderr)
        print(f"model cache: {CACHE_DIR}", file=sys.stderr)
        prepared = run_worker_once("prepare", args, None, 1, {})
        rows = {}
        rows["decode"] = run_worker("decode", args, passes=3)
        # The GEMM rate is taken twice, next to the LiteRT rows and at the end, so a drift of
        # the (virtual) machine's speed during the run shows.
        gemm_runs = [run_worker("gemm", args, unset_openblas=True)]
        for name, passes in (("litert_model", 3), ("litert_predict", 3), ("keras_batched", 2), ("seed", 1)):
            rows[name] = run_worker(name, args, passes=passes)
        rows["litert_predict_1t"] = run_worker("litert_predict", args, threads=1, passes=2)
        gemm_runs.append(run_worker("gemm", args, unset_openblas=True))
        gemm = combine_gemm(gemm_runs)
        fs = first_score(args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    flops = mobilenet_v1_flops()
    keras_flops = rows["keras_batched"].get("keras_flops")
    gflop = flops["flops"] / 1e9
    blas = gemm["blas"][0] if gemm["blas"] else {}
    data = {
        "machine": machine_info(),
        "corpus": corpus,
        "busy_before_start": idle,
        "cache": {"dir": str(CACHE_DIR), "prepare": prepared},
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
    text = report(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')} ({data['total_wall_s']:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
