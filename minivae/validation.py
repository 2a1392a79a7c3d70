"""Input checks: bad input gets an error that names the problem, before any arithmetic happens."""
from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from minivae._types import Array

if TYPE_CHECKING:
    from minivae.model import VAE


DTYPES = ("float32", "float64")


class InputError(ValueError):
    """Raised for data of the wrong shape, dtype, device or values."""


def resolve_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """``"float32"``/``"float64"`` (or the NumPy dtypes) -> ``numpy.dtype``; anything else is refused
    (``None`` too: NumPy would read it as float64)."""
    try:
        resolved = None if dtype is None else np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return resolved


def check_count(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` >= ``minimum`` (a count: samples, rows, a layer's width). Refused with a
    ``ValueError`` naming ``name``: a bool, a string, None, NaN, a non-integral float, a smaller number."""
    integral = (isinstance(value, numbers.Integral)
                or isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer())
    if isinstance(value, bool) or not integral or int(value) < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_beta(beta: object) -> float:
    """The KL weight as a ``float``: a finite real number >= 0 (a negative beta rewards a large KL;
    NaN or Inf makes the loss NaN)."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    return float(beta)


def _describe(array):
    return f"{type(array).__module__.split('.')[0]}.{type(array).__name__}"


def check_array(array: object, model: VAE, name: str) -> None:
    """The array must belong to the model's backend and have the model's dtype."""
    backend = model.backend
    if not backend.is_native(array):
        hint = ("move it with model.backend.to_device(...)" if hasattr(array, "shape")
                else "convert it to an array first")
        raise InputError(f"{name} is a {_describe(array)} but the model computes on the "
                         f"{backend.name!r} backend; {hint}")
    if array.dtype != model.dtype:
        raise InputError(f"{name} has dtype {array.dtype} but the model computes in {model.dtype}; "
                         f"cast it with {name}.astype('{model.dtype}') (no silent promotion)")


def check_layout(x: Array, model: VAE, dim: int | None = None, name: str = "x") -> None:
    """The free checks (no pass over the values): backend, dtype, and shape (N >= 1, dim)."""
    dim = model.input_dim if dim is None else dim
    check_array(x, model, name)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"{name} must have shape (N, {dim}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)})")


def check_data(x: Array, model: VAE, dim: int | None = None, name: str = "x", unit_interval: bool = False,
               value_range: tuple[float, float] | None = None, range_hint: str = "") -> Array:
    """Check a batch ``x (N, dim)``: backend, dtype, shape, finite values, and inside
    ``value_range`` = (low, high) if given (``unit_interval=True``: [0, 1]). Returns ``x`` in C
    order (a copy only when it is not), so that a Fortran-ordered or strided batch gives exactly
    the result of its contiguous copy.

    Costs two reductions (min and max): NaN propagates through both, so one comparison
    catches NaN, Inf and out-of-range values; the exact culprit is found only on failure.
    ``range_hint`` ends the message for values outside the range (how to fix them).
    """
    check_layout(x, model, dim, name)
    if value_range is None:
        value_range = (0.0, 1.0) if unit_interval else (-np.inf, np.inf)
    check_values(x, model, name, value_range, range_hint)
    return model.xp.ascontiguousarray(x)


def check_values(x: Array, model: VAE, name: str, value_range: tuple[float, float] = (-np.inf, np.inf),
                 range_hint: str = "") -> None:
    """The values of ``x`` (any shape, at least one element) are finite and inside ``value_range``."""
    xp = model.xp
    low, high = float(x.min()), float(x.max())
    lower, upper = value_range
    if lower <= low and high <= upper and np.isfinite(low) and np.isfinite(high):
        return
    if bool(xp.isnan(x).any()):
        raise InputError(f"{name} contains NaN ({int(xp.isnan(x).sum())} entries)")
    if bool(xp.isinf(x).any()):
        raise InputError(f"{name} contains Inf ({int(xp.isinf(x).sum())} entries)")
    raise InputError(f"{name} has values outside [{lower:g}, {upper:g}] (min {low}, max {high})"
                     + (f"; {range_hint}" if range_hint else ""))


def check_eps(eps: Array, model: VAE, batch_size: int, values: bool = True) -> Array:
    """``eps`` must be (L, N, K) with L >= 1, or (N, K), on the model's backend, and (``values``)
    finite; returns the (L, N, K) array in C order."""
    check_array(eps, model, "eps")
    K = model.latent_dim
    if eps.ndim == 2:
        eps = eps.reshape(1, *eps.shape)
    if eps.ndim != 3 or eps.shape[1:] != (batch_size, K) or eps.shape[0] == 0:
        raise InputError(f"eps must have shape (n_samples, {batch_size}, {K}) with n_samples >= 1, or "
                         f"({batch_size}, {K}), got {tuple(eps.shape)}")
    if values:
        check_values(eps, model, "eps")
    return model.xp.ascontiguousarray(eps)


def check_latent(z: Array, model: VAE, batch_size: int) -> None:
    """``z`` must be (..., N, K) on the model's backend, with finite values: latent points, with
    any leading sample axes, for a batch of N examples."""
    check_array(z, model, "z")
    K = model.latent_dim
    if z.ndim < 2 or z.shape[-2:] != (batch_size, K) or z.size == 0:
        raise InputError(f"z must have shape (..., {batch_size}, {K}) for a batch of {batch_size}, "
                         f"got {tuple(z.shape)}")
    check_values(z, model, "z")
