"""The exact ELBO gap for a 2-D latent space: log p(x), the true posterior and KL(q || p(z|x)) on a grid.

With two latent dimensions the marginal likelihood is a 2-D integral that a grid computes to many
digits:

    log p(x)   = log  integral p(x|z) p(z) dz  ~  logsumexp_ij [log p(x|z_ij) + log p(z_ij)] + log dA
    p(z|x)     = p(x|z) p(z) / p(x)                       (the true posterior, on the grid)
    ELBO       = E_q[log p(x|z)] - KL(q(z|x) || p(z))      (grid sum for the first term, closed form KL)
    KL(q || p(z|x)) = sum_ij q(z_ij) [log q(z_ij) - log p(z_ij|x)] dA

and the identity  log p(x) = ELBO + KL(q(z|x) || p(z|x))  holds exactly in the continuum; on the
grid it holds to the quadrature error, which :class:`ElboGap` reports as ``residual``. The grid is
a uniform n x n box per example; the midpoint/trapezoid sum of a smooth function that vanishes at
the box's edges converges faster than any power of the spacing, so a few hundred points per axis
give log p(x) to ~1e-8 nats for a smooth (tanh, softplus) decoder. A ReLU decoder gives a
piecewise-smooth integrand: still ~1e-5 at 400 x 400.

The box is found in two passes: a coarse grid over the prior's box and q's box finds where the
posterior's mass is (log density within ``threshold`` nats of its maximum); the fine grid covers
that region and q's box. ``posterior_edge_mass`` and ``q_mass`` say whether the box was big enough.

The importance-weighted bound IWAE_k = E[log (1/k) sum_k w_k] (Burda et al., 2016), with
w = p(x|z) p(z) / q(z|x) from :meth:`minivae.VAE.log_importance_weights`, rises from the ELBO (k = 1)
towards log p(x) as k grows; :func:`iwae_bound_repeats` estimates it with its standard error, from
repeated k-sample bounds (the held-out evaluation :func:`minivae.iwae_bound` is one k-sample bound
per example, for one large k).

Everything is computed with the model's array module; only the box's corners (a few scalars per
example) are read on the host.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

from minivae._types import Array
from minivae.backend import Random, get_array_module, to_numpy
from minivae.model import VAE
from minivae.ops.latent import kl_standard_normal, log_normal, log_standard_normal
from minivae.ops.numerics import logsumexp  # logsumexp: also importable from here, as before
from minivae.validation import check_count


@dataclass
class LatentGrid:
    """Log-densities of N examples on their n x n latent grids (each example has its own box).

    z1, z2 (N, n): the grid's coordinates along each latent axis; point (i, j) is (z1[i], z2[j]).
    log_cell_area (N,): log(dz1 * dz2).
    mu, logvar (N, 2): q(z|x).
    log_likelihood, log_prior, log_q (N, n, n): log p(x|z), log p(z), log q(z|x) at the grid points.
    """
    z1: Array
    z2: Array
    log_cell_area: Array
    mu: Array
    logvar: Array
    log_likelihood: Array
    log_prior: Array
    log_q: Array

    @property
    def log_joint(self) -> Array:
        """log p(x, z) = log p(x|z) + log p(z), (N, n, n)."""
        return self.log_likelihood + self.log_prior


def _log_densities(model, x_n, mu_n, logvar_n, z1, z2, chunk):
    """log p(x|z), log p(z), log q(z|x) of one example on the grid z1 x z2 (n1, n2) each."""
    xp = model.xp
    n1, n2 = z1.shape[0], z2.shape[0]
    z = xp.stack([xp.broadcast_to(z1[:, None], (n1, n2)), xp.broadcast_to(z2[None, :], (n1, n2))],
                 axis=-1).reshape(n1 * n2, 2)
    log_likelihood = [model.log_likelihood(x_n, z[start:start + chunk, None, :])[:, 0]   # (G, 1, 2) -> (G,)
                      for start in range(0, n1 * n2, chunk)]
    log_likelihood = xp.concatenate(log_likelihood).reshape(n1, n2)
    log_q, _ = log_normal(z[:, None, :], mu_n, logvar_n)                          # (G, 1)
    return log_likelihood, log_standard_normal(z).reshape(n1, n2), log_q[:, 0].reshape(n1, n2)


def latent_grid(model: VAE, x: Array, n_grid: int = 401, prior_width: float = 6.0, q_width: float = 8.0,
                threshold: float = 40.0, n_coarse: int = 81, chunk: int = 32768) -> LatentGrid:
    """Evaluate log p(x|z), log p(z) and log q(z|x) on an n_grid x n_grid box per example.

    Parameters
    ----------
    model : a :class:`minivae.VAE` with ``latent_dim == 2``.
    x : (N, D) batch on the model's backend.
    prior_width : the coarse search box includes [-prior_width, prior_width]^2 (the prior's mass).
    q_width : both boxes include mu +- q_width * sigma (q's mass: 1 - 1e-15 at 8 sigma).
    threshold : the fine box covers every coarse point whose log p(x, z) is within ``threshold``
        nats of the maximum (posterior density ratio e^-40), plus one coarse cell of margin.
    chunk : grid points per decoder call.
    """
    if model.latent_dim != 2:
        raise ValueError(f"the latent grid needs a 2-D latent space, the model has {model.latent_dim}")
    xp = model.xp
    mu, logvar = model.encode(x)                                                   # checks x
    mu_host, sigma_host = to_numpy(mu), to_numpy(xp.exp(0.5 * logvar))
    fields = {"z1": [], "z2": [], "log_cell_area": [], "log_likelihood": [], "log_prior": [], "log_q": []}
    for n in range(x.shape[0]):
        q_low = mu_host[n] - q_width * sigma_host[n]
        q_high = mu_host[n] + q_width * sigma_host[n]
        low = [min(-prior_width, float(v)) for v in q_low]
        high = [max(prior_width, float(v)) for v in q_high]
        # pass 1: where is the posterior's mass? (the box doubles while the mass touches its edge)
        for _ in range(4):
            axes = [xp.linspace(low[a], high[a], n_coarse, dtype=model.dtype) for a in range(2)]
            log_likelihood, log_prior, _ = _log_densities(model, x[n:n + 1], mu[n:n + 1],
                                                          logvar[n:n + 1], *axes, chunk)
            log_joint = to_numpy(log_likelihood + log_prior)
            inside = log_joint >= log_joint.max() - threshold
            hits = [inside.any(axis=1 - a).nonzero()[0] for a in range(2)]
            if all(0 < hit.min() and hit.max() < n_coarse - 1 for hit in hits):
                break
            for a in range(2):
                half = 0.5 * (high[a] - low[a])
                low[a] -= half if hits[a].min() == 0 else 0.0
                high[a] += half if hits[a].max() == n_coarse - 1 else 0.0
        for a, hit in enumerate(hits):
            step = (high[a] - low[a]) / (n_coarse - 1)
            post_low = low[a] + (hit.min() - 1) * step
            post_high = low[a] + (hit.max() + 1) * step
            low[a] = max(low[a], min(post_low, float(q_low[a])))
            high[a] = min(high[a], max(post_high, float(q_high[a])))
        # pass 2: the fine grid
        axes = [xp.linspace(low[a], high[a], n_grid, dtype=model.dtype) for a in range(2)]
        log_likelihood, log_prior, log_q = _log_densities(model, x[n:n + 1], mu[n:n + 1],
                                                          logvar[n:n + 1], *axes, chunk)
        fields["z1"].append(axes[0])
        fields["z2"].append(axes[1])
        fields["log_cell_area"].append(math.log((high[0] - low[0]) / (n_grid - 1))
                                       + math.log((high[1] - low[1]) / (n_grid - 1)))
        fields["log_likelihood"].append(log_likelihood)
        fields["log_prior"].append(log_prior)
        fields["log_q"].append(log_q)
    stacked = {name: xp.stack(values) for name, values in fields.items() if name != "log_cell_area"}
    log_cell_area = model.backend.to_device(fields["log_cell_area"], dtype=model.dtype)
    return LatentGrid(log_cell_area=log_cell_area, mu=mu, logvar=logvar, **stacked)


def log_marginal_likelihood(grid: LatentGrid) -> Array:
    """log p(x) = log sum_ij p(x|z_ij) p(z_ij) dA, by log-sum-exp. (N,)."""
    N = grid.log_joint.shape[0]
    return logsumexp(grid.log_joint.reshape(N, -1), axis=1) + grid.log_cell_area


def log_posterior(grid: LatentGrid) -> Array:
    """log p(z|x) = log p(x, z) - log p(x) on the grid, (N, n, n): the true posterior density."""
    return grid.log_joint - log_marginal_likelihood(grid)[:, None, None]


def _q_expectation(grid: LatentGrid, values):
    """E_q[values] ~ sum_ij q(z_ij) values_ij dA   (N, n, n) -> (N,)."""
    xp = get_array_module(values)
    weights = xp.exp(grid.log_q + grid.log_cell_area[:, None, None])
    return (weights * values).sum(axis=(1, 2))


def log_gaussian_on_grid(grid: LatentGrid, mu: Array, logvar: Array) -> Array:
    """log N(z | mu_n, diag(exp(logvar_n))) at example n's grid points, for any Gaussian (not only
    the encoder's): mu, logvar (N, 2) -> (N, n, n)."""
    xp = get_array_module(grid.z1)
    N, n1, n2 = grid.log_q.shape
    z = xp.stack([xp.broadcast_to(grid.z1[:, :, None], (N, n1, n2)),
                  xp.broadcast_to(grid.z2[:, None, :], (N, n1, n2))], axis=-1)       # (N, n, n, 2)
    log_q, _ = log_normal(z, mu[:, None, None, :], logvar[:, None, None, :])
    return log_q


def gaussian_elbo(grid: LatentGrid, mu: Array, logvar: Array) -> Tuple[Array, Array]:
    """The ELBO of the Gaussian q = N(mu, diag(exp(logvar))) per example by the grid sum
    (E_q[log p(x|z)] on the grid, the KL to the prior in closed form), and q's mass on the grid
    (1 when the box covers it). mu, logvar (N, 2) -> (elbo (N,), mass (N,))."""
    xp = get_array_module(grid.log_q)
    weights = xp.exp(log_gaussian_on_grid(grid, mu, logvar) + grid.log_cell_area[:, None, None])
    kl_prior, _ = kl_standard_normal(mu, logvar)
    return (weights * grid.log_likelihood).sum(axis=(1, 2)) - kl_prior, weights.sum(axis=(1, 2))


def q_mass(grid: LatentGrid) -> Array:
    """sum_ij q(z_ij) dA: 1 up to quadrature error when the box covers q. (N,)."""
    xp = get_array_module(grid.log_q)
    return _q_expectation(grid, xp.ones_like(grid.log_q))


def expected_log_likelihood(grid: LatentGrid) -> Array:
    """E_q[log p(x|z)] by the grid sum (no Monte Carlo). (N,)."""
    return _q_expectation(grid, grid.log_likelihood)


def kl_to_posterior(grid: LatentGrid) -> Array:
    """KL(q(z|x) || p(z|x)) = E_q[log q(z|x) - log p(z|x)] by the grid sum. (N,)."""
    return _q_expectation(grid, grid.log_q - log_posterior(grid))


def posterior_edge_mass(grid: LatentGrid) -> Array:
    """The posterior probability in the grid's outermost ring of cells: ~0 when the box is big enough."""
    xp = get_array_module(grid.log_q)
    p = xp.exp(log_posterior(grid) + grid.log_cell_area[:, None, None])
    inner = p[:, 1:-1, 1:-1].sum(axis=(1, 2))
    return p.sum(axis=(1, 2)) - inner


@dataclass
class ElboGap:
    """log p(x) = ELBO + KL(q || p(z|x)), per example, each term in nats, (N,) arrays on the device.

    log_px                    log p(x) by the grid
    expected_log_likelihood   E_q[log p(x|z)] by the grid
    kl_prior                  KL(q(z|x) || p(z)), closed form
    elbo                      expected_log_likelihood - kl_prior
    kl_posterior              KL(q(z|x) || p(z|x)) by the grid, with the grid's posterior
    residual                  log_px - elbo - kl_posterior  (quadrature error; 0 in the continuum)
    q_mass, posterior_edge_mass   the box diagnostics (1 and 0 when the box is big enough)
    """
    log_px: Array
    expected_log_likelihood: Array
    kl_prior: Array
    elbo: Array
    kl_posterior: Array
    residual: Array
    q_mass: Array
    posterior_edge_mass: Array

    def as_floats(self) -> dict:
        """Host copies: ``{field: list of floats}``."""
        return {name: [float(v) for v in to_numpy(getattr(self, name))]
                for name in self.__dataclass_fields__}


def elbo_gap(model: VAE, x: Array, grid: Optional[LatentGrid] = None, **grid_options) -> ElboGap:
    """The exact decomposition log p(x) = ELBO + KL(q(z|x) || p(z|x)) for each example of x (N, D).

    ``grid`` (from :func:`latent_grid`) is computed with ``grid_options`` when not given.
    """
    grid = latent_grid(model, x, **grid_options) if grid is None else grid
    log_px = log_marginal_likelihood(grid)
    expected = expected_log_likelihood(grid)
    kl_prior, _ = kl_standard_normal(grid.mu, grid.logvar)
    elbo = expected - kl_prior
    kl_posterior = kl_to_posterior(grid)
    return ElboGap(log_px, expected, kl_prior, elbo, kl_posterior, log_px - elbo - kl_posterior,
                   q_mass(grid), posterior_edge_mass(grid))


def iwae_bound_repeats(model: VAE, x: Array, k: int, n_repeats: int = 100, random: Optional[Random] = None,
                       max_batch: int = 65536) -> Tuple[Array, Array]:
    """Monte Carlo estimate of IWAE_k = E[ log (1/k) sum_{i=1}^k w_i ], w_i = p(x, z_i) / q(z_i|x),
    with its standard error, from ``n_repeats`` independent k-sample bounds.

    IWAE_1 is the ELBO; IWAE_k <= IWAE_{k+1} <= log p(x), and IWAE_k -> log p(x) as k -> infinity.
    Returns (estimate, std_error), each (N,): the mean of the R bounds and their standard deviation
    over sqrt(R). (:func:`minivae.iwae_bound`, the held-out evaluation, is one bound per example.)
    """
    x = model.check_x(x)        # once, before the tiling: a NaN is one entry, not n_repeats
    xp, K = model.xp, model.latent_dim
    k, R = check_count(k, "k"), check_count(n_repeats, "n_repeats")
    N, D = x.shape
    if R < 2:
        raise ValueError(f"need k >= 1 and n_repeats >= 2, got k={k}, n_repeats={R}")
    random = model.random if random is None else random
    chunk = max(1, min(R, max_batch // (k * N)))
    bounds = []
    for start in range(0, R, chunk):
        r = min(chunk, R - start)
        x_tiled = xp.broadcast_to(x, (r, N, D)).reshape(r * N, D)
        log_w = model.log_importance_weights(x_tiled, random.normal((k, r * N, K), model.dtype))   # checks x
        bounds.append((logsumexp(log_w, axis=0) - math.log(k)).reshape(r, N))
    bounds = xp.concatenate(bounds)                                                 # (R, N)
    return bounds.mean(axis=0), bounds.std(axis=0, ddof=1) * (1.0 / math.sqrt(R))


def iwae_bound(model: VAE, x: Array, k: int, n_repeats: int = 100, random: Optional[Random] = None,
               max_batch: int = 65536) -> Tuple[Array, Array]:
    """Deprecated name of :func:`iwae_bound_repeats` (it was easy to confuse with the evaluation
    :func:`minivae.iwae_bound`, which returns an :class:`~minivae.training.evaluate.IWAEResult`)."""
    warnings.warn("minivae.study.posterior.iwae_bound is deprecated: it is now "
                  "minivae.study.posterior.iwae_bound_repeats (minivae.iwae_bound is the held-out "
                  "evaluation, a different function)", DeprecationWarning, stacklevel=2)
    return iwae_bound_repeats(model, x, k, n_repeats, random, max_batch)
