# One command each: `make run` (set up + main job), `make test` (set up + lint + types + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run diagnose test lint clean

$(BIN)/recfunnel: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first and pinned: an unpinned torch would pull the multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[embed,llamacpp,hf,train,gemma,serve,ray,dev]"
	touch $@

setup: $(BIN)/recfunnel

run: setup
	$(BIN)/recfunnel eval --config configs/cold-start.toml --json out/cold-start.json

diagnose: setup
	$(BIN)/recfunnel diagnose --config configs/diagnose-cold-start.toml --out report/

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out report .pytest_cache .mypy_cache .ruff_cache
