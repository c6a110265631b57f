# All set-up happens here: a fresh machine needs only python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.traintech-installed
# The CPU wheel of torch lies on our machines; an unpinned torch would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install test lint demo demo-quick bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,demo,monitor,integrations]' $(TORCH)
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy src

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/traintech demo

demo-quick: $(STAMP)
	$(BIN)/traintech demo --quick --out traintech-demo-quick

bench: $(STAMP)
	@set -e; for f in benchmarks/[a-z]*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
