"""AMQ's ONNX Runtime kernel library (domain ``amq.ort``, ``amq_ort_kernels.cc``): an optional plugin.

The ``ort`` target with ``ort_kernels=True`` (``--ort-kernels``) rewrites what ONNX Runtime's standard op set
makes AMQ graphs copy or race on into two ops of this library (``passes/onnx/amq_ort_kernels.py``);
``OrtModel`` and ``save_optimized`` register the library for graphs that use them.

Building needs a C++17 compiler and ONNX Runtime's C API headers, which the ``onnxruntime`` wheel does not
ship: ``$ORT_INCLUDE_DIR`` (the ``include`` folder of an ONNX Runtime release); ``make kernels`` fetches Debian's
``libonnxruntime-dev`` package for them (85 kB, its SHA-256 pinned in the Makefile) and sets it. The library is
built against API version 21 (ONNX Runtime 1.21), which every later runtime accepts, and does
not link the runtime: it gets the API from ONNX Runtime when the session loads it. The build lands in the
cache (``$AMQ_CACHE_DIR``, default ``~/.cache/amq-export``) under a name keyed by the source and flags, so
an edited source is rebuilt, never silently reused.

    make kernels                                      # fetches the headers, then:
    ORT_INCLUDE_DIR=... amq-export build-kernels      # what it runs
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from amq_export.data.cache import resolve_cache_dir
from amq_export.errors import AMQError

DOMAIN = "amq.ort"
SOURCE = Path(__file__).with_name("amq_ort_kernels.cc")
HEADERS_ENV = "ORT_INCLUDE_DIR"
HEADER = "onnxruntime_cxx_api.h"
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden")
BUILD_HINT = "build them with `make kernels` (needs a C++ compiler)"


def uses_kernels(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s graph has ops of this library's domain."""
    return any(node.domain == DOMAIN for node in model.graph.node)


@functools.cache
def _build_key() -> str:
    """The source and flags' hash, read once per process (every session with the kernels asks for the path)."""
    return hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]


def library_path() -> Path:
    """Where the build of the current source lives (it may not exist yet)."""
    return resolve_cache_dir() / "ort-kernels" / f"libamq_ort_kernels-{_build_key()}.so"


def available() -> bool:
    return library_path().is_file()


def require() -> Path:
    """The built library, or an error that says how to build it."""
    path = library_path()
    if not path.is_file():
        raise AMQError(f"AMQ's ONNX Runtime kernels (domain {DOMAIN}) are not built for this source: {BUILD_HINT}")
    return path


def register(options) -> None:  # an onnxruntime.SessionOptions
    """Make the library's ops known to sessions created with ``options``."""
    options.register_custom_ops_library(str(require()))


def headers_dir() -> Path:
    """``$ORT_INCLUDE_DIR``: the folder with ONNX Runtime's C API headers (``make kernels`` fetches them)."""
    if not os.environ.get(HEADERS_ENV):
        raise AMQError(f"AMQ's ONNX Runtime kernels need ONNX Runtime's C API headers: run `make kernels` (it fetches "
                       f"them), or set ${HEADERS_ENV} to the include folder of an ONNX Runtime release")
    path = Path(os.environ[HEADERS_ENV]).expanduser()
    if not (path / HEADER).is_file():
        raise AMQError(f"${HEADERS_ENV}={path} has no {HEADER}: point it at ONNX Runtime's include folder")
    return path


def build(force: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Compile the library (if this source has no build yet, or ``force``); returns its path."""
    path = library_path()
    if path.is_file() and not force:
        return path
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise AMQError("no C++ compiler found (set $CXX or install g++); AMQ's ONNX Runtime kernels are optional")
    include = headers_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=path.parent, prefix=".partial-")
    os.close(fd)
    try:
        progress(f"compiling {SOURCE.name} -> {path}")
        done = subprocess.run([compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", partial],
                              check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise AMQError(f"compiling {SOURCE.name} failed:\n{done.stderr.strip()}")
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)
    return path
