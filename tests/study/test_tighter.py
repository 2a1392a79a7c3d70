"""Rainforth et al. (2018) on one small model: as k grows, the SNR of the encoder's gradient of
-IWAE_k falls like 1/sqrt(k) with the reparameterization gradient and does not with DReG; the
decoder's rises like sqrt(k). Fixed seeds; thresholds far from the measured slopes (about -0.5,
+0.45 and +0.55 at R = 300; see docs/study.md)."""
import numpy as np
import pytest

import minivae
from minivae.study import tighter

KS = (1, 3, 10, 30)


def measure():
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.5, 6.5, size=(16, 2))
    i, j = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    d2 = (i[None] - centres[:, 0, None, None]) ** 2 + (j[None] - centres[:, 1, None, None]) ** 2
    x = (rng.random((16, 64)) < np.exp(-d2 / 2.0).reshape(16, 64)).astype(np.float64)
    model = minivae.VAE(64, [32], 2, activation="tanh", dtype="float64", seed=0)
    return tighter.gradient_snr(model, model.backend.to_device(x), KS, n_repeats=300, seed=1)


@pytest.fixture(scope="module")
def results():
    return measure()


def slope(results, estimator, network):
    return tighter.log_log_slope(KS, [results[(estimator, k)].network_snr[network] for k in KS])


def test_encoder_snr_falls_as_one_over_sqrt_k_for_plain_iwae(results):
    assert slope(results, "reparam", "encoder") < -0.3


def test_encoder_snr_does_not_fall_for_dreg(results):
    assert slope(results, "dreg", "encoder") > 0.15
    for k in KS:                                         # and DReG beats IWAE at every k
        assert results[("dreg", k)].network_snr["encoder"] > 2 * results[("reparam", k)].network_snr["encoder"]


def test_decoder_snr_rises_with_k(results):
    assert slope(results, "reparam", "decoder") > 0.3
    for k in KS:   # the decoder's estimate is the same for every estimator (common random numbers)
        np.testing.assert_array_equal(minivae.to_numpy(results[("dreg", k)].mean)[-100:],
                                      minivae.to_numpy(results[("reparam", k)].mean)[-100:])


def test_the_statistics_are_those_of_the_estimates():
    model = minivae.VAE(6, [4], 2, dtype="float64", seed=0)
    x = model.backend.to_device(np.random.default_rng(1).random((2, 6)))
    estimates = tighter.gradient_estimates(model, x, 3, "dreg", 50, model.backend.random(2))
    stats = tighter.snr_statistics(model, estimates, "dreg", 3)
    e = minivae.to_numpy(estimates)
    with np.errstate(invalid="ignore"):          # parameters without gradient: 0 / 0 -> NaN, both sides
        np.testing.assert_allclose(minivae.to_numpy(stats.snr), np.abs(e.mean(0)) / e.std(0, ddof=1))
    lo, hi = model.params.range("encoder")
    signal = (e.mean(0)[lo:hi] ** 2).sum() - e.var(0, ddof=1)[lo:hi].sum() / 50
    assert stats.network_snr["encoder"] == pytest.approx(np.sqrt(max(signal, 0) / e.var(0, ddof=1)[lo:hi].sum()))
    assert tighter.log_log_slope([1, 10, 100], [1.0, 0.1, 0.01]) == pytest.approx(-1.0)
