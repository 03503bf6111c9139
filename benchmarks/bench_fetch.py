"""The pipeline on an http catalog: fetching one image at a time against ``--fetch_threads``.

    python benchmarks/bench_fetch.py [--images 500] [--latency-ms 30] [--rounds 2] [--out FILE]

A marketplace's images live behind a CDN or in a bucket, where each fetch mostly waits on
the network. This serves the first ``--images`` files of bench_pipeline's cached 800x600
corpus from a threaded HTTP server on 127.0.0.1 that answers each GET after
``--latency-ms`` (a CDN round trip), and runs ``python -m pipeline`` on a manifest of their
http uris with ``--fetch_threads=1`` and with the default, alternating, ``--rounds`` times
each (process start included, in fresh processes). The server counts the most requests it
had waiting at once. Every run must score every image.

Report: benchmarks/results/fetch.md, raw numbers: fetch.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import bench_nightly as bn  # cached catalog, summary reader, child environment, versions
import bench_scoring as bs  # machine info, machine noise

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
WORK = BENCH_DIR / ".cache" / "fetch"
CORPUS = BENCH_DIR / ".cache" / "pipeline"  # bench_pipeline's 800x600 corpus
DEFAULT_OUT = BENCH_DIR / "results" / "fetch.md"
RUN_DATE = "2026-11-28"
CORPUS_IMAGES = 2000


class LaggingServer(ThreadingHTTPServer):
    """Serves one directory; every GET is answered after ``latency`` seconds."""

    daemon_threads = True

    def __init__(self, directory: str, latency: float):
        self.directory, self.latency = directory, latency
        self.lock = threading.Lock()
        self.waiting = self.most_waiting = self.requests = 0
        super().__init__(("127.0.0.1", 0), _Handler)

    def reset(self) -> None:
        with self.lock:
            self.most_waiting = self.requests = 0


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the fetch threads reuse their connections

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=args[2].directory, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        with server.lock:
            server.waiting += 1
            server.requests += 1
            server.most_waiting = max(server.most_waiting, server.waiting)
        try:
            time.sleep(server.latency)
        finally:
            with server.lock:
                server.waiting -= 1
        super().do_GET()


def http_manifest(files: list[dict], base: str, images: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"manifest-http-{images}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "uri", "category"])
        for i, file in enumerate(files[:images]):
            writer.writerow([f"listing-{i:05d}", f"{base}/{Path(file['uri']).name}", file["category"]])
    return path


def run_pipeline(manifest: Path, fetch_threads: int | None, server: LaggingServer, images: int) -> dict:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", f"--manifest={manifest}", f"--output={out}", f"--run_date={RUN_DATE}",
           "--progress_seconds=0", "--allow_private_hosts"]
    if fetch_threads is not None:
        cmd.append(f"--fetch_threads={fetch_threads}")
    server.reset()
    cpu0, own0 = bs.cpu_seconds(), bs.children_cpu_seconds()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=bn.child_env(), cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    noise = bs.machine_noise(cpu0, bs.cpu_seconds(), bs.children_cpu_seconds() - own0, wall)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}: exit status {proc.returncode}\n{proc.stderr[-3000:]}")
    summary = bn.summary_of(str(out), RUN_DATE)
    if summary.get("scored") != images or summary.get("errors"):
        raise SystemExit(f"expected {images} scored and no errors, the summary says {summary}")
    return {"fetch_threads": fetch_threads, "wall_s": wall, "images_per_s": images / wall,
            "server_requests": server.requests, "most_waiting": server.most_waiting, **noise}


def report(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Fetch benchmark: an http catalog",
        "",
        f"{data['finished']} — {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores; "
        f"Apache Beam {m.get('apache_beam', '?')}. Command: `{data['command']}`.",
        "",
        f"{data['images']} JPEGs of 800x600 (bench_pipeline's corpus) served from 127.0.0.1, each GET answered after "
        f"{data['latency_ms']:.0f} ms; `python -m pipeline` on their http uris, process start included, "
        f"alternating, {data['rounds']} rounds.",
        "",
        "| --fetch_threads | runs (s) | median s | images/s | × one at a time | most requests waiting at once | other CPU |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = data["ways"]["1"]["median_s"]
    for key, way in data["ways"].items():
        runs = way["runs"]
        lines.append(
            f"| {way['label']} | {', '.join('%.1f' % r['wall_s'] for r in runs)} | {way['median_s']:.1f} | "
            f"{data['images'] / way['median_s']:.1f} | {base / way['median_s']:.1f}× | "
            f"{max(r['most_waiting'] for r in runs)} | {max(r['other_cpu_cores'] for r in runs):.2f} |"
        )
    lines += ["", "- other CPU: cores other processes used during the run (above 0.10 the run was disturbed)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500, help=f"images (at most {CORPUS_IMAGES}; default 500)")
    parser.add_argument("--latency-ms", type=float, default=30.0, help="the server's delay per GET (default 30)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="markdown output; the JSON goes beside it")
    args = parser.parse_args(argv)
    if not 0 < args.images <= CORPUS_IMAGES:
        parser.error(f"--images must be 1..{CORPUS_IMAGES}")

    sys.path.insert(0, str(REPO))
    bn.WORK = CORPUS
    catalog = bn.build_catalog(CORPUS_IMAGES, (800, 600))
    bn.warm_model_cache()
    from aisthetics_transforms.fetch import DEFAULT_FETCH_THREADS

    server = LaggingServer(str(Path(catalog["files"][0]["uri"]).parent), args.latency_ms / 1000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        manifest = http_manifest(catalog["files"], f"http://127.0.0.1:{server.server_address[1]}", args.images)
        ways = {"1": {"label": "1 (one at a time)", "threads": 1, "runs": []},
                "default": {"label": f"{DEFAULT_FETCH_THREADS} (the default)", "threads": None, "runs": []}}
        for r in range(args.rounds):
            for way in ways.values():
                print(f"round {r + 1}: --fetch_threads={way['threads'] or 'default'} ...", end="", file=sys.stderr,
                      flush=True)
                run = run_pipeline(manifest, way["threads"], server, args.images)
                way["runs"].append(run)
                print(f" {run['wall_s']:.1f} s, {run['most_waiting']} waiting at most", file=sys.stderr)
    finally:
        server.shutdown()
    for way in ways.values():
        way["median_s"] = statistics.median(r["wall_s"] for r in way["runs"])
    machine = bs.machine_info()
    machine.update(bn.versions())
    data = {"command": ("python benchmarks/bench_fetch.py " + " ".join(argv)).strip(), "machine": machine,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "images": args.images, "latency_ms": args.latency_ms,
            "rounds": args.rounds, "ways": ways}
    text = report(data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
