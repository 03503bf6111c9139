"""Command-line options of ``python -m pipeline`` (any Beam option may be given as well).

:func:`pipeline_options` is the one way in: it refuses, in one line naming every
problem, a malformed value, an unknown option that looks like a misspelt known one,
and every problem :meth:`AistheticsOptions.validate_inputs` finds; so nothing runs
(and nothing is written) with options that would fail later.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from datetime import UTC, datetime
from typing import Sequence, TypeVar

from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from aisthetics_transforms import storage
from aisthetics_transforms.fetch import DEFAULT_FETCH_THREADS, FetchLimits
from aisthetics_transforms.manifest import FORMATS
from aisthetics_transforms.model import DEFAULT_BATCH_SIZE, DEFAULT_ENGINE, ENGINES
from aisthetics_transforms.preprocess import DecodeLimits
from aisthetics_transforms.publish import STAGING_TTL_HOURS
from aisthetics_transforms.publish_lock import LockTimes
from aisthetics_transforms.score import ModelSpec
from aisthetics_transforms.settings import option_fields, option_values
from pipeline.checks import (
    LIMIT_CLASSES,
    PROG,
    keep_column_problems,
    misspelt_option_problems,
    number_problems,
    output_problems,
    remote_runner_problems,
    run_date_problems,
    version_problems,
)

EXIT_STATUS_HELP = (
    "Exit status: 0 the night was written; 2 a usage or input mistake (an option, the manifest, the weights, "
    "--output, what a Dataflow job needs) or a date another run is running, told in one line before anything "
    "is written; 130 interrupted (nothing is published); "
    "1 anything else (the run failed; the traceback says where)."
)
BEAM_OPTIONS_HELP = (
    "Any Apache Beam pipeline option is accepted as well (--runner, --project, --region, --temp_location, "
    "--direct_running_mode, --direct_num_workers, ...): see Beam's PipelineOptions documentation."
)

OptionsView = TypeVar("OptionsView", bound=PipelineOptions)


class CachedViewOptions(PipelineOptions):
    """PipelineOptions that make each view once.

    While a graph is built Beam asks for ``view_as(TypeOptions)`` about four times per
    transform (~550 times for a night), and every view parses the command line again
    (docs/performance.md has what that cost). A view holds no values of its
    own: each reads and writes the one store of values of the object it was made from, so
    one view per class is the same thing. A copy (pickle, deepcopy) starts without views."""

    def view_as(self, cls: type[OptionsView]) -> OptionsView:
        views = self.__dict__.setdefault("_views", {})
        if cls not in views:
            views[cls] = super().view_as(cls)
        return views[cls]

    def __getstate__(self) -> dict:
        return {key: value for key, value in super().__getstate__().items() if key != "_views"}


class OptionsError(ValueError):
    """Options that cannot run. ``problems`` lists every one; the message joins them in one line."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


def _add_setting_options(group, cls: type) -> None:
    """One option per field of ``cls`` that names one (:func:`aisthetics_transforms.settings.setting`),
    its default and help taken from the field; a deprecated alias sets the same value."""
    for field in option_fields(cls):
        spec = field.metadata
        names = [f"--{spec['option']}", *(f"--{alias}" for alias in spec["aliases"])]
        helped = spec["help"] + "".join(f" (formerly --{alias}, deprecated)" for alias in spec["aliases"])
        if isinstance(field.default, bool):
            kinds: dict = {"nargs": "?", "const": True, "type": _flag}
        else:
            kinds = {"type": type(field.default)}
        group.add_argument(*names, dest=spec["option"], default=field.default, help=helped, **kinds)


def deprecated_option_warnings(argv: Sequence[str]) -> list[str]:
    """A line for each deprecated option name in ``argv``, naming the one to write instead."""
    renamed = {
        f"--{alias}": f"--{f.metadata['option']}"
        for cls in LIMIT_CLASSES
        for f in option_fields(cls)
        for alias in f.metadata["aliases"]
    }
    used = dict.fromkeys(name for name in (arg.partition("=")[0] for arg in argv) if name in renamed)
    return [f"{PROG}: {old} is deprecated and goes in the next release; write {renamed[old]}" for old in used]


class AistheticsOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        source = parser.add_argument_group("input")
        source.add_argument("--manifest", help="CSV, JSON Lines or Parquet manifest (path or glob; local or gs://)")
        source.add_argument("--images", help="score every file matching this glob instead of a manifest")
        source.add_argument(
            "--manifest_format", choices=FORMATS, help="the manifest's format; default: from its extension"
        )
        source.add_argument("--uri_column", default="uri", help="manifest column holding each image's uri")
        source.add_argument(
            "--id_column", default="image_id", help="manifest column holding each image's id; the uri when absent"
        )
        source.add_argument(
            "--keep_columns", default="", help="comma-separated manifest columns to carry into the tables"
        )
        source.add_argument(
            "--version_column",
            help="manifest column the catalog vouches for as each image's version (an updated_at, a checksum, an "
            "ETag; --uri_column for immutable uris): with --incremental, an unchanged value reuses the earlier "
            "night's score without any request; an empty one falls back to a version check",
        )
        source.add_argument(
            "--list_gcs_versions",
            nargs="?",
            const=True,
            default=True,
            type=_flag,
            help="with --incremental, read the generations of gs:// images by listing their buckets, a thousand "
            "objects a request, instead of one metadata request each (=false: one by one, e.g. for a service "
            "account without storage.objects.list)",
        )
        source.add_argument(
            "--verify_declared_fraction",
            type=float,
            default=0.0,
            help="check this fraction of the uris with an unchanged declared version for real anyway (a sample "
            "picked per night by a hash of the uri), counting in the summary those whose bytes had changed",
        )

        out = parser.add_argument_group("output")
        out.add_argument("--output", help="directory (local or gs://) holding scores/, errors/ and runs/")
        out.add_argument("--run_date", default=_today(), help="partition date YYYY-MM-DD (default: today in UTC)")
        out.add_argument(
            "--incremental",
            nargs="?",
            const=True,
            default=False,
            type=_flag,
            help="reuse the newest earlier partition's scores for images that did not change "
            "(--incremental, or =true/false as Flex Templates pass it)",
        )
        out.add_argument(
            "--verbose",
            nargs="?",
            const=True,
            default=False,
            type=_flag,
            help="show TensorFlow's and LiteRT's own start-up logs (silenced otherwise)",
        )
        out.add_argument(
            "--staging_ttl_hours",
            type=float,
            default=STAGING_TTL_HOURS,
            help="later runs delete staging left by runs that started longer ago (longer than any run lives)",
        )
        out.add_argument(
            "--wait_until_finish",
            nargs="?",
            const=True,
            default=True,
            type=_flag,
            help="remote runners: wait for the job to end, renewing the date's claim meanwhile "
            "(=false: submit and leave, as a scheduled Flex Template does)",
        )
        out.add_argument(
            "--night_claim_hours",
            type=float,
            default=24.0,
            help="how long the date's claim of a job left running (--wait_until_finish=false) lasts unless its "
            "publish releases it first: longer than a night takes",
        )
        out.add_argument(
            "--publish_lock_ttl_seconds",
            type=float,
            default=LockTimes.ttl_s,
            help="a run holding the date's claim, or holding or awaiting its publish lock, that shows no sign of "
            "life for this long is presumed dead, and its claim taken over",
        )

        model = parser.add_argument_group("model")
        model.add_argument(
            "--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="inference engine; auto picks litert"
        )
        model.add_argument("--weights", help="NIMA MobileNet HDF5 (local or gs://); default: the seed's weights")
        model.add_argument(
            "--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per inference call, at most"
        )
        model.add_argument(
            "--inference_threads",
            type=int,
            default=0,
            help="LiteRT threads per worker process; 0: cores / local worker processes (1 on remote runners)",
        )

        model.add_argument(
            "--decode_threads",
            type=int,
            default=0,
            help="threads decoding images per worker process; 0: cores / local worker processes (1 on remote runners)",
        )
        model.add_argument(
            "--fetch_threads",
            type=int,
            default=DEFAULT_FETCH_THREADS,
            help="images fetched at once per worker process (http and gs:// fetches mostly wait on the network)",
        )
        model.add_argument(
            "--progress_seconds",
            type=float,
            default=-1,
            help="local runs: a progress line this often when stderr is not a terminal (on a terminal it is redrawn "
            "in place; 0: no progress line); -1: 5 s; other runners show the same numbers as Beam counters",
        )

        limits = parser.add_argument_group("limits")
        for limits_class in LIMIT_CLASSES:
            _add_setting_options(limits, limits_class)

    def validate_inputs(self) -> list[str]:
        """Every problem with these options, each naming the option and what it needs."""
        problems = []
        if bool(self.manifest) == bool(self.images):
            problems.append("give exactly one of --manifest or --images")
        if not self.output:
            problems.append("--output is required (a directory, local or gs://)")
        else:
            problems += output_problems(self.output)
        problems += run_date_problems(self.run_date)
        problems += number_problems(self)
        for name in ("uri_column", "id_column"):
            if not getattr(self, name).strip():
                problems.append(f"--{name} must name a manifest column, got an empty name")
        problems += keep_column_problems(self.keep_column_list)
        problems += version_problems(self)
        paths = {"--manifest": self.manifest, "--images": self.images, "--output": self.output}
        problems += remote_runner_problems(self, {**paths, "--weights": self.weights})
        return problems

    def use_os_paths(self) -> list[str]:
        """Turn ``file://`` uris given as paths into the paths Beam's filesystems take (Beam
        knows no ``file://``); one naming another host is a problem."""
        problems = []
        for name in ("manifest", "images", "output", "weights"):
            value = getattr(self, name)
            if value and storage.scheme(value) == "file":
                try:
                    setattr(self, name, storage.os_path(value))
                except ValueError as exc:
                    problems.append(f"--{name}: {exc}; give a path on this machine or gs://")
        return problems

    @property
    def keep_column_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.keep_columns.split(",") if c.strip())

    def fetch_limits(self) -> FetchLimits:
        values = option_values(FetchLimits, lambda option: getattr(self, option))
        return FetchLimits(**values, user_agent=self.user_agent_text.strip())

    @property
    def user_agent_text(self) -> str:
        """Beam's own ``--user_agent`` ("describing the pipeline to external services"): the
        image hosts are such services."""
        return self.view_as(SetupOptions).user_agent or ""

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits(**option_values(DecodeLimits, lambda option: getattr(self, option)))

    def model_spec(self, staged_model: str | None = None) -> ModelSpec:
        return ModelSpec(
            self.engine, self.weights, self.batch_size, self.inference_threads, staged_model, bool(self.verbose)
        )


# --- parsing ---------------------------------------------------------------------------------


def _all_options_parser() -> argparse.ArgumentParser:
    """Every registered option class's parser (ours and Beam's), exactly as Beam builds it:
    Beam's public ``get_all_options`` hands it to ``add_extra_args_fn`` before parsing."""
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    parser = parsers[0]
    parser.exit_on_error = False  # a malformed value raises ArgumentError instead of exiting
    return parser


def _option_names(parser: argparse.ArgumentParser) -> list[str]:
    return [name for action in parser._actions for name in action.option_strings]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's help ends in its default, unless it has none or says it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, "", False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def help_text() -> str:
    paragraphs = [BEAM_OPTIONS_HELP, EXIT_STATUS_HELP]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Score a catalog of images with NIMA: manifest -> fetch -> decode -> score -> Parquet tables under "
            "--output (scores/, errors/ and runs/, partitioned by dt=RUN_DATE).",
            78,
        ),
        epilog="\n\n".join(textwrap.fill(p, 78) for p in paragraphs),
        formatter_class=_HelpFormatter,
    )
    AistheticsOptions._add_argparse_args(parser)  # pylint: disable=protected-access
    return parser.format_help()


def pipeline_options(argv: Sequence[str]) -> PipelineOptions:
    """``argv`` -> PipelineOptions, or :class:`OptionsError` naming every problem at once.
    ``-h``/``--help`` prints the help and exits 0, as argparse does."""
    argv = list(argv)
    if "-h" in argv or "--help" in argv:
        sys.stdout.write(help_text())
        raise SystemExit(0)
    parser = _all_options_parser()
    try:
        _, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError as malformed:
        raise OptionsError([f"{malformed} (see {PROG} --help)"]) from None
    for warning in deprecated_option_warnings(argv):
        print(warning, file=sys.stderr)
    problems = misspelt_option_problems(unknown, _option_names(parser))
    options = CachedViewOptions(argv)
    ours = options.view_as(AistheticsOptions)
    problems += ours.use_os_paths()
    problems += ours.validate_inputs()
    if problems:
        raise OptionsError(problems)
    return options
