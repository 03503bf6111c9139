"""Manifest stage: real CSV, JSON Lines and Parquet files in tmp_path -> ImageRefs and error rows."""

from __future__ import annotations

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
from aisthetics_transforms.manifest import (
    ManifestError,
    ManifestSpec,
    ReadImageGlob,
    ReadManifest,
    csv_format,
    image_glob_refs,
    list_manifest_files,
)
from aisthetics_transforms.records import ImageRef

PIPELINE_ARGS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]

CSV_TEXT = (
    "uri,image_id,category\n"  # line 1
    '/img/a.jpg,a,"cats, dogs"\n'  # 2
    '"/img/b,1.jpg",,birds\n'  # 3: no id -> uri
    "\n"  # 4: blank, not a row
    ",c,empty\n"  # 5: MissingUri
    "/img/d.jpg,d,x,surplus\n"  # 6: MalformedCsv
    "  /img/e.jpg , e ,  fish \n"  # 7: values stripped
)
CSV_REFS = [
    ImageRef("a", "/img/a.jpg", {"category": "cats, dogs"}),
    ImageRef("/img/b,1.jpg", "/img/b,1.jpg", {"category": "birds"}),
    ImageRef("e", "/img/e.jpg", {"category": "fish"}),
]

JSONL_TEXT = (
    '{"uri": "gs://bucket/a.jpg", "image_id": "a", "category": "cats"}\n'  # line 1
    '{"uri": "/img/b.jpg", "image_id": 17}\n'  # 2
    "\n"  # 3
    '{"uri": "/img/c.jpg", "image_id": "c"\n'  # 4: InvalidJson
    '["/img/d.jpg", "d"]\n'  # 5: InvalidRow
    '{"uri": 5, "image_id": "e", "category": "fives"}\n'  # 6: InvalidUri
    '{"image_id": "f"}\n'  # 7: MissingUri
)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def error(path, where, error_type, uri="", image_id=None, **kept):
    """An error row without its message (compared separately)."""
    return {
        "image_id": image_id or f"{path}:{where}",
        "uri": uri,
        "stage": "manifest",
        "error_type": error_type,
        **kept,
    }


def without_source(ref: ImageRef) -> ImageRef:
    return ref._replace(source="")


def split(items):
    """Refs (their source position checked separately) and error rows."""
    items = list(items)
    refs = [without_source(i) for i in items if isinstance(i, ImageRef)]
    errors = [i for i in items if not isinstance(i, ImageRef)]
    return refs, errors


def without_message(rows):
    return [{k: v for k, v in r.items() if k != "error_message"} for r in rows]


# --------------------------------------------------------------------------- CSV


def test_csv_rows_refs_and_errors(tmp_path):
    path = write(tmp_path / "m.csv", CSV_TEXT)
    refs, errors = split(read_manifest_file(path, ManifestSpec(path, keep_columns=("category",))))
    assert refs == CSV_REFS
    assert without_message(errors) == [
        error(path, 5, "MissingUri", image_id="c", category="empty"),
        error(path, 6, "MalformedCsv", uri="/img/d.jpg", image_id="d", category=None),
    ]
    assert errors[0]["error_message"].startswith("line 5:")
    assert errors[1]["error_message"] == "line 6: 4 fields where the header has 3"


def test_csv_unclosed_quote_loses_only_its_own_line(tmp_path):
    path = write(tmp_path / "m.csv", 'uri,image_id\n/a.jpg,a\n"/b.jpg,b\n/c.jpg,c\n/d.jpg,d\n')
    refs, errors = split(read_manifest_file(path, ManifestSpec(path)))
    assert [r.image_id for r in refs] == ["a", "c", "d"]
    assert without_message(errors) == [error(path, 3, "MalformedCsv")]
    message = errors[0]["error_message"]
    assert message.startswith("line 3:") and "to line 5" in message and "read again" in message


def test_csv_quote_closed_later_does_not_swallow_rows(tmp_path):
    # The stray quote on line 3 pairs with the opening quote on line 5.
    path = write(tmp_path / "m.csv", 'uri,image_id,category\n/a.jpg,a,x\n"/b.jpg,b,x\n/c.jpg,c,x\n/d.jpg,d,"y"\n')
    refs, errors = split(read_manifest_file(path, ManifestSpec(path)))
    assert [r.image_id for r in refs] == ["a", "c", "d"]
    assert [(e["image_id"], e["error_type"]) for e in errors] == [(f"{path}:3", "MalformedCsv")]


def test_csv_open_quote_is_given_up_after_max_record_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_format, "MAX_RECORD_LINES", 3)
    rows = "".join(f"/{i}.jpg,{i}\n" for i in range(10))
    path = write(tmp_path / "m.csv", 'uri,image_id\n"/open.jpg,x\n' + rows + '/z.jpg,"z\n')
    refs, errors = split(read_manifest_file(path, ManifestSpec(path)))
    assert [r.image_id for r in refs] == [str(i) for i in range(10)]
    assert [e["image_id"] for e in errors] == [f"{path}:2", f"{path}:13"]
    assert "still open after 3 lines" in errors[0]["error_message"]
    assert errors[1]["error_message"] == "line 13: the file ends inside a quoted field"


def test_csv_multiline_quoted_kept_value_is_one_row(tmp_path):
    path = write(tmp_path / "m.csv", 'uri,note\n/a.jpg,"two\nlines"\n/b.jpg,ok\n')
    refs, errors = split(read_manifest_file(path, ManifestSpec(path, keep_columns=("note",))))
    assert refs == [ImageRef("/a.jpg", "/a.jpg", {"note": "two\nlines"}), ImageRef("/b.jpg", "/b.jpg", {"note": "ok"})]
    assert errors == []


def test_csv_invalid_utf8_is_an_error_row(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"\xef\xbb\xbfuri\n/a.jpg\n/caf\xe9.jpg\n/b.jpg\n")
    refs, errors = split(read_manifest_file(str(path), ManifestSpec(str(path))))
    assert [r.uri for r in refs] == ["/a.jpg", "/b.jpg"]  # BOM does not end up in the header
    assert [(e["error_type"], e["error_message"]) for e in errors] == [("InvalidEncoding", "line 3: not valid UTF-8")]


def test_renamed_columns(tmp_path):
    path = write(tmp_path / "m.csv", "sku,url,uri\n1,/x/1.jpg,ignored\n2,,/x/2.jpg\n")
    spec = ManifestSpec(path, uri_column="url", id_column="sku")
    refs, errors = split(read_manifest_file(path, spec))
    assert refs == [ImageRef("1", "/x/1.jpg", {})]
    assert without_message(errors) == [error(path, 3, "MissingUri", image_id="2")]
    assert errors[0]["error_message"] == "line 3: no value in column 'url'"


def test_missing_uri_column_names_file_and_columns(tmp_path):
    path = write(tmp_path / "m.csv", "url,image_id\n/a.jpg,a\n")
    with pytest.raises(ManifestError) as info:
        list(read_manifest_file(path, ManifestSpec(path)))
    message = str(info.value)
    assert path in message and "'uri'" in message and "'url', 'image_id'" in message


def test_missing_keep_column_in_parquet(tmp_path):
    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.table({"uri": ["/a.jpg"], "label": ["x"]}), path)
    with pytest.raises(ManifestError, match=r"'category'.*'uri', 'label'"):
        list(read_manifest_file(path, ManifestSpec(path, keep_columns=("category",))))


def test_empty_csv_file_has_no_rows(tmp_path):
    path = write(tmp_path / "m.csv", "")
    assert list(read_manifest_file(path, ManifestSpec(path))) == []


# --------------------------------------------------------------------------- JSON Lines


def test_jsonl_rows_refs_and_errors(tmp_path):
    path = write(tmp_path / "m.jsonl", JSONL_TEXT)
    refs, errors = split(read_manifest_file(path, ManifestSpec(path, keep_columns=("category",))))
    assert refs == [
        ImageRef("a", "gs://bucket/a.jpg", {"category": "cats"}),
        ImageRef("17", "/img/b.jpg", {"category": None}),
    ]
    assert without_message(errors) == [
        error(path, 4, "InvalidJson", category=None),
        error(path, 5, "InvalidRow", category=None),
        error(path, 6, "InvalidUri", uri="5", image_id="e", category="fives"),
        error(path, 7, "MissingUri", image_id="f", category=None),
    ]
    messages = [e["error_message"] for e in errors]
    assert messages[0] == "line 4: invalid JSON: Expecting ',' delimiter at column 38"
    assert messages[1] == "line 5: expected a JSON object, got list"
    assert messages[2] == "line 6: 'uri' must be a string, got int 5"
    assert messages[3].startswith("line 7:")


def test_explicit_format_and_gzip(tmp_path):
    path = str(tmp_path / "manifest.txt.gz")
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"uri": "/a.jpg"}) + "\n")
    assert list(read_manifest_file(path, ManifestSpec(path, format="jsonl"))) == [
        ImageRef("/a.jpg", "/a.jpg", {}, f"{path}:1")
    ]
    with pytest.raises(ManifestError, match="format"):
        list(read_manifest_file(path, ManifestSpec(path)))
    with pytest.raises(ManifestError, match="unknown manifest format"):
        ManifestSpec(path, format="xml")


# --------------------------------------------------------------------------- Parquet


def test_parquet_rows(tmp_path):
    path = str(tmp_path / "m.parquet")
    table = pa.table(
        {
            "uri": ["/a.jpg", None, "  ", "/d.jpg"],
            "image_id": ["a", "b", None, None],
            "score": [1.5, None, 3.0, 4.0],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    refs, errors = split(read_manifest_file(path, ManifestSpec(path, keep_columns=("score",))))
    assert refs == [ImageRef("a", "/a.jpg", {"score": "1.5"}), ImageRef("/d.jpg", "/d.jpg", {"score": "4.0"})]
    assert without_message(errors) == [
        error(path, 2, "MissingUri", image_id="b", score=None),
        error(path, 3, "MissingUri", score="3.0"),
    ]
    assert [e["error_message"] for e in errors] == [
        "row 2: no value in column 'uri'",
        "row 3: no value in column 'uri'",
    ]


# --------------------------------------------------------------------------- globs


def test_glob_of_two_files_is_one_sorted_manifest(tmp_path):
    write(tmp_path / "part-1.csv", "uri\n/b.jpg\n")
    write(tmp_path / "part-0.csv", "uri\n/a.jpg\n")
    write(tmp_path / "other.jsonl", '{"uri": "/z.jpg"}\n')
    spec = ManifestSpec(str(tmp_path / "part-*.csv"))
    files = list_manifest_files(spec)
    assert files == [str(tmp_path / "part-0.csv"), str(tmp_path / "part-1.csv")]
    assert [r.uri for f in files for r in read_manifest_file(f, spec)] == ["/a.jpg", "/b.jpg"]


def test_no_match_is_a_manifest_error(tmp_path):
    pattern = str(tmp_path / "nothing-*.csv")
    with pytest.raises(ManifestError, match="nothing-"):
        list_manifest_files(ManifestSpec(pattern))
    with pytest.raises(ManifestError, match="matches no file"):
        image_glob_refs(pattern)
    assert issubclass(ManifestError, ValueError)


def test_images_glob(tmp_path):
    for name in ("b.jpg", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    paths = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert image_glob_refs(str(tmp_path / "*.jpg")) == [ImageRef(p, p, {}) for p in paths]


def test_reserved_keep_column_is_refused():
    with pytest.raises(ManifestError, match="clash"):
        ManifestSpec("m.csv", keep_columns=["uri"])


# --------------------------------------------------------------------------- pipeline


@pytest.mark.slow  # a Beam pipeline
def test_read_manifest_and_image_glob_in_a_pipeline(tmp_path):
    write(tmp_path / "m-0.csv", CSV_TEXT)
    write(tmp_path / "m-1.jsonl", JSONL_TEXT)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(b"x")
    spec = ManifestSpec(str(tmp_path / "m-*"), keep_columns=("category",))
    expected_refs, expected_errors = split(
        [item for f in list_manifest_files(spec) for item in read_manifest_file(f, spec)]
    )
    # Rows in the files: 5 CSV rows + 6 JSON lines (blank lines are not rows).
    assert len(expected_refs) + len(expected_errors) == 11
    assert (len(expected_refs), len(expected_errors)) == (5, 6)

    image = str(tmp_path / "img" / "a.jpg")
    p = BeamTestPipeline(argv=PIPELINE_ARGS)
    read = ReadManifest(spec)
    result = unique_ids(p | read, read.files, ("category",))
    # image_id "a" is in both files: the JSON Lines row (the later file) is the duplicate.
    [duplicate] = [r for r in expected_refs if r.uri == "gs://bucket/a.jpg"]
    expected_refs.remove(duplicate)
    is_duplicate = lambda row: row["error_type"] == "DuplicateImageId"  # noqa: E731
    refs = result["refs"]
    assert_that(refs | beam.Map(without_source), equal_to(expected_refs), label="Refs")
    errors = result[records.ERRORS]
    assert_that(errors | beam.Filter(lambda r: not is_duplicate(r)), equal_to(expected_errors), label="Errors")
    assert_that(
        errors | beam.Filter(is_duplicate) | beam.Map(lambda r: (r["image_id"], r["uri"])),
        equal_to([("a", "gs://bucket/a.jpg")]),
        label="Duplicates",
    )
    images = p | "Images" >> ReadImageGlob(str(tmp_path / "img" / "*.jpg"))
    assert_that(
        images["refs"] | "ImageRows" >> beam.FlatMap(records.table_refs, ()),
        equal_to([ImageRef(image, image, {})]),
        label="ImageRefs",
    )
    assert_that(images[records.ERRORS], equal_to([]), label="ImageErrors")
    run = p.run()
    run.wait_until_finish()

    counters = run.metrics().query(MetricsFilter().with_namespace("aisthetics"))["counters"]
    totals = {}
    for counter in counters:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    # + the duplicate id; each small file is one piece
    assert totals == {"manifest_rows": 11 + 1, "manifest_errors": 6 + 1, "manifest_splits": 2}


def test_read_manifest_fails_before_the_run_on_a_bad_header(tmp_path):
    write(tmp_path / "m.csv", "url\n/a.jpg\n")
    with pytest.raises(ManifestError, match="'url'"):
        beam.Pipeline(argv=PIPELINE_ARGS) | ReadManifest(ManifestSpec(str(tmp_path / "m.csv")))


def test_refs_know_their_file_and_line(tmp_path):
    path = write(tmp_path / "m.csv", "uri\n/a.jpg\n\n/b.jpg\n")
    refs = list(read_manifest_file(str(path), ManifestSpec(str(path))))
    assert [r.source for r in refs] == [f"{path}:2", f"{path}:4"]


@pytest.mark.slow  # a Beam pipeline
def test_duplicate_image_ids_keep_the_first_row_in_manifest_order(tmp_path):
    first = write(tmp_path / "a.csv", "image_id,uri\nx,/1.jpg\ny,/2.jpg\n")
    second = write(tmp_path / "b.csv", "image_id,uri\nx,/3.jpg\nx,/4.jpg\n")
    spec = ManifestSpec(str(tmp_path / "*.csv"))
    with BeamTestPipeline(argv=PIPELINE_ARGS) as p:
        read = ReadManifest(spec)
        result = unique_ids(p | read, read.files, ())
        kept = result["refs"] | beam.Map(lambda r: (r.image_id, r.uri))
        dropped = result[records.ERRORS] | beam.Map(lambda r: (r["uri"], r["error_type"], r["error_message"]))
        assert_that(kept, equal_to([("x", "/1.jpg"), ("y", "/2.jpg")]), label="Kept")
        assert_that(
            dropped,
            equal_to(
                [
                    (
                        "/3.jpg",
                        "DuplicateImageId",
                        f"{second}:2: image_id 'x' (uri /3.jpg) is already used at {first}:2; "
                        "only the first row of an image_id is scored",
                    ),
                    (
                        "/4.jpg",
                        "DuplicateImageId",
                        f"{second}:3: image_id 'x' (uri /4.jpg) is already used at {first}:2; "
                        "only the first row of an image_id is scored",
                    ),
                ]
            ),
            label="Duplicates",
        )


# --------------------------------------------------------------------------- tables


def _table_items(path, spec, index=0):
    """The file read as the pipeline does (planned pieces, bulk tables) as (ImageRefs with
    their file:line, error rows)."""
    [file] = manifest.manifest_files(spec)
    return pieces_as_rows(manifest.plan_splits(file._replace(number=index), spec), spec)


def _with_sources(items):
    items = list(items)
    return [i for i in items if isinstance(i, ImageRef)], [i for i in items if not isinstance(i, ImageRef)]


TRICKY_CSVS = {
    "plain": "image_id,uri,category\n" + "".join(f"id{i},/img/{i % 7}.jpg,c{i % 3}\n" for i in range(300)),
    "no trailing newline": "image_id,uri,category\na,/a.jpg,x\nb,/b.jpg,y",
    "spaces, empty and missing values": "image_id,uri,category\n a ,/a.jpg,x\n,/b.jpg, y\nc,,z\nd, ,\ne,/e.jpg,\n",
    "quotes later in the file": "image_id,uri,category\n"
    + "".join(f"id{i},/i/{i}.jpg,c\n" for i in range(120))
    + 'q,"/q.jpg","a, b"\nm,/m.jpg,"two\nlines"\nz,/z.jpg,c\n',
    "unclosed quote": "image_id,uri,category\n"
    + "".join(f"id{i},/i/{i}.jpg,c\n" for i in range(50))
    + 'bad,"/bad.jpg,c\nok,/ok.jpg,c\n',
    "wrong field count": "image_id,uri,category\n"
    + "".join(f"id{i},/i/{i}.jpg,c\n" for i in range(90))
    + "x,/x.jpg\ny,/y.jpg,c,extra\nw,/w.jpg,c\n",
    "blank lines and CRLF": "image_id,uri,category\r\na,/a.jpg,x\r\n\r\nb,/b.jpg,y\r\n",
    "BOM": "\ufeffimage_id,uri,category\na,/a.jpg,x\n",
    "unicode spaces": "image_id,uri,category\na\u00a0,/a.jpg,x\u2003\nb,/b.jpg,\x1fy\n",
    "one column": "uri,category\n/a.jpg,x\n   ,y\n/b.jpg,\n",
    "lone CR later": "image_id,uri,category\n"
    + "".join(f"id{i},/i/{i}.jpg,c\n" for i in range(60))
    + "cr,/cr.jpg,a\rb\nz,/z.jpg,c\n",
    # A long value in a column the pipeline does not read, with a quote in the same block.
    "large field and a quote": "image_id,uri,category,notes\n"
    + f'a,/a.jpg,x,{"n" * 200_000}\nb,"/b.jpg",y,short\nc,/c.jpg,z,{"m" * 150_000}\n',
    # A line longer than Arrow's block: the row reader takes the rest of the file.
    "field longer than a block": "image_id,uri,category,notes\n"
    + "".join(f"i{i},/{i}.jpg,c,n\n" for i in range(40))
    + f"big,/big.jpg,{'k' * 300_000},{'n' * (1 << 21)}\nz,/z.jpg,c,n\n",
}


@pytest.mark.parametrize("name", sorted(TRICKY_CSVS))
def test_tables_give_the_same_rows_as_the_row_reader(tmp_path, monkeypatch, name):
    """The bulk (Arrow) path of read_manifest_tables against the row-by-row reader,
    with blocks small enough that the files span several."""
    monkeypatch.setattr(csv_format, "CSV_BLOCK_BYTES", 256)
    path = tmp_path / "m.csv"
    path.write_bytes(TRICKY_CSVS[name].encode())
    spec = ManifestSpec(str(path), keep_columns=("category",))
    expected_refs, expected_errors = _with_sources(read_manifest_file(str(path), spec))
    refs, errors = _table_items(path, spec)
    assert sorted(refs) == sorted(expected_refs)
    assert sorted(errors, key=repr) == sorted(expected_errors, key=repr)
    assert refs or errors


@pytest.mark.parametrize("name", ["large field and a quote", "field longer than a block"])
def test_both_csv_readers_accept_large_fields(tmp_path, name):
    """At the default block size: the csv module's field limit used to turn these rows into
    MalformedCsv in the row reader only."""
    path = tmp_path / "m.csv"
    path.write_bytes(TRICKY_CSVS[name].encode())
    spec = ManifestSpec(str(path), keep_columns=("category",))
    for refs, errors in (_table_items(path, spec), _with_sources(read_manifest_file(str(path), spec))):
        assert errors == []
        assert len(refs) == TRICKY_CSVS[name].count("\n") - 1
        assert max(len(r.kept["category"]) for r in refs) == (300_000 if "block" in name else 1)


def test_an_empty_csv_kept_cell_is_null_in_both_readers(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('uri,category,note\n/a.jpg,,x\n/b.jpg,  ,\n/c.jpg,c,""\n')
    spec = ManifestSpec(str(path), keep_columns=("category", "note"))
    expected = [{"category": None, "note": "x"}, {"category": None, "note": None}, {"category": "c", "note": None}]
    for refs, errors in (_table_items(path, spec), _with_sources(read_manifest_file(str(path), spec))):
        assert [r.kept for r in refs] == expected and errors == []
    jsonl = tmp_path / "m.jsonl"  # JSON tells "" from null: "" stays a value
    jsonl.write_text('{"uri": "/a.jpg", "category": "", "note": null}\n')
    [ref] = read_manifest_file(str(jsonl), ManifestSpec(str(jsonl), keep_columns=("category", "note")))
    assert ref.kept == {"category": "", "note": None}


def test_tables_of_invalid_utf8_and_parquet_match_the_row_reader(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"image_id,uri,category\na,/a.jpg,x\nb,/b.jpg,\xff\nc,/c.jpg,z\n")
    spec = ManifestSpec(str(path), keep_columns=("category",))
    assert _table_items(path, spec) == _with_sources(read_manifest_file(str(path), spec))
    parquet = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "image_id": ["a", None, " c", "d"],
                "uri": ["/a.jpg", "/b.jpg", "/c.jpg", None],
                "category": ["x", None, "z", "w"],
            }
        ),
        parquet,
    )
    spec = ManifestSpec(str(parquet), keep_columns=("category",))
    refs, errors = _table_items(parquet, spec, index=3)
    assert (refs, errors) == _with_sources(read_manifest_file(str(parquet), spec))
    assert [r.image_id for r in refs] == ["a", "/b.jpg", "c"] and len(errors) == 1
