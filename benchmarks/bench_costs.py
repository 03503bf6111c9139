"""A night costs what changed: the requests an incremental night makes, counted, per way of knowing
what did not change.

    python benchmarks/bench_costs.py [--gcs-objects 20000] [--http-images 2000] [--commit REV] [--out FILE]

GCS: a gcp-storage-emulator seeded with ``--gcs-objects`` objects under four prefixes (tests/gcs_emulator.py;
four distinct photos among them, so a first night infers four images), behind a proxy that records every
request and pages listings as GCS does (1,000 objects a page). Night 1 scores them all and records a
declared version per row (``--version_column``). Then one object is rewritten with another photo and one is
deleted, and night 2 runs three ways, each on a copy of night 1's output:

- ``each``: ``--list_gcs_versions=false``, one metadata request per object (the way before listing);
- ``listing``: the default, the generations read by listing;
- ``declared``: ``--version_column``, the rewritten row declaring a new version and the deleted one "gone".

HTTP: the same with ``--http-images`` uris on a loopback server that gives ETags and counts every request
(night 2 ``each``: a HEAD per uri; ``declared``: none), one uri's bytes replaced between the nights.

Goals (request counts are exact, not timings): an unchanged image costs at most 0.01 requests with listing
and none with a declared version, on GCS and over HTTP; every night accounts for every row once, the
rewritten image is scored again and the deleted one is a NotFound row. Report: costs.md (``--out``; ``--reference``: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

from harness import CACHE, REPO
from harness.code import checkout, code_line, source_of
from harness.corpus import build_catalog
from harness.machine import machine_info
from harness.pipeline_runs import accounting_problems, loopback_flags, pipeline_command, read_summary
from harness.process import child_env, describe, run_timed
from harness.report import add_output_options, command_line, goal_line, machine_line, output_path, write_results
from harness.servers import ImageServer
from harness.workers import warm_model_cache

sys.path.insert(0, str(REPO / "tests"))
from gcs_emulator import counting_proxy, seeded_emulator  # noqa: E402  (the tests' emulator helpers)

WORK = CACHE / "costs"
NIGHTS = ("2026-11-27", "2026-11-28")
PREFIXES = ("shoes", "bags", "hats", "watches")
GOAL_LISTING = 0.01  # requests per unchanged image
VARIANTS = {
    "each": ("a version check per image", ["--list_gcs_versions=false"]),
    "listing": ("versions by listing (the default)", []),
    "declared": ("declared versions", ["--version_column=version"]),
}


def write_manifest(path: Path, uris: list[str], versions: list[str]) -> Path:
    with open(path, "w") as f:
        f.write("image_id,uri,version\n")
        f.writelines(f"row-{i:07d},{uri},{version}\n" for i, (uri, version) in enumerate(zip(uris, versions)))
    return path


def gcs_kinds(requests: list, changed: tuple = ()) -> Counter:
    """The requests a night made of GCS, by kind (what each is billed as); ``for_changed``: those
    that name one of the ``changed`` objects (a listing names none: it is counted as the others')."""
    kinds: Counter = Counter()
    quoted = [name.replace("/", "%2F") for name in changed]
    for method, path in requests:
        if method != "GET":
            kinds["write"] += 1
            continue
        kinds["media" if "alt=media" in path else "list" if "/o?" in path else "metadata"] += 1
        kinds["for_changed"] += any(name in path for name in quoted)
    return kinds


class Nights:
    """Night 1 once, then night 2 a few ways on copies of night 1's output; each a timed ``python -m pipeline``."""

    def __init__(self, name: str, source: Path, extra: list[str]):
        self.name, self.source, self.extra = name, source, extra
        self.env = child_env(source)
        self.extra += loopback_flags(source, self.env)

    def run(self, key: str, manifest: Path, output: Path, run_date: str, *flags: str) -> dict:
        env = {**self.env, **{k: os.environ[k] for k in ("STORAGE_EMULATOR_HOST",) if k in os.environ}}
        cmd = pipeline_command(str(manifest), output, run_date, "--incremental", *self.extra, *flags)
        print(f"  {self.name} {key} ...", end="", file=sys.stderr, flush=True)
        run = run_timed(cmd, env=env, cwd=self.source, log_dir=WORK / "logs", name=f"{self.name}-{key}")
        print(f" {describe(run)}", file=sys.stderr, flush=True)
        return {"wall_s": run["process_wall_s"], "cpu_s": run["process_cpu_s"], "command": run["command"]}


def gcs_nights(args, source: Path, photos: list[bytes]) -> dict:
    n = args.gcs_objects
    names = [f"catalog/{PREFIXES[i % 4]}/{i:07d}.jpg" for i in range(n)]
    rewritten, deleted = names[7], names[8]
    work = WORK / "gcs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.perf_counter()
    objects = {name: photos[i % 4] for i, name in enumerate(names)}
    results: dict = {"objects": n}
    with seeded_emulator(objects, work) as gcs, counting_proxy(gcs.host) as proxy:
        results["seed_s"] = time.perf_counter() - started
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.host
        uris = [gcs.uri(name) for name in names]
        nights = Nights("gcs", source, [])
        first = work / "night1"
        proxy.requests.clear()
        results["night1"] = nights.run(
            "night1", write_manifest(work / "m1.csv", uris, ["v1"] * n), first, NIGHTS[0], "--version_column=version"
        )
        results["night1"]["requests"] = dict(gcs_kinds(proxy.requests))
        gcs.upload_bytes(rewritten, photos[4])
        gcs._blob(deleted).delete()
        versions = ["v1"] * n
        versions[7], versions[8] = "v2", "gone"
        manifest = write_manifest(work / "m2.csv", uris, versions)
        for key, (_, flags) in VARIANTS.items():
            output = work / f"night2-{key}"
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(first, output)
            proxy.requests.clear()
            results[key] = nights.run(key, manifest, output, NIGHTS[1], *flags)
            results[key]["requests"] = dict(gcs_kinds(proxy.requests, (rewritten, deleted)))
            results[key]["summary"] = read_summary(output, NIGHTS[1])
            results[key]["problems"] = night_problems(output, n, changed="row-0000007", gone="row-0000008")
    return results


def http_nights(args, source: Path, photos: list[bytes]) -> dict:
    n = args.http_images
    paths = [f"/{PREFIXES[i % 4]}/{i:07d}.jpg" for i in range(n)]
    server = ImageServer({path: photos[i % 4] for i, path in enumerate(paths)})
    work = WORK / "http"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict = {"images": n}
    try:
        uris = [server.base_url + path for path in paths]
        nights = Nights("http", source, [])
        first = work / "night1"
        server.reset()
        results["night1"] = nights.run(
            "night1", write_manifest(work / "m1.csv", uris, ["v1"] * n), first, NIGHTS[0], "--version_column=version"
        )
        results["night1"]["requests"] = server.snapshot()
        server.responses[paths[7]] = ImageServer({"/x": photos[4]}).responses["/x"]  # replaced bytes, new ETag
        versions = ["v1"] * n
        versions[7] = "v2"
        manifest = write_manifest(work / "m2.csv", uris, versions)
        for key in ("each", "declared"):
            output = work / f"night2-{key}"
            shutil.rmtree(output, ignore_errors=True)
            shutil.copytree(first, output)
            server.reset()
            results[key] = nights.run(key, manifest, output, NIGHTS[1], *VARIANTS[key][1])
            results[key]["requests"] = {**server.snapshot(), "for_changed": server.per_path[paths[7]]}
            results[key]["summary"] = read_summary(output, NIGHTS[1])
            results[key]["problems"] = night_problems(output, n, changed="row-0000007")
    finally:
        server.close()
    return results


def night_problems(output: Path, rows: int, changed: str, gone: str | None = None) -> list[str]:
    """Accounting, and what became of the changed and the deleted image."""
    import pyarrow.parquet as pq

    problems = accounting_problems(
        output, NIGHTS[1], [f"row-{i:07d}" for i in range(rows)], scored=1, errors_by_stage={"fetch": 1} if gone else {}
    )
    scores = pq.read_table(str(output / "scores" / f"dt={NIGHTS[1]}")).to_pylist()
    row = next((r for r in scores if r["image_id"] == changed), None)
    if row is None or row["reused"]:
        problems.append(f"{changed} (its bytes replaced) was not scored again")
    if gone:
        errors = pq.read_table(str(output / "errors" / f"dt={NIGHTS[1]}")).to_pylist()
        if [(e["image_id"], e["error_type"]) for e in errors] != [(gone, "NotFound")]:
            problems.append(f"errors {[(e['image_id'], e['error_type']) for e in errors]}, expected {gone} NotFound")
    return problems


def per_unchanged(requests: dict, unchanged: int) -> float:
    """Requests per unchanged image: all a night made but those naming a changed image."""
    total = (
        requests["requests"]
        if "requests" in requests
        else sum(requests.get(k, 0) for k in ("list", "metadata", "media"))
    )
    return (total - requests.get("for_changed", 0)) / unchanged


def report(data: dict) -> str:
    g, h = data["gcs"], data["http"]
    unchanged_gcs, unchanged_http = g["objects"] - 2, h["images"] - 1
    lines = [
        "# What an incremental night asks of the stores",
        "",
        machine_line(data["machine"]),
        "",
        f"Command: `{data['command']}` ({data['total_wall_s'] / 60:.1f} min in all). {code_line(data['code'])}",
        "",
        f"GCS: {g['objects']:,} objects under {len(PREFIXES)} prefixes of one bucket on gcp-storage-emulator, every "
        "request recorded by a proxy that pages listings at 1,000 objects as GCS does. Between the nights one object "
        f"is rewritten and one deleted, so {unchanged_gcs:,} are unchanged. HTTP: {h['images']:,} uris on a loopback "
        f"server with ETags, one replaced. Each night is a fresh `python -m pipeline --incremental` on the local runner. "
        "Requests per unchanged image: all those of the night but the ones naming a changed image (a listing names "
        "none, so it counts in full).",
        "",
        "| store | night | list | metadata (HEAD) | media (GET) | of which for the changed | requests per unchanged "
        "image | wall (s) | summary: reused / scored / errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for key in ("night1", *VARIANTS):
        r = g[key]
        q = r["requests"]
        per = "" if key == "night1" else f"{per_unchanged(q, unchanged_gcs):.4f}"
        s = r.get("summary") or {}
        counts = f"{s['reused']:,} / {s['scored']} / {s['errors']}" if s else ""
        label = "night 1" if key == "night1" else f"night 2, {VARIANTS[key][0]}"
        lines.append(
            f"| GCS | {label} | {q.get('list', 0):,} | {q.get('metadata', 0):,} | {q.get('media', 0):,} | "
            f"{q.get('for_changed', '')} | {per} | "
            f"{r['wall_s']:.1f} | {counts} |"
        )
    for key in ("night1", "each", "declared"):
        r = h[key]
        q = r["requests"]
        per = "" if key == "night1" else f"{per_unchanged(q, unchanged_http):.4f}"
        s = r.get("summary") or {}
        counts = f"{s['reused']:,} / {s['scored']} / {s['errors']}" if s else ""
        label = "night 1" if key == "night1" else f"night 2, {VARIANTS[key][0]}"
        gets = q["requests"] - q["heads"]
        changed = q.get("for_changed", "")
        lines.append(
            f"| HTTP | {label} | | {q['heads']:,} | {gets:,} | {changed} | {per} | {r['wall_s']:.1f} | {counts} |"
        )
    lines += ["", "## Goals", "", "```", *data["goal_lines"], "```", ""]
    return "\n".join(lines)


def goals(data: dict) -> list[str]:
    g, h = data["gcs"], data["http"]
    unchanged_gcs, unchanged_http = g["objects"] - 2, h["images"] - 1
    each, listing, declared = (per_unchanged(g[key]["requests"], unchanged_gcs) for key in VARIANTS)
    http_each, http_declared = (per_unchanged(h[key]["requests"], unchanged_http) for key in ("each", "declared"))
    problems = [
        f"{store} {key}: {p}"
        for store, d in (("GCS", g), ("HTTP", h))
        for key in d
        if isinstance(d[key], dict)
        for p in d[key].get("problems", [])
    ]
    return [
        f"INFO  a version check per image: {each:.4f} requests per unchanged image on GCS, {http_each:.4f} over HTTP",
        goal_line(
            listing <= GOAL_LISTING, f"GCS, listing: {listing:.4f} requests per unchanged image (<= {GOAL_LISTING})"
        ),
        goal_line(declared == 0, f"GCS, declared versions: {declared:.4f} requests per unchanged image (0)"),
        goal_line(http_declared == 0, f"HTTP, declared versions: {http_declared:.4f} requests per unchanged image (0)"),
        goal_line(
            not problems,
            "every row in one table once; the changed image scored again; the deleted one NotFound"
            + (f": {problems}" if problems else ""),
        ),
    ]


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gcs-objects", type=int, default=20_000, help="objects of the GCS catalog (default 20,000)")
    parser.add_argument("--http-images", type=int, default=2_000, help="uris of the HTTP catalog (default 2,000)")
    parser.add_argument("--commit", help="measure this commit (extracted with git archive) instead of the working tree")
    add_output_options(parser, "costs.md")
    args = parser.parse_args(argv)
    if args.gcs_objects < 100 or args.http_images < 100:
        parser.error("--gcs-objects and --http-images must be at least 100")
    started = time.perf_counter()
    code = checkout(args.commit)
    source = source_of(code)
    warm_model_cache(WORK / "logs", source)
    photos = [Path(f["uri"]).read_bytes() for f in build_catalog(5, (800, 600))["files"]]
    data = {
        "machine": machine_info(),
        "command": command_line(__file__, argv),
        "code": code,
        "args": vars(args),
        "gcs": gcs_nights(args, source, photos),
        "http": http_nights(args, source, photos),
    }
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_results(output_path(args), report(data), data)


if __name__ == "__main__":
    main()
