"""Evaluation: the held-out negative ELBO, the importance-weighted bound on log p(x), latent statistics.

All three run batched on the model's device, accumulate there, and copy to the host once at the
end. Noise comes from a :class:`minivae.backend.Random` passed in (or seeded here), never from
``model.random``, so evaluating does not change the training noise.

Importance-weighted bound (Burda, Grosse & Salakhutdinov, 2016), in nats:

    log p(x) >= IWAE_k(x) = E[ log (1/k) sum_i w_i ],   w_i = p(x | z_i) p(z) / q(z_i | x),
    z_i ~ q(z | x) i.i.d.;  IWAE_1 = ELBO, and IWAE_k increases to log p(x) as k grows.

The log-mean-exp over k is computed stably and in chunks: with running max m and running sum
s = sum_i exp(log w_i - m), a new chunk c gives m' = max(m, max c) and
s' = s exp(m - m') + sum exp(c - m') (:func:`minivae.ops.numerics.logsumexp_update`); finally
IWAE_k = m + log s - log k (float64 accumulation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from minivae.backend import to_numpy
from minivae.fast.iwae import FusedIWAE, iwae_unsupported_reason
from minivae.ops.latent import kl_per_dimension
from minivae.ops.numerics import logsumexp_update, logsumexp_value
from minivae.validation import check_count, check_layout

ACTIVE_UNIT_THRESHOLD = 1e-2   # Burda et al.: unit j is active when Var_x E_q[z_j | x] > 0.01


def _random(model, random, seed):
    return random if random is not None else model.backend.random(seed)


def _progress_bar(progress, **kwargs):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(**kwargs)


def heldout_elbo(model, x, batch_size=1000, n_samples=1, random=None, seed=0) -> dict:
    """The negative ELBO of ``x (N, D)`` averaged over examples, with z *sampled* (not the mean).

    Returns host floats ``{"neg_elbo", "reconstruction", "kl"}`` in nats per example
    (``neg_elbo = reconstruction + kl``, beta = 1), each the mean over the N examples of a
    ``n_samples``-sample Monte Carlo estimate.
    """
    check_layout(x, model)
    batch_size, n_samples = check_count(batch_size, "batch_size"), check_count(n_samples, "n_samples")
    random = _random(model, random, seed)
    N = x.shape[0]
    reconstruction_sum = kl_sum = 0.0
    for start in range(0, N, batch_size):
        xb = x[start:start + batch_size]
        eps = random.normal((n_samples, xb.shape[0], model.latent_dim), model.dtype)
        terms = model.loss_terms(xb, eps=eps)
        reconstruction_sum = reconstruction_sum + terms.reconstruction * xb.shape[0]
        kl_sum = kl_sum + terms.kl * xb.shape[0]
    reconstruction, kl = float(reconstruction_sum) / N, float(kl_sum) / N
    return {"neg_elbo": reconstruction + kl, "reconstruction": reconstruction, "kl": kl}


@dataclass
class IWAEResult:
    """Per-example results of :func:`iwae_bound`, on the host (float64, nats)."""
    k: int
    log_px: np.ndarray     # (N,) IWAE_k(x_n), a lower bound on log p(x_n)
    elbo: np.ndarray       # (N,) mean_i log w_i: the k-sample estimate of the ELBO
    seconds: float

    @property
    def neg_log_px(self) -> float:
        """-IWAE_k averaged over examples: the reported "-log p(x) <=" number, in nats."""
        return -float(self.log_px.mean())

    @property
    def neg_elbo(self) -> float:
        return -float(self.elbo.mean())

    def as_dict(self) -> dict:
        return {"k": self.k, "n": int(self.log_px.size), "neg_log_px": self.neg_log_px,
                "neg_elbo": self.neg_elbo, "std_error": float(self.log_px.std() / math.sqrt(self.log_px.size)),
                "seconds": self.seconds}


def iwae_chunks(n_examples, k, batch_rows):
    """How to cut N examples x k samples into calls of at most ``batch_rows`` rows:
    ``(examples per call, samples per call)``. Many examples share a call when k is small; one
    example's k samples are split over several calls when k exceeds ``batch_rows``."""
    examples = max(1, min(n_examples, batch_rows // k))
    samples = min(k, max(1, batch_rows // examples))
    return examples, samples


def iwae_bound(model, x, k=5000, batch_rows=None, random=None, seed=0, progress=True,
               desc=None, fused=True, threads="auto") -> IWAEResult:
    """IWAE_k for each row of ``x (N, D)``: a lower bound on log p(x) that tightens as k grows.

    Works through ``N k`` decoder passes in calls of ``batch_rows`` rows (default: the backend's
    ``default_batch_rows``, 8,192 on the CPU, 65,536 on a GPU); shows a progress bar over the
    samples when ``progress``. The noise is seeded (``seed`` or ``random``), so a result is
    reproducible for a given ``batch_rows``.

    The log-weights of a call come from :class:`minivae.fast.iwae.FusedIWAE` (encoder once per
    call, the decoder in preallocated blocks with fused passes; ``threads`` as there) where it
    supports the model (:func:`minivae.fast.iwae.iwae_unsupported_reason`) and ``fused``; else
    from the reference ``model.log_importance_weights``. Both draw the same noise, so they agree
    to the dtype's rounding.
    """
    k = check_count(k, "k")
    check_layout(x, model)
    xp, N, K = model.xp, x.shape[0], model.latent_dim
    random = _random(model, random, seed)
    batch_rows = model.backend.default_batch_rows if batch_rows is None else check_count(batch_rows, "batch_rows")
    examples_per_call, samples_per_call = iwae_chunks(N, k, batch_rows)
    log_px, elbo = xp.zeros(N, dtype=xp.float64), xp.zeros(N, dtype=xp.float64)
    engine = FusedIWAE(model, threads=threads) if fused and iwae_unsupported_reason(model) is None else None
    noise = {}                                      # (count, n, K) -> its buffer (at most 3 shapes)
    bar = _progress_bar(progress, total=N * k, unit="sample", unit_scale=True,
                        desc=desc or f"IWAE-{k}", smoothing=0.05)
    began = time.perf_counter()
    for start in range(0, N, examples_per_call):
        xb = x[start:start + examples_per_call]
        n = xb.shape[0]
        for first in range(0, k, samples_per_call):
            count = min(samples_per_call, k - first)
            shape = (count, n, K)
            if shape not in noise:                  # drawn into a buffer: no fresh pages per call
                noise[shape] = xp.empty(shape, dtype=model.dtype)
            eps = random.normal(shape, model.dtype, out=noise[shape])
            if engine is not None:
                log_w = engine.log_weights(xb, eps)                                 # (count, n)
            else:
                log_w = model.log_importance_weights(xb, eps).astype(xp.float64)
            if first == 0:
                state, sum_log_w = logsumexp_update(log_w), log_w.sum(axis=0)
            else:
                state, sum_log_w = logsumexp_update(log_w, state), sum_log_w + log_w.sum(axis=0)
            if bar is not None:
                bar.update(count * n)
        log_px[start:start + n] = logsumexp_value(state) - math.log(k)
        elbo[start:start + n] = sum_log_w * (1.0 / k)
    result = IWAEResult(k, to_numpy(log_px), to_numpy(elbo), 0.0)
    result.seconds = time.perf_counter() - began
    if bar is not None:
        bar.close()
    return result


def latent_statistics(model, x, batch_size=1000) -> dict:
    """How much each latent dimension is used, over the examples ``x (N, D)``.

    Returns host values: ``kl_per_dim`` (K,) the mean KL(q(z_j|x) || N(0, 1)) of each dimension
    (they sum to the KL term); ``mu_variance`` (K,) Var_x E_q[z_j | x]; ``active_units``, the number
    of dimensions with ``mu_variance > 0.01`` (Burda et al.'s activity statistic).
    """
    check_layout(x, model)
    batch_size = check_count(batch_size, "batch_size")
    N = x.shape[0]
    kl_sum = mu_sum = mu_square_sum = 0.0
    for start in range(0, N, batch_size):
        xb = x[start:start + batch_size]
        mu, logvar = model.encode(xb)
        kl_sum = kl_sum + kl_per_dimension(mu, logvar) * xb.shape[0]
        mu_sum = mu_sum + mu.astype(model.xp.float64).sum(axis=0)
        mu_square_sum = mu_square_sum + (mu.astype(model.xp.float64) ** 2).sum(axis=0)
    mean = mu_sum * (1.0 / N)
    mu_variance = to_numpy(mu_square_sum * (1.0 / N) - mean * mean)
    kl = to_numpy(kl_sum * (1.0 / N)).astype(np.float64)
    return {"kl_per_dim": kl.tolist(), "mu_variance": mu_variance.tolist(),
            "active_units": int((mu_variance > ACTIVE_UNIT_THRESHOLD).sum())}
