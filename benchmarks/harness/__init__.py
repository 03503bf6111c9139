"""What every benchmark script shares: the machine, timed child processes, the corpus, rounds, reports.

The scripts in benchmarks/ are run as ``python benchmarks/bench_x.py``, so this folder is first on
``sys.path`` and ``import harness`` finds this package; their child processes get it through
:func:`harness.process.child_env`. Modules:

- ``machine``: CPU model, flags, cores, versions; CPU used by other processes; waiting for quiet.
- ``process``: the child environment, the one-JSON-line result protocol, a process tree's peak RSS,
  one timed child process, and "run again if disturbed".
- ``corpus``: the one cached JPEG catalog builder and CSV manifests.
- ``code``: which code the children import (the working tree, or a commit extracted read-only).
- ``pipeline_runs``: a ``python -m pipeline`` command, what its run left (summary, tables).
- ``servers``: a loopback HTTP server of images held in memory, and hosts that never answer.
- ``rounds``: each row once per round, the median run, ratios within each round.
- ``report``: goal lines, noise cells, the machine line, the ``--out``/``--reference`` options, writing
  ``NAME.md`` and ``.json``.
- ``workers``: the measured children that several scripts run (``python -m harness.workers NAME``).
- ``profiling``: the pipeline in one process under cProfile, and reading the profile.
"""

import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
CACHE = BENCH_DIR / ".cache"  # gitignored: corpora, outputs, logs, the converted model
# The reports docs/performance.md cites: written only by a run named the reference (--reference).
REFERENCE_RESULTS = BENCH_DIR / "results"
# Every other run's report: outside the repository, so trying a benchmark changes no tracked file.
SCRATCH_RESULTS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aisthetics" / "benchmark-results"
MODEL_CACHE = CACHE / "aisthetics"  # AISTHETICS_CACHE_DIR of every child: the model is converted once
