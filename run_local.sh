#!/usr/bin/env bash
# Score a bundled sample catalog on the local runner, or, with arguments, run
# `python -m pipeline "$@"`. Sets up .venv on first use.
set -euo pipefail
cd "$(dirname "$0")"

venv="${AISTHETICS_VENV:-.venv}"
if ! "$venv/bin/python" -c "import aisthetics_transforms, pipeline, duckdb" 2>/dev/null; then
  echo "Setting up $venv (first run only; a few minutes)..." >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -e '.[report,sample]'
fi
python="$venv/bin/python"

if [ $# -gt 0 ]; then
  exec "$python" -m pipeline "$@"
fi

sample=sample_output/catalog
out=sample_output/tables
"$python" -m aisthetics_transforms.sample "$sample" >/dev/null
"$python" -m pipeline --manifest="$sample/manifest.csv" --output="$out" --keep_columns=category

cat <<TXT

Tables written under $out/:
  scores: $out/scores/dt=*/*.parquet
  errors: $out/errors/dt=*/*.parquet
  runs:   $out/runs/dt=*/summary.json
Look at them with DuckDB:
  $python -c "import duckdb; duckdb.sql(\"SELECT category, count(*) AS n, round(avg(mean_score), 3) AS mean FROM read_parquet('$out/scores/*/*.parquet', hive_partitioning=true) GROUP BY ALL ORDER BY mean DESC\").show()"
TXT

# The nightly report of the run just written (the newest night under $out).
report="$("$python" -m aisthetics_transforms.cli report "$PWD/$out")"
echo
echo "Report (one self-contained HTML page; open it in a browser):"
echo "  $report"
