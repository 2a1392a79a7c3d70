"""Gradient estimators for the encoder: reparameterization against the score function (REINFORCE).

The encoder's parameters phi enter the ELBO only through the distribution the expectation is taken
over, so its gradient needs a Monte Carlo estimator. For one example x, with q = q_phi(z|x) =
N(mu, diag(sigma^2)) and the per-example loss  ell(phi) = -ELBO = E_q[c(z)] (+ KL, see ``kl``):

* **reparameterization** ("reparam"): z = mu + sigma * eps with eps ~ N(0, I), so
  grad_phi E_q[c(z)] = E_eps[ grad_phi c(mu + sigma * eps) ]: differentiate *through* the sample.
* **score function** ("score", REINFORCE): grad_phi E_q[c(z)] = E_q[ c(z) grad_phi log q(z|x) ],
  from grad q = q grad log q; only the *value* of c is used, never its derivative.
* **score function with a leave-one-out baseline** ("score_loo"): E_q[ (c(z_l) - b_l) grad log q(z_l) ]
  with b_l = mean_{j != l} c(z_j). b_l does not depend on z_l and E_q[grad log q] = 0, so the
  baseline changes the variance but not the mean: unbiased for L >= 2 samples.
* **path derivative** ("reparam_path", Roeder et al. 2017, "sticking the landing"): reparameterization
  without the term grad_phi log q(z|x) at fixed z, which has expectation zero. When q equals the true
  posterior, log w(z) = log p(x) for every z, so this estimator has zero variance, while the full
  reparameterization gradient keeps the zero-mean score term as noise. Differs from "reparam" only
  for ``kl="sampled"`` (with ``kl="analytic"`` log q is not part of the integrand).

``kl`` picks what c is, for the same objective (E_q[log p(z) - log q(z|x)] = -KL(q || p(z)) exactly):

* ``"sampled"`` (the textbook REINFORCE objective):  c(z) = -[log p(x|z) + log p(z) - log q(z|x)]
  = -log w(z). The score-function gradient of E_q[c_phi(z)], whose integrand also depends on phi
  through log q, is  E_q[c grad log q] + E_q[grad_phi c |_z]  and the second term is
  E_q[grad_phi log q] = 0; we drop it (as black-box VI does). Keeping it would equal using the
  constant baseline b = -1: unbiased either way. Reparameterization takes the total derivative of
  c(z(eps), phi), through z *and* through log q's own parameters.
* ``"analytic"`` (what :meth:`minivae.VAE.forward_backward` trains): c(z) = -log p(x|z) and the
  KL(q || p(z)) term is differentiated in closed form, so only E_q[log p(x|z)] is estimated. With
  this choice the mean of L reparameterization terms *is* the model's encoder gradient.

How the numbers are computed. Every estimator is a per-sample gradient with respect to the encoder's
outputs (dmu, dlogvar), the "head gradient" (2K numbers per example and sample). The parameter
gradient is linear in it: grad_phi = J^T (dmu, dlogvar), with J the Jacobian of (mu, logvar) with
respect to phi, built once per example by 2K backward passes through the encoder
(:func:`encoder_jacobian`). So L * R sample gradients cost one decoder pass each and a matrix
product, and the statistics per parameter are exact functions of the sampled head gradients.

All gradients are of the *loss* (the batch-mean negative ELBO, the sign of ``model.forward_backward``)
and computed with the model's array module; only :func:`minivae.to_numpy` at the edges copies to the
host.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from minivae._types import Array
from minivae.backend import Random, get_array_module
from minivae.model import VAE
from minivae.ops.latent import (kl_standard_normal, kl_standard_normal_backward, log_normal,
                                log_normal_backward, log_standard_normal, reparameterize,
                                reparameterize_backward)
from minivae.params import Parameters, flat_views
from minivae.validation import check_count, check_eps, check_layout

ESTIMATORS = ("reparam", "reparam_path", "score", "score_loo")
KL_FORMS = ("sampled", "analytic")


def _check_options(estimator, kl, n_samples=None):
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    if kl not in KL_FORMS:
        raise ValueError(f"unknown kl {kl!r}; choose one of {KL_FORMS}")
    if n_samples is not None and estimator == "score_loo" and n_samples < 2:
        raise ValueError("the leave-one-out baseline needs n_samples >= 2 (b_l uses the other samples)")


# --- the head gradient: d(loss_n)/d(mu_n, logvar_n), one term per Monte Carlo sample --------------

def head_gradient_terms(model: VAE, x: Array, eps: Array, estimator: str = "reparam",
                        kl: str = "sampled") -> Tuple[Array, Array]:
    """Per-sample estimates of the gradient of the per-example loss -ELBO_n with respect to the
    encoder outputs mu_n and logvar_n.

    Shapes: x (N, D), eps (L, N, K) -> dmu, dlogvar (L, N, K). The L-sample estimator is the mean
    over the first axis (for "score_loo" the terms share the baseline, so only that mean is an
    estimator; for the others each term is an independent one-sample estimate).

    With z_l = mu + sigma eps_l, s_l = grad_{mu, logvar} log q(z_l|x) at fixed z (the score,
    :func:`minivae.ops.latent.log_normal_backward`) and c_l the per-sample loss (see the module doc):

    reparam:    d_l = reparameterize_backward(grad_z c(z_l)) + grad_phi c |_z   (total derivative)
    reparam_path: d_l = reparameterize_backward(grad_z c(z_l))                  (path only)
    score:      d_l = c_l s_l
    score_loo:  d_l = (c_l - b_l) s_l,  b_l = (sum_j c_j - c_l) / (L - 1)

    plus, for ``kl="analytic"``, the closed-form KL gradient (mu, (exp(logvar) - 1) / 2) on every term.
    """
    _check_options(estimator, kl, eps.shape[0] if eps.ndim == 3 else 1)
    mu, logvar = model.encode(x)                                                  # checks x
    eps = check_eps(eps, model, x.shape[0])
    xp = model.xp
    L, N, _ = eps.shape
    z, reparameterize_cache = reparameterize(mu, logvar, eps)                    # (L, N, K)
    log_q, log_q_cache = log_normal(z, mu, logvar)                               # (L, N)
    ones = xp.ones((L, N), dtype=model.dtype)
    dmu_score, dlogvar_score = log_normal_backward(ones, log_q_cache)            # s_l: (L, N, K) x2

    if estimator in ("reparam", "reparam_path"):
        _, dlog_px = model.log_likelihood_and_grad(x, z)
        dz = -dlog_px                                                            # grad_z -log p(x|z)
        if kl == "sampled":
            # + grad_z [-log p(z)] = z,  + grad_z [log q(z|x)] = -(z - mu) / sigma^2 = -dmu_score
            dz = dz + z - dmu_score
        # A cache whose sigma already has the samples' shape: reparameterize_backward then keeps
        # one term per sample instead of summing over the Monte Carlo axis.
        sigma, eps_cached = reparameterize_cache
        dmu, dlogvar = reparameterize_backward(dz, (xp.broadcast_to(sigma, eps_cached.shape), eps_cached))
        if kl == "sampled" and estimator == "reparam":
            # the explicit dependence of log q(z|x) on (mu, logvar) at fixed z: + the score.
            # (path + score together give d/dmu = 0, d/dlogvar = -1/2: the gradient of -entropy(q))
            dmu, dlogvar = dmu + dmu_score, dlogvar + dlogvar_score
    else:
        nll = -model.log_likelihood(x, z)                                        # (L, N)
        if kl == "sampled":
            c = nll - log_standard_normal(z) + log_q                                 # -log w
        else:
            c = nll                                                                  # -log p(x|z)
        if estimator == "score_loo":
            c = c - (c.sum(axis=0) - c) / (L - 1)                                     # c_l - b_l
        c = c[..., None]
        dmu, dlogvar = c * dmu_score, c * dlogvar_score

    if kl == "analytic":
        _, kl_cache = kl_standard_normal(mu, logvar)
        dmu_kl, dlogvar_kl = kl_standard_normal_backward(xp.ones((N,), dtype=model.dtype), kl_cache)
        dmu, dlogvar = dmu + dmu_kl, dlogvar + dlogvar_kl
    return dmu, dlogvar


# --- from the head gradient to the encoder's parameters ------------------------------------------

def encoder_parameter_names(model: VAE) -> List[str]:
    """The encoder's parameter names, in storage order: the phi of q_phi(z|x)."""
    return [name for name in model.shapes if name.startswith("encoder.")]


def encoder_parameter_count(model: VAE) -> int:
    return sum(math.prod(model.shapes[name]) for name in encoder_parameter_names(model))


def encoder_backward(model: VAE, x: Array, dmu: Array, dlogvar: Array) -> Dict[str, Array]:
    """Backpropagate given dmu, dlogvar (N, K) through the encoder for the batch x (N, D).

    Returns ``{name: gradient}`` for the encoder's parameters: sum_n J_n^T (dmu_n, dlogvar_n)
    (:meth:`VAE.encoder_backward`, restricted to the encoder's names).
    """
    grads = model.encoder_backward(x, dmu, dlogvar)
    return {name: grads[name] for name in encoder_parameter_names(model)}


def encoder_jacobian(model: VAE, x: Array) -> Array:
    """J (N, 2K, P): row a of J[n] is the gradient of head output a of example n, (mu_n, logvar_n)[a],
    with respect to the P encoder parameters flattened in storage order.

    Built with 2K backward passes per example (a one-hot dmu or dlogvar each), with
    :meth:`VAE.encoder_backward` (which checks each example); then grad_phi = J^T (dmu, dlogvar)
    for any head gradient.
    """
    check_layout(x, model)
    xp, K = model.xp, model.latent_dim
    names = encoder_parameter_names(model)
    rows = []
    for n in range(x.shape[0]):
        for a in range(2 * K):
            dhead = xp.zeros((1, 2 * K), dtype=model.dtype)
            dhead[0, a] = 1.0
            grads = encoder_backward(model, x[n:n + 1], dhead[:, :K], dhead[:, K:])
            rows.append(xp.concatenate([grads[name].reshape(-1) for name in names]))
    return xp.stack(rows).reshape(x.shape[0], 2 * K, -1)


def encoder_gradients(jacobian: Array, dmu: Array, dlogvar: Array) -> Array:
    """Parameter gradients of the batch-mean loss from head gradients:  g = (1/N) sum_n J_n^T d_n.

    Shapes: jacobian (N, 2K, P), dmu and dlogvar (..., N, K) -> (..., P).
    """
    xp = get_array_module(jacobian)
    N, two_K, P = jacobian.shape
    d = xp.concatenate([dmu, dlogvar], axis=-1)                                  # (..., N, 2K)
    lead = d.shape[:-2]
    g = d.reshape(-1, N * two_K) @ jacobian.reshape(N * two_K, P)
    return (g * (1.0 / N)).reshape(*lead, P)


def as_named(model: VAE, vector: Array) -> Parameters:
    """A flat encoder-gradient vector (P,) as ``{name: view}`` with the parameters' shapes."""
    return flat_views(vector, {name: model.params[name] for name in encoder_parameter_names(model)})


# --- statistics over repeated estimates -----------------------------------------------------------

@dataclass
class EstimatorStatistics:
    """Per-parameter statistics of an L-sample gradient estimator over R independent repeats.

    Arrays have shape (P,) (encoder parameters, storage order) and live on the model's device.

    mean      average of the R estimates (the estimator's expectation, up to ``std_error``)
    variance  sample variance (ddof=1) of one L-sample estimate
    reference the high-sample reference gradient it is compared against (or None)
    """
    estimator: str
    kl: str
    n_samples: int
    n_repeats: int
    mean: Array
    variance: Array
    reference: Optional[Array] = None
    reference_std_error: Optional[Array] = None

    @property
    def std_error(self) -> Array:
        """Standard error of ``mean``: sqrt(variance / R)."""
        return (self.variance * (1.0 / self.n_repeats)) ** 0.5

    @property
    def active(self) -> Array:
        """Parameters whose gradient is not identically zero for this batch (a first-layer weight
        of a pixel that is 0 in every example gets exactly 0 from every estimator). Boolean (P,)."""
        return self.variance > 0.0

    @property
    def snr(self) -> Array:
        """Signal-to-noise ratio per parameter: |reference| / sqrt(variance) (Rainforth et al., 2018).

        NaN where the parameter is not ``active`` (0 / 0)."""
        return abs(self.reference) / self._where_active(self.variance ** 0.5)

    @property
    def z_scores(self) -> Array:
        """(mean - reference) / combined standard error: ~ N(0, 1) per parameter if unbiased.

        NaN where the parameter is not ``active``."""
        se2 = self.variance * (1.0 / self.n_repeats)
        if self.reference_std_error is not None:
            se2 = se2 + self.reference_std_error ** 2
        return (self.mean - self.reference) / self._where_active(se2 ** 0.5)

    def _where_active(self, denominator: Array) -> Array:
        xp = get_array_module(denominator)
        return xp.where(self.active, denominator, float("nan"))

    @property
    def total_variance(self) -> float:
        """sum_p variance_p = E ||g - E g||^2, a host float."""
        return float(self.variance.sum())


def estimator_statistics(model: VAE, x: Array, estimator: str = "reparam", n_samples: int = 1,
                         n_repeats: int = 100, kl: str = "sampled", reference: Optional[Array] = None,
                         reference_std_error: Optional[Array] = None, random: Optional[Random] = None,
                         jacobian: Optional[Array] = None, max_batch: int = 65536) -> EstimatorStatistics:
    """Run the L-sample estimator R times and return the mean and variance of each parameter's gradient.

    Parameters
    ----------
    x : (N, D) batch on the model's backend; the objective is the batch-mean loss.
    n_samples, n_repeats : L and R.
    reference, reference_std_error : (P,) arrays, e.g. from :func:`reference_gradient`.
    random : a ``Backend.random`` source (default ``model.random``); eps is drawn on the device.
    jacobian : :func:`encoder_jacobian` of (model, x), to reuse across calls.
    max_batch : at most this many decoder evaluations (L * repeats * N) per chunk.

    The R repeats are computed in chunks of repeats side by side (x tiled along the batch axis);
    chunk statistics are merged with Chan et al.'s pairwise update, so memory stays bounded.
    """
    L, R = check_count(n_samples, "n_samples"), check_count(n_repeats, "n_repeats")
    _check_options(estimator, kl, L)
    check_layout(x, model)                  # the shape; the values are checked by the model's methods
    xp, K = model.xp, model.latent_dim
    N = x.shape[0]
    if R < 2:
        raise ValueError("n_repeats must be >= 2 to estimate a variance")
    random = model.random if random is None else random
    jacobian = encoder_jacobian(model, x) if jacobian is None else jacobian
    chunk = max(1, min(R, max_batch // (L * N)))
    count, mean, m2 = 0, None, None
    for start in range(0, R, chunk):
        r = min(chunk, R - start)
        x_tiled = xp.broadcast_to(x, (r, N, x.shape[1])).reshape(r * N, x.shape[1])
        eps = random.normal((L, r * N, K), model.dtype)
        dmu, dlogvar = head_gradient_terms(model, x_tiled, eps, estimator, kl)
        g = encoder_gradients(jacobian, dmu.mean(axis=0).reshape(r, N, K),
                              dlogvar.mean(axis=0).reshape(r, N, K))             # (r, P)
        chunk_mean = g.mean(axis=0)
        chunk_m2 = ((g - chunk_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = r, chunk_mean, chunk_m2
        else:
            delta = chunk_mean - mean
            total = count + r
            mean = mean + delta * (r / total)
            m2 = m2 + chunk_m2 + delta * delta * (count * r / total)
            count = total
    return EstimatorStatistics(estimator, kl, L, R, mean, m2 * (1.0 / (R - 1)), reference,
                               reference_std_error)


def reference_gradient(model: VAE, x: Array, n_samples: int = 100_000, kl: str = "sampled",
                       random: Optional[Random] = None, jacobian: Optional[Array] = None,
                       max_batch: int = 65536) -> Tuple[Array, Array]:
    """The high-sample reference: the mean of ``n_samples`` one-sample reparameterization gradients
    and its standard error, both (P,). Reparameterization is used because it has the lowest variance
    here; the estimators' expectations are all the same gradient."""
    stats = estimator_statistics(model, x, "reparam", 1, n_samples, kl, random=random,
                                 jacobian=jacobian, max_batch=max_batch)
    return stats.mean, stats.std_error


def compare_estimators(model: VAE, x: Array, sample_sizes: Sequence[int] = (1, 10, 100),
                       estimators: Sequence[str] = ESTIMATORS, n_repeats: int = 200, kl: str = "sampled",
                       reference_samples: int = 100_000, random: Optional[Random] = None,
                       max_batch: int = 65536) -> Dict[Tuple[str, int], EstimatorStatistics]:
    """Statistics of every estimator at every L, against one shared reference.

    Returns ``{(estimator, L): EstimatorStatistics}``; "score_loo" is skipped at L = 1.
    """
    sample_sizes = [check_count(L, "sample size") for L in sample_sizes]   # before the costly reference
    for estimator in estimators:
        _check_options(estimator, kl)
    random = model.random if random is None else random
    jacobian = encoder_jacobian(model, x)
    reference, reference_se = reference_gradient(model, x, reference_samples, kl, random, jacobian,
                                                 max_batch)
    results = {}
    for estimator in estimators:
        for L in sample_sizes:
            if estimator == "score_loo" and L < 2:
                continue
            results[(estimator, L)] = estimator_statistics(
                model, x, estimator, L, n_repeats, kl, reference, reference_se, random, jacobian,
                max_batch)
    return results
