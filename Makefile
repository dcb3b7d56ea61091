# Every target installs what it needs on first use into .venv (from pyproject.toml).
# Two stamps: the demo needs the server and the CLI's extras only; the tests and the
# linters add their tools (pyproject's [dependency-groups], never published).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint wire bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The venv's own pip is enough for the demo: upgrading it costs a download and ~5 s.
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server,cli,fast]'
	touch $@

# pip installs dependency groups (--group) from 25.1 on.
$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet -e '.[server,aws,cli,fast]' --group test --group lint
	touch $@ $(DEMO_STAMP)

# The name the stamp had before the split: scripts that make it get the full set.
$(VENV)/.installed: $(TEST_STAMP)
	touch $@

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

test: $(TEST_STAMP)
	$(BIN)/python -m pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check sdk backend_stub tests examples bench
	$(BIN)/ruff format --check sdk backend_stub tests examples bench
	$(BIN)/mypy

# After changing a model in sdk/contract.py: regenerate the SDK's light form of it
# (sdk/_wire/models.py); tests/test_wire.py fails until it is.
wire: $(TEST_STAMP)
	$(BIN)/python -m sdk._wire.generate

# `make bench HUGE=1` adds 10,000,000 items to the memory benchmark (long).
bench: $(TEST_STAMP)
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/snapshot.py
	$(BIN)/python bench/sync.py
	$(BIN)/python bench/attachments.py
	$(BIN)/python bench/memory.py $(if $(HUGE),--huge)
	$(BIN)/python bench/startup.py

chaos: $(TEST_STAMP)
	$(BIN)/python bench/chaos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
