"""Hostile manifests: a bad row is an error row in every format, a bad file of a glob is an
error row (or stops the run before it starts, in one line), never a crash mid-run."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import apache_beam as beam
import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from manifest_reading import pieces_as_rows, read_manifest_file
from PIL import Image

from aisthetics_transforms import manifest, records
from aisthetics_transforms.manifest import ManifestError, ManifestSpec, ReadImageGlob, ReadManifest, image_glob_refs
from aisthetics_transforms.records import ImageRef

PIPELINE_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
RUN_DATE = "2026-11-28"


def read_pieces(path, spec=None):
    """(refs, error rows) of one file, read as the pipeline does."""
    spec = spec or ManifestSpec(str(path))
    [file] = manifest.manifest_files(spec)
    return pieces_as_rows(manifest.plan_splits(file, spec), spec)


def storable(errors, keep=()):
    """The error rows as the errors table is written: this is where a lone surrogate crashed."""
    return pa.Table.from_pylist(errors, schema=records.errors_schema(keep)).num_rows == len(errors)


def stops_in_one_line(spec) -> str:
    with pytest.raises(ManifestError) as info:
        beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- bad rows


SURROGATES = (
    '{"uri": "/a.jpg", "image_id": "a", "category": "ok"}\n'
    '{"uri": "/b\\ud800.jpg", "image_id": "b"}\n'  # 2: in the uri
    '{"uri": "/c.jpg", "image_id": "c\\udfff"}\n'  # 3: in the id
    '{"uri": "/d.jpg", "image_id": "d", "category": "\\ud800x"}\n'  # 4: in a kept value
    '{"uri": "/e.jpg", "image_id": "e", "category": ["\\udc00"]}\n'  # 5: inside a kept list
    '{"uri": "/f.jpg", "image_id": "f", "ignored": "\\ud800"}\n'  # 6: in a column not used
    '{"uri": "/g.jpg", "image_id": "\\ud83d\\ude00"}\n'  # 7: a proper pair is fine
)


def test_lone_surrogates_in_json_lines_are_error_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(SURROGATES)
    spec = ManifestSpec(str(path), keep_columns=("category",))
    refs, errors = read_pieces(path, spec)
    assert [(r.image_id, r.uri) for r in refs] == [("a", "/a.jpg"), ("f", "/f.jpg"), ("\U0001f600", "/g.jpg")]
    assert [(e["image_id"], e["error_type"]) for e in errors] == [
        ("b", "InvalidEncoding"),
        (f"{path}:3", "InvalidEncoding"),
        ("d", "InvalidEncoding"),
        ("e", "InvalidEncoding"),
    ]
    assert [e["error_message"].split(" not valid")[0] for e in errors] == [
        "line 2: 'uri'",
        "line 3: 'image_id'",
        "line 4: 'category'",
        "line 5: 'category'",
    ]
    assert errors[0]["uri"] == "/b\ufffd.jpg" and errors[2]["category"] == "\ufffdx"
    assert storable(errors, ("category",))


def invalid_utf8(values, large=False):
    """A string column holding the bytes as they are, valid UTF-8 or not."""
    return pa.array(values, pa.large_binary() if large else pa.binary()).view(
        pa.large_string() if large else pa.string()
    )


@pytest.mark.parametrize("large", [False, True], ids=["string", "large_string"])
def test_invalid_utf8_in_parquet_strings_is_error_rows(tmp_path, large):
    path = tmp_path / "m.parquet"
    rows = 12
    uris = [f"/{i}.jpg".encode() for i in range(rows)]
    ids = [f"id{i}".encode() for i in range(rows)]
    kept = [b"k"] * rows
    uris[2], ids[5], kept[9] = b"/bad\xff.jpg", b"id\xc3", b"\xe9t\xe9"
    pq.write_table(
        pa.table(
            {
                "uri": invalid_utf8(uris, large),
                "image_id": invalid_utf8(ids, large),
                "category": invalid_utf8(kept, large),
            }
        ),
        path,
        row_group_size=4,
    )
    assert pq.read_schema(path).field("uri").type == (pa.large_string() if large else pa.string())
    spec = ManifestSpec(str(path), keep_columns=("category",))
    refs, errors = read_pieces(path, spec)
    assert sorted(r.image_id for r in refs) == sorted(f"id{i}" for i in range(rows) if i not in (2, 5, 9))
    assert [(e["image_id"], e["error_type"], e["error_message"][:18]) for e in errors] == [
        ("id2", "InvalidEncoding", "row 3: 'uri' not v"),
        (f"{path}:6", "InvalidEncoding", "row 6: 'image_id' "),
        ("id9", "InvalidEncoding", "row 10: 'category'"),
    ]
    assert storable(errors, ("category",))
    assert list(read_manifest_file(str(path), spec))  # the row reader does not crash either


# --------------------------------------------------------------------------- bad files


def jsonl_rows(count, start=0):
    return "".join(
        json.dumps({"uri": f"/img/{i}.jpg", "image_id": f"r{i}"}) + "\n" for i in range(start, start + count)
    )


def test_a_truncated_gzip_keeps_the_rows_before_and_says_where_it_stopped(tmp_path):
    data = gzip.compress(jsonl_rows(4000).encode())
    path = tmp_path / "m.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    refs, [error] = read_pieces(path)
    assert 0 < len(refs) < 4000
    assert [r.image_id for r in refs] == [f"r{i}" for i in range(len(refs))]  # a prefix, in order
    assert error["error_type"] == "UnreadableFile" and error["image_id"] == str(path)
    assert f"reading stopped after line {len(refs)} " in error["error_message"]
    assert "EOFError" in error["error_message"]
    # As the first file it passes the check before the run: its first rows are readable.
    beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(ManifestSpec(str(path)))


def test_a_compressed_file_broken_at_its_start_stops_the_run_before_it_starts(tmp_path):
    path = tmp_path / "m.csv.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
    message = stops_in_one_line(ManifestSpec(str(path)))
    assert str(path) in message and "cannot be read" in message


def test_a_corrupt_parquet_row_group_is_one_error_row(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": [f"/img/{i}.jpg" for i in range(30)]}), path, row_group_size=10)
    column = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 8 : start + column.total_compressed_size] = b"\xab" * (column.total_compressed_size - 8)
    path.write_bytes(bytes(data))
    refs, [error] = read_pieces(path)
    assert sorted(r.uri for r in refs) == sorted(f"/img/{i}.jpg" for i in [*range(10), *range(20, 30)])
    assert (error["image_id"], error["error_type"]) == (f"{path}:11", "UnreadableFile")
    assert error["error_message"].startswith(f"manifest {path} cannot be read from row 11: ")


@pytest.mark.slow  # a Beam pipeline
def test_bad_later_files_of_a_glob_are_error_rows_in_a_pipeline(tmp_path):
    (tmp_path / "a.csv").write_text("uri,image_id\n/a.jpg,a\n")
    (tmp_path / "b.csv").write_text("url,image_id\n/b.jpg,b\n")  # no uri column
    (tmp_path / "c.json").write_text(json.dumps([{"uri": "/c.jpg"}], indent=2))  # a JSON array
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    spec = ManifestSpec(str(tmp_path / "*"))
    with BeamTestPipeline(argv=PIPELINE_ARGS) as p:
        result = p | ReadManifest(spec)
        refs = result["refs"] | beam.FlatMap(records.table_refs, ())
        assert_that(refs, equal_to([ImageRef("a", "/a.jpg", {})]), label="Refs")
        headline = lambda message: message.split(";")[0].split(": ")[0]  # noqa: E731
        errors = result[records.ERRORS] | beam.Map(
            lambda r: (r["image_id"], r["error_type"], headline(r["error_message"]))
        )
        path = lambda name: str(tmp_path / name)  # noqa: E731
        assert_that(
            errors,
            equal_to(
                [
                    (path("b.csv"), "InvalidFile", f"manifest {path('b.csv')}"),
                    (path("c.json"), "InvalidFile", f"manifest {path('c.json')} is a JSON array, not JSON Lines"),
                    (path("d.parquet"), "InvalidFile", f"manifest {path('d.parquet')} is not a readable Parquet file"),
                ]
            ),
            label="Errors",
        )
        messages = result[records.ERRORS] | beam.Map(lambda r: r["error_message"]) | beam.Filter(lambda m: "'uri'" in m)
        assert_that(
            messages,
            equal_to(
                [
                    f"manifest {path('b.csv')}: column(s) 'uri' not found; it has 'url', 'image_id' "
                    "(see --uri_column, --id_column, --keep_columns); none of its rows are read"
                ]
            ),
            label="Message",
        )


# --------------------------------------------------------------------------- stop before the run


def write_manifests(tmp_path, rows):
    """The same rows as CSV, JSON Lines and Parquet."""
    columns = list(rows[0])
    (tmp_path / "m.csv").write_text(
        ",".join(columns) + "\n" + "".join(",".join(r[c] for c in columns) + "\n" for r in rows)
    )
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    return [tmp_path / f"m.{ext}" for ext in ("csv", "jsonl", "parquet")]


def test_a_missing_renamed_id_column_or_kept_column_stops_the_run_in_every_format(tmp_path):
    for path in write_manifests(tmp_path, [{"uri": "/a.jpg", "sku": "1", "category": "x"}] * 3):
        message = stops_in_one_line(ManifestSpec(str(path), id_column="id"))
        assert str(path) in message and "'id' not found" in message and "'uri', 'sku', 'category'" in message
        message = stops_in_one_line(ManifestSpec(str(path), keep_columns=("categroy",)))
        assert "'categroy' not found" in message and "'category'" in message
        if path.suffix == ".jsonl":
            assert "its first 3 row(s) have" in message
        # The default id column may be absent: the uri is the id.
        beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(
            ManifestSpec(str(path), id_column="sku", keep_columns=("category",))
        )
        refs, errors = read_pieces(path, ManifestSpec(str(path)))
        assert [r.image_id for r in refs] == ["/a.jpg"] * 3 and errors == []


def test_a_json_lines_column_seen_only_later_passes_with_a_null_first(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"uri": "/a.jpg", "note": null}\n{"uri": "/b.jpg"}\n{"uri": "/c.jpg", "note": "late"}\n')
    spec = ManifestSpec(str(path), keep_columns=("note",))
    beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(spec)  # the graph's check of the columns passes
    refs, errors = read_pieces(path, spec)
    assert [(r.uri, r.kept["note"]) for r in refs] == [("/a.jpg", None), ("/b.jpg", None), ("/c.jpg", "late")]
    assert errors == []


@pytest.mark.parametrize(
    "text",
    [
        json.dumps([{"uri": "/a.jpg"}, {"uri": "/b.jpg"}], indent=2),  # pretty-printed
        json.dumps([{"uri": "/a.jpg"}, {"uri": "/b.jpg"}]),  # on one line
        "\ufeff  \n" + json.dumps([{"uri": "/a.jpg"}], indent=1),  # after a BOM and a blank line
    ],
)
def test_a_json_array_is_one_clear_error(tmp_path, text):
    path = tmp_path / "m.json"
    path.write_text(text)
    message = stops_in_one_line(ManifestSpec(str(path)))
    assert (
        message == f"manifest {path} is a JSON array, not JSON Lines; convert it with jq -c '.[]' {path} > rows.jsonl"
    )


def test_a_json_lines_row_that_is_an_array_is_still_only_an_error_row(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('["/a.jpg", "a"]\n{"uri": "/b.jpg"}\n')
    beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(ManifestSpec(str(path)))
    refs, [error] = read_pieces(path)
    assert [r.uri for r in refs] == ["/b.jpg"] and error["error_type"] == "InvalidRow"


def test_a_path_that_exists_literally_is_that_file_not_a_glob(tmp_path):
    (tmp_path / "m[1].csv").write_text("uri\n/literal.jpg\n")
    (tmp_path / "m1.csv").write_text("uri\n/globbed.jpg\n")
    spec = ManifestSpec(str(tmp_path / "m[1].csv"))
    assert manifest.list_manifest_files(spec) == [str(tmp_path / "m[1].csv")]
    assert [r.uri for r in read_pieces(tmp_path / "m[1].csv")[0]] == ["/literal.jpg"]
    assert manifest.list_manifest_files(ManifestSpec(str(tmp_path / "m[0-9].csv"))) == [str(tmp_path / "m1.csv")]
    (tmp_path / "img[1].jpg").write_bytes(b"x")
    assert [r.uri for r in image_glob_refs(str(tmp_path / "img[1].jpg"))] == [str(tmp_path / "img[1].jpg")]


# --------------------------------------------------------------------------- --images


@pytest.mark.slow  # a Beam pipeline
def test_images_with_a_relative_glob_are_stored_as_absolute_paths(tmp_path, monkeypatch):
    (tmp_path / "photos").mkdir()
    for name in ("b.jpg", "a.jpg"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    expected = [str(tmp_path / "photos" / n) for n in ("a.jpg", "b.jpg")]
    assert [r.uri for r in image_glob_refs("photos/*.jpg")] == expected
    read = ReadImageGlob("photos/*.jpg")
    monkeypatch.chdir("/")  # the graph holds the absolute pattern, wherever it runs
    with BeamTestPipeline(argv=PIPELINE_ARGS) as p:
        refs = p | read
        assert_that(
            refs["refs"] | beam.FlatMap(records.table_refs, ()) | beam.Map(lambda r: (r.image_id, r.uri)),
            equal_to([(e, e) for e in expected]),
        )


# --------------------------------------------------------------------------- a whole night


@pytest.mark.slow  # a whole-pipeline run
def test_a_night_of_hostile_manifests_succeeds_with_every_bad_row_an_error_row(tmp_path, litert_model):
    """``python -m pipeline`` over a glob of the files above: exit 0, good rows scored, one
    error row per bad row or file, every table written."""
    images = tmp_path / "img"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (40 * i, 90, 200 - 40 * i)).save(images / f"good{i}.jpg")
    good = [str(images / f"good{i}.jpg") for i in range(4)]
    root = tmp_path / "manifests"
    root.mkdir()
    (root / "a-good.csv").write_text(f"image_id,uri,category\ng0,{good[0]},x\ng1,{good[1]},\n")
    (root / "b-surrogates.jsonl").write_text(
        json.dumps({"uri": good[2], "image_id": "g2"})
        + "\n"
        + SURROGATES.replace("/a.jpg", good[3]).replace('"a"', '"g3"')
    )
    pq.write_table(
        pa.table(
            {
                "uri": invalid_utf8([good[0].encode(), b"/x\xff.jpg"]),
                "image_id": invalid_utf8([b"p0", b"p1"]),
                "category": invalid_utf8([b"\xff", b"y"]),
            }
        ),
        root / "c-invalid-utf8.parquet",
    )
    truncated = gzip.compress(
        "".join(json.dumps({"uri": good[1], "image_id": f"t{i}"}) + "\n" for i in range(3000)).encode()
    )
    (root / "d-truncated.jsonl.gz").write_bytes(truncated[: len(truncated) // 2])
    (root / "e-array.json").write_text(json.dumps([{"uri": good[0]}], indent=2))
    (root / "f-no-uri.csv").write_text("url\n/a.jpg\n")
    output = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            f"--manifest={root}/*",
            f"--output={output}",
            f"--run_date={RUN_DATE}",
            "--keep_columns=category",
            "--direct_running_mode=in_memory",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = duckdb.sql(f"SELECT image_id, category FROM read_parquet('{output}/scores/*/*.parquet')").fetchall()
    errors = duckdb.sql(f"SELECT image_id, error_type FROM read_parquet('{output}/errors/*/*.parquet')").fetchall()
    truncated_ids = {i for i, _ in scores if i.startswith("t")}
    assert 0 < len(truncated_ids) < 3000 and truncated_ids == {f"t{i}" for i in range(len(truncated_ids))}
    assert sorted(s for s in scores if not s[0].startswith("t")) == [
        ("g0", "x"),
        ("g1", None),
        ("g2", None),
        ("g3", "ok"),
    ]  # g1's empty CSV cell is null
    assert sorted(e[1] for e in errors) == sorted(
        ["InvalidEncoding"] * 6 + ["UnreadableFile", "InvalidFile", "InvalidFile"] + ["NotFound", "NotFound"]
    )  # /f.jpg and /g.jpg of SURROGATES do not exist
    summary = json.loads((output / "runs" / f"dt={RUN_DATE}" / "summary.json").read_text())
    assert summary["rows"] == len(scores) + len(errors)
