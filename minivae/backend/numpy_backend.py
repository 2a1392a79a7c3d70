"""NumPy: the arrays live on the host; the fast path runs array operations with its hot passes
compiled for the CPU (:mod:`minivae.fast.cpu_kernels`)."""
from __future__ import annotations

from types import ModuleType

import numpy as np

from minivae.backend.base import Backend


class NumpyBackend(Backend):
    """The CPU backend (and the host of every other one)."""

    name = "numpy"
    can_export_rng_state = True
    draws_into_out = True
    default_batch_rows = 2 ** 13
    kernel_family = "compiled-cpu"
    split_step = "auto"

    @staticmethod
    def array_module() -> ModuleType:
        return np
