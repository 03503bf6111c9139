"""The run's Beam metrics, named once: each stage counts through :func:`counter` and
:func:`distribution` with these names, and the progress line reads the same names from
this process's tally (``progress.TALLY``), so a misspelt name fails at import instead of
starting a silent new counter. All are in the namespace ``aisthetics`` (what Dataflow's
job page and ``result.metrics()`` show). Importing this module does not import Beam."""

from __future__ import annotations

NAMESPACE = "aisthetics"

# Counters
MANIFEST_ROWS = "manifest_rows"  # rows read from the manifest
MANIFEST_ERRORS = "manifest_errors"  # rows that became manifest error rows (duplicate ids too)
MANIFEST_SPLITS = "manifest_splits"  # pieces the manifest files were read in
URIS_PLANNED = "uris_planned"  # distinct uris the night has to settle
URIS_UNCHANGED = "uris_unchanged"  # of those, settled as unchanged (no read of their bytes)
FETCHED = "fetched"  # uris whose bytes were read
FETCH_ERRORS = "fetch_errors"
VERSION_CHECKS_FAILED = "version_checks_failed"
DECLARED_MISMATCHES = "declared_mismatches"  # audited declared versions whose bytes had changed
CONTENTS_PLANNED = "contents_planned"  # distinct new contents to decode and score
DECODED = "decoded"
DECODE_ERRORS = "decode_errors"
SCORED = "scored"  # distinct images inferred
SCORE_ERRORS = "score_errors"
MODEL_LOADS = "model_loads"  # real model loads (one per worker process)
ROWS_WRITTEN = "rows_written"

# Distributions
CLAIMS_PER_JOIN_ELEMENT = "claims_per_join_element"  # claims of one content in one element of the join back to uris


def counter(name: str):
    """The Beam counter ``name`` (one of this module's names) of the namespace."""
    from apache_beam.metrics import Metrics

    return Metrics.counter(NAMESPACE, name)


def distribution(name: str):
    from apache_beam.metrics import Metrics

    return Metrics.distribution(NAMESPACE, name)
