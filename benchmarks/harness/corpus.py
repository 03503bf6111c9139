"""The one corpus: catalog-like JPEGs from ``write_sample_catalog``, cached, and manifests over them.

``write_sample_catalog`` (crops of the two photos scikit-learn ships, every file a different image)
is deterministic: file i is the same whatever the count, so one folder per image size serves every
benchmark, and a request for fewer files than the folder holds takes the first ones. The package under
test must be importable (see :mod:`harness.code`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Iterable

from . import CACHE

CATALOGS = CACHE / "catalogs"
MARKER = "catalog.json"  # written last: the files it lists are complete


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def build_catalog(count: int, size: tuple[int, int]) -> dict:
    """The first ``count`` files of the cached catalog of ``size`` images, written if missing.

    Returns directory, distinct_files, size, total_mb, mean_jpeg_kb, build_s, cached and
    files (``[{"uri", "category"}]``, in catalog order: the categories alternate)."""
    directory = CATALOGS / f"{size[0]}x{size[1]}"
    marker = directory / MARKER
    known = json.loads(marker.read_text())["files"] if marker.exists() else []
    t0 = time.perf_counter()
    cached = len(known) >= count and all(Path(f["uri"]).exists() for f in known[:count])
    if not cached:
        from aisthetics_transforms.sample import write_sample_catalog

        manifest = write_sample_catalog(directory, count=count, size=size, broken=False)
        with open(manifest, newline="") as f:
            known = [{"uri": r["uri"], "category": r["category"]} for r in csv.DictReader(f)]
        marker.write_text(json.dumps({"size": f"{size[0]}x{size[1]}", "files": known}, indent=1) + "\n")
    files = known[:count]
    sizes = [Path(f["uri"]).stat().st_size for f in files]
    return {
        "directory": str(directory),
        "distinct_files": len(files),
        "size": f"{size[0]}x{size[1]}",
        "total_mb": sum(sizes) / 2**20,
        "mean_jpeg_kb": sum(sizes) / max(1, len(sizes)) / 1024,
        "build_s": time.perf_counter() - t0,
        "cached": cached,
        "files": files,
    }


def catalog_summary(catalog: dict) -> dict:
    """The catalog without its file list, for a results JSON."""
    return {k: v for k, v in catalog.items() if k != "files"}


def write_manifest(path: Path, rows: Iterable[tuple[str, str, str]]) -> dict:
    """A CSV manifest (image_id, uri, category). An unchanged file is not rewritten."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "uri", "category"])
    count, uris = 0, set()
    for image_id, uri, category in rows:
        writer.writerow([image_id, uri, category])
        count += 1
        uris.add(uri)
    text = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return {"path": str(path), "rows": count, "distinct_uris": len(uris), "bytes": len(text)}


def first_files_manifest(catalog: dict, count: int, path: Path) -> dict:
    """The first ``count`` files of a catalog, one row each (image ids listing-00000, ...)."""
    return write_manifest(
        path, ((f"listing-{i:05d}", f["uri"], f["category"]) for i, f in enumerate(catalog["files"][:count]))
    )


def paths_file(catalog: dict, count: int, path: Path) -> str:
    """The first ``count`` image paths of a catalog, one a line: what the scoring workers read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f["uri"] + "\n" for f in catalog["files"][:count])
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return str(path)
