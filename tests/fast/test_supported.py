"""The fast path declares what it supports, and nothing else reaches a kernel.

A likelihood and an activation defined here, in the test file only, as a user would add them to the
reference path: the reference is right (finite differences), and TrainStep gives the reference's
loss, gradients and update through its fallback, with one warning, never the fused kernels' math
for some other case (the defect this guards against: a Laplace likelihood once came out of the fast
step as a fixed-variance Gaussian, loss 4.35 against 10.63)."""
import warnings

import numpy as np
import pytest

import minivae
from minivae.fast import engine
from minivae.ops import layers, likelihoods
from minivae.training.step import FastPathWarning, TrainStep

D, K = 8, 3


class Laplace(likelihoods.Likelihood):
    """x_d ~ Laplace(out_d, b): -log p = sum_d |x_d - out_d| / b + D log(2 b)."""

    name = "laplace-test"

    def __init__(self, scale=1.0):
        self.scale = float(scale)

    def nll(self, out, x, params):
        xp = minivae.get_array_module(out)
        residual = out - x
        D = out.shape[-1]
        return xp.abs(residual).sum(axis=-1) / self.scale + D * np.log(2.0 * self.scale), residual

    def nll_backward(self, dnll, cache, grads):
        xp = minivae.get_array_module(cache)
        return dnll[..., None] * xp.sign(cache) / self.scale

    def mean(self, out, params):
        return out

    def options(self):
        return {"scale": self.scale}


def elu_forward(a):
    xp = minivae.get_array_module(a)
    out = xp.where(a > 0, a, xp.exp(xp.minimum(a, 0.0)) - 1.0)
    return out, (a, out)


def elu_backward(dout, cache):
    a, out = cache
    xp = minivae.get_array_module(a)
    return dout * xp.where(a > 0, 1.0, out + 1.0)


ELU = layers.Activation("elu-test", elu_forward, elu_backward)


def batch(backend, n=6, seed=1, L=1):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.05, 0.95, size=(n, D))
    eps = rng.standard_normal((L, n, K))
    return backend.to_device(x, "float64"), backend.to_device(eps, "float64")


def host(a):
    return minivae.to_numpy(a)


def reference_step(model, x, eps, lr):
    """Loss, gradients and updated parameters of the reference path, by hand."""
    loss, grads = model.loss_and_grads(x, eps=eps)
    return loss, {k: host(g).copy() for k, g in grads.items()}, host(model.params.flat) - lr * host(grads.flat)


@pytest.mark.parametrize("case", ["laplace", "elu", "both"])
def test_an_op_without_fused_kernels_trains_on_the_reference_path(backend, case):
    likelihood = Laplace(scale=0.7) if case in ("laplace", "both") else "bernoulli"
    activation = ELU if case in ("elu", "both") else "relu"
    model = minivae.VAE(D, [7], K, likelihood=likelihood, activation=activation, backend=backend,
                        dtype="float64", seed=0)
    twin = minivae.VAE(D, [7], K, likelihood=likelihood, activation=activation, backend=backend,
                       dtype="float64", seed=0)
    x, eps = batch(backend)
    assert minivae.check_model_gradients(model, x, eps=eps).passed(1e-7)

    with pytest.warns(FastPathWarning, match="no fused kernel for the (likelihood|activation)") as caught:
        step = TrainStep(model, minivae.SGD(model.params, lr=0.05))
    assert len(caught) == 1
    assert step.path == "reference" and step._engine is None and "no fused kernel" in step.reason

    expected_loss, expected_grads, expected_params = reference_step(twin, x, eps, lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # one warning, at construction; none per step
        terms = step(x, eps=eps)
    assert float(terms.loss) == pytest.approx(expected_loss, rel=1e-12)
    for name, g in expected_grads.items():
        np.testing.assert_allclose(host(step.grads[name]), g, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(host(model.params.flat), expected_params, rtol=1e-12, atol=1e-14)


def test_the_laplace_loss_is_the_laplace_loss():
    """The number itself, by hand: what the fused Gaussian would have given is far from it."""
    model = minivae.VAE(D, [7], K, likelihood=Laplace(), backend="numpy", dtype="float64", seed=0)
    x, eps = batch(minivae.get_backend("numpy"))
    mu, logvar = model.encode(x)
    z = mu + np.exp(0.5 * logvar) * eps[0]
    out = model.decode(z)
    nll = (np.abs(out - x).sum(-1) + D * np.log(2.0)).mean()
    kl = 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1).sum(-1).mean()
    with pytest.warns(FastPathWarning):
        step = TrainStep(model, minivae.SGD(model.params, lr=1e-9))
    assert float(step(x, eps=eps).loss) == pytest.approx(nll + kl, rel=1e-12)


def test_registered_by_name_the_same():
    likelihoods.register_likelihood(Laplace)
    try:
        model = minivae.VAE(D, [5], K, likelihood="laplace-test", likelihood_options={"scale": 2.0},
                            dtype="float64", seed=0)
        assert model.likelihood == "laplace-test" and model.likelihood_op == Laplace(2.0)
        assert model.config["likelihood_options"] == {"scale": 2.0}
        assert minivae.VAE(**model.config).likelihood_op == Laplace(2.0)
        assert engine.unsupported_reason(model) == "no fused kernel for the likelihood Laplace(scale=2.0)"
        with pytest.raises(ValueError, match="registered already"):
            likelihoods.register_likelihood(type("Other", (Laplace,), {}))
    finally:
        del likelihoods.LIKELIHOODS["laplace-test"]
    with pytest.raises(ValueError, match="unknown likelihood 'laplace-test'"):
        minivae.VAE(D, [5], K, likelihood="laplace-test")


def test_support_is_decided_by_the_objects_not_their_names():
    """A subclass of a built-in likelihood, or an activation that takes a built-in's name, is not
    what the kernels compute: both go to the reference path."""
    class MyBernoulli(likelihoods.Bernoulli):
        pass
    impostor = layers.Activation("relu", elu_forward, elu_backward)
    for model in [minivae.VAE(D, [5], K, likelihood=MyBernoulli(), seed=0),
                  minivae.VAE(D, [5], K, activation=impostor, seed=0)]:
        assert engine.unsupported_reason(model) is not None
        with pytest.raises(ValueError, match="the fused step cannot run this model"):
            engine.FusedStep(model, model.zeros_like_params())
        with pytest.warns(FastPathWarning):
            assert TrainStep(model, minivae.Adam(model.params)).path == "reference"


@pytest.mark.parametrize("activation", sorted(layers.ACTIVATIONS))
@pytest.mark.parametrize("likelihood,variance", [("bernoulli", 1.0), ("gaussian", 0.5), ("gaussian", "learned")])
def test_every_built_in_case_is_fused(activation, likelihood, variance):
    model = minivae.VAE(D, [5], K, likelihood=likelihood, activation=activation, decoder_variance=variance)
    assert engine.unsupported_reason(model) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainStep(model, minivae.Adam(model.params)).path == "fused"
