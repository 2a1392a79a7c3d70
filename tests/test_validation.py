"""Bad input gets an error that names the problem."""
import numpy as np
import pytest

import minivae
from minivae import InputError


@pytest.fixture
def model():
    return minivae.VAE(6, [5], 2, seed=0)


def test_wrong_shape(model):
    with pytest.raises(InputError, match=r"x must have shape \(N, 6\), got \(4, 7\)"):
        model.loss(np.zeros((4, 7), np.float32))
    with pytest.raises(InputError, match=r"shape \(N, 6\), got \(6,\)"):
        model.loss(np.zeros(6, np.float32))
    with pytest.raises(InputError, match="empty"):
        model.loss(np.zeros((0, 6), np.float32))


def test_wrong_dtype(model):
    with pytest.raises(InputError, match="dtype float64 but the model computes in float32"):
        model.loss(np.zeros((4, 6)))
    with pytest.raises(InputError, match="dtype uint8"):
        model.loss(np.zeros((4, 6), np.uint8))


def test_not_an_array_or_the_wrong_device(model):
    with pytest.raises(InputError, match="builtins.list"):
        model.loss([[0.0] * 6])
    strict_model = minivae.VAE(6, [5], 2, seed=0, backend="strict")
    with pytest.raises(InputError, match="numpy.ndarray but the model computes on the 'strict' backend"):
        strict_model.loss(np.zeros((4, 6), np.float32))


@pytest.mark.parametrize("bad,message", [(np.nan, "contains NaN"), (np.inf, "contains Inf"),
                                         (-np.inf, "contains Inf")])
def test_non_finite_values(model, bad, message):
    x = np.full((4, 6), 0.5, np.float32)
    x[2, 3] = bad
    with pytest.raises(InputError, match=message):
        model.loss(x)
    gaussian = minivae.VAE(6, [5], 2, likelihood="gaussian", seed=0)
    with pytest.raises(InputError, match=message):
        gaussian.loss(x)


def test_values_outside_unit_interval_for_bernoulli(model):
    with pytest.raises(InputError, match=r"outside \[0, 1\].*max 255"):
        model.loss(np.full((4, 6), 255.0, np.float32))
    with pytest.raises(InputError, match=r"outside \[0, 1\]"):
        model.loss(np.full((4, 6), -0.1, np.float32))
    # the Gaussian decoder accepts any finite value
    minivae.VAE(6, [5], 2, likelihood="gaussian", seed=0).loss(np.full((4, 6), 255.0, np.float32))


def test_bad_eps(model):
    x = np.zeros((4, 6), np.float32)
    with pytest.raises(InputError, match=r"eps must have shape \(n_samples, 4, 2\)"):
        model.loss(x, eps=np.zeros((4, 3), np.float32))
    with pytest.raises(InputError, match="eps has dtype float64"):
        model.loss(x, eps=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        model.loss(x, n_samples=0)


def test_bad_construction():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        minivae.VAE(6, [5], 2, likelihood="poisson")
    with pytest.raises(ValueError, match="dtype must be one of"):
        minivae.VAE(6, [5], 2, dtype="float16")
    with pytest.raises(ValueError, match="latent_dim must be a positive integer"):
        minivae.VAE(6, [5], 0)
    with pytest.raises(ValueError, match="decoder_variance must be positive"):
        minivae.VAE(6, [5], 2, likelihood="gaussian", decoder_variance=-1.0)
