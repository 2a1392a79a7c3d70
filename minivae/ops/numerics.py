"""Numerical building blocks shared by the densities and the bounds: log 2 pi and log-sum-exp.

``logsumexp`` reduces one array; ``logsumexp_update`` and ``logsumexp_value`` compute the same
number over chunks that arrive one at a time (the importance-weighted bound, whose k samples do
not fit in one decoder call). Every function takes its array module from its arguments, so they
run on NumPy, CuPy and the strict stand-in alike.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from minivae._types import Array
from minivae.backend import get_array_module

LOG_2PI = math.log(2 * math.pi)


def logsumexp(a: Array, axis: Optional[int] = None) -> Array:
    """log sum exp(a) along ``axis`` (all axes when None), without overflow.

    = m + log sum exp(a - m) with m = max a; when every entry is -inf the empty sum's log, -inf.
    Shapes: a (..., n, ...) -> a's shape without ``axis`` (a 0-d array when ``axis`` is None).
    """
    xp = get_array_module(a)
    a_max = a.max(axis=axis, keepdims=True)
    a_max = xp.where(xp.isfinite(a_max), a_max, 0.0)
    total = xp.exp(a - a_max).sum(axis=axis, keepdims=True)
    positive = total > 0.0                   # all -inf: the log of an empty sum is -inf
    out = xp.where(positive, xp.log(xp.where(positive, total, 1.0)), -math.inf) + a_max
    return out.squeeze(axis) if axis is not None else out.reshape(())


def logsumexp_update(a: Array, state: Optional[Tuple[Array, Array]] = None) -> Tuple[Array, Array]:
    """Add a chunk to a running log-sum-exp over the first axis.

    The state is (m, s): the running maximum and s = sum_i exp(a_i - m) over the entries seen, so
    that log sum_i exp(a_i) = m + log s (:func:`logsumexp_value`). A chunk c gives
    m' = max(m, max c) and s' = s exp(m - m') + sum exp(c - m'); ``state=None`` starts from the
    first chunk. Shapes: a (c, ...) -> m, s (...).
    """
    xp = get_array_module(a)
    chunk_max = a.max(axis=0)
    m = chunk_max if state is None else xp.maximum(state[0], chunk_max)
    shift = xp.where(xp.isfinite(m), m, 0.0)      # all -inf so far: exp(-inf - 0) = 0, not NaN
    s = xp.exp(a - shift).sum(axis=0)
    if state is not None:
        s = state[1] * xp.exp(state[0] - shift) + s
    return m, s


def logsumexp_value(state: Tuple[Array, Array]) -> Array:
    """log sum exp of everything a :func:`logsumexp_update` state has seen: m + log s. (...)."""
    m, s = state
    xp = get_array_module(m, s)
    positive = s > 0.0
    return m + xp.where(positive, xp.log(xp.where(positive, s, 1.0)), -math.inf)
