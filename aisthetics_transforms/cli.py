"""The ``aisthetics`` command line."""
from __future__ import annotations

import argparse
import json
import sys

from aisthetics_transforms.model import ENGINES, WeightsError


def _score(args: argparse.Namespace) -> int:
    from aisthetics_transforms.api import get_aisthetics_model

    nima = get_aisthetics_model(engine=args.engine, weights=args.weights, batch_size=args.batch_size)
    results = nima.score(args.images)
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")
    failed = [r for r in results if "error" in r]
    for r in failed:
        print(f"aisthetics: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def _report(args: argparse.Namespace) -> int:
    from aisthetics_transforms.report import ReportError, write_report

    try:
        path = write_report(
            args.output, args.run_date, top=args.top, thumbnails=args.thumbnails, memory_limit=args.memory_limit
        )
    except ReportError as exc:
        print(f"aisthetics: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aisthetics", description="NIMA image aesthetics scoring.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score image files and print the seed-shaped JSON list")
    score.add_argument("images", nargs="+", metavar="IMAGE")
    score.add_argument("--engine", choices=ENGINES, default="auto", help="auto picks litert (default)")
    score.add_argument("--weights", help="a NIMA MobileNet HDF5 (local or gs://); default: the seed's")
    score.add_argument("--batch_size", type=int, default=32)
    score.set_defaults(run=_score)
    report = commands.add_parser(
        "report",
        help="write OUTPUT/reports/dt=DATE/report.html, a self-contained page about one night",
        description="Write OUTPUT/reports/dt=DATE/report.html: counts, score histograms (overall and per kept "
        "column), the best and worst images as thumbnails, errors by stage and type, and the change since "
        "the newest earlier night. Prints the path.",
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except WeightsError as exc:
        print(f"aisthetics: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
