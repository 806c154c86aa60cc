"""AMQ's ONNX Runtime kernel library (domain ``amq.ort``, ``amq_ort_kernels.cc``): an optional plugin.

The ``ort`` target with ``ort_kernels=True`` (``--ort-kernels``) rewrites what ONNX Runtime's standard op set
makes AMQ graphs copy or race on into two ops of this library (``passes/onnx/amq_ort_kernels.py``);
``OrtModel`` and ``save_optimized`` register the library for graphs that use them.

Building needs a C++17 compiler and ONNX Runtime's C API headers, which the ``onnxruntime`` wheel does not
ship: ``$ORT_INCLUDE_DIR`` if set (the ``include`` folder of an ONNX Runtime release), else Debian's
``libonnxruntime-dev`` package (85 kB, its SHA-256 pinned below), downloaded once into the cache. The
library is built against API version 21 (ONNX Runtime 1.21), which every later runtime accepts, and does
not link the runtime: it gets the API from ONNX Runtime when the session loads it. The build lands in the
cache (``$AMQ_CACHE_DIR``, default ``~/.cache/amq-export``) under a name keyed by the source and flags, so
an edited source is rebuilt, never silently reused.

    amq-export build-kernels        # or: make kernels
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import onnx

from amq_export.data.cache import resolve_cache_dir
from amq_export.errors import AMQError

DOMAIN = "amq.ort"
SOURCE = Path(__file__).with_name("amq_ort_kernels.cc")
HEADERS_ENV = "ORT_INCLUDE_DIR"
HEADERS_DEB = ("http://deb.debian.org/debian/pool/main/o/onnxruntime/libonnxruntime-dev_1.21.0+dfsg-1_amd64.deb",
               "14f7d959d5deacbcf1504830d4189f91fc67382b399ed9ae9d3aa9c4050ced08")
HEADER = "onnxruntime_cxx_api.h"
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fvisibility=hidden")
BUILD_HINT = "build them with `amq-export build-kernels` (or `make kernels`; needs a C++ compiler)"


def uses_kernels(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s graph has ops of this library's domain."""
    return any(node.domain == DOMAIN for node in model.graph.node)


def library_path() -> Path:
    """Where the build of the current source lives (it may not exist yet)."""
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]
    return resolve_cache_dir() / "ort-kernels" / f"libamq_ort_kernels-{key}.so"


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


def _deb_member(deb: bytes, prefix: str) -> bytes:
    """The first member of a Debian package (an ``ar`` archive) whose name starts with ``prefix``."""
    if not deb.startswith(b"!<arch>\n"):
        raise AMQError("the downloaded ONNX Runtime headers package is not a Debian archive")
    at = 8
    while at + 60 <= len(deb):
        name, size = deb[at:at + 16].decode().strip().rstrip("/"), int(deb[at + 48:at + 58].decode())
        if name.startswith(prefix):
            return deb[at + 60:at + 60 + size]
        at += 60 + size + size % 2
    raise AMQError(f"the ONNX Runtime headers package has no {prefix}* member")


def headers_dir(progress: Callable[[str], None] = print) -> Path:
    """``$ORT_INCLUDE_DIR``, else the headers of the pinned Debian package in the cache (downloaded once)."""
    if os.environ.get(HEADERS_ENV):
        path = Path(os.environ[HEADERS_ENV]).expanduser()
        if not (path / HEADER).is_file():
            raise AMQError(f"${HEADERS_ENV}={path} has no {HEADER}: point it at ONNX Runtime's include folder")
        return path
    target = resolve_cache_dir() / "onnxruntime-headers-1.21.0"
    if (target / HEADER).is_file():
        return target
    url, sha256 = HEADERS_DEB
    progress(f"downloading ONNX Runtime's C API headers: {url}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            deb = response.read()
    except OSError as exc:
        raise AMQError(f"cannot download ONNX Runtime's headers ({exc}); set ${HEADERS_ENV} to the include folder "
                       "of an ONNX Runtime release instead") from None
    if hashlib.sha256(deb).hexdigest() != sha256:
        raise AMQError(f"{url} does not have the expected SHA-256 {sha256}; not using it")
    staging = Path(tempfile.mkdtemp(prefix=".headers-", dir=target.parent))
    try:
        with tarfile.open(fileobj=io.BytesIO(_deb_member(deb, "data.tar"))) as tar:
            for member in tar.getmembers():
                if member.isfile() and "/include/onnxruntime/" in member.name and ".." not in member.name:
                    relative = member.name.split("/include/onnxruntime/", 1)[1]
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staging / relative).write_bytes(tar.extractfile(member).read())
        if not (staging / HEADER).is_file():
            raise AMQError(f"the ONNX Runtime headers package has no {HEADER}")
        staging.rename(target)
    except OSError:
        if not (target / HEADER).is_file():  # another build may have got there first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build(force: bool = False, progress: Callable[[str], None] = print) -> Path:
    """Compile the library (if this source has no build yet, or ``force``); returns its path."""
    path = library_path()
    if path.is_file() and not force:
        return path
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise AMQError("no C++ compiler found (set $CXX or install g++); AMQ's ONNX Runtime kernels are optional")
    include = headers_dir(progress)
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
