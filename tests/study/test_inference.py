"""The inference gap split (Cremer et al. 2018) on a 2-D latent model:

* the ELBO's (mu, logvar) gradient by quadrature matches finite differences (float64);
* the quadrature ELBO agrees with the grid's for any Gaussian the grid covers;
* both gaps are >= 0 and add up to log p(x) - ELBO(encoder); at q* the gradient vanishes and no
  nearby Gaussian has a higher grid ELBO;
* for a decoder linear in z with orthogonal columns and a Gaussian likelihood the posterior is a
  diagonal Gaussian, which q* finds: the approximation gap is 0.
"""
import numpy as np
import pytest

import minivae
from minivae.gradcheck import numeric_gradient, relative_error
from minivae.study import inference, posterior


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.5, 6.5, size=(600, 2))
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d2 = (i[None] - centres[:, 0, None, None]) ** 2 + (j[None] - centres[:, 1, None, None]) ** 2
    x = (rng.random((600, 64)) < np.exp(-d2 / 2.0).reshape(600, 64)).astype(np.float64)
    model = minivae.VAE(64, [32], 2, activation="tanh", dtype="float64", seed=0)
    optimizer = minivae.Adam(model.params, lr=3e-3)
    step = minivae.TrainStep(model, optimizer)
    for s in range(300):
        step(model.backend.to_device(x[(s % 6) * 100:(s % 6 + 1) * 100]))
    x_test = model.backend.to_device(x[:3])
    grid = posterior.latent_grid(model, x_test, n_grid=151)
    return model, x_test, grid, inference.inference_gap(model, x_test, grid=grid, steps=400)


def test_the_quadrature_elbo_gradient_matches_finite_differences(trained):
    model, x, _, _ = trained
    eps, weights = inference.gauss_hermite_nodes(model, 8)
    mu, logvar = model.encode(x)
    _, dmu, dlogvar = inference.elbo_and_grad(model, x, mu, logvar, eps, weights)

    def elbo_sum(m, v):
        return inference.elbo_and_grad(model, x, m, v, eps, weights)[0].sum()
    assert relative_error(dmu, numeric_gradient(lambda m: elbo_sum(m, logvar), mu.copy())) < 1e-8
    assert relative_error(dlogvar, numeric_gradient(lambda v: elbo_sum(mu, v), logvar.copy())) < 1e-8


def test_the_quadrature_elbo_is_the_grid_elbo(trained):
    model, x, grid, gap = trained
    eps, weights = inference.gauss_hermite_nodes(model, 16)
    for mu, logvar in [(grid.mu, grid.logvar), (gap.mu_optimal, gap.logvar_optimal)]:
        quadrature, _, _ = inference.elbo_and_grad(model, x, mu, logvar, eps, weights)
        on_grid, mass = posterior.gaussian_elbo(grid, mu, logvar)
        np.testing.assert_allclose(quadrature, on_grid, atol=1e-6)
        np.testing.assert_allclose(mass, 1.0, atol=1e-9)
    # the encoder's ELBO by gaussian_elbo is the ELBO of round one's elbo_gap
    np.testing.assert_allclose(gap.elbo_encoder, posterior.elbo_gap(model, x, grid=grid).elbo, rtol=1e-12)


def test_both_gaps_are_nonnegative_and_add_up(trained):
    model, x, grid, gap = trained
    approximation, amortization = minivae.to_numpy(gap.approximation), minivae.to_numpy(gap.amortization)
    assert np.all(approximation >= 0.0) and np.all(amortization > 0.0), (approximation, amortization)
    total = minivae.to_numpy(gap.log_px - gap.elbo_encoder)
    np.testing.assert_allclose(approximation + amortization, total, rtol=1e-12)
    # the approximation gap is KL(q* || p(z|x)) on the grid, which is >= 0 by itself
    kl = posterior.kl_to_posterior(posterior.LatentGrid(
        grid.z1, grid.z2, grid.log_cell_area, gap.mu_optimal, gap.logvar_optimal, grid.log_likelihood,
        grid.log_prior, posterior.log_gaussian_on_grid(grid, gap.mu_optimal, gap.logvar_optimal)))
    np.testing.assert_allclose(minivae.to_numpy(kl), approximation, atol=1e-8)


def test_q_star_is_a_maximum(trained):
    model, x, grid, gap = trained
    eps, weights = inference.gauss_hermite_nodes(model, 16)
    _, dmu, dlogvar = inference.elbo_and_grad(model, x, gap.mu_optimal, gap.logvar_optimal, eps, weights)
    assert np.abs(dmu).max() < 1e-3 and np.abs(dlogvar).max() < 1e-3
    best, _ = posterior.gaussian_elbo(grid, gap.mu_optimal, gap.logvar_optimal)
    rng = np.random.default_rng(3)
    for _ in range(5):
        nudged, _ = posterior.gaussian_elbo(grid, gap.mu_optimal + 0.02 * rng.standard_normal((3, 2)),
                                            gap.logvar_optimal + 0.05 * rng.standard_normal((3, 2)))
        assert np.all(nudged <= best + 1e-9)


def test_a_gaussian_posterior_has_no_approximation_gap():
    """Decoder linear in z (no hidden layer) with unit-variance Gaussian noise and orthogonal
    columns: p(z|x) is Gaussian with a diagonal covariance, which q* must find (gap ~ 0)."""
    model = minivae.VAE(4, [3], 2, likelihood="gaussian", decoder_hidden_dims=[], dtype="float64", seed=1)
    model.params["decoder.out.W"][...] = np.array([[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.8, -0.3]])
    x = model.backend.to_device(np.random.default_rng(2).standard_normal((2, 4)))
    gap = inference.inference_gap(model, x, steps=1500, lr=0.05, n_grid=201)
    np.testing.assert_allclose(minivae.to_numpy(gap.approximation), 0.0, atol=1e-6)
    assert np.all(minivae.to_numpy(gap.amortization) > 0.0)        # an untrained encoder is not it
