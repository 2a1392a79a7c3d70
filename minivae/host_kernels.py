"""The optimizer kernels of :mod:`minivae.kernels`, compiled for the CPU when a C++ compiler is at hand.

Each kernel in :data:`minivae.kernels.CUDA_KERNELS` is the formula for one element; for the CPU,
:func:`minivae.kernels.host_library_source` wraps it in a plain C++ loop. Compiled once per machine
(the library is cached) and called through :mod:`ctypes`, which releases the interpreter lock for
the call, an Adam update is one pass over the parameters instead of NumPy's ten, and the two
threads of a split training step (:mod:`minivae.step`) update their two ranges fully in parallel
(batch 128, 784-400-20 model, 2-core EPYC: 8-10 % off the step).

Only the optimizer kernels are compiled: their operands are flat vectors of one length (no
broadcasting). The step's other elementwise work stays in NumPy, whose vectorized ``exp`` the
compiler's scalar ``exp`` would not match.

Nothing is required: where no compiler is found (``$CXX``, ``c++``, ``g++``, ``clang++``), the
build fails, or ``MINIVAE_HOST_KERNELS=0`` is set, the optimizers run their NumPy passes (the same
math; the last bits of a float32 run differ between the two). :func:`status` says which is used.
The cache is ``$MINIVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/minivae``, else ``~/.cache/minivae``;
a library is named after the hash of its source, compiler and flags, and written atomically.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from minivae.kernels import CUDA_KERNELS, SCALAR_PARAMS, host_library_source, kernel_params

NAMES = ("adam", "sgd", "sgd_momentum")
FLAGS = ("-O3", "-fno-math-errno", "-shared", "-fPIC")   # no -march: the cache may be shared
C_TYPES = {"float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double)}

_lock = threading.Lock()
_loaded = {}     # dtype name -> HostKernels or None
_status = {}     # dtype name -> what happened


class HostKernels:
    """The compiled optimizer kernels for one dtype, with the signatures of
    :class:`minivae.kernels.CupyKernels`' ``adam``, ``sgd`` and ``sgd_momentum`` (flat,
    contiguous arrays of the library's dtype; scalars as Python numbers)."""

    def __init__(self, library, c_scalar):
        self.functions = {}
        for name in NAMES:
            function = getattr(library, name)
            in_params, out_params, _ = CUDA_KERNELS[name]
            scalars = SCALAR_PARAMS.get(name, ())
            params = kernel_params(in_params) + kernel_params(out_params)
            function.argtypes = [c_scalar if pname in scalars else ctypes.c_void_p
                                 for _, pname, _ in params] + [ctypes.c_longlong]   # + n
            function.restype = None
            self.functions[name] = function

    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r):
        self.functions["adam"](g.ctypes.data, beta1, beta2, step_size, eps_hat,
                               p.ctypes.data, s.ctypes.data, r.ctypes.data, p.size)

    def sgd(self, g, lr, p):
        self.functions["sgd"](g.ctypes.data, lr, p.ctypes.data, p.size)

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity):
        self.functions["sgd_momentum"](g.ctypes.data, lr, momentum, nesterov,
                                       p.ctypes.data, velocity.ctypes.data, p.size)


def get(dtype):
    """The compiled kernels for NumPy arrays of ``dtype`` (float32 or float64), or None."""
    key = np.dtype(dtype).name
    if key not in _loaded:
        with _lock:
            if key not in _loaded:
                _loaded[key] = _load(key)
    return _loaded[key]


def status():
    """{dtype: "compiled (<library path>)" or "NumPy passes: <why>"} for the dtypes asked for so far."""
    return dict(_status)


def cache_dir():
    if os.environ.get("MINIVAE_CACHE_DIR"):
        return Path(os.environ["MINIVAE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minivae"


def find_compiler():
    """``$CXX``, else the first of c++, g++, clang++ on the PATH, else None."""
    return os.environ.get("CXX") or next(
        (found for found in map(shutil.which, ("c++", "g++", "clang++")) if found), None)


def library_source_and_path(dtype, compiler):
    """The C++ source of the kernels for ``dtype`` and the cache path of their library: named
    after the hash of the source, the compiler, the flags and the machine."""
    c_name = C_TYPES[dtype][0]
    source = host_library_source(c_name, NAMES)
    key = "\n".join([source, compiler, *FLAGS, platform.machine()])
    return source, cache_dir() / f"optimizer_{c_name}_{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"


def _load(dtype):
    if os.environ.get("MINIVAE_HOST_KERNELS", "1") == "0":
        _status[dtype] = "NumPy passes: MINIVAE_HOST_KERNELS=0"
        return None
    if dtype not in C_TYPES:
        _status[dtype] = f"NumPy passes: no kernels for {dtype}"
        return None
    compiler = find_compiler()
    if compiler is None:
        _status[dtype] = "NumPy passes: no C++ compiler found"
        return None
    c_name, c_scalar = C_TYPES[dtype]
    source, path = library_source_and_path(dtype, compiler)
    try:
        path = _build(source, compiler, path)
        kernels = HostKernels(ctypes.CDLL(str(path)), c_scalar)
    except (OSError, subprocess.SubprocessError, AttributeError) as error:
        _status[dtype] = f"NumPy passes: building the kernels failed ({type(error).__name__}: {error})"
        return None
    _status[dtype] = f"compiled ({path})"
    return kernels


def _build(source, compiler, path):
    """The library at ``path``, compiled there first unless a loadable one is there already (a
    damaged file is rebuilt). Compiles into a temporary file beside it and renames it into place
    (atomic), so that processes sharing the cache never load a half-written library. Where the
    cache folder cannot be written, builds in a new temporary folder instead."""
    if path.exists():
        try:
            ctypes.CDLL(str(path))
            return path
        except OSError:
            pass                     # damaged or foreign: rebuild below
    try:
        return _compile(source, compiler, path)
    except PermissionError:
        return _compile(source, compiler, Path(tempfile.mkdtemp(prefix="minivae-")) / path.name)


def _compile(source, compiler, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:
        source_file = Path(work) / "kernels.cpp"
        source_file.write_text(source)
        built = Path(work) / path.name
        subprocess.run([compiler, *FLAGS, "-o", str(built), str(source_file)], check=True,
                       capture_output=True, timeout=120)
        os.replace(built, path)
    return path
