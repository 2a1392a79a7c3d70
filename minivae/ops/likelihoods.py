"""Decoder likelihoods p(x | z): negative log-likelihoods in nats, each with its backward, and the
likelihoods as objects registered by name.

The functions are the math (cs231n pairs). Each NLL sums over the last axis (the pixels) and
keeps the leading axes, so one call serves a batch ``(N, D)`` or ``L`` Monte Carlo samples of it
``(L, N, D)`` against the same data ``x (N, D)`` (broadcast). The backward takes ``dnll`` with
the NLL's shape and returns the gradient with respect to the decoder outputs; the data ``x`` gets
no gradient.

The objects (:class:`Likelihood`: :class:`Bernoulli`, :class:`Gaussian`) are what a
:class:`minivae.VAE` holds: each knows its NLL and backward, its mean E[x | z], the values the
data may take, and the extra parameters it owns (a learned variance). A new likelihood is one
subclass here (or in your own code) registered with :func:`register_likelihood`; the fast training
step runs only the likelihoods it has a fused kernel for and falls back to the reference path for
any other (:mod:`minivae.fast.engine`).
"""
from __future__ import annotations

import math

import numpy as np

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



# --- the likelihoods as objects -----------------------------------------------------------------

class Likelihood:
    """p(x | z) given the decoder's output ``out``: what a :class:`minivae.VAE` needs of it.

    Subclasses set ``name`` (the registry key) and ``data_range`` (the values x may take), and
    implement :meth:`nll`, :meth:`nll_backward` and :meth:`mean`. A likelihood with parameters of
    its own (one log-variance per pixel, say) names them in :meth:`parameter_shapes`; they live in
    the model's flat parameter vector like the weights, get gradients from :meth:`nll_backward`
    and start at :meth:`initial_value`.
    """

    name = None
    data_range = (-math.inf, math.inf)
    range_hint = ""            # how to fix data outside ``data_range`` (for the error message)

    def parameter_shapes(self, input_dim) -> dict:
        """``{parameter name: shape}`` of the likelihood's own parameters (default: none)."""
        return {}

    def initial_value(self, name, shape) -> np.ndarray:
        """The host (float64) starting value of the parameter ``name`` (default: zeros)."""
        return np.zeros(shape)

    def nll(self, out, x, params):
        """-log p(x | out) summed over pixels: out (..., N, D), x (N, D) -> (nll (..., N), cache)."""
        raise NotImplementedError

    def nll_backward(self, dnll, cache, grads):
        """dnll (..., N) -> dout (..., N, D); the gradients of the likelihood's own parameters go
        into ``grads`` (a dict of arrays, written in place)."""
        raise NotImplementedError

    def mean(self, out, params):
        """E[x | z] from the decoder's output: (N, D) -> (N, D)."""
        raise NotImplementedError

    def options(self) -> dict:
        """The constructor's arguments (JSON-serialisable): ``type(self)(**options())`` rebuilds it."""
        return {}

    def __eq__(self, other):
        return type(other) is type(self) and other.options() == self.options()

    def __hash__(self):
        return hash((type(self), tuple(sorted(self.options().items()))))

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({options})"


LIKELIHOODS = {}
"""name -> :class:`Likelihood` subclass, filled by :func:`register_likelihood`."""


def register_likelihood(cls):
    """Make ``cls`` (a :class:`Likelihood` subclass with a ``name``) available by name, e.g. as
    ``VAE(..., likelihood=cls.name)``. Usable as a class decorator; returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Likelihood)) or not cls.name:
        raise TypeError(f"{cls!r} is not a Likelihood subclass with a name")
    if LIKELIHOODS.get(cls.name, cls) is not cls:
        raise ValueError(f"a likelihood named {cls.name!r} is registered already ({LIKELIHOODS[cls.name]!r})")
    LIKELIHOODS[cls.name] = cls
    return cls


def get_likelihood(spec, **options) -> Likelihood:
    """A :class:`Likelihood` from its registered name (built with ``options``) or itself."""
    if isinstance(spec, Likelihood):
        return spec
    try:
        cls = LIKELIHOODS[spec]
    except (KeyError, TypeError):
        raise ValueError(f"unknown likelihood {spec!r}; choose one of {sorted(LIKELIHOODS)} "
                         "or register one (minivae.ops.likelihoods.register_likelihood)") from None
    return cls(**options)


@register_likelihood
class Bernoulli(Likelihood):
    """x_d ~ Bernoulli(sigma(out_d)): the decoder outputs logits; x may be any value in [0, 1]
    (binary pixels or continuous intensities, as in PyTorch's examples/vae)."""

    name = "bernoulli"
    data_range = (0.0, 1.0)
    range_hint = ("a Bernoulli decoder needs intensities or binary pixels in [0, 1]: rescale (e.g. "
                  "divide uint8 images by 255) or use likelihood='gaussian'")

    def nll(self, out, x, params):
        return bernoulli_nll(out, x)

    def nll_backward(self, dnll, cache, grads):
        return bernoulli_nll_backward(dnll, cache)

    def mean(self, out, params):
        return sigmoid(out)


@register_likelihood
class Gaussian(Likelihood):
    """x ~ N(out, variance I): the decoder outputs the mean. ``variance`` is a fixed positive
    float (1.0: squared error plus a constant) or ``"learned"``: one log-variance per pixel, the
    parameter ``decoder.logvar`` (D,), starting at 0."""

    name = "gaussian"
    PARAMETER = "decoder.logvar"

    def __init__(self, variance=1.0):
        if variance != "learned":
            if isinstance(variance, str) or not float(variance) > 0.0:
                raise ValueError(f"decoder_variance must be positive or 'learned', got {variance!r}")
            variance = float(variance)
        self.variance = variance

    @property
    def learned(self) -> bool:
        return self.variance == "learned"

    def parameter_shapes(self, input_dim):
        return {self.PARAMETER: (input_dim,)} if self.learned else {}

    def nll(self, out, x, params):
        if self.learned:
            return gaussian_nll(out, params[self.PARAMETER], x)
        return gaussian_nll_fixed(out, x, self.variance)

    def nll_backward(self, dnll, cache, grads):
        if self.learned:
            dout, grads[self.PARAMETER][...] = gaussian_nll_backward(dnll, cache)
            return dout
        return gaussian_nll_fixed_backward(dnll, cache)

    def mean(self, out, params):
        return out

    def options(self):
        return {"variance": self.variance}
