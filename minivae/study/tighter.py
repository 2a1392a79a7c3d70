"""Why tighter bounds can hurt the encoder: the signal-to-noise ratio of IWAE gradient estimates.

Rainforth et al. (2018, "Tighter variational bounds are not necessarily better") show that for the
importance-weighted bound IWAE_k the *encoder's* gradient estimate gets worse as k grows: its
expectation shrinks like 1/k while its standard deviation shrinks only like 1/sqrt(k), so

    SNR_p(k) = |E[g_p]| / sd(g_p)  ~  1 / sqrt(k)          (encoder, full reparameterization)
    SNR_p(k)                       ~  sqrt(k)              (decoder)

The doubly reparameterized estimator (DReG, Tucker et al. 2019) removes the score term whose
variance does not fall with k: its encoder SNR grows with k like the decoder's. "Sticking the
landing" (STL) drops the same term without the correction, so it is biased for k > 1.

:func:`gradient_snr` measures SNR_p for every parameter p from ``n_repeats`` independent
estimates at a fixed model and data, each one call of :meth:`minivae.VAE.iwae_forward_backward`
(the training step's own gradient, nothing re-derived here), and summarises each network by the
median over its parameters. :func:`log_log_slope` fits the exponent: SNR ~ k^slope.

Everything stays on the model's device; only the summaries are read on the host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from minivae._types import Array
from minivae.backend import Random, to_numpy
from minivae.model import IWAE_ESTIMATORS, VAE
from minivae.validation import check_layout

NETWORKS = ("encoder", "decoder")


@dataclass
class SNRStatistics:
    """The statistics of R estimates g_r of one estimator at one k, per parameter (P,) on the device.

    mean: (1/R) sum_r g_r;  std: the sample standard deviation;  snr: |mean| / std (NaN where std = 0);
    median_snr: {"encoder": float, "decoder": float}, the median of snr over each network's
    parameters (those with std > 0);
    network_snr: {"encoder": float, "decoder": float}, the SNR of the network's gradient as one
    vector, ||E g|| / sqrt(sum_p Var g_p), with ||E g||^2 estimated without its noise bias as
    ||mean||^2 - sum_p Var g_p / R (a mean of R draws has that much squared norm from noise alone).
    """
    estimator: str
    k: int
    n_repeats: int
    mean: Array
    std: Array
    snr: Array
    median_snr: Dict[str, float]
    network_snr: Dict[str, float]


def gradient_estimates(model: VAE, x: Array, k: int, estimator: str, n_repeats: int,
                       random: Optional[Random] = None) -> Array:
    """``n_repeats`` independent estimates of the gradient of -IWAE_k on x (N, D): (R, P), each the
    flat gradient of one :meth:`minivae.VAE.iwae_forward_backward` call with fresh eps (k, N, K)."""
    check_layout(x, model)
    random = model.random if random is None else random
    xp = model.xp
    estimates = xp.empty((int(n_repeats), model.flat_params.size), dtype=model.dtype)
    grads = model.zeros_like_params()
    for r in range(int(n_repeats)):
        eps = random.normal((int(k), x.shape[0], model.latent_dim), model.dtype)
        model.iwae_forward_backward(x, eps, estimator=estimator, grads=grads)
        estimates[r] = grads.flat
    return estimates


def snr_statistics(model: VAE, estimates: Array, estimator: str, k: int) -> SNRStatistics:
    """Mean, standard deviation and SNR per parameter of estimates (R, P); medians per network."""
    xp = model.xp
    mean = estimates.mean(axis=0)
    std = estimates.std(axis=0, ddof=1)
    positive = std > 0.0
    snr = xp.where(positive, xp.abs(mean) / xp.where(positive, std, 1.0), math.nan)
    snr_host = to_numpy(snr)
    R = estimates.shape[0]
    medians, networks = {}, {}
    for network in NETWORKS:
        lo, hi = model.params.range(network)
        values = snr_host[lo:hi]
        values = values[np.isfinite(values)]
        medians[network] = float(np.median(values)) if values.size else math.nan
        total_variance = float((std[lo:hi] ** 2).sum())
        signal = float((mean[lo:hi] ** 2).sum()) - total_variance / R
        networks[network] = (math.sqrt(max(signal, 0.0) / total_variance) if total_variance > 0.0
                             else math.nan)
    return SNRStatistics(estimator, int(k), int(R), mean, std, snr, medians, networks)


def gradient_snr(model: VAE, x: Array, ks: Sequence[int] = (1, 3, 10, 30, 100, 300, 1000),
                 estimators: Sequence[str] = IWAE_ESTIMATORS, n_repeats: int = 500,
                 seed: int = 0) -> Dict[Tuple[str, int], SNRStatistics]:
    """SNR of the gradient of -IWAE_k for every (estimator, k): ``{(estimator, k): SNRStatistics}``.

    The estimators share their noise (at each k, every estimator's generator is seeded with
    ``seed + k``, so they see the same eps: common random numbers), so their differences are not
    sampling noise of the comparison.
    """
    for estimator in estimators:
        if estimator not in IWAE_ESTIMATORS:
            raise ValueError(f"unknown IWAE estimator {estimator!r}; choose one of {IWAE_ESTIMATORS}")
    results = {}
    for k in ks:
        for estimator in estimators:
            random = model.backend.random(int(seed) + int(k))
            results[(estimator, int(k))] = snr_statistics(
                model, gradient_estimates(model, x, k, estimator, n_repeats, random), estimator, k)
    return results


def log_log_slope(ks: Sequence[int], values: Sequence[float]) -> float:
    """The least-squares slope of log(values) against log(ks): values ~ k^slope."""
    log_k, log_v = np.log(np.asarray(ks, dtype=np.float64)), np.log(np.asarray(values, dtype=np.float64))
    return float(np.polyfit(log_k, log_v, 1)[0])
