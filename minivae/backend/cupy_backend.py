"""CuPy: the arrays live on a CUDA GPU; the fast path runs fused CUDA kernels
(:mod:`minivae.fast.cuda_kernels`). CuPy is imported lazily and never required."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minivae.backend.base import Array, Backend, BackendUnavailableError, Random


def cupy_gpu_available() -> bool:
    """True when CuPy imports *and* sees a usable CUDA device (``import cupy`` alone is not enough)."""
    try:
        import cupy
    except ImportError:
        return False
    try:
        return bool(cupy.cuda.is_available())
    except Exception:  # a broken driver install raises CUDA runtime errors of its own
        return False


class CupyRandom(Random):
    """CuPy's ``Generator`` (XORWOW), drawing on the GPU. It has no ``permutation()`` and cannot
    export its state (``CupyBackend.can_export_rng_state`` is False)."""

    def _new_generator(self, seed):
        return self.backend.xp.random.default_rng(seed)

    def _on_device(self, draws):
        return draws   # drawn there

    def permutation(self, n: int) -> Array:
        return self.backend.xp.argsort(self._generator.random(size=n))   # sort random keys


class CupyBackend(Backend):
    """The GPU backend: one device, so a step is never split between threads."""

    name = "cupy"
    can_export_rng_state = False
    draws_into_out = True
    default_batch_rows = 2 ** 16
    kernel_family = "cuda"
    split_step = "never"

    def __init__(self):
        super().__init__()   # imports CuPy: a clear error if it is not installed
        if not cupy_gpu_available():
            raise BackendUnavailableError(
                "backend 'cupy' was requested but CuPy finds no usable CUDA GPU on this machine "
                "(import cupy succeeded, cupy.cuda.is_available() is False); use backend='numpy'")

    @staticmethod
    def array_module() -> ModuleType:
        try:
            import cupy
        except ImportError as error:
            raise BackendUnavailableError(
                "backend 'cupy' was requested but CuPy is not installed; install it with "
                "pip install -e '.[gpu]' (CUDA 13) or pip install cupy-cuda12x (CUDA 12)") from error
        return cupy

    @classmethod
    def available(cls) -> bool:
        return cupy_gpu_available()

    @staticmethod
    def owns(array: Any) -> bool:
        # by the type's module, so that CuPy is not imported to look at a NumPy array
        return type(array).__module__.split(".")[0] == "cupy"

    @staticmethod
    def to_host(array: Array) -> np.ndarray:
        return array.get()

    def random(self, seed: int | None = None) -> Random:
        return CupyRandom(self, seed)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()
