"""Names for type hints: what the public API takes and returns."""
from __future__ import annotations

from typing import Any, Union

Array = Any
"""An array of the model's backend: ``numpy.ndarray``, ``cupy.ndarray`` or the strict stand-in's
(kept as ``Any``: the array modules share no base class)."""

Scalar = Any
"""A 0-d array on the backend's device (read it with ``float()``: on a GPU, a synchronisation)."""

DType = Union[str, Any]
"""``"float32"``, ``"float64"`` or the NumPy dtype."""
