"""Evaluation: the held-out -ELBO, the chunked and stable IWAE bound against a one-shot
log-sum-exp, and the latent statistics."""
import math

import numpy as np
import pytest
from scipy.special import logsumexp

import minivae
from minivae import VAE, to_numpy
from minivae.training.evaluate import heldout_elbo, iwae_bound, iwae_chunks, latent_statistics


class RecordingRandom:
    """A Random that remembers every normal draw (to rebuild the noise an evaluation used)."""

    def __init__(self, random):
        self.random, self.draws = random, []

    def normal(self, shape, dtype, out=None):
        sample = self.random.normal(shape, dtype)
        self.draws.append(to_numpy(sample).copy())
        return sample


def toy(backend, n=30, D=10, K=3, dtype="float64", likelihood="bernoulli", seed=0):
    model = VAE(D, [8], K, backend=backend, dtype=dtype, seed=seed, likelihood=likelihood)
    x = (np.random.default_rng(seed).random((n, D)) < 0.4).astype(dtype)
    return model, backend.to_device(x)


def test_heldout_elbo_is_the_mean_of_per_example_elbos(backend):
    model, x = toy(backend, n=23)
    recording = RecordingRandom(backend.random(5))
    result = heldout_elbo(model, x, batch_size=10, random=recording)
    assert [d.shape for d in recording.draws] == [(1, 10, 3), (1, 10, 3), (1, 3, 3)]
    eps = backend.to_device(np.concatenate(recording.draws, axis=1))
    expected = -to_numpy(model.elbo_per_example(x, eps=eps)).mean()
    assert result["neg_elbo"] == pytest.approx(expected, rel=1e-12)
    assert result["neg_elbo"] == pytest.approx(result["reconstruction"] + result["kl"], rel=1e-12)
    # the KL is in closed form: independent of the noise
    assert heldout_elbo(model, x, random=backend.random(6))["kl"] == pytest.approx(result["kl"], rel=1e-12)


@pytest.mark.parametrize("k, batch_rows", [(1, 7), (7, 1000), (50, 16), (50, 130)])
def test_iwae_matches_a_one_shot_logsumexp(backend, k, batch_rows):
    """Chunked over examples and samples, the bound equals log mean_k w computed in one go."""
    model, x = toy(backend, n=11)
    recording = RecordingRandom(backend.random(1))
    result = iwae_bound(model, x, k=k, batch_rows=batch_rows, random=recording, progress=False)
    examples, samples = iwae_chunks(11, k, batch_rows)
    draws = iter(recording.draws)
    log_w = np.empty((k, 11))
    for start in range(0, 11, examples):
        for first in range(0, k, samples):
            eps = next(draws)
            xb = x[start:start + eps.shape[1]]
            log_w[first:first + eps.shape[0], start:start + eps.shape[1]] = to_numpy(
                model.log_importance_weights(xb, backend.to_device(eps)))
    assert next(draws, None) is None
    np.testing.assert_allclose(result.log_px, logsumexp(log_w, axis=0) - math.log(k), rtol=1e-12)
    np.testing.assert_allclose(result.elbo, log_w.mean(axis=0), rtol=1e-12)
    assert np.all(result.log_px >= result.elbo - 1e-12)     # Jensen: log mean w >= mean log w
    assert result.neg_log_px == pytest.approx(-result.log_px.mean())
    assert result.as_dict()["k"] == k and result.as_dict()["n"] == 11


def test_iwae_is_stable_where_exp_underflows(backend):
    """log w around -1e5 (a Gaussian decoder far from the data): exp(log w) is 0 in float64, the
    chunked log-sum-exp is still exact."""
    model, _ = toy(backend, n=4, likelihood="gaussian", dtype="float32")
    x = backend.to_device(np.full((4, 10), 300.0, dtype=np.float32))
    recording = RecordingRandom(backend.random(2))
    result = iwae_bound(model, x, k=40, batch_rows=30, random=recording, progress=False)
    assert [d.shape[0] for d in recording.draws] == [30, 10] * 4     # one example at a time
    assert np.all(np.isfinite(result.log_px)) and result.log_px.max() < -1e5
    assert np.exp(result.log_px).max() == 0.0
    for n in range(4):
        eps = backend.to_device(np.concatenate(recording.draws[2 * n:2 * n + 2], axis=0))
        log_w = to_numpy(model.log_importance_weights(x[n:n + 1], eps)).astype(np.float64)
        assert result.log_px[n] == pytest.approx(logsumexp(log_w) - math.log(40), rel=1e-7)


def test_iwae_tightens_with_k(backend):
    model, x = toy(backend, n=200, seed=3)
    model.params["encoder.head.b"][...] = 1.0      # q(z|x) far from the posterior: a large gap to close
    bounds = [iwae_bound(model, x, k=k, seed=0, progress=False).neg_log_px for k in (1, 10, 100)]
    assert bounds[0] > bounds[1] > bounds[2]


def test_iwae_chunks_cover_every_sample():
    for n, k, rows in [(10000, 5000, 4096), (10000, 100, 4096), (5, 3, 1000), (7, 1, 1), (3, 10, 4)]:
        examples, samples = iwae_chunks(n, k, rows)
        assert 1 <= examples <= n and 1 <= samples <= k
        assert examples * samples <= max(rows, 1) or (examples == 1 and samples == 1)
    assert iwae_chunks(10000, 5000, 4096) == (1, 4096)
    assert iwae_chunks(10000, 100, 4096) == (40, 100)


def test_iwae_shows_progress(capsys):
    model, x = toy(minivae.get_backend("numpy"), n=6)
    iwae_bound(model, x, k=5, progress=True, desc="IWAE test")
    assert "IWAE test" in capsys.readouterr().err
    with pytest.raises(ValueError, match="k must be a positive integer"):
        iwae_bound(model, x, k=0)


def test_latent_statistics_find_inactive_units(backend):
    model, x = toy(backend, n=50, K=4)
    K = 4
    # make dimension 2 inactive: mu_2 = 0 and logvar_2 = 0 for every x, i.e. q(z_2 | x) = N(0, 1)
    for j in (2, K + 2):
        model.params["encoder.head.W"][:, j] = 0.0
        model.params["encoder.head.b"][j] = 0.0
    stats = latent_statistics(model, x, batch_size=16)
    assert len(stats["kl_per_dim"]) == K and stats["kl_per_dim"][2] == pytest.approx(0.0, abs=1e-12)
    assert stats["mu_variance"][2] == pytest.approx(0.0, abs=1e-12)
    expected = int((np.array(stats["mu_variance"]) > 0.01).sum())
    assert stats["active_units"] == expected and stats["active_units"] <= 3
    mu, logvar = (to_numpy(a) for a in model.encode(x))
    np.testing.assert_allclose(stats["mu_variance"], mu.var(axis=0), rtol=1e-9, atol=1e-12)
    assert sum(stats["kl_per_dim"]) == pytest.approx(heldout_elbo(model, x)["kl"], rel=1e-10)
