"""Manifests read in pieces: planning and piecewise reading equal reading each file whole."""

from __future__ import annotations

import bz2
import gzip
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from manifest_reading import pieces_as_rows, read_manifest_file, unique_ids

from aisthetics_transforms import manifest, records
from aisthetics_transforms.manifest import ManifestSpec, ManifestSplit, ReadManifest
from aisthetics_transforms.manifest.jsonl_format import jsonl_lines

PIPELINE_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


def lines_of(data: bytes) -> list[tuple[int, bytes]]:
    """The oracle: (offset, line) of every line, cut at each b"\\n" by hand."""
    lines, offset = [], 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        end = len(data) if end < 0 else end + 1
        lines.append((offset, data[offset:end]))
        offset = end
    if lines and lines[0][1].startswith(b"\xef\xbb\xbf"):
        lines[0] = (0, lines[0][1][3:])
    return lines


TRICKY_JSONL = {
    "plain": "".join(json.dumps({"uri": f"/img/{i}.jpg", "image_id": f"id{i}"}) + "\n" for i in range(12)),
    "CRLF": '{"uri": "/a.jpg"}\r\n{"uri": "/b.jpg"}\r\n\r\n{"uri": "/c.jpg"}\r\n',
    "BOM": '\ufeff{"uri": "/a.jpg"}\n{"uri": "/b.jpg"}\n',
    "blank lines": '\n\n{"uri": "/a.jpg"}\n\n   \n{"uri": "/b.jpg"}\n\n',
    "no final newline": '{"uri": "/a.jpg"}\n{"uri": "/b.jpg"}',
    "multibyte": '{"uri": "/caf\u00e9/\u732b.jpg", "note": "\u00e9\u00e9\u00e9"}\n{"uri": "/\U0001f600.jpg"}\n',
    "bad rows": '{"uri": "/a.jpg"}\nnot json\n["/b.jpg"]\n{"image_id": "x"}\n{"uri": "/c.jpg"}\n',
    "one line": '{"uri": "/only.jpg"}\n',
    "newlines only": "\n\n\n",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(TRICKY_JSONL))
def test_byte_ranges_read_every_line_exactly_once(tmp_path, name):
    """Every range size from 1 byte to past the end: boundaries at every byte, inside
    multibyte characters, exactly on and just after each newline."""
    data = TRICKY_JSONL[name].encode()
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    expected = lines_of(data)
    for size in range(1, len(data) + 2):
        got = []
        for start in range(0, max(len(data), 1), size):
            with manifest.open_manifest(str(path)) as stream:
                got += jsonl_lines(stream, "byte", (start, min(start + size, len(data))))
        assert got == expected, f"range size {size}"


@pytest.mark.parametrize("name", sorted(TRICKY_JSONL))
def test_planned_jsonl_pieces_give_the_rows_of_one_piece(tmp_path, name):
    data = TRICKY_JSONL[name].encode()
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    spec = ManifestSpec(str(path), keep_columns=("note",))
    for size in (1, 7, 19, max(len(data), 1)):
        [file] = manifest.manifest_files(spec, jsonl_range_bytes=size)
        pieces = list(manifest.plan_splits(file, spec, jsonl_range_bytes=size))
        assert len(pieces) == (-(-len(data) // size) if file.unit == "byte" else 1)
        whole = [ManifestSplit(file, byte_range=(0, len(data)))] if file.unit == "byte" else [ManifestSplit(file)]
        assert pieces_as_rows(pieces, spec) == pieces_as_rows(whole, spec), f"range size {size}"
    # Read by lines (one piece), the same rows at line numbers instead of byte offsets.
    [file] = manifest.manifest_files(spec)
    assert file.unit == "line"
    by_line = pieces_as_rows(manifest.plan_splits(file, spec), spec)
    by_byte = pieces_as_rows([ManifestSplit(file._replace(unit="byte"), byte_range=(0, len(data)))], spec)
    same = lambda rows: ([(r.image_id, r.uri, r.kept) for r in rows[0]], [e["error_type"] for e in rows[1]])  # noqa: E731
    assert same(by_line) == same(by_byte)
    assert by_line[0] == [r for r in read_manifest_file(str(path), spec) if isinstance(r, records.ImageRef)]


def test_byte_positions_point_at_the_line(tmp_path):
    data = b'{"uri": "/a.jpg"}\n{"uri": "/b.jpg", "image_id": "b"}\nnot json\n'
    path = tmp_path / "m.jsonl"
    path.write_bytes(data)
    spec = ManifestSpec(str(path))
    [file] = manifest.manifest_files(spec, jsonl_range_bytes=10)
    assert file.unit == "byte"
    refs, [error] = pieces_as_rows(manifest.plan_splits(file, spec, jsonl_range_bytes=10), spec)
    offset, second = data.index(b"not json"), data.index(b'{"uri": "/b')
    assert [r.source for r in refs] == [f"{path}:0", f"{path}:{second}"]
    assert error["image_id"] == f"{path}:byte {offset}"
    assert error["error_message"].startswith(f"byte {offset}: invalid JSON")


def write_parquet(path, rows: int, row_group_size: int, **extra):
    table = pa.table(
        {
            "uri": [None if i % 7 == 3 else f"/img/{i}.jpg" for i in range(rows)],
            "image_id": [f"id{i}" if i % 5 else None for i in range(rows)],
            "category": [f" c{i % 3}" if i % 4 == 0 else f"c{i % 3}" for i in range(rows)],
            **extra,
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return str(path)


def test_parquet_row_groups_are_pieces_numbered_from_the_footer(tmp_path):
    path = write_parquet(tmp_path / "m.parquet", rows=23, row_group_size=5)
    spec = ManifestSpec(path, keep_columns=("category",))
    [file] = manifest.manifest_files(spec)
    pieces = list(manifest.plan_splits(file, spec))
    assert [(p.row_group, p.first_row) for p in pieces] == [(0, 1), (1, 6), (2, 11), (3, 16), (4, 21)]
    refs, errors = pieces_as_rows(pieces, spec)
    whole = list(read_manifest_file(path, spec))
    assert sorted(refs) == sorted(r for r in whole if isinstance(r, records.ImageRef))
    assert errors == [r for r in whole if isinstance(r, dict)]
    assert len(refs) + len(errors) == 23 and len(errors) == 3  # rows 4, 11, 18 have no uri
    assert [e["image_id"] for e in errors] == ["id3", f"{path}:11", "id17"]  # row 11 has no id either
    assert {r.source for r in refs} == {f"{path}:{i + 1}" for i in range(23) if i % 7 != 3}


def test_empty_files_have_no_pieces_or_rows(tmp_path):
    empty_parquet = str(tmp_path / "e.parquet")
    pq.write_table(pa.table({"uri": pa.array([], pa.string())}), empty_parquet)
    (tmp_path / "e.jsonl").write_bytes(b"")
    (tmp_path / "e.csv").write_bytes(b"")
    for name in ("e.parquet", "e.jsonl", "e.csv"):
        spec = ManifestSpec(str(tmp_path / name))
        [file] = manifest.manifest_files(spec, jsonl_range_bytes=1)
        assert pieces_as_rows(manifest.plan_splits(file, spec, jsonl_range_bytes=1), spec) == ([], []), name


def test_csv_and_compressed_files_are_one_piece(tmp_path):
    rows = "".join(json.dumps({"uri": f"/{i}.jpg"}) + "\n" for i in range(200)).encode()
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(rows))
    (tmp_path / "b.jsonl.bz2").write_bytes(bz2.compress(rows))
    (tmp_path / "c.csv").write_text("uri\n" + "".join(f"/{i}.jpg\n" for i in range(200)))
    spec = ManifestSpec(str(tmp_path / "*"))
    files = manifest.manifest_files(spec, jsonl_range_bytes=64)
    assert [f.unit for f in files] == ["line"] * 3  # line numbers, though larger than a range
    for file in files:
        [piece] = manifest.plan_splits(file, spec, jsonl_range_bytes=64)
        refs, errors = pieces_as_rows([piece], spec)
        assert (piece.byte_range, piece.row_group, len(refs), errors) == (None, None, 200, [])
        assert refs[0].source == f"{file.path}:{2 if file.format == 'csv' else 1}"


@pytest.mark.slow  # a Beam pipeline
def test_pipeline_reads_a_parquet_and_a_jsonl_in_several_pieces_as_in_one(tmp_path):
    """Row groups and byte ranges are separate work items (the manifest_splits counter),
    and the refs and errors equal reading each file as one piece, duplicates included:
    the first row of an id in manifest order wins across pieces and files."""
    write_parquet(tmp_path / "a.parquet", rows=40, row_group_size=8)
    lines = [json.dumps({"uri": f"/j/{i}.jpg", "image_id": f"j{i}", "category": f"k{i}"}) for i in range(60)]
    lines[3] = json.dumps({"uri": "/j/first.jpg", "image_id": "twice"})
    lines[50] = json.dumps({"uri": "/j/second.jpg", "image_id": "twice"})  # several ranges later
    lines[55] = json.dumps({"uri": "/j/from-parquet.jpg", "image_id": "id37"})  # a.parquet's row 38
    lines[20] = "{broken"
    data = ("\n".join(lines) + "\n").encode()
    (tmp_path / "b.jsonl").write_bytes(data)
    spec = ManifestSpec(str(tmp_path / "*"), keep_columns=("category",))
    range_bytes = 400

    files = manifest.manifest_files(spec, jsonl_range_bytes=range_bytes)
    assert [(f.format, f.unit) for f in files] == [("parquet", "row"), ("jsonl", "byte")]
    one_piece = [ManifestSplit(files[0]), ManifestSplit(files[1], byte_range=(0, len(data)))]
    expected_refs, expected_errors = pieces_as_rows(one_piece, spec)
    first_of = {}
    for ref in expected_refs:  # files are in manifest order, rows within a file too
        first_of.setdefault(ref.image_id, ref)
    duplicates = [r for r in expected_refs if first_of[r.image_id] is not r]
    assert sorted(r.uri for r in duplicates) == ["/j/from-parquet.jpg", "/j/second.jpg"]
    kept = sorted((r.image_id, r.uri, r.kept["category"]) for r in first_of.values())
    pieces = 5 + -(-len(data) // range_bytes)
    assert -(-len(data) // range_bytes) >= 5

    p = BeamTestPipeline(argv=PIPELINE_ARGS)
    read = ReadManifest(spec, jsonl_range_bytes=range_bytes)
    result = unique_ids(p | read, read.files, ("category",))
    refs = result["refs"] | beam.Map(lambda r: (r.image_id, r.uri, r.kept["category"]))
    assert_that(refs, equal_to(kept), label="Refs")
    errors = result[records.ERRORS]
    is_duplicate = lambda row: row["error_type"] == "DuplicateImageId"  # noqa: E731
    assert_that(errors | beam.Filter(lambda r: not is_duplicate(r)), equal_to(expected_errors), label="Errors")
    second_at, first_at = data.index(b'{"uri": "/j/second.jpg"'), data.index(b'{"uri": "/j/first.jpg"')
    third_at = data.index(b'{"uri": "/j/from-parquet.jpg"')
    assert_that(
        errors | beam.Filter(is_duplicate) | beam.Map(lambda r: (r["uri"], r["error_message"])),
        equal_to(
            [
                (
                    "/j/second.jpg",
                    f"{files[1].path}:byte {second_at}: image_id 'twice' (uri /j/second.jpg) is already used at "
                    f"{files[1].path}:byte {first_at}; only the first row of an image_id is scored",
                ),
                (
                    "/j/from-parquet.jpg",
                    f"{files[1].path}:byte {third_at}: image_id 'id37' (uri /j/from-parquet.jpg) is already used at "
                    f"{files[0].path}:38; only the first row of an image_id is scored",
                ),
            ]
        ),
        label="Duplicates",
    )
    run = p.run()
    run.wait_until_finish()
    counters = run.metrics().query(MetricsFilter().with_namespace("aisthetics").with_name("manifest_splits"))[
        "counters"
    ]
    assert sum(c.committed for c in counters) == pieces
