"""Which kernels a backend runs: one dispatch for the training step and the optimizers, on the
backend's declared ``kernel_family`` (:class:`minivae.backend.Backend`)."""
from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from minivae.backend import Backend
from minivae.fast import cpu_library
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.fast.cuda_kernels import CupyKernels

# kernel family -> the kernels class, made with the backend's array module
KERNEL_FAMILIES: dict[str, type[ArrayKernels]] = {
    "cuda": CupyKernels,             # fused CUDA kernels, one launch per pass
    "compiled-cpu": CompiledKernels,  # array operations, the hot passes compiled where possible
    "array": ArrayKernels,           # in-place array operations only
}

_kernels = {}


def get_kernels(backend: Backend) -> ArrayKernels:
    """The kernels for ``backend`` (one object per kernel family and array module): fused CUDA
    kernels on CuPy; on NumPy the array operations with the hot passes compiled for the CPU where
    a compiler is at hand (:mod:`minivae.fast.cpu_library`); array operations on the strict
    stand-in."""
    key = (backend.kernel_family, backend.xp)
    if key not in _kernels:
        if backend.kernel_family not in KERNEL_FAMILIES:
            raise ValueError(f"backend {backend.name!r} declares kernel family {backend.kernel_family!r}; "
                             f"known: {tuple(KERNEL_FAMILIES)}")
        _kernels[key] = KERNEL_FAMILIES[backend.kernel_family](backend.xp)
    return _kernels[key]


def describe_kernels(backend: Backend, dtype: DTypeLike) -> str:
    """Which kernels run the fast step's passes and the optimizer's update on ``backend`` for
    ``dtype``, in words (the last bits of a float32 run depend on it): ``"fused CUDA kernels"``,
    ``"compiled (<library>)"``, or ``"NumPy passes"`` (with the reason where a library was wanted)."""
    if backend.kernel_family == "cuda":
        return "fused CUDA kernels"
    if backend.kernel_family == "compiled-cpu":
        cpu_library.get(dtype)
        return cpu_library.status().get(np.dtype(dtype).name, "NumPy passes")
    return "NumPy passes"
