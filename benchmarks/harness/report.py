"""Report helpers: the machine line, goal lines, noise cells, and writing a result's two files."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

from .machine import NOISE_CORES, disturbed


def machine_line(m: dict) -> str:
    """The date, the CPU (model, family, flags), cores, memory and the versions that matter."""
    versions = [
        ("Python", "python"),
        ("Apache Beam", "apache_beam"),
        ("TensorFlow", "tensorflow"),
        ("Keras", "keras"),
        ("ai-edge-litert", "ai_edge_litert"),
        ("pyarrow", "pyarrow"),
        ("numpy", "numpy"),
        ("Pillow", "pillow"),
    ]
    return (
        f"{m['date']} — {m['cpu_model']} (family {m.get('cpu_family')} model {m.get('cpu_model_number')}), "
        f"{m['cores']} cores, SIMD {'/'.join(m['simd']) or 'none'}, {m['memory_gb']} GB; "
        + ", ".join(f"{name} {m[key]}" for name, key in versions if m.get(key))
        + "."
    )


def goal_line(ok: bool, text: str) -> str:
    return f"{'PASS' if ok else 'FAIL'}  {text}"


def noise_cell(run: dict) -> str:
    return f"{run['other_cpu_cores']:.2f}{' ⚠' if disturbed(run) else ''}"


def noise_note(names: Sequence[str]) -> list[str]:
    """The NOTE line naming the rows other processes disturbed, if any."""
    return [f"NOTE  disturbed by other processes (re-run on an idle machine): {'; '.join(names)}"] if names else []


NOISE_EXPLAINED = (
    f"other CPU: cores other processes used while the row ran (machine-wide busy time from /proc/stat, "
    f"less the benchmark's own); above {NOISE_CORES:.2f} (⚠) the row was disturbed."
)


def command_line(script: str, argv: Sequence[str]) -> str:
    return " ".join(["python", f"benchmarks/{Path(script).name}", *argv])


def add_output_options(parser, name: str) -> None:
    """``--out`` (default: NAME.md among the scratch results, outside the repository) and
    ``--reference`` (write benchmarks/results/NAME.md, the report docs/performance.md cites)."""
    from . import REFERENCE_RESULTS, SCRATCH_RESULTS

    parser.add_argument(
        "--out",
        help=f"markdown output; the JSON goes beside it (default: {SCRATCH_RESULTS / name}, outside the repository)",
    )
    parser.add_argument(
        "--reference",
        action="store_true",
        help=f"write {REFERENCE_RESULTS.name}/{name} in benchmarks/: the run docs/performance.md cites",
    )
    parser.set_defaults(results_name=name)


def output_path(args) -> Path:
    """Where a run's report goes: ``--out``, the reference file, or the scratch results."""
    from . import REFERENCE_RESULTS, SCRATCH_RESULTS

    if args.out and args.reference:
        raise SystemExit("give --out or --reference, not both")
    if args.out:
        return Path(args.out)
    return (REFERENCE_RESULTS if args.reference else SCRATCH_RESULTS) / args.results_name


def write_results(out: Path, text: str, data: dict) -> None:
    """``out`` (markdown) and the same name with .json (every raw number); the report is printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    json_path = out.with_suffix(".json")
    new = json.dumps(data, indent=2, default=str) + "\n"
    if not json_path.exists() or json_path.read_text() != new:
        json_path.write_text(new)
    print(text)
    took = f" (the run took {data['total_wall_s'] / 60:.1f} min)" if "total_wall_s" in data else ""
    print(f"wrote {out} and {json_path}{took}", file=sys.stderr)


def finish(script: str, argv: Sequence[str], args, code: dict, started: float, goals, report, **parts) -> None:
    """A run's results: the machine, the command, the code and the arguments, then ``parts``,
    its goal lines (``goals(data)``) and its duration; written by :func:`write_results` to
    ``args.out`` as ``report(data)`` and the JSON."""
    from .machine import machine_info

    data = {"machine": machine_info(), "command": command_line(script, argv), "code": code, "args": vars(args)}
    data.update(parts)
    data["goal_lines"] = goals(data)
    data["total_wall_s"] = time.perf_counter() - started
    write_results(output_path(args), report(data), data)


def ratio_text(values: Sequence[float]) -> tuple[float, str]:
    """The median of a ratio's per-round values, and it written with them: '1.03x (rounds: 1.05x, 1.00x)'."""
    mid = statistics.median(values)
    return mid, f"{mid:.2f}x (rounds: {', '.join(f'{v:.2f}x' for v in values)})"


def goals_section(data: dict) -> list[str]:
    """The report's end: the noise note and the goal lines."""
    return ["", f"- {NOISE_EXPLAINED}", "", "## Goals", "", "```", *data["goal_lines"], "```", ""]
