"""Layers of the MLP: the affine map and the activations, each forward beside its backward.

Every op is a pair of plain functions (the cs231n shape):

    out, cache = op_forward(inputs...)      # cache: exactly what the backward needs
    d_inputs   = op_backward(dout, cache)   # dout = dL/dout, same shape as out

Nothing is stored on objects; the array module follows the arrays (NumPy, CuPy or the strict
stand-in). Scalars are Python floats so that float32 arrays stay float32 (NumPy 2 promotion rules).
"""
from __future__ import annotations

from minivae.backend import get_array_module

# --- affine -------------------------------------------------------------------------------------

def linear_forward(x, W, b):
    """out = x @ W + b.

    Shapes: x (N, D), W (D, M), b (M,) -> out (N, M).
    """
    return x @ W + b, (x, W)


def linear_backward(dout, cache):
    """dx = dout @ W^T,  dW = x^T @ dout,  db = sum_n dout[n].

    Shapes: dout (N, M) -> dx (N, D), dW (D, M), db (M,).
    """
    x, W = cache
    return dout @ W.T, x.T @ dout, dout.sum(axis=0)


# --- activations --------------------------------------------------------------------------------

def relu_forward(x):
    """out = max(x, 0), elementwise."""
    out = get_array_module(x).maximum(x, 0.0)
    return out, out


def relu_backward(dout, cache):
    """dx = dout * [x > 0]  (out > 0 exactly where x > 0; the kink at 0 gets derivative 0)."""
    out = cache
    return dout * (out > 0.0)


def leaky_relu_forward(x, slope=0.01):
    """out = x if x > 0 else slope * x, elementwise."""
    xp = get_array_module(x)
    positive = x > 0.0
    return xp.where(positive, x, slope * x), (positive, slope)


def leaky_relu_backward(dout, cache):
    """dx = dout * (1 if x > 0 else slope)."""
    positive, slope = cache
    xp = get_array_module(dout)
    return xp.where(positive, dout, slope * dout)


def tanh_forward(x):
    """out = tanh(x), elementwise."""
    out = get_array_module(x).tanh(x)
    return out, out


def tanh_backward(dout, cache):
    """dx = dout * (1 - tanh(x)^2), written in terms of the output."""
    out = cache
    return dout * (1.0 - out * out)


def sigmoid(x):
    """sigma(x) = 1 / (1 + exp(-x)), computed without overflow for any finite x.

    With e = exp(-|x|) <= 1:  sigma(x) = 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0.
    """
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0.0, 1.0, e) / (1.0 + e)


def sigmoid_forward(x):
    """out = sigma(x), elementwise."""
    out = sigmoid(x)
    return out, out


def sigmoid_backward(dout, cache):
    """dx = dout * sigma(x) * (1 - sigma(x))."""
    out = cache
    return dout * out * (1.0 - out)


def softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): exact for large |x|, no overflow."""
    xp = get_array_module(x)
    return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_forward(x):
    """out = softplus(x), elementwise."""
    return softplus(x), x


def softplus_backward(dout, cache):
    """dx = dout * sigma(x)   (d/dx log(1 + e^x) = e^x / (1 + e^x))."""
    x = cache
    return dout * sigmoid(x)


class Activation:
    """An elementwise nonlinearity, registered by name: ``forward(a) -> (h, cache)`` and
    ``backward(dh, cache) -> da``. Unpacks as ``forward, backward = activation``."""

    def __init__(self, name, forward, backward):
        self.name, self.forward, self.backward = name, forward, backward

    def __iter__(self):
        return iter((self.forward, self.backward))

    def __repr__(self):
        return f"Activation({self.name!r})"


ACTIVATIONS = {}
"""name -> :class:`Activation`, filled by :func:`register_activation`."""


def register_activation(name, forward, backward) -> Activation:
    """Make the pair (``forward``, ``backward``) available as ``VAE(..., activation=name)``.

    The fast training step has fused kernels for the built-in activations only; a model with
    any other runs the reference path (:mod:`minivae.fast.engine`)."""
    if name in ACTIVATIONS:
        raise ValueError(f"an activation named {name!r} is registered already")
    ACTIVATIONS[name] = activation = Activation(name, forward, backward)
    return activation


register_activation("relu", relu_forward, relu_backward)
register_activation("leaky_relu", leaky_relu_forward, leaky_relu_backward)
register_activation("tanh", tanh_forward, tanh_backward)
register_activation("sigmoid", sigmoid_forward, sigmoid_backward)
register_activation("softplus", softplus_forward, softplus_backward)


def get_activation(spec) -> Activation:
    """The :class:`Activation` called ``spec`` (or ``spec`` itself); a clear error for an unknown name."""
    if isinstance(spec, Activation):
        return spec
    try:
        return ACTIVATIONS[spec]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {spec!r}; choose one of {sorted(ACTIVATIONS)} "
                         "or register one (minivae.ops.layers.register_activation)") from None
