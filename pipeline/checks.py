"""What is checked of a command line before anything runs: each problem one line naming the
option and the fix (:func:`pipeline.options.pipeline_options` gathers them all).

Besides the values themselves, a remote runner's own needs are checked here, in seconds
and without a request: the DataflowRunner's project, region and temp or staging location
on ``gs://``, inputs and outputs its workers can read (``gs://``, not this machine's disk),
Google credentials to submit with, and the files it stages. Beam itself would find these
late: after retrying credentials for a minute and a half, or in a traceback.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Sequence

from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from aisthetics_transforms import layout, records, settings, storage
from aisthetics_transforms.fetch import FetchLimits
from aisthetics_transforms.preprocess import DecodeLimits

PROG = "python -m pipeline"
# Columns of the tables in flight: a kept column of the same name would overwrite one of them.
INTERNAL_COLUMNS = frozenset(records.refs_schema().names)
# An unknown option this similar to a known one is taken for a misspelling of it.
SIMILAR = 0.8
# An image reference: [registry/]path[:tag][@digest] (the distribution spec's grammar, in short).
_IMAGE = re.compile(
    r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@[a-z0-9]+:[0-9a-f]{32,})?"
)
# The limits whose fields declare their options and ranges (aisthetics_transforms.settings).
LIMIT_CLASSES = (FetchLimits, DecodeLimits)
# Least value of each other numeric option (the help says what 0 means where it is allowed).
AT_LEAST = {"batch_size": 1, "inference_threads": 0, "decode_threads": 0, "fetch_threads": 1}
CREDENTIALS_FIX = (
    "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file"
)


def run_date_problems(run_date: str) -> list[str]:
    if layout.is_date(run_date):
        return []
    return [f"--run_date must be YYYY-MM-DD, got {run_date!r}; give a real date, zero-padded (e.g. 2026-01-05)"]


def keep_column_problems(keep: Sequence[str]) -> list[str]:
    """Kept columns become table columns: none may be named twice or take a name the tables
    (or the partition key dt) already use. Names are compared ignoring case, as DuckDB does."""
    problems = []
    reserved = {name.lower(): name for name in records.reserved_columns() | INTERNAL_COLUMNS}
    seen: dict[str, str] = {}
    for name in keep:
        key = name.lower()
        if key in reserved:
            problems.append(
                f"--keep_columns cannot keep {name!r}: the tables already have a column {reserved[key]!r} "
                "(names are compared ignoring case, as DuckDB does); rename it in the manifest"
            )
        elif key in seen:
            also = f" (as {seen[key]!r}; names are compared ignoring case)" if seen[key] != name else ""
            problems.append(f"--keep_columns names {name!r} twice{also}; keep each column once")
        seen.setdefault(key, name)
    return problems


def output_problems(output: str) -> list[str]:
    """A local --output must be a directory, or a path where one can be made."""
    if not storage.is_local(output):
        return []  # gs:// and other stores are checked by writing
    path = os.path.abspath(output)
    if os.path.exists(path) and not os.path.isdir(path):
        return [f"--output {output} is a file; give a directory (it will hold scores/, errors/ and runs/)"]
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return [f"--output {output} cannot be made: {parent} is a file; give a directory"]
    if not os.access(parent, os.W_OK | os.X_OK):
        return [f"--output {output} cannot be written: no permission to write in {parent}"]
    return []


def misspelt_option_problems(unknown: Sequence[str], known: Sequence[str]) -> list[str]:
    """Unknown arguments that look like a known option misspelt (other spellings of
    "-" and "_", a typo, a prefix), or stray words; anything else is left to Beam, which
    passes unknown options on to runners that take them."""
    problems = []
    after_unknown_option = False
    for arg in unknown:
        if not arg.startswith("-"):
            if not after_unknown_option:
                problems.append(f"unexpected argument {arg!r}: options are written --name=value (see {PROG} --help)")
            after_unknown_option = False
            continue
        name, has_value, _ = arg.partition("=")
        after_unknown_option = not has_value
        suggestion = _closest_option(name, known)
        if suggestion:
            problems.append(f"unknown option {name}; did you mean {suggestion}?")
    return problems


def _closest_option(name: str, known: Sequence[str]) -> str | None:
    normalized = "--" + name.lstrip("-").replace("-", "_").lower()
    if normalized in known:
        return normalized
    close = difflib.get_close_matches(normalized, known, n=1, cutoff=SIMILAR)
    if close:
        return close[0]
    longer = [option for option in known if option.startswith(normalized)]
    return longer[0] if len(longer) == 1 and len(normalized) > 4 else None


def version_problems(opts) -> list[str]:
    """--version_column and --verify_declared_fraction."""
    problems = []
    if opts.version_column is not None:
        if not opts.version_column.strip():
            problems.append("--version_column must name a manifest column, got an empty name")
        elif opts.version_column in INTERNAL_COLUMNS:
            problems.append(f"--version_column cannot be {opts.version_column!r}; rename it in the manifest")
        if opts.images:
            problems.append("--version_column needs a --manifest (an --images glob has no columns)")
    fraction = opts.verify_declared_fraction
    if not (math.isfinite(fraction) and 0 <= fraction <= 1):
        problems.append(f"--verify_declared_fraction must be between 0 and 1, got {fraction}")
    return problems


def number_problems(opts) -> list[str]:
    """Every number in its range, every time a positive number of seconds."""
    problems = []
    for name, least in AT_LEAST.items():
        value = getattr(opts, name)
        if value < least:
            problems.append(f"--{name} must be at least {least}, got {value}")
    for cls in LIMIT_CLASSES:
        problems += settings.option_problems(cls, lambda option: getattr(opts, option))
    if not all(" " <= c <= "~" for c in opts.user_agent_text):
        problems.append(f"--user_agent must be printable ASCII (it is an HTTP header), got {opts.user_agent_text!r}")
    if not (math.isfinite(opts.staging_ttl_hours) and opts.staging_ttl_hours > 0):
        problems.append(f"--staging_ttl_hours must be more than 0, got {opts.staging_ttl_hours}")
    if not (math.isfinite(opts.night_claim_hours) and opts.night_claim_hours > 0):
        problems.append(f"--night_claim_hours must be more than 0, got {opts.night_claim_hours}")
    if not (math.isfinite(opts.publish_lock_ttl_seconds) and opts.publish_lock_ttl_seconds >= 1):
        problems.append(f"--publish_lock_ttl_seconds must be at least 1, got {opts.publish_lock_ttl_seconds}")
    if not (math.isfinite(opts.progress_seconds) and (opts.progress_seconds >= 0 or opts.progress_seconds == -1)):
        problems.append(
            f"--progress_seconds must be 0 or more (0: never), or -1 for the default, got {opts.progress_seconds}"
        )
    return problems


def is_dataflow(runner: str | None) -> bool:
    return (runner or "").lower().removesuffix("runner") == "dataflow"


def remote_runner_problems(options: PipelineOptions, paths: dict[str, str | None]) -> list[str]:
    """What a DataflowRunner job needs before it can start (see the module doc); ``paths``:
    option name -> value of the inputs and outputs its workers read and write."""
    if not is_dataflow(options.view_as(StandardOptions).runner):
        return []
    cloud = options.view_as(GoogleCloudOptions)
    problems = []
    if not cloud.project:
        problems.append("--runner=DataflowRunner needs --project (the Google Cloud project to run the job in)")
    if not cloud.region:
        problems.append("--runner=DataflowRunner needs --region (e.g. --region=europe-west6)")
    locations = {"--temp_location": cloud.temp_location, "--staging_location": cloud.staging_location}
    if not any(locations.values()):
        problems.append(
            "--runner=DataflowRunner needs --temp_location=gs://BUCKET/tmp (where the job stages its files)"
        )
    for name, value in {**locations, **paths}.items():
        if value and not value.startswith("gs://"):
            problems.append(
                f"{name} {value} is on this machine, which Dataflow's workers cannot read: give a gs:// path"
            )
    setup_file = options.view_as(SetupOptions).setup_file
    if setup_file and not Path(setup_file).is_file():
        problems.append(f"--setup_file {setup_file} does not exist (give the project's setup.py)")
    image = options.view_as(WorkerOptions).sdk_container_image
    if image and not _IMAGE.fullmatch(image):
        problems.append(f"--sdk_container_image {image!r} is not an image reference (REGISTRY/PATH:TAG)")
    if not problems and not has_credentials():
        problems.append(f"no Google credentials to submit the job with: {CREDENTIALS_FIX}")
    return problems


def has_credentials() -> bool:
    """Whether Google's application-default credentials can be found without a request:
    a key file named by GOOGLE_APPLICATION_CREDENTIALS, gcloud's application-default file,
    or a Google Cloud VM (whose metadata server gives them)."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return Path(named).is_file()
    config = os.environ.get("CLOUDSDK_CONFIG") or str(Path.home() / ".config" / "gcloud")
    if Path(config, "application_default_credentials.json").is_file():
        return True
    if os.environ.get("NO_GCE_CHECK", "").lower() == "true":  # google-auth's switch: not asking the VM
        return False
    try:
        return "Google" in Path("/sys/class/dmi/id/product_name").read_text()
    except OSError:
        return False
