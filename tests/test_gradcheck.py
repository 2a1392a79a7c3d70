"""The gradient checker itself: it must catch wrong gradients, not just bless right ones."""
import numpy as np
import pytest

import minivae
from minivae.gradcheck import Float32GradcheckError, central_difference, gradcheck, numeric_gradient
from minivae.ops import latent


def test_central_differences_are_exact_for_low_degree_polynomials():
    cubic = lambda t: 2.0 * t ** 3 - t + 0.5  # noqa: E731
    assert central_difference(cubic, 1e-2, order=2) == pytest.approx(-1.0 + 2.0 * 1e-4, rel=1e-12)
    assert central_difference(lambda t: t ** 5, 1e-2, order=4) == pytest.approx(-4 * 1e-8, abs=1e-15)
    with pytest.raises(ValueError, match="order must be one of"):
        central_difference(cubic, 1e-3, order=3)


def test_numeric_gradient_of_a_known_function(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(numeric_gradient(lambda v: np.sin(v), x), np.cos(x), rtol=1e-9)


def test_it_catches_the_sigma_squared_bug(rng):
    """A backward derived for z = mu + exp(logvar) * eps is wrong for z = mu + exp(logvar/2) * eps."""
    mu, logvar, eps = rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    params = {"mu": mu, "logvar": logvar}
    loss = lambda: float((latent.reparameterize(mu, logvar, eps)[0] ** 2).sum())  # noqa: E731
    z, cache = latent.reparameterize(mu, logvar, eps)
    dmu, dlogvar = latent.reparameterize_backward(2 * z, cache)
    assert gradcheck(loss, params, {"mu": dmu, "logvar": dlogvar}).max_error < 1e-8
    wrong = 2 * z * eps * np.exp(logvar)  # d(exp(logvar) eps)/dlogvar
    report = gradcheck(loss, params, {"mu": dmu, "logvar": wrong})
    assert report["mu"] < 1e-8 and report["logvar"] > 0.1


def test_it_catches_a_wrong_model_gradient_along_directions(rng):
    model = minivae.VAE(30, [20], 4, activation="tanh", dtype="float64", seed=0)
    x, eps = rng.random((6, 30)), rng.standard_normal((6, 4))
    _, grads = model.loss_and_grads(x, eps=eps)
    grads["encoder.0.W"][0, 0] += 0.05 * np.abs(grads["encoder.0.W"]).max()  # a single wrong entry
    report = gradcheck(lambda: model.loss(x, eps=eps), model.params, grads, max_elements=100)
    assert report.checks["encoder.0.W"].method == "directions"
    assert report["encoder.0.W"] > 1e-4
    assert report["decoder.out.b"] < 1e-7
    assert not report.passed()
    assert "encoder.0.W" in str(report)


def test_parameters_are_restored_after_the_check(rng):
    model = minivae.VAE(8, [6], 2, dtype="float64", seed=0)
    before = model.params.flat.copy()
    minivae.check_model_gradients(model, rng.random((3, 8)), max_elements=10)
    np.testing.assert_array_equal(model.params.flat, before)


def test_float32_is_refused_unless_asked(rng):
    model = minivae.VAE(8, [6], 2, dtype="float32", seed=0)
    x = rng.random((3, 8)).astype(np.float32)
    with pytest.raises(Float32GradcheckError, match="float64"):
        minivae.check_model_gradients(model, x)
    report = minivae.check_model_gradients(model, x, allow_float32=True, h=1e-2, order=2)
    assert report.max_error < 0.05  # float32 rounding: only a coarse check is possible
