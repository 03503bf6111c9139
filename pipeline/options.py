"""Command-line options of ``python -m pipeline`` (any Beam option may be given as well)."""
from __future__ import annotations

from datetime import datetime, timezone

from apache_beam.options.pipeline_options import PipelineOptions

from aisthetics_transforms.fetch import DEFAULT_FETCH_THREADS
from aisthetics_transforms.manifest import FORMATS
from aisthetics_transforms.model import ENGINES


def _today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value.lower() == "true"


class AistheticsOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        source = parser.add_argument_group("input")
        source.add_argument("--manifest", help="CSV, JSON Lines or Parquet manifest (path or glob; local or gs://)")
        source.add_argument("--images", help="score every file matching this glob instead of a manifest")
        source.add_argument("--manifest_format", choices=FORMATS, help="default: from the file extension")
        source.add_argument("--uri_column", default="uri")
        source.add_argument("--id_column", default="image_id", help="defaults to the uri when absent")
        source.add_argument("--keep_columns", default="", help="comma-separated manifest columns to carry into the tables")

        out = parser.add_argument_group("output")
        out.add_argument("--output", help="directory (local or gs://) holding scores/, errors/ and runs/")
        out.add_argument("--run_date", default=_today(), help="partition date YYYY-MM-DD (default: today, UTC)")
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
            "--staging_ttl_hours", type=float, default=72.0,
            help="later runs delete staging left by runs that started longer ago (longer than any run lives)",
        )
        out.add_argument(
            "--publish_lock_ttl_seconds", type=float, default=120.0,
            help="a run holding or awaiting a date's publish lock that shows no sign of life for this long "
            "is presumed dead, and its claim removed",
        )

        model = parser.add_argument_group("model")
        model.add_argument("--engine", choices=ENGINES, default="auto")
        model.add_argument("--weights", help="NIMA MobileNet HDF5 (local or gs://); default: the seed's weights")
        model.add_argument("--batch_size", type=int, default=32, help="images per inference call, at most")
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
            help="print each worker's count and img/s this often; default 10 on local runs, off elsewhere",
        )

        limits = parser.add_argument_group("limits")
        limits.add_argument("--max_image_bytes", type=int, default=50 * 2**20)
        limits.add_argument("--max_pixels", type=int, default=64_000_000)
        limits.add_argument("--max_dimension", type=int, default=20_000)
        limits.add_argument("--http_timeout", type=float, default=15.0, help="seconds of silence allowed per read")
        limits.add_argument("--http_deadline", type=float, default=60.0, help="seconds per image, retries included")

    def validate_inputs(self) -> list[str]:
        problems = []
        if bool(self.manifest) == bool(self.images):
            problems.append("give exactly one of --manifest or --images")
        if not self.output:
            problems.append("--output is required")
        try:
            datetime.strptime(self.run_date, "%Y-%m-%d")
        except ValueError:
            problems.append(f"--run_date must be YYYY-MM-DD, got {self.run_date!r}")
        if not self.staging_ttl_hours > 0:
            problems.append("--staging_ttl_hours must be more than 0")
        if not self.publish_lock_ttl_seconds >= 1:
            problems.append("--publish_lock_ttl_seconds must be at least 1")
        if self.batch_size < 1:
            problems.append("--batch_size must be at least 1")
        if self.fetch_threads < 1:
            problems.append("--fetch_threads must be at least 1")
        if self.decode_threads < 0:
            problems.append("--decode_threads must be at least 0 (0: the default)")
        return problems

    @property
    def keep_column_list(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.keep_columns.split(",") if c.strip())
