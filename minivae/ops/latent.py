"""The latent side: q(z|x) = N(mu, diag(sigma^2)) with sigma = exp(logvar / 2), and p(z) = N(0, I).

The reparameterization trick, the closed-form KL to the prior, and the diagonal-Gaussian
log-density, each with its backward. ``eps`` is always an argument so that gradient checks, parity
tests and reproductions can fix the noise.
"""
from __future__ import annotations

from minivae.backend import get_array_module
from minivae.ops.numerics import LOG_2PI


def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps with sigma = exp(logvar / 2)   (not sigma^2 * eps).

    ``eps ~ N(0, I)`` may carry leading Monte Carlo axes: eps (..., N, K) broadcasts against
    mu, logvar (N, K) and gives z (..., N, K).
    """
    sigma = get_array_module(mu, logvar).exp(0.5 * logvar)
    return mu + sigma * eps, (sigma, eps)


def reparameterize_backward(dz, cache):
    """dmu = sum_samples dz;  dlogvar = sum_samples dz * eps * sigma / 2.

    From dz/dmu = 1 and dz/dlogvar = d(exp(logvar/2) eps)/dlogvar = sigma * eps / 2; the sum runs
    over the leading Monte Carlo axes that the forward broadcast. Shapes: dz (..., N, K) -> (N, K) x2.
    """
    sigma, eps = cache
    dmu = dz
    dsigma_eps = dz * eps
    while dmu.ndim > sigma.ndim:
        dmu = dmu.sum(axis=0)
        dsigma_eps = dsigma_eps.sum(axis=0)
    return dmu, 0.5 * sigma * dsigma_eps


def kl_standard_normal(mu, logvar):
    """KL( N(mu, diag(exp(logvar))) || N(0, I) ) = 1/2 sum_j (mu_j^2 + exp(logvar_j) - logvar_j - 1).

    Shapes: mu, logvar (N, K) -> kl (N,), in nats.
    """
    variance = get_array_module(mu, logvar).exp(logvar)
    kl = 0.5 * (mu * mu + variance - logvar - 1.0).sum(axis=-1)
    return kl, (mu, variance)


def kl_standard_normal_backward(dkl, cache):
    """dmu = dkl * mu;  dlogvar = dkl * (exp(logvar) - 1) / 2.   Shapes: dkl (N,) -> (N, K) x2."""
    mu, variance = cache
    dkl = dkl[..., None]
    return dkl * mu, 0.5 * dkl * (variance - 1.0)


def kl_per_dimension(mu, logvar):
    """The KL of each latent dimension, averaged over the batch: (N, K) -> (K,).

    Dimensions with KL near zero are "inactive": q(z_j | x) equals the prior for every x.
    """
    xp = get_array_module(mu, logvar)
    return (0.5 * (mu * mu + xp.exp(logvar) - logvar - 1.0)).mean(axis=0)


def log_normal(z, mu, logvar):
    """log N(z | mu, diag(exp(logvar))) summed over the last axis.

    = -1/2 sum_j [ (z_j - mu_j)^2 exp(-logvar_j) + logvar_j + log(2 pi) ].
    Shapes: z (..., N, K), mu and logvar broadcastable -> (..., N).
    """
    xp = get_array_module(z, mu)
    residual = z - mu
    precision = xp.exp(-logvar)
    return -0.5 * (residual * residual * precision + logvar + LOG_2PI).sum(axis=-1), (residual, precision)


def log_normal_backward(dlogq, cache):
    """Gradients of log N(z | mu, sigma^2) with z held fixed (the score):

    d/dmu = (z - mu) / sigma^2,   d/dlogvar = ((z - mu)^2 / sigma^2 - 1) / 2.
    Shapes: dlogq (..., N) -> dmu, dlogvar (..., N, K) (not summed over the leading axes).
    """
    residual, precision = cache
    dlogq = dlogq[..., None]
    scaled = residual * precision
    return dlogq * scaled, 0.5 * dlogq * (residual * scaled - 1.0)


def log_standard_normal(z):
    """log N(z | 0, I) summed over the last axis: -1/2 sum_j (z_j^2 + log 2 pi). (..., K) -> (...)."""
    return -0.5 * (z * z + LOG_2PI).sum(axis=-1)
