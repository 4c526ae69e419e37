# One command each: `make run` (set up + main job), `make test` (set up + lint + types + tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run diagnose test lint docs test-tools clean

# The stamp, not bin/recfunnel, marks a finished install: pip writes the entry point before it
# has installed every dependency, so an interrupted setup would otherwise look done.
STAMP := $(VENV)/.installed
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first and pinned: an unpinned torch would pull the multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[embed,llamacpp,hf,train,gemma,serve,ray,dev]"
	touch $@

setup: $(STAMP)

run: setup
	$(BIN)/recfunnel eval --config configs/cold-start.toml --json out/cold-start.json

diagnose: setup
	$(BIN)/recfunnel diagnose --config configs/diagnose-cold-start.toml --out report/

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy src

# What the tests drive besides Python: Chromium (the demo page and the diagnosis report) and
# redis-server (several service processes sharing limits and sessions). Found, or installed
# with apt-get; else a message naming the package.
TEST_TOOLS := chromium redis-server
test-tools:
	@missing=""; for t in $(TEST_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing (apt-get)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
	  { echo "the tests need$$missing: install with apt-get install$$missing"; exit 1; }; \
	fi

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet -d site

test: lint docs test-tools
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out report .pytest_cache .mypy_cache .ruff_cache
