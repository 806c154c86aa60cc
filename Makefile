# Two entry points, both from a fresh machine with Python 3.11 and make:
#   make demo   set up .venv and run the main job on the embedded default
#   make test   set up .venv and run the test suite (building the optional ONNX Runtime kernels first
#               where this machine can: their tests skip where it cannot)
#   make kernels   build AMQ's ONNX Runtime kernels (optional: --target ort --ort-kernels)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: demo test setup kernels clean

setup: $(VENV)/.installed

# torch is installed first and pinned, so that no CUDA build is ever pulled in.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/amq-export demo --out $(DEMO_DIR)

test: setup
	-$(BIN)/amq-export build-kernels
	$(BIN)/python -m pytest -q

kernels: setup
	$(BIN)/amq-export build-kernels

clean:
	rm -rf $(VENV) runs .pytest_cache
