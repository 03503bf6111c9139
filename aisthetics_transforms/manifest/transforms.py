"""The manifest stage's Beam transforms: :class:`ReadManifest` (files -> shuffle -> pieces planned per
file -> shuffle -> rows read per piece) and :class:`ReadImageGlob`."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from aisthetics_transforms import records
from aisthetics_transforms.counters import MANIFEST_ERRORS, MANIFEST_ROWS, MANIFEST_SPLITS, counter
from aisthetics_transforms.manifest.files import (
    JSONL_RANGE_BYTES,
    estimated_rows,
    literal_file,
    manifest_files,
)
from aisthetics_transforms.manifest.images import absolute_pattern, glob_ranges, list_range
from aisthetics_transforms.manifest.pieces import (
    check_manifest_file,
    plan_splits,
    read_split,
)
from aisthetics_transforms.manifest.spec import (
    ManifestError,
    ManifestSpec,
    with_declared_versions,
)
from aisthetics_transforms.progress import inc


class RouteManifestItemsFn(beam.DoFn):
    """Error rows to the ``errors`` output; refs tables and pieces to the main one; counted."""

    def __init__(self):
        self.rows = counter(MANIFEST_ROWS)
        self.errors = counter(MANIFEST_ERRORS)
        self.splits = counter(MANIFEST_SPLITS)

    def process(self, item):
        if isinstance(item, dict):
            inc(self.rows)
            inc(self.errors)
            yield beam.pvalue.TaggedOutput(records.ERRORS, item)
            return
        if isinstance(item, pa.Table):
            inc(self.rows, item.num_rows)
        else:
            self.splits.inc()
        yield item


def _route(items, label: str):
    return items | label >> beam.ParDo(RouteManifestItemsFn()).with_outputs(records.ERRORS, main="items")


class ReadManifest(beam.PTransform):
    """Manifest files -> ``{"refs": refs tables, records.ERRORS: error rows}``; image_ids
    are made unique later (``unique_ids.UniqueImageIds``).

    Files -> Reshuffle -> pieces planned per file (:func:`plan_splits`) -> Reshuffle ->
    rows read per piece (:func:`read_split`): both the planning of thousands of files and
    the reading of one big file spread over the workers. ``jsonl_range_bytes`` is the
    size of a JSON Lines piece.
    """

    def __init__(self, spec: ManifestSpec, label: str | None = None, jsonl_range_bytes: int = JSONL_RANGE_BYTES):
        super().__init__(label)
        self.spec = spec
        self.jsonl_range_bytes = jsonl_range_bytes
        self.files = manifest_files(spec, jsonl_range_bytes)
        self.estimated_rows = estimated_rows(self.files)

    def expand(self, pbegin):
        check_manifest_file(self.files[0], self.spec)
        files = pbegin | "ManifestFiles" >> beam.Create(self.files)
        if len(self.files) > 1:
            files = files | "SpreadFiles" >> beam.Reshuffle()
        planned = _route(
            files | "PlanSplits" >> beam.FlatMap(plan_splits, self.spec, self.jsonl_range_bytes), "PlanErrors"
        )
        items = (
            planned["items"] | "SpreadSplits" >> beam.Reshuffle() | "ReadSplits" >> beam.FlatMap(read_split, self.spec)
        )
        rows = _route(items, "SplitErrors")
        errors = (planned[records.ERRORS], rows[records.ERRORS]) | "ManifestErrors" >> beam.Flatten()
        refs = rows["items"]
        if self.spec.version_column:
            refs = refs | "DeclaredVersions" >> beam.Map(with_declared_versions, self.spec)
        return {"refs": refs, records.ERRORS: errors}


class ReadImageGlob(beam.PTransform):
    """An ``--images`` glob -> the same ``refs`` / ``errors`` outputs as ReadManifest;
    a local glob is made absolute first."""

    def __init__(self, pattern: str, keep_columns: tuple = (), label: str | None = None):
        super().__init__(label)
        self.pattern = absolute_pattern(pattern)
        self.keep_columns = tuple(keep_columns)
        self.files: list[str] = []
        self.estimated_rows = None  # listed on a worker: the rows are counted as they come

    def expand(self, pbegin):
        # Listing happens on a worker so millions of paths never go into the job
        # graph; here we only check that something matches.
        found = literal_file(self.pattern) is not None
        if not found:
            try:
                found = bool(FileSystems.match([self.pattern], limits=[1])[0].metadata_list)
            except Exception as exc:
                raise ManifestError(f"cannot list {self.pattern!r}: {exc}") from exc
        if not found:
            raise ManifestError(f"--images {self.pattern!r} matches no file")
        ranges = glob_ranges(self.pattern)  # a gs:// glob: listed in parallel, by name range
        listed = pbegin | "ImagePattern" >> beam.Create(ranges)
        if len(ranges) > 1:
            listed = listed | "SpreadRanges" >> beam.Reshuffle()
        tables = listed | "ListImages" >> beam.FlatMap(list_range, self.keep_columns) | "SpreadRows" >> beam.Reshuffle()
        rows = _route(tables, "SplitErrors")  # paths are unique, so image_ids are
        return {"refs": rows["items"], records.ERRORS: rows[records.ERRORS]}
