"""Gradient estimators for the encoder: exact where they must be, unbiased, and ordered by variance.

* the reparameterization terms are the model's own gradient (analytic KL) and match finite
  differences of the sampled integrand (total derivative);
* the Jacobian route J^T (dmu, dlogvar) equals a direct backward pass;
* every estimator agrees with a high-sample reference within its standard error (unbiased);
* reparameterization has far lower variance than the score function on a fixed model;
* when q is the exact posterior, the path derivative and the LOO-baseline score function have
  zero variance and the full reparameterization gradient does not;
* the same code runs on the strict (CuPy stand-in) backend.
"""
import numpy as np
import pytest

import minivae
from minivae.backend import strict
from minivae.gradcheck import numeric_gradient, relative_error
from minivae.ops.latent import kl_standard_normal, log_normal, log_standard_normal
from minivae.study import estimators


def fixed_model(backend="numpy"):
    return minivae.VAE(16, [16], 2, activation="tanh", dtype="float64", backend=backend, seed=0)


def fixed_x(model, n=1):
    rng = np.random.default_rng(7)
    return model.backend.to_device((rng.random((n, 16)) < 0.5).astype(np.float64))


def flat_encoder_grads(model, grads):
    return np.concatenate([minivae.to_numpy(grads[name]).ravel()
                           for name in estimators.encoder_parameter_names(model)])


def test_reparam_with_analytic_kl_is_the_models_gradient(backend):
    model = fixed_model(backend.name)
    x = fixed_x(model, n=3)
    eps = model.backend.to_device(np.random.default_rng(1).standard_normal((4, 3, 2)))
    dmu, dlogvar = estimators.head_gradient_terms(model, x, eps, "reparam", kl="analytic")
    jacobian = estimators.encoder_jacobian(model, x)
    g = estimators.encoder_gradients(jacobian, dmu.mean(axis=0), dlogvar.mean(axis=0))
    _, grads = model.loss_and_grads(x, eps=eps)
    assert relative_error(minivae.to_numpy(g), flat_encoder_grads(model, grads)) < 1e-12


def test_jacobian_route_equals_a_direct_backward():
    model = fixed_model()
    x = fixed_x(model, n=3)
    rng = np.random.default_rng(2)
    dmu, dlogvar = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    g = estimators.encoder_gradients(estimators.encoder_jacobian(model, x), dmu, dlogvar)
    direct = estimators.encoder_backward(model, x, dmu / 3, dlogvar / 3)
    assert relative_error(g, flat_encoder_grads(model, direct)) < 1e-12
    named = estimators.as_named(model, g)
    assert named.keys() == direct.keys()
    for name in named:
        assert named[name].shape == model.params[name].shape


def sampled_loss(model, x, mu, logvar, eps):
    """sum_l c(z_l) with c = -log w, z = mu + exp(logvar / 2) eps: the reparameterized integrand."""
    z = mu + np.exp(0.5 * logvar) * eps
    L, N, K = eps.shape
    out, _ = model._decoder_forward(z.reshape(L * N, K))
    nll, _ = model._reconstruction_nll(out.reshape(L, N, -1), x)
    log_q, _ = log_normal(z, mu, logvar)
    return nll - log_standard_normal(z) + log_q                                   # (L, N)


def analytic_loss(model, x, mu, logvar, eps):
    z = mu + np.exp(0.5 * logvar) * eps
    L, N, K = eps.shape
    out, _ = model._decoder_forward(z.reshape(L * N, K))
    nll, _ = model._reconstruction_nll(out.reshape(L, N, -1), x)
    return nll + kl_standard_normal(mu, logvar)[0]


@pytest.mark.parametrize("kl,loss", [("sampled", sampled_loss), ("analytic", analytic_loss)])
def test_reparam_terms_match_finite_differences(kl, loss):
    """The total derivative of c(mu + sigma eps; mu, logvar), eps fixed, by a 4th-order stencil."""
    model = fixed_model()
    x = fixed_x(model, n=2)
    eps = np.random.default_rng(3).standard_normal((3, 2, 2))
    mu, logvar = model.encode(x)
    dmu, dlogvar = estimators.head_gradient_terms(model, x, eps, "reparam", kl)
    numeric_mu = numeric_gradient(lambda m: loss(model, x, m, logvar, eps), mu.copy())
    numeric_logvar = numeric_gradient(lambda v: loss(model, x, mu, v, eps), logvar.copy())
    assert relative_error(dmu.sum(axis=0), numeric_mu) < 1e-8
    assert relative_error(dlogvar.sum(axis=0), numeric_logvar) < 1e-8


def test_path_derivative_is_reparam_without_the_score():
    model = fixed_model()
    x = fixed_x(model)
    eps = np.random.default_rng(4).standard_normal((5, 1, 2))
    full = estimators.head_gradient_terms(model, x, eps, "reparam", "sampled")
    path = estimators.head_gradient_terms(model, x, eps, "reparam_path", "sampled")
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps
    score_mu, score_logvar = (z - mu) / np.exp(logvar), 0.5 * ((z - mu) ** 2 / np.exp(logvar) - 1)
    np.testing.assert_allclose(full[0] - path[0], score_mu, atol=1e-12)
    np.testing.assert_allclose(full[1] - path[1], score_logvar, atol=1e-12)
    # with the KL in closed form, log q is not in the integrand: the two coincide
    np.testing.assert_array_equal(
        estimators.head_gradient_terms(model, x, eps, "reparam", "analytic")[0],
        estimators.head_gradient_terms(model, x, eps, "reparam_path", "analytic")[0])


@pytest.fixture(scope="module")
def comparison():
    model = fixed_model()
    x = fixed_x(model)
    results = {}
    for kl in estimators.KL_FORMS:
        results[kl] = estimators.compare_estimators(
            model, x, sample_sizes=(1, 2, 10), n_repeats=400, kl=kl, reference_samples=40_000,
            random=model.backend.random(11))
    return results


@pytest.mark.parametrize("kl", estimators.KL_FORMS)
def test_every_estimator_is_unbiased(comparison, kl):
    """(mean of R estimates - reference) / combined standard error stays within 4.5 for every
    parameter; the gradients are not all zero, and inactive parameters are exactly zero."""
    for (name, L), stats in comparison[kl].items():
        active = minivae.to_numpy(stats.active)
        z = minivae.to_numpy(stats.z_scores)[active]
        assert active.sum() > 100
        assert np.abs(z).max() < 4.5, (name, L, np.abs(z).max())
        assert np.all(minivae.to_numpy(stats.mean)[~active] == 0.0)


@pytest.mark.parametrize("kl", estimators.KL_FORMS)
def test_reparameterization_has_lower_variance_than_the_score_function(comparison, kl):
    results = comparison[kl]
    for L in (1, 2, 10):
        reparam, score = results[("reparam", L)], results[("score", L)]
        active = minivae.to_numpy(reparam.active)
        ratio = minivae.to_numpy(score.variance)[active] / minivae.to_numpy(reparam.variance)[active]
        assert ratio.min() > 1.0, (L, ratio.min())            # for every single parameter
        assert score.total_variance > 10.0 * reparam.total_variance


def test_variance_falls_as_one_over_L(comparison):
    for name in ("reparam", "score"):
        stats = comparison["sampled"]
        ratio = stats[(name, 1)].total_variance / stats[(name, 10)].total_variance
        assert 7.0 < ratio < 14.0, (name, ratio)            # 10, up to the variance's own noise


def test_snr_is_reference_over_standard_deviation(comparison):
    stats = comparison["analytic"][("reparam", 10)]
    active = minivae.to_numpy(stats.active)
    expected = (np.abs(minivae.to_numpy(stats.reference)[active])
                / np.sqrt(minivae.to_numpy(stats.variance)[active]))
    np.testing.assert_allclose(minivae.to_numpy(stats.snr)[active], expected)
    assert np.isnan(minivae.to_numpy(stats.snr)[~active]).all()


def test_chunked_statistics_equal_the_direct_ones():
    """Chan's merge of chunk means and variances = mean and variance of all estimates at once."""
    model = fixed_model()
    x = fixed_x(model, n=2)
    L, R, seed = 3, 10, 5
    stats = estimators.estimator_statistics(model, x, "score", L, R, random=model.backend.random(seed),
                                            max_batch=L * 2 * 3)            # chunks of 3 repeats
    random, jacobian, rows = model.backend.random(seed), estimators.encoder_jacobian(model, x), []
    for r in (3, 3, 3, 1):
        eps = random.normal((L, r * 2, 2), model.dtype)
        dmu, dlogvar = estimators.head_gradient_terms(model, np.tile(x, (r, 1)), eps, "score")
        rows.append(estimators.encoder_gradients(jacobian, dmu.mean(0).reshape(r, 2, 2),
                                                 dlogvar.mean(0).reshape(r, 2, 2)))
    g = np.concatenate(rows)
    np.testing.assert_allclose(stats.mean, g.mean(axis=0), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(stats.variance, g.var(axis=0, ddof=1), rtol=1e-9, atol=1e-14)


def exact_posterior_model():
    """A linear-Gaussian decoder with orthogonal weight rows, so p(z|x) is a diagonal Gaussian,
    and an encoder whose head outputs exactly that posterior for the example x0."""
    D, variance = 6, 0.5
    model = minivae.VAE(D, [4], 2, likelihood="gaussian", decoder_hidden_dims=[],
                        decoder_variance=variance, dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    W = np.linalg.qr(rng.standard_normal((D, 2)))[0].T * np.array([[1.5], [0.7]])   # W W^T diagonal
    b = rng.standard_normal(D)
    x0 = (b + rng.standard_normal(D))[None]
    precision = 1.0 + (W * W).sum(axis=1) / variance
    posterior_mean = (W @ (x0[0] - b) / variance) / precision
    model.params["decoder.out.W"][...] = W
    model.params["decoder.out.b"][...] = b
    model.params["encoder.head.W"][...] = 0.0
    model.params["encoder.head.b"][...] = np.concatenate([posterior_mean, -np.log(precision)])
    return model, x0


def test_with_the_exact_posterior_path_and_baseline_estimators_have_zero_variance():
    model, x = exact_posterior_model()
    eps = np.random.default_rng(6).standard_normal((50, 1, 2))
    log_w = model.log_importance_weights(x, eps)
    assert np.ptp(log_w) < 1e-12                                 # log w = log p(x) for every z
    for name in ("reparam_path", "score_loo"):
        dmu, dlogvar = estimators.head_gradient_terms(model, x, eps, name, "sampled")
        assert np.abs(dmu).max() < 1e-10 and np.abs(dlogvar).max() < 1e-10, name
    dmu, dlogvar = estimators.head_gradient_terms(model, x, eps, "reparam", "sampled")
    assert dmu.std(axis=0).min() > 0.1                           # the zero-mean score term is noise
    assert np.abs(dmu.mean(axis=0)).max() < 4 * dmu.std(axis=0).max() / np.sqrt(50)


def test_the_loo_baseline_needs_two_samples_and_names_are_checked():
    model = fixed_model()
    x = fixed_x(model)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        estimators.head_gradient_terms(model, x, np.zeros((1, 1, 2)), "score_loo")
    with pytest.raises(ValueError, match="unknown estimator"):
        estimators.head_gradient_terms(model, x, np.zeros((2, 1, 2)), "reinforce")
    with pytest.raises(ValueError, match="unknown kl"):
        estimators.head_gradient_terms(model, x, np.zeros((2, 1, 2)), "score", kl="exact")


def test_the_study_runs_on_the_strict_backend():
    """No implicit host/device conversion or mixing anywhere in the estimators (the GPU path)."""
    model = fixed_model("strict")
    x = fixed_x(model, n=2)
    results = estimators.compare_estimators(model, x, sample_sizes=(2,), n_repeats=20,
                                            reference_samples=200, random=model.backend.random(0))
    for stats in results.values():
        assert isinstance(stats.mean, strict.ndarray)
        assert np.isfinite(minivae.to_numpy(stats.variance)).all()
        assert np.isfinite(stats.total_variance)
