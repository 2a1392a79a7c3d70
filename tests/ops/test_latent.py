"""The latent side: reparameterization, KL and log-densities.

Gradient checks prove that each backward matches its forward; the statistical tests prove that the
forward is the right math — something no gradient check can do (a sampler that used
sigma^2 * eps would pass its own gradient check).
"""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from minivae.gradcheck import numeric_gradient, relative_error
from minivae.ops import latent

TOL = 1e-7


@pytest.mark.parametrize("eps_shape", [(4, 3), (5, 4, 3)])
def test_reparameterize_backward(eps_shape, rng):
    mu, logvar = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)) * 0.5
    eps, dz = rng.standard_normal(eps_shape), rng.standard_normal(eps_shape)
    _, cache = latent.reparameterize(mu, logvar, eps)
    dmu, dlogvar = latent.reparameterize_backward(dz, cache)
    assert dmu.shape == dlogvar.shape == mu.shape
    assert relative_error(dmu, numeric_gradient(
        lambda v: latent.reparameterize(v, logvar, eps)[0], mu, dz)) < TOL
    assert relative_error(dlogvar, numeric_gradient(
        lambda v: latent.reparameterize(mu, v, eps)[0], logvar, dz)) < TOL


def test_reparameterize_uses_sigma_not_variance():
    z, _ = latent.reparameterize(np.array([[1.0]]), np.array([[math.log(4.0)]]), np.array([[1.0]]))
    assert z[0, 0] == pytest.approx(1.0 + 2.0)  # sigma = 2, not sigma^2 = 4


def test_reparameterized_samples_have_mean_mu_and_variance_exp_logvar():
    rng = np.random.default_rng(0)
    mu = np.array([[0.5, -2.0, 3.0]])
    logvar = np.array([[0.0, math.log(0.25), math.log(9.0)]])
    n = 200_000
    z, _ = latent.reparameterize(mu, logvar, rng.standard_normal((n, 1, 3)))
    variance = np.exp(logvar[0])
    # the sample mean has standard error sigma / sqrt(n); the sample variance ~ var * sqrt(2 / n)
    np.testing.assert_array_less(np.abs(z.mean(axis=0)[0] - mu[0]), 5 * np.sqrt(variance / n))
    np.testing.assert_array_less(np.abs(z.var(axis=0)[0] - variance), 5 * variance * np.sqrt(2.0 / n))
    # and each coordinate is normal: Kolmogorov-Smirnov against N(mu, sigma^2)
    for j in range(3):
        assert stats.kstest(z[:20_000, 0, j], "norm", args=(mu[0, j], math.sqrt(variance[j]))).pvalue > 1e-3


def test_kl_backward(rng):
    mu, logvar, dkl = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal(4)
    _, cache = latent.kl_standard_normal(mu, logvar)
    dmu, dlogvar = latent.kl_standard_normal_backward(dkl, cache)
    assert relative_error(dmu, numeric_gradient(
        lambda v: latent.kl_standard_normal(v, logvar)[0], mu, dkl)) < TOL
    assert relative_error(dlogvar, numeric_gradient(
        lambda v: latent.kl_standard_normal(mu, v)[0], logvar, dkl)) < TOL


def test_kl_agrees_with_numerical_integration():
    mu, logvar = np.array([[0.7, -1.5]]), np.array([[-0.4, 1.1]])
    kl, _ = latent.kl_standard_normal(mu, logvar)
    # diagonal Gaussians: the KL is a sum of 1-D KLs, each an integral of q log(q / p)
    expected = 0.0
    for m, lv in zip(mu[0], logvar[0]):
        q = stats.norm(m, math.exp(0.5 * lv))
        value, error = integrate.quad(lambda t: q.pdf(t) * (q.logpdf(t) - stats.norm.logpdf(t)), -30, 30)
        expected += value
    assert kl[0] == pytest.approx(expected, rel=1e-9)


def test_kl_agrees_with_monte_carlo():
    rng = np.random.default_rng(1)
    mu, logvar = np.array([[0.3, -0.8, 1.2]]), np.array([[0.5, -1.0, 0.0]])
    kl, _ = latent.kl_standard_normal(mu, logvar)
    z, _ = latent.reparameterize(mu, logvar, rng.standard_normal((400_000, 1, 3)))
    log_ratio = latent.log_normal(z, mu, logvar)[0] - latent.log_standard_normal(z)  # (n, 1)
    standard_error = log_ratio.std() / math.sqrt(log_ratio.size)
    assert abs(log_ratio.mean() - kl[0]) < 5 * standard_error


def test_kl_is_zero_at_the_prior_and_finite_at_extremes():
    kl, _ = latent.kl_standard_normal(np.zeros((1, 4)), np.zeros((1, 4)))
    assert kl[0] == 0.0
    for dtype in (np.float32, np.float64):
        mu = np.array([[1e3, -1e3, 0.0, 0.0]], dtype=dtype)
        logvar = np.array([[0.0, 0.0, -60.0, 60.0]], dtype=dtype)
        kl, cache = latent.kl_standard_normal(mu, logvar)
        dmu, dlogvar = latent.kl_standard_normal_backward(np.ones(1, dtype), cache)
        assert np.all(np.isfinite(kl)) and np.all(np.isfinite(dmu)) and np.all(np.isfinite(dlogvar))
        assert kl.dtype == dtype


def test_log_normal_matches_scipy_and_its_score(rng):
    z, mu, logvar = rng.standard_normal((2, 4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    log_q, cache = latent.log_normal(z, mu, logvar)
    expected = stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(axis=-1)
    np.testing.assert_allclose(log_q, expected, rtol=1e-12)
    np.testing.assert_allclose(latent.log_standard_normal(z), stats.norm.logpdf(z).sum(axis=-1), rtol=1e-12)
    dlogq = rng.standard_normal((2, 4))
    dmu, dlogvar = latent.log_normal_backward(dlogq, cache)
    # the backward keeps the sample axis; summing it gives the gradient of sum(log_q * dlogq)
    assert relative_error(dmu.sum(axis=0), numeric_gradient(
        lambda v: latent.log_normal(z, v, logvar)[0], mu, dlogq)) < TOL
    assert relative_error(dlogvar.sum(axis=0), numeric_gradient(
        lambda v: latent.log_normal(z, mu, v)[0], logvar, dlogq)) < TOL


def test_kl_per_dimension_sums_to_the_kl(rng):
    mu, logvar = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))
    per_dimension = latent.kl_per_dimension(mu, logvar)
    assert per_dimension.shape == (3,)
    assert per_dimension.sum() == pytest.approx(latent.kl_standard_normal(mu, logvar)[0].mean())
