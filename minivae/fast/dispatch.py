"""Which kernels a backend runs: one dispatch for the training step and the optimizers."""
from __future__ import annotations

from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.fast.cuda_kernels import CupyKernels

_kernels = {}


def get_kernels(backend):
    """The kernels for ``backend``: fused CUDA kernels on CuPy; on NumPy the array operations with
    the hot passes compiled for the CPU where a compiler is at hand (:mod:`minivae.fast.cpu_library`);
    array operations on the strict stand-in."""
    if backend.name not in _kernels:
        if backend.name == "cupy":
            _kernels[backend.name] = CupyKernels(backend.xp)
        elif backend.name == "numpy":
            _kernels[backend.name] = CompiledKernels(backend.xp)
        else:
            _kernels[backend.name] = ArrayKernels(backend.xp)
    return _kernels[backend.name]
