"""The exact ELBO gap on a 2-D latent grid.

* on a linear-Gaussian model, where log p(x), the posterior and KL(q || p(z|x)) have closed forms,
  the grid reproduces them to ~1e-9;
* on a nonlinear (tanh, Bernoulli) model, log p(x) = ELBO + KL(q || p(z|x)) holds to 1e-10, the grid
  has converged, the grid ELBO matches a Monte Carlo ELBO, and IWAE_k rises towards log p(x);
* the same code runs on the strict (CuPy stand-in) backend.
"""
import numpy as np
import pytest
from scipy import special, stats

import minivae
from minivae.backend import strict
from minivae.study import posterior


def linear_gaussian_model(backend="numpy"):
    """p(x|z) = N(z W + b, 0.5 I), a decoder without hidden layers: p(x) = N(b, W^T W + 0.5 I)."""
    D = 6
    model = minivae.VAE(D, [8], 2, likelihood="gaussian", decoder_hidden_dims=[], decoder_variance=0.5,
                        dtype="float64", backend=backend, seed=1)
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((2, D)), rng.standard_normal(D)
    model.params["decoder.out.W"][...] = model.backend.to_device(W)
    model.params["decoder.out.b"][...] = model.backend.to_device(b)
    x = rng.standard_normal((3, D)) + b
    return model, model.backend.to_device(x), W, b


def gaussian_kl(mean_q, cov_q, mean_p, cov_p):
    """KL(N(mean_q, cov_q) || N(mean_p, cov_p)), closed form."""
    precision_p = np.linalg.inv(cov_p)
    d = mean_p - mean_q
    return 0.5 * (np.trace(precision_p @ cov_q) + d @ precision_p @ d - len(d)
                  + np.linalg.slogdet(cov_p)[1] - np.linalg.slogdet(cov_q)[1])


@pytest.fixture(scope="module")
def linear_gap():
    model, x, W, b = linear_gaussian_model()
    return model, x, W, b, posterior.elbo_gap(model, x, n_grid=201)


def test_grid_log_px_equals_the_closed_form(linear_gap):
    model, x, W, b, gap = linear_gap
    exact = stats.multivariate_normal(b, W.T @ W + 0.5 * np.eye(6)).logpdf(x)
    np.testing.assert_allclose(gap.log_px, exact, rtol=0, atol=1e-9)


def test_grid_kl_to_the_posterior_equals_the_closed_form(linear_gap):
    """p(z|x) = N(S W (x - b) / 0.5, S) with S = (I + W W^T / 0.5)^-1."""
    model, x, W, b, gap = linear_gap
    mu, logvar = model.encode(x)
    S = np.linalg.inv(np.eye(2) + W @ W.T / 0.5)
    for n in range(x.shape[0]):
        exact = gaussian_kl(mu[n], np.diag(np.exp(logvar[n])), S @ W @ (x[n] - b) / 0.5, S)
        assert abs(gap.kl_posterior[n] - exact) < 1e-9
    assert gap.kl_posterior.min() > 1.0            # a random encoder: a real gap, not a tiny one


def test_the_identity_holds_on_the_grid(linear_gap):
    *_, gap = linear_gap
    np.testing.assert_allclose(gap.log_px, gap.elbo + gap.kl_posterior, rtol=0, atol=1e-10)
    np.testing.assert_allclose(gap.q_mass, 1.0, rtol=0, atol=1e-12)
    assert np.abs(gap.posterior_edge_mass).max() < 1e-12


@pytest.fixture(scope="module")
def tanh_model():
    """A nonlinear model with an informative likelihood (weights scaled up), Bernoulli, D = 16."""
    model = minivae.VAE(16, [16], 2, activation="tanh", dtype="float64", seed=4)
    for name in ("decoder.0.W", "decoder.out.W"):
        model.params[name][...] *= 4.0
    x = (np.random.default_rng(5).random((3, 16)) < 0.5).astype(np.float64)
    return model, x


def test_identity_and_convergence_on_a_nonlinear_model(tanh_model):
    model, x = tanh_model
    coarse = posterior.elbo_gap(model, x, n_grid=201)
    fine = posterior.elbo_gap(model, x, n_grid=301)
    np.testing.assert_allclose(fine.log_px, fine.elbo + fine.kl_posterior, rtol=0, atol=1e-10)
    np.testing.assert_allclose(coarse.log_px, fine.log_px, rtol=0, atol=1e-8)     # converged
    np.testing.assert_allclose(coarse.kl_posterior, fine.kl_posterior, rtol=0, atol=1e-8)
    assert (fine.kl_posterior > 0).all()
    assert np.abs(fine.posterior_edge_mass).max() < 1e-12
    # the grid's E_q[log p(x|z)] - KL(q || p(z)) is the model's ELBO (Monte Carlo, 20000 samples)
    eps = np.random.default_rng(6).standard_normal((20_000, 3, 2))
    elbo_samples = -model._forward(x, eps).nll - model._forward(x, eps[:1]).kl
    standard_error = elbo_samples.std(axis=0) / np.sqrt(20_000)
    assert (np.abs(elbo_samples.mean(axis=0) - fine.elbo) < 4 * standard_error).all()


def test_posterior_is_a_normalised_density(tanh_model):
    model, x = tanh_model
    grid = posterior.latent_grid(model, x, n_grid=101)
    cell = np.exp(grid.log_cell_area)[:, None, None]
    np.testing.assert_allclose((np.exp(posterior.log_posterior(grid)) * cell).sum(axis=(1, 2)), 1.0,
                               rtol=0, atol=1e-12)
    assert grid.log_q.shape == (3, 101, 101) and grid.z1.shape == (3, 101)


def test_iwae_rises_towards_log_px(tanh_model):
    """IWAE_1 = the ELBO, IWAE_k increases with k, never exceeds log p(x), and IWAE_1000 is within
    a few hundredths of a nat of it (each up to 4 standard errors)."""
    model, x = tanh_model
    gap = posterior.elbo_gap(model, x, n_grid=201)
    random = model.backend.random(0)
    results = {k: posterior.iwae_bound_repeats(model, x, k, n_repeats=max(20, 20_000 // k),
                                               random=random)
               for k in (1, 10, 100, 1000)}
    estimate, se = results[1]
    assert (np.abs(estimate - gap.elbo) < 4 * se).all()
    previous = None
    for k, (estimate, se) in results.items():
        assert (estimate <= gap.log_px + 4 * se).all(), k
        if previous is not None:
            assert (estimate >= previous[0] - 4 * np.hypot(se, previous[1])).all(), k
        previous = (estimate, se)
    estimate, se = results[1000]
    assert (gap.log_px - estimate < 0.1 * gap.kl_posterior + 4 * se).all()
    assert (gap.log_px - results[10][0] < gap.kl_posterior).all()


def test_logsumexp_matches_scipy():
    a = np.random.default_rng(0).standard_normal((4, 5)) * 300
    a[0, 0] = -np.inf
    np.testing.assert_allclose(posterior.logsumexp(a, axis=1), special.logsumexp(a, axis=1))
    np.testing.assert_allclose(posterior.logsumexp(a), special.logsumexp(a))
    assert posterior.logsumexp(np.full(3, -np.inf), axis=0) == -np.inf


def test_refuses_other_latent_dimensions():
    model = minivae.VAE(4, [4], 3, dtype="float64", seed=0)
    with pytest.raises(ValueError, match="2-D latent"):
        posterior.latent_grid(model, np.zeros((1, 4)))


def test_elbo_gap_runs_on_the_strict_backend():
    """No implicit host/device conversion or mixing in the grid, the gap or IWAE (the GPU path)."""
    model, x, W, b = linear_gaussian_model("strict")
    gap = posterior.elbo_gap(model, x, n_grid=61)
    assert isinstance(gap.log_px, strict.ndarray)
    numbers = gap.as_floats()
    exact = stats.multivariate_normal(b, W.T @ W + 0.5 * np.eye(6)).logpdf(minivae.to_numpy(x))
    np.testing.assert_allclose(numbers["log_px"], exact, atol=1e-6)
    estimate, se = posterior.iwae_bound_repeats(model, x, 10, n_repeats=5, random=model.backend.random(0))
    assert isinstance(estimate, strict.ndarray) and estimate.shape == (3,)


def test_the_old_name_of_iwae_bound_repeats_warns_and_gives_the_same_numbers(tanh_model):
    model, x = tanh_model
    new = posterior.iwae_bound_repeats(model, x, 5, n_repeats=4, random=model.backend.random(0))
    with pytest.warns(DeprecationWarning, match="iwae_bound_repeats"):
        old = posterior.iwae_bound(model, x, 5, n_repeats=4, random=model.backend.random(0))
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
