"""Decoder likelihoods p(x | z): negative log-likelihoods in nats, each with its backward.

Each NLL sums over the last axis (the pixels) and keeps the leading axes, so one call serves a
batch ``(N, D)`` or ``L`` Monte Carlo samples of it ``(L, N, D)`` against the same data ``x (N, D)``
(broadcast). The backward takes ``dnll`` with the NLL's shape and returns the gradient with respect
to the decoder outputs; the data ``x`` gets no gradient.
"""
from __future__ import annotations

import math

from minivae.backend import get_array_module
from minivae.ops.layers import sigmoid, softplus
from minivae.ops.numerics import LOG_2PI

# --- Bernoulli ----------------------------------------------------------------------------------

def bernoulli_nll(logits, x):
    """-log Bernoulli(x | sigma(logits)) summed over pixels: binary cross-entropy from logits.

    -log p(x | l) = -x log sigma(l) - (1 - x) log(1 - sigma(l)) = softplus(l) - x * l,

    and softplus is computed stably (never ``log(sigmoid(l))``), so logits of +-1000 give exact,
    finite values. ``x`` may be any value in [0, 1] (continuous intensities are allowed).

    Shapes: logits (..., N, D), x (N, D) -> nll (..., N).
    """
    return (softplus(logits) - x * logits).sum(axis=-1), (logits, x)


def bernoulli_nll_backward(dnll, cache):
    """dlogits = dnll * (sigma(l) - x).   Shapes: dnll (..., N) -> dlogits (..., N, D)."""
    logits, x = cache
    return dnll[..., None] * (sigmoid(logits) - x)


# --- Gaussian, fixed variance -------------------------------------------------------------------

def gaussian_nll_fixed(mean, x, variance=1.0):
    """-log N(x | mean, variance * I) summed over pixels, for a fixed scalar variance:

    0.5 * sum_d (x_d - mean_d)^2 / variance + 0.5 * D * log(2 pi variance)   (squared error + const).

    Shapes: mean (..., N, D), x (N, D) -> nll (..., N).
    """
    if not variance > 0.0:
        raise ValueError(f"variance must be positive, got {variance}")
    variance = float(variance)
    D = mean.shape[-1]
    residual = mean - x
    nll = 0.5 / variance * (residual * residual).sum(axis=-1) + 0.5 * D * (LOG_2PI + math.log(variance))
    return nll, (residual, variance)


def gaussian_nll_fixed_backward(dnll, cache):
    """dmean = dnll * (mean - x) / variance."""
    residual, variance = cache
    return dnll[..., None] * residual * (1.0 / variance)


# --- Gaussian, learned log-variance -------------------------------------------------------------

def gaussian_nll(mean, logvar, x):
    """-log N(x | mean, diag(exp(logvar))) summed over pixels:

    0.5 * sum_d [ (x_d - mean_d)^2 exp(-logvar_d) + logvar_d + log(2 pi) ].

    ``logvar`` broadcasts against ``mean`` (one per pixel ``(D,)``, or per example ``(..., N, D)``).
    Shapes: mean (..., N, D), logvar broadcastable, x (N, D) -> nll (..., N).
    """
    xp = get_array_module(mean, logvar)
    residual = mean - x
    precision = xp.exp(-logvar)
    nll = 0.5 * (residual * residual * precision + logvar + LOG_2PI).sum(axis=-1)
    return nll, (residual, precision, logvar.shape)


def gaussian_nll_backward(dnll, cache):
    """dmean = dnll * (mean - x) exp(-logvar);  dlogvar = dnll * 0.5 * (1 - (x - mean)^2 exp(-logvar)).

    ``dlogvar`` is summed down to the shape ``logvar`` had (it was broadcast in the forward).
    """
    residual, precision, logvar_shape = cache
    weighted = dnll[..., None] * residual * precision
    dlogvar = 0.5 * dnll[..., None] * (1.0 - residual * residual * precision)
    return weighted, sum_to_shape(dlogvar, logvar_shape)


def sum_to_shape(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched, giving ``shape``."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


LIKELIHOODS = ("bernoulli", "gaussian")
