# attnlink_ros: set-up, demo, tests. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py setup.cfg package.xml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The main job on the embedded default (see README).
demo: $(STAMP)
	$(BIN)/attnlink demo

# The whole test suite (CI runs exactly this through .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra test

bench: $(STAMP)
	$(BIN)/python bench/bench_projection.py

clean:
	rm -rf build install log out .pytest_cache *.egg-info
