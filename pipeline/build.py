"""The graph of one night: :func:`build_pipeline` wires the stages of ``aisthetics_transforms``,
in the order the data flows: manifest -> unique ids -> plan (uris) -> fetch -> one task per
content -> decode -> score -> results to uris -> join -> write. Nothing here does work;
each stage is a transform (docs/design.md names the module of each)."""

from __future__ import annotations

import apache_beam as beam

from aisthetics_transforms import unique_ids
from aisthetics_transforms.buckets import bucket_count
from aisthetics_transforms.contents import REUSED, DedupeContent, ResultsToUris
from aisthetics_transforms.decode import FAILED, DecodeImages
from aisthetics_transforms.fetch.transform import FetchImages
from aisthetics_transforms.incremental import ReadPreviousNight
from aisthetics_transforms.join import JoinRows
from aisthetics_transforms.manifest import ManifestSpec, ReadImageGlob, ReadManifest
from aisthetics_transforms.plan_uris import DeclaredAudit, PlanFetches
from aisthetics_transforms.records import ERRORS, OUTCOMES, STATS
from aisthetics_transforms.score import ScoreImages
from aisthetics_transforms.unique_ids import UniqueImageIds
from aisthetics_transforms.write import RunInfo, WriteTables
from pipeline.options import AistheticsOptions


def build_pipeline(p: beam.Pipeline, opts: AistheticsOptions, run: RunInfo, previous=None, staged_model=None):
    """Wire the stages; ``previous`` is the earlier night an incremental run reuses;
    ``staged_model`` where the launcher staged the converted model for remote workers.
    Returns the PCollection holding the run summary."""
    keep = opts.keep_column_list
    read: ReadManifest | ReadImageGlob
    if opts.manifest:
        spec = ManifestSpec(
            opts.manifest, opts.manifest_format, opts.uri_column, opts.id_column, keep, opts.version_column
        )
        manifest = p | "ReadManifest" >> (read := ReadManifest(spec))
    else:
        manifest = p | "ListImages" >> (read := ReadImageGlob(opts.images, keep))
    rows = manifest["refs"] | "UniqueImageIds" >> UniqueImageIds(read.files, keep, read.estimated_rows)
    previous_rows = previous.rows if previous else 0
    # the joins on uri and on content: buckets for the larger of tonight and the earlier night
    join_buckets = rows["row_count"] | "JoinBuckets" >> beam.Map(lambda n: bucket_count(max(n, previous_rows)))
    earlier = {}
    if previous:
        earlier = p | "ReadPreviousNight" >> ReadPreviousNight(previous, run.model_version, join_buckets)
    fetch_limits = opts.fetch_limits()
    audit = DeclaredAudit(opts.verify_declared_fraction, run.run_date)
    listing = fetch_limits if opts.list_gcs_versions and previous and previous.may_list else None
    planned = rows[unique_ids.URIS] | "PlanFetches" >> PlanFetches(join_buckets, earlier.get("uri"), audit, listing)
    fetched = planned["tasks"] | "FetchImages" >> beam.ParDo(
        FetchImages(fetch_limits, opts.fetch_threads)
    ).with_outputs(OUTCOMES, STATS, main="claims")
    contents = fetched.claims | "DedupeContent" >> DedupeContent(earlier.get("content"), join_buckets)
    decoded = (
        contents["tasks"]
        | "SpreadContents" >> beam.Reshuffle()
        | "DecodeImages"
        >> beam.ParDo(
            DecodeImages(opts.decode_limits(), opts.decode_threads, fetch_limits, opts.fetch_threads)
        ).with_outputs(FAILED, STATS, main="images")
    )
    scored = decoded.images | "ScoreImages" >> ScoreImages(opts.model_spec(staged_model))
    results = [scored.results, decoded[FAILED]]
    stats = [planned[STATS], fetched[STATS], decoded[STATS], scored[STATS]]
    if previous:
        results.append(contents[REUSED])
        stats.append(earlier[STATS])
    results = results | "Results" >> beam.Flatten()
    outcomes = [
        planned[OUTCOMES],
        fetched[OUTCOMES],
        {"claims": fetched.claims, "results": results} | "ResultsToUris" >> ResultsToUris(contents["hot"]),
    ] | "Outcomes" >> beam.Flatten()
    joined = {"rows": rows[unique_ids.ROWS], "outcomes": outcomes} | "JoinRows" >> JoinRows(keep)
    # each stage's errors are written where they are made, not gathered first
    errors = {"errors_manifest": manifest[ERRORS], "errors_ids": rows[ERRORS], "errors_ids_final": rows["final"]}
    errors["errors_images"] = joined[ERRORS]
    stats = stats | "Stats" >> beam.Flatten()
    return {"scores": joined.scores, **errors, "stats": stats} | "WriteTables" >> WriteTables(run)
