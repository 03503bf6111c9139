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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aisthetics", description="NIMA image aesthetics scoring.")
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score image files and print the seed-shaped JSON list")
    score.add_argument("images", nargs="+", metavar="IMAGE")
    score.add_argument("--engine", choices=ENGINES, default="auto", help="auto picks litert (default)")
    score.add_argument("--weights", help="a NIMA MobileNet HDF5 (local or gs://); default: the seed's")
    score.add_argument("--batch_size", type=int, default=32)
    score.set_defaults(run=_score)
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
