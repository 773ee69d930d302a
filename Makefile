# The two commands of the README: `make app` and `make test`. Both set everything up first.
VENV := .venv
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PORT ?= 8501
# `make app READONLY=1`: the presenting mode (nothing can be started, cancelled, deleted, saved or imported).
READONLY ?=
# Another address than 127.0.0.1 exposes the dashboard to the network: allowed only with READONLY=1.
ADDRESS ?= 127.0.0.1

.PHONY: setup app test test-fast test-all lint bench clean-cache

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $@

app: setup
	@if [ "$(ADDRESS)" != "127.0.0.1" ] && [ "$(READONLY)" != "1" ]; then \
		echo "make app: ADDRESS=$(ADDRESS) exposes the dashboard: add READONLY=1 (the full mode starts processes and writes files)"; \
		exit 2; fi
	SFSD_READONLY=$(READONLY) $(VENV)/bin/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT) --server.headless true --server.fileWatcherType none

# Tests run in one pytest-xdist worker per core (`make test WORKERS=0`: in this process); the tests that read the
# dashboard's and the frontier's stores share one worker, so each store is built once (tests/conftest.py).
WORKERS ?= auto
PARALLEL := -n $(WORKERS)

# Everything, what CI runs (.ci/run).
test: setup
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(VENV)/bin/python -m pytest -q --durations=15 $(PARALLEL) tests

# The edit loop: everything but the tests marked `slow` (real browser, real default model, background runs, the
# tiny-model tests that run many searches or processes).
test-fast: setup
	$(VENV)/bin/ruff check .
	$(OFFLINE) $(VENV)/bin/python -m pytest -q --durations=10 $(PARALLEL) -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check .

# Full sizes take hours on a 2-core CPU (bench/README.md); `make bench BENCH_ARGS=--quick` is a smoke test.
BENCH_ARGS ?=
bench: setup
	$(OFFLINE) $(VENV)/bin/python -m bench.run_all $(BENCH_ARGS)

clean-cache:
	rm -rf cache/runs cache/evals
