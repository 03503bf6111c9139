"""Manifest pieces read from gs:// (a real GCS API, gcp-storage-emulator on loopback) give
the rows the same files give on disk."""

from __future__ import annotations

import gzip
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gcs_emulator import gcs  # noqa: F401  (pytest fixture)
from manifest_reading import pieces_as_rows

from aisthetics_transforms import manifest
from aisthetics_transforms.manifest import ManifestSpec

pytestmark = pytest.mark.slow  # the GCS emulator


def manifest_files_in(tmp_path) -> dict[str, bytes]:
    jsonl = (
        "".join(
            json.dumps({"uri": f"gs://b/{i}.jpg", "image_id": f"j{i}", "note": "\u00e9" * (i % 5)}) + "\r\n"
            for i in range(300)
        )
        + "not json\n"
        + '{"uri": "gs://b/last.jpg"}'
    )
    table = pa.table(
        {"uri": [f"gs://b/p{i}.jpg" if i % 9 else None for i in range(50)], "note": [f"n{i}" for i in range(50)]}
    )
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=7)
    return {
        "a.jsonl": jsonl.encode(),
        "b.parquet": (tmp_path / "p.parquet").read_bytes(),
        "c.csv.gz": gzip.compress(b"uri,note\n" + b"".join(b"gs://b/c%d.jpg,x\n" % i for i in range(100))),
        "d[1].csv": b"uri,note\ngs://b/literal.jpg,\n",
    }


def rows_by_file(pattern: str, spec_of, range_bytes: int) -> list:
    """Per file: (refs with sources relative to the pattern's folder, error rows, piece count)."""
    spec = spec_of(pattern)
    folder = pattern.rsplit("/", 1)[0] + "/"
    result = []
    for file in manifest.manifest_files(spec, jsonl_range_bytes=range_bytes):
        pieces = list(manifest.plan_splits(file, spec, jsonl_range_bytes=range_bytes))
        refs, errors = pieces_as_rows(pieces, spec)
        refs = [r._replace(source=r.source.replace(folder, "")) for r in refs]
        errors = [{k: (v.replace(folder, "") if isinstance(v, str) else v) for k, v in e.items()} for e in errors]
        result.append((file.path.replace(folder, ""), file.unit, len(pieces), refs, errors))
    return result


def test_pieces_from_gcs_equal_pieces_from_disk(gcs, tmp_path):
    root = f"manifest-{uuid.uuid4().hex[:8]}"
    local = tmp_path / "local"
    local.mkdir()
    for name, data in manifest_files_in(tmp_path).items():
        (local / name).write_bytes(data)
        gcs.upload_bytes(f"{root}/{name}", data)
    spec_of = lambda pattern: ManifestSpec(pattern, keep_columns=("note",))  # noqa: E731
    on_gcs = rows_by_file(gcs.uri(f"{root}/*"), spec_of, range_bytes=1000)
    on_disk = rows_by_file(f"{local}/*", spec_of, range_bytes=1000)
    assert on_gcs == on_disk
    assert [(name, unit, pieces) for name, unit, pieces, _, _ in on_gcs] == [
        ("a.jsonl", "byte", -(-len(manifest_files_in(tmp_path)["a.jsonl"]) // 1000)),
        ("b.parquet", "row", 8),
        ("c.csv.gz", "line", 1),
        ("d[1].csv", "line", 1),
    ]
    assert [len(refs) for _, _, _, refs, _ in on_gcs] == [301, 44, 100, 1]
    # A literal name with glob characters is that object.
    literal = manifest.list_manifest_files(ManifestSpec(gcs.uri(f"{root}/d[1].csv")))
    assert literal == [gcs.uri(f"{root}/d[1].csv")]
