"""The inference gap, split (Cremer, Li & Duvenaud 2018): approximation against amortization.

For one x, the gap log p(x) - ELBO(q_encoder) has two causes:

    log p(x) - ELBO(q_enc) = [log p(x) - ELBO(q*)]  +  [ELBO(q*) - ELBO(q_enc)]
                              approximation gap        amortization gap

where q* = argmax over *all* diagonal Gaussians q of ELBO(q) for this x: the best the Gaussian
family can do (the approximation gap is KL(q* || p(z|x)) >= 0), while the encoder, one network for
every x, may not find it (the amortization gap >= 0, as q* maximizes the ELBO).

q* is found per example by gradient ascent (Adam, :class:`minivae.Adam`) on (mu, logvar), started
at the encoder's q, with the hand-written gradients of the model: the reparameterization gradient
of E_q[log p(x|z)] (:meth:`minivae.VAE.log_likelihood_and_grad` through
:func:`minivae.ops.latent.reparameterize_backward`) and the closed-form KL's
(:func:`minivae.ops.latent.kl_standard_normal_backward`). The expectation over eps ~ N(0, I) is a
tensor-product Gauss-Hermite rule (n^2 nodes for a 2-D latent), not Monte Carlo: the objective is
deterministic and smooth, so the ascent converges instead of jittering. The three ELBOs and
log p(x) are then computed on the same latent grid (:mod:`minivae.study.posterior`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from minivae._types import Array
from minivae.backend import to_numpy
from minivae.model import VAE
from minivae.ops.latent import kl_standard_normal, kl_standard_normal_backward, reparameterize, reparameterize_backward
from minivae.optim import Adam
from minivae.params import Parameters
from minivae.study.posterior import LatentGrid, gaussian_elbo, latent_grid, log_marginal_likelihood


def gauss_hermite_nodes(model: VAE, n: int = 16) -> Tuple[Array, Array]:
    """A tensor-product Gauss-Hermite rule for E_{eps ~ N(0, I_K)}[f(eps)] ~ sum_g w_g f(eps_g):
    eps (n^K, 1, K) and w (n^K,) on the model's device (exact for polynomials of degree < 2n in
    each coordinate). The nodes are computed on the host once (constants, not data)."""
    t, w = np.polynomial.hermite_e.hermegauss(int(n))        # weight exp(-t^2 / 2)
    w = w / math.sqrt(2.0 * math.pi)
    K = model.latent_dim
    grids = np.meshgrid(*([t] * K), indexing="ij")
    weights = np.ones(grids[0].shape)
    for axis in np.meshgrid(*([w] * K), indexing="ij"):
        weights = weights * axis
    eps = np.stack([g.ravel() for g in grids], axis=-1)[:, None, :]
    return (model.backend.to_device(eps, dtype=model.dtype),
            model.backend.to_device(weights.ravel(), dtype=model.dtype))


def elbo_and_grad(model: VAE, x: Array, mu: Array, logvar: Array, eps: Array,
                  weights: Array) -> Tuple[Array, Array, Array]:
    """ELBO(mu, logvar) = sum_g w_g log p(x | mu + sigma eps_g) - KL(q || p(z)) per example, and its
    gradients with respect to mu and logvar (the reparameterization trick, hand-written backwards).

    Shapes: x (N, D), mu and logvar (N, K), eps (G, 1, K) or (G, N, K), weights (G,)
    -> elbo (N,), dmu (N, K), dlogvar (N, K).
    """
    z, cache = reparameterize(mu, logvar, eps)                         # (G, N, K)
    log_likelihood, dz = model.log_likelihood_and_grad(x, z)           # (G, N), (G, N, K)
    expected = (weights[:, None] * log_likelihood).sum(axis=0)
    dmu, dlogvar = reparameterize_backward(weights[:, None, None] * dz, cache)
    kl, kl_cache = kl_standard_normal(mu, logvar)
    dmu_kl, dlogvar_kl = kl_standard_normal_backward(model.xp.ones_like(kl), kl_cache)
    return expected - kl, dmu - dmu_kl, dlogvar - dlogvar_kl


def optimal_gaussian(model: VAE, x: Array, mu: Optional[Array] = None, logvar: Optional[Array] = None,
                     steps: int = 1000, lr: float = 0.02, n_quadrature: int = 16) -> Tuple[Array, Array, Array]:
    """The best diagonal Gaussian q*(z) = N(mu*, diag(exp(logvar*))) for each example of x (N, D):
    Adam ascent on the ELBO from (mu, logvar) (default: the encoder's q), ``steps`` steps with a
    learning rate decayed linearly to lr / 10. Each example's ELBO depends only on its own (mu_n,
    logvar_n), so one ascent on the sum optimizes every example at once.

    Returns (mu*, logvar*, elbo) with the quadrature ELBO at q* (N,)."""
    if mu is None or logvar is None:
        mu, logvar = model.encode(x)
    xp = model.xp
    N, K = mu.shape
    eps, weights = gauss_hermite_nodes(model, n_quadrature)
    shapes = {"mu": (N, K), "logvar": (N, K)}
    q = Parameters(xp.concatenate([mu.ravel(), logvar.ravel()]).astype(model.dtype), shapes)
    grads = Parameters(xp.zeros_like(q.flat), shapes)
    optimizer = Adam(q, lr=lr, backend=model.backend)
    for step in range(int(steps)):
        optimizer.lr = lr * (1.0 - 0.9 * step / max(1, int(steps) - 1))
        _, dmu, dlogvar = elbo_and_grad(model, x, q["mu"], q["logvar"], eps, weights)
        grads["mu"][...] = -dmu                                        # the optimizer minimizes
        grads["logvar"][...] = -dlogvar
        optimizer.step(grads)
    elbo, _, _ = elbo_and_grad(model, x, q["mu"], q["logvar"], eps, weights)
    return q["mu"].copy(), q["logvar"].copy(), elbo


@dataclass
class InferenceGap:
    """log p(x) - ELBO(q_encoder) = approximation gap + amortization gap, per example, in nats.

    log_px, elbo_encoder, elbo_optimal: by the grid; approximation = log_px - elbo_optimal (>= 0);
    amortization = elbo_optimal - elbo_encoder (>= 0); mu_optimal, logvar_optimal (N, 2): q*;
    q_mass_optimal: q*'s mass on the grid (1 when the box covers it). All (N,) device arrays
    except the q* parameters.
    """
    log_px: Array
    elbo_encoder: Array
    elbo_optimal: Array
    approximation: Array
    amortization: Array
    mu_optimal: Array
    logvar_optimal: Array
    q_mass_optimal: Array

    def as_floats(self) -> dict:
        """Host copies of the (N,) fields: ``{field: list of floats}``."""
        return {name: [float(v) for v in to_numpy(getattr(self, name))]
                for name in ("log_px", "elbo_encoder", "elbo_optimal", "approximation", "amortization",
                             "q_mass_optimal")}


def inference_gap(model: VAE, x: Array, grid: Optional[LatentGrid] = None, steps: int = 1000,
                  lr: float = 0.02, n_quadrature: int = 16, **grid_options) -> InferenceGap:
    """Split log p(x) - ELBO(q_encoder) for each example of x (N, D) of a 2-D latent model.

    ``grid`` (:func:`minivae.study.posterior.latent_grid`, built with ``grid_options`` when not
    given) gives log p(x) and every ELBO; q* comes from :func:`optimal_gaussian`.
    """
    grid = latent_grid(model, x, **grid_options) if grid is None else grid
    log_px = log_marginal_likelihood(grid)
    elbo_encoder, _ = gaussian_elbo(grid, grid.mu, grid.logvar)
    mu, logvar, _ = optimal_gaussian(model, x, grid.mu, grid.logvar, steps, lr, n_quadrature)
    elbo_optimal, mass = gaussian_elbo(grid, mu, logvar)
    return InferenceGap(log_px, elbo_encoder, elbo_optimal, log_px - elbo_optimal, elbo_optimal - elbo_encoder,
                        mu, logvar, mass)
