# The project's everyday commands; each is one line you can also type yourself.
# `make setup` first (a .venv with the package, its extras and the checkers).

PY := .venv/bin/python
IMAGE ?= aisthetics:0.1.0
TEMPLATE ?= gs://BUCKET/templates/aisthetics.json
OUT ?= sample_output/tables

.PHONY: setup test test-fast lint format typecheck check sample report \
        bench-scoring bench-pipeline bench-nightly bench-scale bench-costs bench-hot-keys bench-handler \
        bench-report image template

setup:  ## a .venv with the package, the report and sample extras and the test tools
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'

test:  ## the whole suite, as CI runs it
	$(PY) -m pytest -q

test-fast:  ## the plain-function tests: no pipeline runs, servers or browser (under a minute)
	$(PY) -m pytest -q -m "not slow and not browser"

lint:  ## ruff: pyflakes, pycodestyle, isort, bugbear, pyupgrade; and the formatting
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

format:  ## rewrite the code in the project's format and import order
	$(PY) -m ruff check --fix . && $(PY) -m ruff format .

typecheck:  ## mypy on the package and the pipeline (configured in pyproject.toml)
	$(PY) -m mypy

check: lint typecheck test  ## what CI checks

sample:  ## score the bundled sample catalog on the local runner (./run_local.sh)
	./run_local.sh

report:  ## the report of the newest night under $(OUT)
	.venv/bin/aisthetics report $(OUT)

bench-scoring:  ## the scoring core against the seed's way (~2 min)
	$(PY) benchmarks/bench_scoring.py

bench-pipeline:  ## the pipeline end to end against the ideal and RunInference (~7 min)
	$(PY) benchmarks/bench_pipeline.py

bench-nightly:  ## a first and an incremental night at two manifest sizes (~4 min)
	$(PY) benchmarks/bench_nightly.py

bench-scale:  ## HTTP against disk, 4x the images, a skewed manifest, dead and busy hosts, a far CDN (~8 min)
	$(PY) benchmarks/bench_scale.py

bench-costs:  ## the requests an incremental night makes on the GCS emulator and over HTTP (~4 min)
	$(PY) benchmarks/bench_costs.py

bench-hot-keys:  ## peak memory with one hot key and with bodies refused part-way (~24 min)
	$(PY) benchmarks/bench_hot_keys.py

bench-handler:  ## the pipeline's score step against RunInference(NimaModelHandler()) (~2 min)
	$(PY) benchmarks/bench_handler.py


bench-report:  ## the report on synthetic nights of 100k to 5M rows (~1 min)
	$(PY) benchmarks/bench_report.py

image:  ## the Dataflow worker and Flex Template launcher image (needs a Docker engine)
	docker build -t $(IMAGE) .

template:  ## the Flex Template spec for that image (needs gcloud and a pushed image)
	gcloud dataflow flex-template build $(TEMPLATE) --image=$(IMAGE) --sdk-language=PYTHON \
		--metadata-file=dataflow/metadata.json
