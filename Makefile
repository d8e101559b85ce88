# Two entry points matter: `make demo` (main job on the embedded defaults) and `make test`.
# Both create .venv and install everything the first time; later runs reuse it.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.metallmix-installed
PYTEST_ARGS ?=
# NATIVE=1 (or METALLMIX_LLM_NATIVE=1) builds llama.cpp for this machine's CPU only; the default
# is a portable build that runs on any CPU of this architecture (scripts/build_llama.sh).
NATIVE ?= $(or $(METALLMIX_LLM_NATIVE),0)

.PHONY: install llm-build demo test lint typecheck docs docs-pages studio mlflow-ui bench-lodo kb-quicktune clean

$(STAMP): pyproject.toml scripts/build_llama.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	NATIVE=$(NATIVE) bash scripts/build_llama.sh $(BIN)/python
	$(BIN)/python -m pip install -e ".[all]"
	@touch $(STAMP)

install: $(STAMP)
ifeq ($(NATIVE),1)
	NATIVE=1 bash scripts/build_llama.sh $(BIN)/python
endif

# (Re)install llama-cpp-python alone: `make llm-build` (portable) or `make llm-build NATIVE=1`.
llm-build:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	NATIVE=$(NATIVE) bash scripts/build_llama.sh $(BIN)/python

demo: $(STAMP)
	$(BIN)/metallmix demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/python scripts/typecheck.py

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Regenerate the benchmark pages and the CLI reference after a benchmark rerun or a CLI change.
docs-pages: $(STAMP)
	$(BIN)/python bench/make_pages.py
	$(BIN)/python scripts/make_cli_reference.py

studio: $(STAMP)
	$(BIN)/langgraph dev --host 127.0.0.1 --port 2024 --no-browser

mlflow-ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db \
		--default-artifact-root mlruns/artifacts --host 127.0.0.1 --port 5000

bench-lodo: $(STAMP)
	$(BIN)/metallmix bench lodo --kb ../shared/data/quicktune/extended

# The shipped KB's GPU regime: the 2,278 public Quick-Tune runs (BSD-3), added next to our own
# CPU runs. Idempotent (re-running inserts nothing); afterwards the file goes back to
# rollback-journal mode so it opens read-only from an installed package.
QUICKTUNE ?= ../shared/data/quicktune/extended
SHIPPED_KB ?= metallmix/data/kb.sqlite
kb-quicktune: $(STAMP)
	$(BIN)/metallmix kb import-quicktune $(QUICKTUNE) --kb $(SHIPPED_KB)
	$(BIN)/metallmix kb info --kb $(SHIPPED_KB) --json | $(BIN)/python -c \
		"import json, sys; d = json.load(sys.stdin); print(d['by_regime'], d['by_source'])"
	$(BIN)/python -c "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); \
		c.execute('PRAGMA journal_mode=DELETE'); c.execute('VACUUM'); c.close()" $(SHIPPED_KB)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
