"""records: the output tables' schemas, manifest rows as refs tables and back, the registry
of error types, and an earlier night's row as a PreviousScore."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from aisthetics_transforms.fetch import FetchError
from aisthetics_transforms.preprocess import ImageDecodeError, decode_image
from aisthetics_transforms.records import (
    STAGES,
    ImageRef,
    Score,
    error_row,
    error_types,
    errors_schema,
    previous_scores,
    refs_schema,
    refs_table,
    reserved_columns,
    scores_schema,
    table_refs,
)

README = Path(__file__).resolve().parents[1] / "README.md"
KEEP = ("category", "brand")


# --- schemas ----------------------------------------------------------------------------------


def test_scores_have_the_contract_columns_then_the_kept_ones_then_the_rest():
    plain, kept = scores_schema(), scores_schema(KEEP)
    contract = ["image_id", "uri", "mean_score", "sd_score", "predictions", "model_version", "scored_at"]
    assert plain.names[: len(contract)] == contract
    assert kept.names == contract + list(KEEP) + plain.names[len(contract) :]
    assert kept.field("predictions").type == pa.list_(pa.float32())
    assert kept.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert all(kept.field(name).type == pa.string() for name in KEEP)


def test_errors_have_their_columns_then_the_kept_ones():
    assert errors_schema().names == ["image_id", "uri", "stage", "error_type", "error_message"]
    assert errors_schema(KEEP).names == errors_schema().names + list(KEEP)


def test_no_kept_column_may_take_a_table_column_or_the_partition_key():
    reserved = reserved_columns()
    assert set(scores_schema().names) | set(errors_schema().names) | {"dt"} == reserved
    assert not set(KEEP) & reserved


# --- refs tables ------------------------------------------------------------------------------


def test_refs_survive_a_table_and_carry_their_manifest_position():
    refs = [
        ImageRef("a", "/photos/a.jpg", {"category": "shoes", "brand": None}, "manifest.csv:2"),
        ImageRef("b", "gs://bucket/b.jpg", {"category": None, "brand": "Acme"}, "manifest.csv:7"),
        ImageRef("c", "https://cdn.example/c.jpg?w=800", {"category": "é 漢字", "brand": ""}, "manifest.csv:12"),
    ]
    table = refs_table(refs, KEEP, manifest_file=3)
    assert table.schema == refs_schema(KEEP)
    assert table.column("manifest_file").to_pylist() == [3, 3, 3]
    assert table.column("manifest_line").to_pylist() == [2, 7, 12]
    assert list(table_refs(table, KEEP)) == [ref._replace(source="") for ref in refs]


def test_refs_tables_hold_only_the_columns_asked_for():
    refs = [ImageRef("a", "/a.jpg", {"category": "x", "brand": "y"}, "m.csv:2")]
    table = refs_table(refs, ("brand",))
    assert table.schema.names == ["image_id", "uri", "brand", "manifest_file", "manifest_line"]
    assert list(table_refs(table, ("brand",))) == [ImageRef("a", "/a.jpg", {"brand": "y"})]
    assert refs_table([], KEEP).num_rows == 0


# --- error rows and their types ---------------------------------------------------------------


def test_every_stage_has_its_own_distinct_error_types():
    types = error_types()
    assert tuple(types) == STAGES
    for stage, names in types.items():
        assert names and len(names) == len(set(names)), stage
        assert all(re.fullmatch(r"[A-Z][A-Za-z]+", name) for name in names), names


def readme_error_types() -> dict[str, set[str]]:
    """stage -> the error types the README's table of failures names for it."""
    table = README.read_text().split("## When an image or a row fails", 1)[1].split("\n\n", 3)[2]
    documented: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0] in STAGES:
            documented.setdefault(cells[0], set()).update(re.findall(r"`([A-Za-z]+)`", cells[1]))
    return documented


def test_every_error_type_the_readme_names_is_one_the_code_writes():
    types = error_types()
    for stage, names in readme_error_types().items():
        assert names <= set(types[stage]), (stage, names - set(types[stage]))


def test_the_readme_names_every_error_type_the_code_writes():
    """What users group by is documented: every registered type but the internal one."""
    documented = readme_error_types()
    missing = {
        stage: sorted(set(names) - {"InternalError"} - documented.get(stage, set()))
        for stage, names in error_types().items()
    }
    assert not any(missing.values()), missing


def test_the_stages_raise_only_registered_types():
    with pytest.raises(ValueError, match="not in FETCH_ERROR_TYPES"):
        FetchError("NoSuchType", "x")
    assert FetchError("NotFound", "gone").error_type in error_types()["fetch"]
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(b"")
    assert caught.value.error_type in error_types()["decode"]


def test_an_error_row_names_its_stage_and_keeps_the_rows_columns():
    ref = ImageRef("a", "/a.jpg", {"category": "shoes", "brand": None})
    row = error_row(ref, "fetch", "NotFound", "/a.jpg: no such file")
    assert row == {
        "image_id": "a",
        "uri": "/a.jpg",
        "stage": "fetch",
        "error_type": "NotFound",
        "error_message": "/a.jpg: no such file",
        "category": "shoes",
        "brand": None,
    }
    assert pa.Table.from_pylist([row], schema=errors_schema(KEEP)).num_rows == 1
    with pytest.raises(ValueError, match="unknown stage 'download'"):
        error_row(ref, "download", "NotFound", "x")


# --- an earlier night's row -------------------------------------------------------------------


def earlier_row(**changes) -> dict:
    row = {
        "image_id": "a",
        "uri": "/a.jpg",
        "mean_score": 5.25,
        "sd_score": 1.5,
        "predictions": [0.1] * 10,
        "model_version": "nima-mobilenet-e563ad91b3d4-litert",
        "scored_at": datetime(2026, 11, 27, 2, 0, tzinfo=UTC),
        "content_sha256": "ab" * 32,
        "source_version": "size=10;mtime=1.0",
        "reused": False,
        "exif_orientation": 6,
    }
    return {**row, **changes}


def test_earlier_rows_become_previous_scores_in_row_order():
    rows = [earlier_row(), earlier_row(image_id="b", uri="/b.jpg", content_sha256="cd" * 32, mean_score=4.0)]
    first, second = previous_scores(pa.Table.from_pylist(rows, schema=scores_schema()))
    assert (first.content_sha256, first.source_version) == (rows[0]["content_sha256"], rows[0]["source_version"])
    assert first.score._replace(predictions=None) == Score(
        5.25, 1.5, None, rows[0]["model_version"], rows[0]["scored_at"], 6
    )
    assert first.score.predictions == pytest.approx((0.1,) * 10)  # float32 in the table
    assert isinstance(first.score.predictions, tuple)  # hashable, as records are compared and grouped
    assert (second.content_sha256, second.score.mean_score) == ("cd" * 32, 4.0)


def test_scored_at_keeps_its_instant_and_is_utc_whatever_zone_the_column_has():
    table = pa.Table.from_pylist([earlier_row()], schema=scores_schema())
    at = earlier_row()["scored_at"]
    for column in (table.column("scored_at"), table.column("scored_at").cast(pa.timestamp("us", tz="Europe/Zurich"))):
        [previous] = previous_scores(table.set_column(table.schema.get_field_index("scored_at"), "scored_at", column))
        assert previous.score.scored_at == at and previous.score.scored_at.utcoffset() == timedelta(0)


def test_an_earlier_row_of_an_older_layout_lacks_optional_columns():
    row = earlier_row()
    del row["exif_orientation"], row["source_version"]  # partitions written before these existed
    [previous] = previous_scores(pa.Table.from_pylist([row]))
    assert previous.source_version is None and previous.score.exif_orientation is None
    assert previous.score.mean_score == row["mean_score"]


def test_a_previous_score_from_a_parquet_row_round_trips():
    table = pa.Table.from_pylist(
        [earlier_row(), earlier_row(image_id="b", exif_orientation=None, source_version=None)], schema=scores_schema()
    )
    first, second = previous_scores(table)
    assert first.score.predictions == pytest.approx((0.1,) * 10)  # float32 in the table
    assert first.score.scored_at == earlier_row()["scored_at"]
    assert (second.source_version, second.score.exif_orientation) == (None, None)


def test_the_readme_names_every_field_of_summary_json_and_no_other():
    from aisthetics_transforms.records import RunSummary

    paragraph = README.read_text().split("`runs/dt=DATE/summary.json`:", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z_]+)`", paragraph)) - {"incremental", "version_column"}  # options it mentions
    assert named == set(RunSummary.__annotations__), named ^ set(RunSummary.__annotations__)


def test_every_table_of_the_layout_has_one_schema_holding_the_kept_columns():
    from aisthetics_transforms import layout, records

    plain, kept = records.table_schemas(), records.table_schemas(("category", "seller"))
    assert tuple(plain) == tuple(kept) == layout.TABLES
    for table in layout.TABLES:
        assert [n for n in kept[table].names if n not in ("category", "seller")] == plain[table].names, table
        assert {"category", "seller"} <= set(kept[table].names)
        assert set(plain[table].names) <= records.reserved_columns()
