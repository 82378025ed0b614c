# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
UV := $(PYTHON) -m uv
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint format bench clean stack-up stack-down

$(BIN)/vos: pyproject.toml uv.lock
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv>=0.9"
	$(UV) sync --frozen --extra dev --compile-bytecode
	@touch $(BIN)/vos

setup: $(BIN)/vos  ## install uv and the locked environment into .venv

demo: setup  ## run the whole pipeline end to end on tiny settings (a few minutes on 2 CPUs)
	$(BIN)/vos demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: setup lint  ## lint, then every test (real Ray, MLflow and S3 on 127.0.0.1)
	@# Tests start real servers; a test that failed is run once more on its own, and fails
	@# the build if it fails again (pytest's cache keeps the list of last failures).
	$(BIN)/pytest || (echo "re-running the failed tests once" && $(BIN)/pytest --last-failed)

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup  ## CPU benchmarks (tiny settings); GPU flags in benchmarks/README.md
	$(BIN)/python benchmarks/inference_scaling.py
	$(BIN)/python benchmarks/datagen_throughput.py
	$(BIN)/python benchmarks/train_throughput.py

stack-up: setup
	$(BIN)/vos stack up

stack-down: setup
	$(BIN)/vos stack down

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_out
