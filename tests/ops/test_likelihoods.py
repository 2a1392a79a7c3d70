"""Decoder likelihoods: values against independent formulas, backwards against finite differences,
and stability at extreme logits."""
import math

import numpy as np
import pytest
from scipy import stats

from minivae.gradcheck import numeric_gradient, relative_error
from minivae.ops import likelihoods

TOL = 1e-7


def test_bernoulli_nll_matches_the_log_likelihood(rng):
    logits = rng.standard_normal((4, 6)) * 3
    x = (rng.random((4, 6)) > 0.5).astype(float)
    nll, _ = likelihoods.bernoulli_nll(logits, x)
    p = 1 / (1 + np.exp(-logits))
    expected = -stats.bernoulli.logpmf(x, p).sum(axis=1)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_bernoulli_nll_on_continuous_targets_is_cross_entropy(rng):
    logits, x = rng.standard_normal((3, 5)), rng.random((3, 5))
    p = 1 / (1 + np.exp(-logits))
    expected = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)
    np.testing.assert_allclose(likelihoods.bernoulli_nll(logits, x)[0], expected, rtol=1e-12)


def test_bernoulli_backward(rng):
    logits, x = rng.standard_normal((2, 4, 6)), rng.random((4, 6))  # 2 Monte Carlo samples, x broadcast
    dnll = rng.standard_normal((2, 4))
    _, cache = likelihoods.bernoulli_nll(logits, x)
    numeric = numeric_gradient(lambda v: likelihoods.bernoulli_nll(v, x)[0], logits, dnll)
    assert relative_error(likelihoods.bernoulli_nll_backward(dnll, cache), numeric) < TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bernoulli_is_stable_for_logits_of_plus_minus_1000(dtype):
    logits = np.array([[-1000.0, 1000.0, -1000.0, 1000.0, 0.0]], dtype=dtype)
    x = np.array([[0.0, 1.0, 1.0, 0.0, 0.5]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        nll, cache = likelihoods.bernoulli_nll(logits, x)
        grad = likelihoods.bernoulli_nll_backward(np.ones(1, dtype), cache)
    # right predictions cost 0, confident wrong ones cost 1000 nats each, the 0.5 one log 2
    np.testing.assert_allclose(nll, [2000.0 + math.log(2.0)], rtol=1e-6)
    np.testing.assert_allclose(grad, [[0.0, 0.0, -1.0, 1.0, 0.0]], atol=1e-7)
    assert nll.dtype == dtype and grad.dtype == dtype


def test_gaussian_fixed_variance_matches_scipy(rng):
    mean, x = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    for variance in (1.0, 0.3):
        nll, _ = likelihoods.gaussian_nll_fixed(mean, x, variance)
        expected = -stats.norm.logpdf(x, mean, math.sqrt(variance)).sum(axis=1)
        np.testing.assert_allclose(nll, expected, rtol=1e-12)


def test_gaussian_fixed_variance_backward(rng):
    mean, x, dnll = rng.standard_normal((2, 3, 5)), rng.standard_normal((3, 5)), rng.standard_normal((2, 3))
    _, cache = likelihoods.gaussian_nll_fixed(mean, x, 0.5)
    numeric = numeric_gradient(lambda v: likelihoods.gaussian_nll_fixed(v, x, 0.5)[0], mean, dnll)
    assert relative_error(likelihoods.gaussian_nll_fixed_backward(dnll, cache), numeric) < TOL


def test_gaussian_fixed_variance_must_be_positive():
    with pytest.raises(ValueError, match="variance must be positive"):
        likelihoods.gaussian_nll_fixed(np.zeros((1, 2)), np.zeros((1, 2)), 0.0)


def test_gaussian_learned_logvar_matches_scipy(rng):
    mean, logvar, x = rng.standard_normal((3, 5)), rng.standard_normal(5), rng.standard_normal((3, 5))
    nll, _ = likelihoods.gaussian_nll(mean, logvar, x)
    expected = -stats.norm.logpdf(x, mean, np.exp(0.5 * logvar)).sum(axis=1)
    np.testing.assert_allclose(nll, expected, rtol=1e-12)


@pytest.mark.parametrize("logvar_shape", [(5,), (3, 5), (2, 3, 5)])
def test_gaussian_learned_logvar_backward(logvar_shape, rng):
    mean, x = rng.standard_normal((2, 3, 5)), rng.standard_normal((3, 5))
    logvar, dnll = rng.standard_normal(logvar_shape) * 0.5, rng.standard_normal((2, 3))
    _, cache = likelihoods.gaussian_nll(mean, logvar, x)
    dmean, dlogvar = likelihoods.gaussian_nll_backward(dnll, cache)
    assert dlogvar.shape == logvar.shape
    assert relative_error(dmean, numeric_gradient(
        lambda v: likelihoods.gaussian_nll(v, logvar, x)[0], mean, dnll)) < TOL
    assert relative_error(dlogvar, numeric_gradient(
        lambda v: likelihoods.gaussian_nll(mean, v, x)[0], logvar, dnll)) < TOL
