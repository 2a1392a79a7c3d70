"""Every layer's backward against central finite differences, in float64.

The numeric gradient of sum(f(x) * dout) for a random upstream ``dout`` must equal the backward
applied to ``dout`` (relative error < 1e-7; ReLU-type inputs kept away from the kink).
"""
import numpy as np
import pytest

from minivae.gradcheck import numeric_gradient, relative_error
from minivae.ops import layers

TOL = 1e-7


def away_from_kink(rng, shape, margin=0.05):
    """Random inputs with |x| >= margin, so a 2h perturbation never crosses 0."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x + 1e-12) * margin, x)


def test_linear_backward(rng):
    x, W, b = rng.standard_normal((5, 4)), rng.standard_normal((4, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((5, 3))
    out, cache = layers.linear_forward(x, W, b)
    np.testing.assert_allclose(out, x @ W + b)
    dx, dW, db = layers.linear_backward(dout, cache)
    assert relative_error(dx, numeric_gradient(lambda v: layers.linear_forward(v, W, b)[0], x, dout)) < TOL
    assert relative_error(dW, numeric_gradient(lambda v: layers.linear_forward(x, v, b)[0], W, dout)) < TOL
    assert relative_error(db, numeric_gradient(lambda v: layers.linear_forward(x, W, v)[0], b, dout)) < TOL


@pytest.mark.parametrize("name", sorted(layers.ACTIVATIONS))
def test_activation_backward(name, rng):
    forward, backward = layers.get_activation(name)
    x = away_from_kink(rng, (6, 5))
    dout = rng.standard_normal(x.shape)
    _, cache = forward(x)
    analytic = backward(dout, cache)
    numeric = numeric_gradient(lambda v: forward(v)[0], x, dout)
    assert relative_error(analytic, numeric) < TOL


@pytest.mark.parametrize("name,expected", [
    ("relu", lambda x: np.maximum(x, 0)),
    ("leaky_relu", lambda x: np.where(x > 0, x, 0.01 * x)),
    ("tanh", np.tanh),
    ("sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    ("softplus", lambda x: np.log1p(np.exp(x))),
])
def test_activation_forward_values(name, expected, rng):
    x = rng.standard_normal((4, 7)) * 3
    np.testing.assert_allclose(layers.get_activation(name).forward(x)[0], expected(x), rtol=1e-12, atol=1e-15)


def test_relu_derivative_at_the_kink_is_zero():
    out, cache = layers.relu_forward(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(layers.relu_backward(np.ones(3), cache), [0.0, 0.0, 1.0])


def test_sigmoid_and_softplus_are_finite_and_exact_at_extremes():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    s = layers.sigmoid(x)
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0.0, np.exp(-50.0) / (1 + np.exp(-50.0)), 0.5, 1.0, 1.0], rtol=1e-15)
    sp = layers.softplus(x)
    np.testing.assert_allclose(sp, [0.0, np.log1p(np.exp(-50.0)), np.log(2.0), 50.0, 1000.0], rtol=1e-15)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow warnings either
        layers.sigmoid(x.astype(np.float32))
        layers.softplus(x.astype(np.float32))


def test_float32_stays_float32():
    x = np.ones((2, 3), dtype=np.float32)
    for name in layers.ACTIVATIONS:
        forward, backward = layers.get_activation(name)
        out, cache = forward(x)
        assert out.dtype == np.float32, name
        assert backward(x, cache).dtype == np.float32, name
    out, cache = layers.linear_forward(x, np.ones((3, 2), np.float32), np.ones(2, np.float32))
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in layers.linear_backward(out, cache))


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        layers.get_activation("gelu")
