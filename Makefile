# stylefleet: two commands.
#   make run   - create .venv, install, serve the default CPU app on 127.0.0.1:8000 (Ctrl-C stops it)
#   make test  - create/update .venv with the test extras and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CONSTRAINTS ?= constraints-cpu.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test bench install install-test install-gpu clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the dependency list or the constraints change.
$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# GPU machines: no CPU pin on torch, onnxruntime-gpu instead of onnxruntime.
install-gpu: | $(BIN)/python
	$(PIP) install -e '.[gpu]'
	$(PIP) uninstall -y onnxruntime
	$(PIP) install 'onnxruntime-gpu>=1.20.1,<1.26'

run: install
	$(BIN)/stylefleet run serve_config.yaml

test: install-test
	$(BIN)/python -m pytest

bench: install-test
	$(BIN)/stylefleet bench --config serve_config.yaml --out bench-results/bench.json

clean:
	rm -rf $(VENV) .pytest_cache bench-results
