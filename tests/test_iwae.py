"""The importance-weighted loss -IWAE_k and its three encoder-gradient estimators, proven by finite
differences in float64 with the noise eps fixed:

* "reparam" is the gradient of the loss itself;
* "stl" is the gradient of a surrogate in which log q's mu and logvar are stop-gradient copies
  (the values of the parameters at the point of the check), so only the path through z is left;
* "dreg" is the gradient of the surrogate -(1/N) sum [sg(w~) log w(decoder) + sg(w~^2) log w(z)]
  with the same stop-gradient copies (docs/gradients.md, section 13);
* the decoder's gradient is the same for all three; k = 1 gives the ELBO with a sampled KL;
* the loss is a bound: -IWAE_k <= -ELBO estimate of the same samples, and the terms are consistent.
"""
import math

import numpy as np
import pytest

import minivae
from minivae.gradcheck import gradcheck, relative_error
from minivae.ops.latent import log_normal, log_standard_normal
from minivae.ops.numerics import logsumexp

K_SAMPLES = 4


def small_model(likelihood="bernoulli"):
    return minivae.VAE(6, [5], 2, activation="tanh", likelihood=likelihood, dtype="float64", seed=3)


def data(model, n=3):
    rng = np.random.default_rng(5)
    return model.backend.to_device(rng.random((n, model.input_dim)))


def fixed_eps(model, n=3, k=K_SAMPLES):
    return model.backend.to_device(np.random.default_rng(9).standard_normal((k, n, model.latent_dim)))


def log_weights(z_model, decoder_model, q_model, x, eps):
    """log w with z = mu + sigma eps from z_model's encoder, log p(x|z) from decoder_model's decoder,
    and log q(z|x) with q_model's mu, logvar (k, N): three models, so that any of them can be frozen."""
    mu, logvar = z_model.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps
    q_mu, q_logvar = q_model.encode(x)
    log_q, _ = log_normal(z, q_mu, q_logvar)
    return decoder_model.log_likelihood(x, z) + log_standard_normal(z) - log_q


def frozen_copy(model):
    copy = small_model(model.likelihood_op)
    copy.flat_params[...] = model.flat_params
    return copy


def softmax(log_w):
    return np.exp(log_w - logsumexp(log_w, axis=0))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_reparam_is_the_gradient_of_the_loss(likelihood):
    model = small_model(likelihood)
    x, eps = data(model), fixed_eps(model)
    _, grads = model.iwae_forward_backward(x, eps, estimator="reparam")

    def loss():
        log_w = log_weights(model, model, model, x, eps)
        return float(-(logsumexp(log_w, axis=0) - math.log(K_SAMPLES)).mean())
    report = gradcheck(loss, model.params, grads)
    assert report.max_error < 1e-8, str(report)


def test_stl_is_the_gradient_of_the_stop_gradient_surrogate():
    model = small_model()
    x, eps = data(model), fixed_eps(model)
    _, grads = model.iwae_forward_backward(x, eps, estimator="stl")
    frozen = frozen_copy(model)

    def surrogate():
        log_w = log_weights(model, model, frozen, x, eps)
        return float(-(logsumexp(log_w, axis=0) - math.log(K_SAMPLES)).mean())
    report = gradcheck(surrogate, model.params, grads)
    assert report.max_error < 1e-8, str(report)


def test_dreg_is_the_gradient_of_its_surrogate():
    model = small_model()
    x, eps = data(model), fixed_eps(model)
    _, grads = model.iwae_forward_backward(x, eps, estimator="dreg")
    frozen = frozen_copy(model)
    w_tilde = softmax(log_weights(model, model, model, x, eps))                 # sg(w~), fixed

    def surrogate():
        decoder_part = (w_tilde * log_weights(frozen, model, frozen, x, eps)).sum()
        encoder_part = (w_tilde ** 2 * log_weights(model, frozen, frozen, x, eps)).sum()
        return float(-(decoder_part + encoder_part) / x.shape[0])
    report = gradcheck(surrogate, model.params, grads)
    assert report.max_error < 1e-8, str(report)


def test_the_decoder_gradient_is_the_same_for_every_estimator():
    model = small_model()
    x, eps = data(model), fixed_eps(model)
    grads = {e: model.iwae_forward_backward(x, eps, estimator=e)[1] for e in minivae.model.IWAE_ESTIMATORS}
    for name in model.shapes:
        if name.startswith("decoder."):
            np.testing.assert_array_equal(grads["stl"][name], grads["reparam"][name])
            np.testing.assert_array_equal(grads["dreg"][name], grads["reparam"][name])
    differ = [name for name in model.shapes if name.startswith("encoder.")
              and not np.allclose(grads["dreg"][name], grads["reparam"][name])]
    assert differ                                   # the encoders' estimates are not the same


def test_k_equal_1_is_the_elbo_with_a_sampled_kl():
    model = small_model()
    x, eps = data(model), fixed_eps(model, k=1)
    terms, grads = model.iwae_forward_backward(x, eps, estimator="reparam")
    log_w = log_weights(model, model, model, x, eps)
    assert float(terms.loss) == pytest.approx(float(-log_w.mean()), rel=1e-13)
    assert float(terms.loss) == pytest.approx(float(terms.reconstruction + terms.kl), rel=1e-13)
    # stl and dreg coincide when w~ = 1
    stl = model.iwae_forward_backward(x, eps, estimator="stl")[1]
    dreg = model.iwae_forward_backward(x, eps, estimator="dreg")[1]
    assert relative_error(stl.flat, dreg.flat) < 1e-14
    # the analytic-KL ELBO has the same expectation; its decoder gradient is the same sample-wise
    _, elbo_grads = model.loss_and_grads(x, eps=eps)
    np.testing.assert_allclose(grads["decoder.out.W"], elbo_grads["decoder.out.W"], rtol=1e-12)


def test_the_loss_is_a_tighter_bound_on_the_same_samples():
    model = small_model()
    x, eps = data(model, n=8), fixed_eps(model, n=8, k=16)
    terms, _ = model.iwae_forward_backward(x, eps, need_grads=False)
    # log mean w >= mean log w (Jensen), per example, on the same samples
    log_w = model.log_importance_weights(x, eps)
    np.testing.assert_allclose(-model.iwae_per_example(x, eps).mean(), float(terms.loss), rtol=1e-13)
    assert float(terms.loss) <= float(-log_w.mean()) + 1e-12
    assert float(terms.reconstruction + terms.kl) == pytest.approx(float(-log_w.mean()), rel=1e-12)


def test_runs_on_the_strict_backend():
    model = minivae.VAE(6, [5], 2, activation="tanh", dtype="float64", seed=3, backend="strict")
    x = model.backend.to_device(np.random.default_rng(5).random((3, 6)))
    reference = small_model()
    eps = np.random.default_rng(1).standard_normal((4, 3, 2))
    for estimator in minivae.model.IWAE_ESTIMATORS:
        terms, a = model.iwae_forward_backward(x, model.backend.to_device(eps), estimator=estimator)
        _, b = reference.iwae_forward_backward(minivae.to_numpy(x), eps, estimator=estimator)
        assert relative_error(minivae.to_numpy(a.flat), b.flat) < 1e-12
        assert np.isfinite(float(terms.loss))


def test_bad_options_are_refused():
    model = small_model()
    x = data(model)
    with pytest.raises(ValueError, match="estimator"):
        model.iwae_forward_backward(x, k=2, estimator="score")
    with pytest.raises(ValueError, match="k must be"):
        model.iwae_forward_backward(x, k=0)


# --- training with it: TrainStep, TrainConfig, the fast path's decision -------------------------

def test_an_iwae_step_never_reaches_the_elbo_kernel():
    """The model itself is fused-supported; the objective is what sends the step to the reference."""
    from minivae.fast import engine
    model = minivae.VAE(6, [5], 2, seed=0)
    assert engine.unsupported_reason(model) is None
    assert "ELBO only" in engine.unsupported_reason(model, "iwae")
    with pytest.raises(ValueError, match="the fused step cannot run this model"):
        engine.FusedStep(model, model.zeros_like_params(), objective="iwae")
    with pytest.warns(minivae.FastPathWarning, match="ELBO only"):
        step = minivae.TrainStep(model, minivae.SGD(model.params, lr=0.1), objective="iwae", k=3)
    assert step.path == "reference" and step._engine is None
    step = minivae.TrainStep(model, minivae.SGD(model.params, lr=0.1), objective="iwae", k=3, fused=False)
    assert step.path == "reference"


def test_an_iwae_step_is_the_iwae_gradient_and_the_update():
    model, reference = small_model(), small_model()
    x, eps = data(model), fixed_eps(model)
    step = minivae.TrainStep(model, minivae.SGD(model.params, lr=0.1), objective="iwae", k=K_SAMPLES,
                             estimator="dreg", fused=False)
    terms = step(x, eps=eps)
    expected_terms, grads = reference.iwae_forward_backward(x, eps, estimator="dreg")
    assert float(terms.loss) == float(expected_terms.loss)
    np.testing.assert_array_equal(step.grads.flat, grads.flat)
    np.testing.assert_allclose(model.flat_params, reference.flat_params - 0.1 * grads.flat, rtol=1e-15)
    # without eps it draws k samples per example
    step(x)
    with pytest.raises(ValueError, match="beta must be 1"):
        step(x, beta=0.5)


@pytest.mark.parametrize("options,message", [
    ({"objective": "vimco"}, "unknown objective"),
    ({"objective": "iwae", "estimator": "score"}, "unknown estimator"),
    ({"k": 5}, "belong to the IWAE objective"),
    ({"estimator": "dreg"}, "belong to the IWAE objective"),
    ({"objective": "iwae", "k": 0}, "k must be"),
    ({"objective": "iwae", "k": 5, "n_samples": 2}, "not n_samples"),
    ({"objective": "iwae", "k": 5, "beta": 0.5}, "beta = 1"),
    ({"objective": "iwae", "k": 5, "warmup_epochs": 1}, "beta = 1"),
])
def test_the_config_refuses_what_would_train_something_else(options, message):
    with pytest.raises(ValueError, match=message):
        minivae.TrainConfig(**options)


def test_training_on_iwae_lowers_the_bound():
    rng = np.random.default_rng(0)
    x = (rng.random((200, 6)) < np.linspace(0.1, 0.9, 6)).astype(np.float64)
    model = minivae.VAE(6, [8], 2, activation="tanh", dtype="float64", seed=1)
    x_device = model.backend.to_device(x)
    eps = model.backend.to_device(np.random.default_rng(2).standard_normal((20, 200, 2)))
    before = float(-model.iwae_per_example(x_device, eps).mean())
    config = minivae.TrainConfig(epochs=5, batch_size=50, lr=1e-2, objective="iwae", k=5, estimator="dreg",
                                 eval_every=0)
    with pytest.warns(minivae.FastPathWarning):
        trainer = minivae.Trainer(model, x, config, progress=False, log=None)
    assert trainer.step.objective == "iwae" and trainer.samples_per_step == 5
    history = trainer.fit()
    after = float(-model.iwae_per_example(x_device, eps).mean())
    assert after < before - 0.1
    assert history["train_loss"][-1] <= history["train_neg_elbo"][-1]     # -IWAE_5 <= -ELBO
