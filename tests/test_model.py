"""The whole VAE: its loss against an independent replay, its gradients against finite
differences, and its behaviour across dtypes, backends and extreme inputs."""
import math

import numpy as np
import pytest
from scipy import special, stats

import minivae
from minivae.backend import cupy_gpu_available
from minivae.gradcheck import relative_error
from minivae.ops.latent import kl_standard_normal, reparameterize

TOL = 1e-7


def small_model(likelihood="bernoulli", activation="tanh", dtype="float64", backend="numpy", **kw):
    return minivae.VAE(12, [9, 7], 3, likelihood=likelihood, activation=activation, dtype=dtype,
                       backend=backend, seed=3, **kw)


def batch(rng, likelihood="bernoulli", n=5, dim=12):
    return rng.random((n, dim)) if likelihood == "bernoulli" else rng.standard_normal((n, dim))


def replay_loss(model, x, eps, beta=1.0):
    """The negative ELBO computed independently with SciPy, straight from the equations."""
    p = {k: minivae.to_numpy(v) for k, v in model.params.items()}
    act = {"relu": lambda a: np.maximum(a, 0), "tanh": np.tanh, "softplus": lambda a: np.logaddexp(0, a),
           "sigmoid": special.expit, "leaky_relu": lambda a: np.where(a > 0, a, 0.01 * a)}[model.activation]
    h = x
    for i in range(len(model.hidden_dims)):
        h = act(h @ p[f"encoder.{i}.W"] + p[f"encoder.{i}.b"])
    head = h @ p["encoder.head.W"] + p["encoder.head.b"]
    K = model.latent_dim
    mu, logvar = head[:, :K], head[:, K:]
    z = mu + np.sqrt(np.exp(logvar)) * eps
    h = z
    for i in range(len(model.decoder_hidden_dims)):
        h = act(h @ p[f"decoder.{i}.W"] + p[f"decoder.{i}.b"])
    out = h @ p["decoder.out.W"] + p["decoder.out.b"]
    if model.likelihood == "bernoulli":
        log_px = (x * special.log_expit(out) + (1 - x) * special.log_expit(-out)).sum(-1)
    elif model.decoder_variance == "learned":
        log_px = stats.norm.logpdf(x, out, np.exp(0.5 * p["decoder.logvar"])).sum(-1)
    else:
        log_px = stats.norm.logpdf(x, out, math.sqrt(model.decoder_variance)).sum(-1)
    kl = 0.5 * (mu ** 2 + np.exp(logvar) - logvar - 1).sum(-1)
    return float(-log_px.mean() + beta * kl.mean())


@pytest.mark.parametrize("likelihood,options", [("bernoulli", {}), ("gaussian", {}),
                                                ("gaussian", {"decoder_variance": 0.5}),
                                                ("gaussian", {"decoder_variance": "learned"})])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_loss_matches_an_independent_replay(likelihood, options, n_samples, rng):
    model = small_model(likelihood, **options)
    x, eps = batch(rng, likelihood), rng.standard_normal((n_samples, 5, 3))
    assert model.loss(x, eps=eps, beta=0.6) == pytest.approx(replay_loss(model, x, eps, beta=0.6), rel=1e-12)


@pytest.mark.parametrize("likelihood,options", [("bernoulli", {}), ("gaussian", {}),
                                                ("gaussian", {"decoder_variance": "learned"})])
@pytest.mark.parametrize("n_samples", [1, 3])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid"])
def test_whole_model_gradients(likelihood, options, n_samples, activation, rng):
    model = small_model(likelihood, activation, **options)
    x = batch(rng, likelihood)
    report = minivae.check_model_gradients(model, x, eps=rng.standard_normal((n_samples, 5, 3)), beta=0.7)
    assert set(report) == set(model.params)
    assert report.max_error < TOL, str(report)


def min_distance_to_kink(model, x, eps):
    """The smallest |pre-activation| of any hidden unit, replayed independently."""
    p = {k: minivae.to_numpy(v) for k, v in model.params.items()}
    h, smallest = x, np.inf
    for i in range(len(model.hidden_dims)):
        a = h @ p[f"encoder.{i}.W"] + p[f"encoder.{i}.b"]
        smallest, h = min(smallest, np.abs(a).min()), np.maximum(a, 0)
    head = h @ p["encoder.head.W"] + p["encoder.head.b"]
    h = (head[:, :3] + np.exp(0.5 * head[:, 3:]) * eps).reshape(-1, 3)
    for i in range(len(model.decoder_hidden_dims)):
        a = h @ p[f"decoder.{i}.W"] + p[f"decoder.{i}.b"]
        smallest, h = min(smallest, np.abs(a).min()), np.maximum(a, 0)
    return smallest


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_whole_model_gradients_with_kinks(activation, likelihood):
    rng = np.random.default_rng(7)
    model = small_model(likelihood, activation)
    x, eps = batch(rng, likelihood), rng.standard_normal((3, 5, 3))
    h = 1e-5
    # the largest parameter perturbation (2h) moves a pre-activation by far less than this margin
    assert min_distance_to_kink(model, x, eps) > 20 * h
    report = minivae.check_model_gradients(model, x, eps=eps, beta=1.3, h=h)
    assert report.max_error < TOL, str(report)


def test_large_model_is_checked_along_random_directions(rng):
    model = minivae.VAE(784, [64], 8, activation="tanh", dtype="float64", seed=0)
    report = minivae.check_model_gradients(model, rng.random((8, 784)), n_samples=2, n_directions=3)
    assert report.checks["encoder.0.W"].method == "directions"
    assert report.checks["encoder.head.b"].method == "elementwise"
    assert report.max_error < TOL, str(report)


def test_loss_and_grads_api(rng):
    model = small_model()
    x, eps = batch(rng), rng.standard_normal((5, 3))
    loss, grads = model.loss_and_grads(x, eps=eps)
    assert isinstance(loss, float)
    assert grads.keys() == model.params.keys()
    assert all(grads[k].shape == model.params[k].shape for k in grads)
    # (N, K) noise means one sample; the same noise gives the same numbers
    loss_again, grads_again = model.loss_and_grads(x, eps=eps[None])
    assert loss_again == loss
    assert all(np.array_equal(grads[k], grads_again[k]) for k in grads)
    terms = model.loss_terms(x, eps=eps, beta=0.25)
    assert float(terms.loss) == pytest.approx(float(terms.reconstruction) + 0.25 * float(terms.kl), rel=1e-14)
    assert model.loss(x, eps=eps) == loss


def test_noise_is_drawn_when_not_given_and_reproducible_from_the_seed(rng):
    x = batch(rng)
    a, b = small_model(), small_model()
    assert a.loss(x) == b.loss(x)  # same seed, same noise stream
    assert a.loss(x) != a.loss(x)  # fresh noise each call


def test_more_samples_lower_the_variance_of_the_estimate(rng):
    model = small_model()
    x = batch(rng)
    spread = [np.std([model.loss(x, n_samples=n) for _ in range(200)]) for n in (1, 16)]
    assert spread[1] < spread[0] / 2  # ~ 1/sqrt(16) = 1/4 in theory


def test_encode_decode_sample_shapes(rng):
    model = small_model()
    x = batch(rng)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 3)
    assert model.decode(mu).shape == (5, 12)
    images = model.sample(4)
    assert images.shape == (4, 12) and np.all((images >= 0) & (images <= 1))
    assert model.reconstruct(x).shape == (5, 12)
    assert model.log_importance_weights(x, rng.standard_normal((7, 5, 3))).shape == (7, 5)


def test_importance_weights_average_to_the_elbo(rng):
    """E_q[log w] is the ELBO: log w with the same eps must equal the per-example ELBO estimate."""
    model = small_model()
    x, eps = batch(rng), rng.standard_normal((4, 5, 3))
    log_w = model.log_importance_weights(x, eps)
    # log w = log p(x|z) + log p(z) - log q(z|x); its mean over samples differs from the
    # closed-form-KL ELBO only by the Monte Carlo error of the KL, which vanishes as eps -> many
    elbo = model.elbo_per_example(x, eps=eps)
    kl_mc = -(log_w.mean(axis=0) - elbo)  # = KL_closed - KL_MC estimate, small
    assert np.all(np.abs(kl_mc) < 5.0)
    many = rng.standard_normal((20000, 5, 3))
    np.testing.assert_allclose(model.log_importance_weights(x, many).mean(axis=0),
                               model.elbo_per_example(x, eps=many), atol=0.05)


def test_float32_and_float64_agree_to_float32_precision(rng):
    x, eps = batch(rng), rng.standard_normal((2, 5, 3))
    m64 = minivae.VAE(12, [9, 7], 3, dtype="float64", seed=1)
    m32 = minivae.VAE(12, [9, 7], 3, dtype="float32", seed=1)
    l64, g64 = m64.loss_and_grads(x, eps=eps)
    l32, g32 = m32.loss_and_grads(x.astype(np.float32), eps=eps.astype(np.float32))
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert g32[k].dtype == np.float32
        np.testing.assert_allclose(g32[k], g64[k], rtol=1e-3, atol=1e-5 * np.abs(g64[k]).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_weights_give_finite_loss_and_gradients(dtype, rng):
    model = minivae.VAE(12, [9], 3, dtype=dtype, seed=0)
    model.params["decoder.out.W"][...] *= 1e4  # logits of order +-1000 and more
    model.params["encoder.head.b"][3:] = 30.0  # sigma = e^15 ... and huge KL
    x = (rng.random((5, 12)) > 0.5).astype(dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grads = model.loss_and_grads(x, eps=np.ones((5, 3), dtype=dtype) * 0.1)
    assert math.isfinite(loss)
    assert all(np.all(np.isfinite(g)) for g in grads.values())


def test_forward_backward_writes_into_given_buffers(rng):
    model = small_model()
    x, eps = batch(rng), rng.standard_normal((5, 3))
    buffer = model.zeros_like_params()
    _, grads = model.forward_backward(x, eps=eps, grads=buffer)
    assert grads is buffer
    _, fresh = model.loss_and_grads(x, eps=eps)
    np.testing.assert_array_equal(buffer.flat, fresh.flat)


def test_params_are_views_into_one_flat_vector():
    model = small_model()
    assert model.params.flat.size == model.num_params == sum(p.size for p in model.params.values())
    model.params.flat[...] = 0.0
    assert all(np.all(p == 0.0) for p in model.params.values())


def test_same_seed_same_weights_on_every_dtype():
    a = minivae.VAE(12, [9], 3, dtype="float64", seed=5)
    b = minivae.VAE(12, [9], 3, dtype="float32", seed=5)
    np.testing.assert_allclose(a.params.flat, b.params.flat, rtol=1e-7)
    # PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(a.params["encoder.0.W"]).max() <= 1 / math.sqrt(12)


def test_backend_parity(backend, rng):
    """Same parameters, same eps: every backend computes the same loss and gradients."""
    x, eps = batch(rng), rng.standard_normal((2, 5, 3))
    reference = small_model()
    model = small_model(backend=backend.name)
    loss_ref, grads_ref = reference.loss_and_grads(x, eps=eps)
    loss, grads = model.loss_and_grads(backend.to_device(x), eps=backend.to_device(eps))
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for k in grads_ref:
        np.testing.assert_allclose(minivae.to_numpy(grads[k]), grads_ref[k], rtol=1e-10, atol=1e-14)
    assert backend.is_native(model.sample(2))


def test_gradcheck_runs_on_every_backend(backend, rng):
    model = small_model(backend=backend.name)
    x = backend.to_device(batch(rng))
    report = minivae.check_model_gradients(model, x, n_samples=2)
    assert report.max_error < TOL


@pytest.mark.skipif(not cupy_gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_matches_numpy_in_float32(rng):
    x, eps = batch(rng).astype(np.float32), rng.standard_normal((1, 5, 3)).astype(np.float32)
    cpu, gpu = small_model(dtype="float32"), small_model(dtype="float32", backend="cupy")
    loss_cpu, grads_cpu = cpu.loss_and_grads(x, eps=eps)
    loss_gpu, grads_gpu = gpu.loss_and_grads(gpu.backend.to_device(x), eps=gpu.backend.to_device(eps))
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-5)
    for k in grads_cpu:
        np.testing.assert_allclose(minivae.to_numpy(grads_gpu[k]), grads_cpu[k], rtol=1e-4, atol=1e-6)


def test_encoder_backward_gives_the_encoder_part_of_the_gradient(rng):
    """Feeding the loss's own head gradients back through encoder_backward reproduces the encoder
    gradients of loss_and_grads (the decoder's are zero)."""
    model = small_model()
    x, eps = batch(rng), rng.standard_normal((1, 5, 3))
    _, grads = model.loss_and_grads(x, eps=eps)
    # dL/dmu and dL/dlogvar from the replay: finite differences of the loss in the head's bias
    # would be indirect; instead use the model's own backward pieces
    forward = model._forward(x, eps)
    encoder_cache, reparameterize_cache, decoder_cache, nll_cache, kl_cache = forward.caches
    scratch = model.zeros_like_params()
    dout = model._reconstruction_nll_backward(np.full((1, 5), 1 / 5), nll_cache, scratch)
    dz = model._decoder_backward(dout.reshape(5, 12), decoder_cache, scratch)
    from minivae.ops.latent import kl_standard_normal_backward, reparameterize_backward
    dmu, dlogvar = reparameterize_backward(dz.reshape(1, 5, 3), reparameterize_cache)
    dmu_kl, dlogvar_kl = kl_standard_normal_backward(np.full(5, 1 / 5), kl_cache)
    encoder_grads = model.encoder_backward(x, dmu + dmu_kl, dlogvar + dlogvar_kl)
    for name in grads:
        expected = grads[name] if name.startswith("encoder.") else np.zeros_like(grads[name])
        np.testing.assert_allclose(encoder_grads[name], expected, rtol=1e-12, atol=1e-15)


LIKELIHOOD_OPTIONS = [("bernoulli", {}), ("gaussian", {"decoder_variance": 1.0}),
                      ("gaussian", {"decoder_variance": "learned"})]


def with_learned_variance_away_from_zero(model, rng):
    """A learned log-variance that is not 0 everywhere, so that it takes part in the check."""
    if model.decoder_variance == "learned" and model.likelihood == "gaussian":
        model.params["decoder.logvar"][...] = model.backend.to_device(rng.uniform(-1.0, 1.0, model.input_dim))
    return model


@pytest.mark.parametrize("likelihood,options", LIKELIHOOD_OPTIONS)
def test_log_likelihood_z_gradient_matches_central_differences(likelihood, options, rng):
    """grad_z log p(x|z) of log_likelihood_and_grad against the 4th-order central difference of
    log_likelihood, for z with a leading sample axis (L, N, K) and a random upstream gradient."""
    model = with_learned_variance_away_from_zero(small_model(likelihood, **options), rng)
    x, z = batch(rng, likelihood), rng.standard_normal((2, 5, 3))
    dout = rng.standard_normal((2, 5))
    log_px, dz = model.log_likelihood_and_grad(x, z)
    assert log_px.shape == (2, 5) and dz.shape == (2, 5, 3)
    np.testing.assert_array_equal(log_px, model.log_likelihood(x, z))
    numeric = minivae.numeric_gradient(lambda v: model.log_likelihood(x, v), z.copy(), dout=dout)
    assert relative_error(dout[..., None] * dz, numeric) < 1e-8


@pytest.mark.parametrize("likelihood,options", LIKELIHOOD_OPTIONS)
def test_log_likelihood_is_minus_the_reconstruction_term(likelihood, options, backend, rng):
    """With the same eps, log p(x|z) at z = mu + sigma eps is minus what forward_backward averages
    into its reconstruction term, and with the closed-form KL gives the per-example ELBO."""
    model = with_learned_variance_away_from_zero(small_model(likelihood, backend=backend.name, **options), rng)
    x = backend.to_device(batch(rng, likelihood))
    eps = backend.to_device(rng.standard_normal((3, 5, 3)))
    mu, logvar = model.encode(x)
    z, _ = reparameterize(mu, logvar, eps)
    log_px = model.log_likelihood(x, z)                                       # (L, N)
    terms, _ = model.forward_backward(x, eps=eps, need_grads=False)
    assert float(-log_px.mean()) == pytest.approx(float(terms.reconstruction), rel=1e-14)
    kl, _ = kl_standard_normal(mu, logvar)
    np.testing.assert_allclose(minivae.to_numpy(log_px.mean(axis=0) - kl),
                               minivae.to_numpy(model.elbo_per_example(x, eps=eps)), rtol=1e-14)
