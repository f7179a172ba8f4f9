# attnlink_ros: set-up, demo, tests. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench towns train-lite clean

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

# Synthetic towns of the lite model's training (train 101-103, validation 201, test 301), ~15 min on 2 cores.
towns: $(STAMP)
	for s in 101 102 103; do test -f out/towns/s$$s/done || { $(BIN)/attnlink synth --out out/towns/s$$s --seed $$s --frames 1500 --workers 2 --quiet && touch out/towns/s$$s/done; }; done
	for s in 201 301; do test -f out/towns/s$$s/done || { $(BIN)/attnlink synth --out out/towns/s$$s --seed $$s --frames 900 --workers 2 --quiet && touch out/towns/s$$s/done; }; done

# Train (or resume) the shipped lite model on the towns.
train-lite: towns
	$(BIN)/attnlink train --config config/train_lite_synth.yaml

clean:
	rm -rf build install log out .pytest_cache *.egg-info
