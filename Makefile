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
	-$(MAKE) kernels
	$(BIN)/python -m pytest -q

# AMQ's ONNX Runtime kernels need ONNX Runtime's C API headers, which its wheel does not ship: Debian's
# libonnxruntime-dev package has them (fetched once at build time, checked against its SHA-256).
ORT_DEB_URL := http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb
ORT_DEB_SHA256 := 14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08
ORT_HEADERS := .cache/onnxruntime-headers-1.21.0

$(ORT_HEADERS)/onnxruntime_cxx_api.h:
	rm -rf $(ORT_HEADERS).partial && mkdir -p $(ORT_HEADERS).partial
	curl -sSfL -o $(ORT_HEADERS).partial/dev.deb $(ORT_DEB_URL)
	echo "$(ORT_DEB_SHA256)  $(ORT_HEADERS).partial/dev.deb" | sha256sum -c --quiet -
	cd $(ORT_HEADERS).partial && ar x dev.deb && tar -xf data.tar.* ./usr/include/onnxruntime
	rm -rf $(ORT_HEADERS) && mv $(ORT_HEADERS).partial/usr/include/onnxruntime $(ORT_HEADERS)
	rm -rf $(ORT_HEADERS).partial

kernels: setup $(ORT_HEADERS)/onnxruntime_cxx_api.h
	ORT_INCLUDE_DIR=$(ORT_HEADERS) $(BIN)/amq-export build-kernels

clean:
	rm -rf $(VENV) runs .pytest_cache
