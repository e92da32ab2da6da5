# meshmetrics — every command a developer or CI needs. `make test` and `make demo`
# work on a fresh machine: they install into .venv first.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
DEMO_ARGS ?=
MESH_CLIENT_ARGS ?=
# The example plugin (examples/plugins/ratelimit): everything generated from its registry.
PLUGIN  = examples/plugins/ratelimit
GENERATE_PLUGIN = $(PY) -m meshmetrics generate $(PLUGIN)/ratelimit.yaml --output $(PLUGIN)/ratelimit_metrics.py \
	--reference $(PLUGIN)/metrics.md --dashboard $(PLUGIN)/dashboard.json --rules $(PLUGIN)/rules.yaml

.PHONY: install conventions lint test test-unit test-e2e demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

conventions: install  ## regenerate everything derived from the registry, and from the example plugin's
	$(PY) tools/gen_conventions.py
	$(PY) tools/gen_rules.py
	$(PY) tools/gen_dashboard.py
	$(GENERATE_PLUGIN)

lint: install  ## ruff, mypy --strict, and the conventions drift check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) tools/gen_conventions.py --check
	$(PY) tools/gen_rules.py --check
	$(PY) tools/gen_dashboard.py --check
	$(GENERATE_PLUGIN) --check

test: lint  ## everything CI runs
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

test-e2e: install
	$(PY) -m pytest tests/e2e

demo: install  ## a simulated mesh on http://localhost:9464/metrics (Ctrl-C to stop)
	$(PY) -m meshmetrics demo $(DEMO_ARGS)

.PHONY: mesh-client
mesh-client: install  ## httpx + tenacity + pybreaker over three local upstreams; a fixed number of calls, then its counts
	$(PY) examples/mesh_client $(MESH_CLIENT_ARGS)

bench: install  ## benchmarks (not part of `make test`); results in benchmarks/results/
	$(PY) benchmarks/bench_hot_path.py
	$(PY) benchmarks/bench_cardinality.py
	$(PY) benchmarks/bench_outage.py
	$(PY) benchmarks/bench_multiprocess.py
	$(PY) benchmarks/bench_exemplars.py --output benchmarks/results/exemplars.md
	$(PY) benchmarks/bench_client_integrations.py --output benchmarks/results/client_integrations.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
