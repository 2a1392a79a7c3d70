"""The strict CPU stand-in for CuPy (:mod:`minivae.backend.strict`): NumPy underneath, CuPy's
boundary, so that the tests catch implicit host/device conversions without a GPU."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from minivae.backend import strict
from minivae.backend.base import Array, Backend


class StrictBackend(Backend):
    """Runs the array operations of the fast path (like CuPy, no compiled CPU passes); may split a
    step between two threads when asked (``threads=2``), so that the tests cover the split on
    arrays that refuse implicit conversion. Its noise is NumPy's generator, copied in."""

    name = "strict"
    can_export_rng_state = True
    draws_into_out = False
    default_batch_rows = 2 ** 13
    kernel_family = "array"
    split_step = "on request"

    @staticmethod
    def array_module() -> ModuleType:
        return strict

    @staticmethod
    def owns(array: Any) -> bool:
        return isinstance(array, strict.ndarray)

    @staticmethod
    def to_host(array: Array) -> np.ndarray:
        return strict.asnumpy(array)
