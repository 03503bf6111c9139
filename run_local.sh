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
# The summary JSON goes to the night's summary.json; the run's own last line says what happened.
"$python" -m pipeline --manifest="$sample/manifest.csv" --output="$out" --keep_columns=category >/dev/null

# A first look at the tables, with the query the README shows (DuckDB, over the Parquet files).
"$python" - "$out" <<'PY'
import sys
import duckdb

out = sys.argv[1]
print("\nMean score per category (DuckDB over " + out + "/scores/dt=*/*.parquet):")
duckdb.sql(f"""SELECT category, count(*) AS images, round(avg(mean_score), 2) AS mean_score
               FROM read_parquet('{out}/scores/*/*.parquet', hive_partitioning = true)
               GROUP BY ALL ORDER BY mean_score DESC""").show()
print("Errors (" + out + "/errors/dt=*/*.parquet):")
duckdb.sql(f"""SELECT image_id, stage, error_type FROM read_parquet('{out}/errors/*/*.parquet')
               ORDER BY ALL""").show()
PY

# The nightly report of the run just written (the newest night under $out).
report="$("$python" -m aisthetics_transforms.cli report "$PWD/$out")"
echo "Report (one self-contained HTML page; open it in a browser):"
echo "  $report"
