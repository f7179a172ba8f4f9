# attnlink_ros: set-up, demo, tests. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test bench towns train-lite kiss-slam clean

venv: $(STAMP)

MSGS   := $(wildcard attnlink_msgs/msg/*.msg) attnlink_msgs/CMakeLists.txt attnlink_msgs/package.xml

$(STAMP): requirements.txt attnlink_ros/setup.py attnlink_ros/setup.cfg attnlink_ros/package.xml $(MSGS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# attnlink_msgs: generated and installed into the venv (the venv is the ROS prefix of the
	# ros-jazzy-* wheels); ~10 s. rosidl finds the typesupports through AMENT_PREFIX_PATH.
	rm -rf build/attnlink_msgs && mkdir -p build
	PATH="$(abspath $(BIN)):$$PATH" AMENT_PREFIX_PATH="$${AMENT_PREFIX_PATH:-$(abspath $(VENV))}" \
	  $(BIN)/cmake -S attnlink_msgs -B build/attnlink_msgs -DCMAKE_INSTALL_PREFIX="$(abspath $(VENV))" \
	  -DPython3_EXECUTABLE="$(abspath $(BIN))/python" -DBUILD_TESTING=OFF > build/attnlink_msgs.log 2>&1 \
	  && $(BIN)/cmake --build build/attnlink_msgs -j2 >> build/attnlink_msgs.log 2>&1 \
	  && $(BIN)/cmake --install build/attnlink_msgs >> build/attnlink_msgs.log 2>&1 \
	  || { tail -n 40 build/attnlink_msgs.log; echo "attnlink_msgs: build failed (log: build/attnlink_msgs.log)"; exit 1; }
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --config-settings editable_mode=compat -e attnlink_ros
	touch $(STAMP)

# The main job on the embedded default (see README).
demo: $(STAMP)
	$(BIN)/attnlink demo

# The whole test suite (CI runs exactly this through .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra attnlink_ros/test

bench: $(STAMP)
	$(BIN)/python attnlink_ros/bench/bench_projection.py

# Synthetic towns of the lite model's training (train 101-103, validation 201, test 301), ~15 min on 2 cores.
towns: $(STAMP)
	for s in 101 102 103; do test -f out/towns/s$$s/done || { $(BIN)/attnlink synth --out out/towns/s$$s --seed $$s --frames 1500 --workers 2 --quiet && touch out/towns/s$$s/done; }; done
	for s in 201 301; do test -f out/towns/s$$s/done || { $(BIN)/attnlink synth --out out/towns/s$$s --seed $$s --frames 900 --workers 2 --quiet && touch out/towns/s$$s/done; }; done

# Train (or resume) the shipped lite model on the towns.
train-lite: towns
	$(BIN)/attnlink train --config attnlink_ros/config/train_lite_synth.yaml

# KISS-SLAM, the peer `attnlink slam` compares against, in its own environment (~2 min, ~1 GB: open3d).
kiss-slam: .venv-kiss/.installed

.venv-kiss/.installed: requirements-kiss-slam.txt
	test -x .venv-kiss/bin/python || $(PYTHON) -m venv .venv-kiss
	.venv-kiss/bin/python -m pip install --quiet -r requirements-kiss-slam.txt
	touch $@

clean:
	rm -rf build install log out .pytest_cache attnlink_ros/*.egg-info
