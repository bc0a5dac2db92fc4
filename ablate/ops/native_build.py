"""Build and load the CPU kernels written in C++ (``ops/scan/native.py``, ``ops/conv1d/native.py``,
``ops/ssd/native.py``, ``ops/gated_norm/native.py``).

Each source is compiled once per machine with the system C++ compiler into a cache directory
(``$ABLATE_NATIVE_CACHE``, else ``~/.cache/ablate/native``), the file named by a hash of the
source, the compiler, the flags and the CPU (``-march=native``), written atomically so concurrent
sweep workers can share it; loaded with ctypes (no torch headers: a build takes ~1-2 s). Plain C
ABI over raw pointers: the Python side passes dense tensors' data pointers and strides.
No -ffast-math: NaN and Inf propagate as they do through the torch ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp-simd", "-std=c++17"]
LIBS = ["-lmvec", "-lm"]  # libmvec: glibc's vector exp, which `#pragma omp declare simd` on exp selects

_libs: dict[str, ctypes.CDLL] = {}
_errors: dict[str, str] = {}


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return "".join([ln for ln in f if ln.startswith(("model name", "flags"))][:2])
    except OSError:
        return ""


def _cache_dir() -> Path:
    env = os.environ.get("ABLATE_NATIVE_CACHE")
    cache = Path(env) if env else Path.home() / ".cache" / "ablate" / "native"
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        cache = Path(tempfile.gettempdir()) / "ablate-native"
        cache.mkdir(parents=True, exist_ok=True)
    return cache


def _build(name: str, source: str, symbols: tuple[str, ...]) -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ / c++) on PATH")
    key = hashlib.sha256("\0".join([source, cxx, *FLAGS, *LIBS, _cpu_key()]).encode()).hexdigest()[:16]
    cache = _cache_dir()
    lib = cache / f"{name}-{key}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src, so = Path(tmp) / f"{name}.cpp", Path(tmp) / f"{name}.so"
            src.write_text(source)
            done = subprocess.run([cxx, *FLAGS, str(src), "-o", str(so), *LIBS], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{cxx} failed: {done.stderr.strip()[-2000:]}")
            os.replace(so, lib)  # atomic: a concurrent worker sees no file or the whole file
    handle = ctypes.CDLL(str(lib))
    for symbol in symbols:
        getattr(handle, symbol).restype = None
    return handle


def load(name: str, source: str, symbols: tuple[str, ...]) -> ctypes.CDLL:
    """The library built from ``source`` (once per process and machine); RuntimeError saying why
    where it cannot be built (no compiler, a failed build: the reason is kept, not retried)."""
    if name not in _libs and name not in _errors:
        try:
            _libs[name] = _build(name, source, symbols)
        except (RuntimeError, OSError) as err:
            _errors[name] = str(err)
    if name not in _libs:
        raise RuntimeError(f"native {name} kernel unavailable: {_errors[name]}")
    return _libs[name]


def available(load_fn) -> bool:
    """Whether ``load_fn()`` (a kernel module's ``load``) finds or builds its library here."""
    try:
        load_fn()
    except RuntimeError:
        return False
    return True


def ptr(t) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if t is None else t.data_ptr())


def args(values) -> list:
    """ints as int64 (the C side's index type), pointers as they are."""
    return [ctypes.c_int64(v) if isinstance(v, int) else v for v in values]
