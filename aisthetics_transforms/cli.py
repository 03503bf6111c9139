"""The ``aisthetics`` command line.

Exit status: 0 when everything asked for was done; 1 when ``score`` could not score
some image (each gets an ``"error"`` entry and a line on stderr); 2 for a usage or
input mistake (a bad option, weights file or report date), told in one line on stderr;
130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys

from aisthetics_transforms import storage
from aisthetics_transforms.console import EXIT_FAILED, EXIT_OK, EXIT_USAGE, handle_interrupt, leave_interrupted
from aisthetics_transforms.model import DEFAULT_BATCH_SIZE, DEFAULT_ENGINE, ENGINES, WeightsError, show_logs

EXIT_STATUS_HELP = (
    "exit status: 0 done; 1 some image could not be scored (score); 2 a usage or input mistake, "
    "told in one line; 130 interrupted"
)


class UsageError(Exception):
    """A mistake on the command line; its message is the one line the user sees."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a mistake raises :class:`UsageError` instead of printing the usage
    block and exiting: the caller prints one line naming the option and the fix."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _score(args: argparse.Namespace) -> int:
    from aisthetics_transforms.api import get_aisthetics_model

    nima = get_aisthetics_model(engine=args.engine, weights=args.weights, batch_size=args.batch_size)
    results = nima.score(args.images)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"aisthetics: {r['error']}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def _report(args: argparse.Namespace) -> int:
    try:
        from aisthetics_transforms.report import ReportError, write_report
    except ModuleNotFoundError as exc:  # duckdb: an extra, not needed by the pipeline's workers
        raise UsageError(f"aisthetics report needs {exc.name}: pip install 'aisthetics[report]'") from None

    try:
        output = storage.os_path(args.output)
    except ValueError as exc:  # a file:// uri naming another host
        raise UsageError(str(exc)) from None
    try:
        path = write_report(
            output, args.run_date, top=args.top, thumbnails=args.thumbnails, memory_limit=args.memory_limit
        )
    except ReportError as exc:
        raise UsageError(str(exc)) from None
    print(storage.shown(path))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    verbose_help = "show TensorFlow's and LiteRT's own start-up logs (default: silenced)"
    parser = OneLineArgumentParser(
        prog="aisthetics", description="NIMA image aesthetics scoring.", epilog=EXIT_STATUS_HELP
    )
    parser.add_argument("--verbose", action="store_true", help=verbose_help)
    # Also accepted after the command; SUPPRESS keeps a subcommand from resetting it to False.
    common = OneLineArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{score,report}")
    score = commands.add_parser(
        "score",
        parents=[common],
        help="score image files and print the seed-shaped JSON list",
        description="Score image files and print the seed-shaped JSON list; an image that cannot be scored gets an "
        '"error" entry instead of scores.',
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    score.add_argument("images", nargs="+", metavar="IMAGE", help="local image files")
    score.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="auto picks litert")
    score.add_argument("--weights", help="a NIMA MobileNet HDF5 (local or gs://); default: the seed's")
    score.add_argument("--batch_size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="images per inference call")
    score.set_defaults(run=_score)
    report = commands.add_parser(
        "report",
        parents=[common],
        help="write OUTPUT/reports/dt=DATE/report.html, a self-contained page about one night",
        description="Write OUTPUT/reports/dt=DATE/report.html: counts, score histograms (overall and per kept "
        "column), the best and worst images as thumbnails, errors by stage and type, and the change since "
        "the newest earlier night. Prints the path.",
        epilog=EXIT_STATUS_HELP,
    )
    report.add_argument("output", metavar="OUTPUT", help="the pipeline's --output")
    report.add_argument("--run_date", help="YYYY-MM-DD (default: the newest night under OUTPUT)")
    report.add_argument("--top", type=int, default=12, help="best and worst images shown (default 12)")
    report.add_argument(
        "--no_thumbnails", dest="thumbnails", action="store_false", help="do not fetch images; show placeholders"
    )
    report.add_argument(
        "--memory_limit", default="512MB", help="DuckDB's memory limit; beyond it, work spills to disk (default 512MB)"
    )
    report.set_defaults(run=_report)
    return parser


def _interrupted(signum=None, frame=None) -> None:
    # Results are printed, a report renamed, at the end: nothing is half-written.
    leave_interrupted("aisthetics")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    handling = handle_interrupt(_interrupted)
    try:
        args = build_parser().parse_args(argv)
        if args.verbose:
            show_logs()
        return args.run(args)
    except (UsageError, WeightsError) as exc:
        print(f"aisthetics: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if handling:  # main() may be called again, in-process
            signal.signal(signal.SIGINT, signal.default_int_handler)


if __name__ == "__main__":
    sys.exit(main())
