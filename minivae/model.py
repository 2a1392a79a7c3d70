"""The variational autoencoder: an MLP encoder q(z|x), an MLP decoder p(x|z), and the negative ELBO.

    h        = MLP_enc(x)                                  x (N, D)
    mu, logvar = split(h @ W_head + b_head)                (N, K) each
    z        = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)  (L, N, K): L Monte Carlo samples
    out      = MLP_dec(z)                                  logits (Bernoulli) or mean (Gaussian)
    loss     = mean_{l, n} [ -log p(x_n | z_ln) ] + beta * mean_n KL(q(z|x_n) || p(z))

The loss is the per-example negative ELBO in nats (summed over pixels and latent dimensions),
averaged over the batch. The model owns its parameters and composes the ops of
:mod:`minivae.ops.layers`, :mod:`minivae.ops.likelihoods` and :mod:`minivae.ops.latent`; the backward pass
below is those ops' backwards called in reverse order, nothing hidden.

All parameters live in one contiguous vector (``model.flat_params``); ``model.params`` holds named
views into it, so an optimizer can update every parameter with a few vector operations.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Sequence

import numpy as np

from minivae._types import Array, DType, Scalar
from minivae.backend import Backend, get_backend
from minivae.ops.latent import (kl_standard_normal, kl_standard_normal_backward, log_normal,
                                log_normal_backward, log_standard_normal, reparameterize,
                                reparameterize_backward)
from minivae.ops.layers import Activation, get_activation, linear_backward, linear_forward
from minivae.ops.likelihoods import Gaussian, Likelihood, get_likelihood
from minivae.ops.numerics import logsumexp
from minivae.params import Parameters
from minivae.validation import (InputError, check_array, check_beta, check_count, check_data, check_eps,
                                check_latent, resolve_dtype)

IWAE_ESTIMATORS = ("reparam", "stl", "dreg")
"""The encoder-gradient estimators of :meth:`VAE.iwae_forward_backward` (the decoder's is the same
for all three): the full reparameterization gradient, "sticking the landing" (Roeder et al. 2017)
and the doubly reparameterized gradient (Tucker et al. 2019)."""


@dataclass
class LossTerms:
    """The batch means of the negative ELBO and its two parts, as 0-d arrays on the backend's
    device (reading them with ``float()`` synchronises with a GPU; do it once per log interval).

    ``loss = reconstruction + beta * kl``.
    """
    loss: Scalar
    reconstruction: Scalar
    kl: Scalar

    def as_floats(self) -> dict[str, float]:
        """Host copies: ``{"loss": ..., "reconstruction": ..., "kl": ...}`` as Python floats."""
        return {"loss": float(self.loss), "reconstruction": float(self.reconstruction),
                "kl": float(self.kl)}


@dataclass
class Forward:
    """Everything one forward pass computed: q's parameters, the samples, both loss terms per
    example, and the caches the backward needs."""
    mu: object       # (N, K)
    logvar: object   # (N, K)
    z: object        # (L, N, K)
    nll: object      # (L, N)  -log p(x_n | z_ln)
    kl: object       # (N,)    KL(q(z | x_n) || p(z))
    caches: tuple


def parameter_shapes(input_dim, hidden_dims, latent_dim, decoder_hidden_dims, likelihood_shapes=None):
    """The name -> shape table of a VAE's parameters, in storage order: the encoder's, the
    decoder's, then the likelihood's own (``likelihood_shapes``, named ``decoder.*``: they belong
    to the decoder, whose parameters are one contiguous range of the flat vector)."""
    shapes = {}
    sizes = [input_dim, *hidden_dims]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"encoder.{i}.W"], shapes[f"encoder.{i}.b"] = (fan_in, fan_out), (fan_out,)
    shapes["encoder.head.W"], shapes["encoder.head.b"] = (sizes[-1], 2 * latent_dim), (2 * latent_dim,)
    sizes = [latent_dim, *decoder_hidden_dims]
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        shapes[f"decoder.{i}.W"], shapes[f"decoder.{i}.b"] = (fan_in, fan_out), (fan_out,)
    shapes["decoder.out.W"], shapes["decoder.out.b"] = (sizes[-1], input_dim), (input_dim,)
    for name, shape in (likelihood_shapes or {}).items():
        if not name.startswith("decoder.") or name in shapes:
            raise ValueError(f"a likelihood's parameter must be named 'decoder.<new name>', got {name!r}")
        shapes[name] = tuple(shape)
    return shapes


class VAE:
    """A multilayer-perceptron VAE with a diagonal Gaussian posterior and a N(0, I) prior.

    Parameters
    ----------
    input_dim : int
        D, the number of pixels.
    hidden_dims : sequence of int
        Widths of the encoder's hidden layers, e.g. ``[400]``; the decoder mirrors them unless
        ``decoder_hidden_dims`` is given.
    latent_dim : int
        K, the dimension of z.
    likelihood : a registered name (``"bernoulli"``, ``"gaussian"``) or a
        :class:`~minivae.ops.likelihoods.Likelihood`
        Bernoulli: the decoder outputs logits and the data must lie in [0, 1].
        Gaussian: the decoder outputs the mean; the variance is ``decoder_variance`` (a fixed float,
        default 1.0: squared error plus a constant) or ``"learned"`` (one log-variance per pixel).
        Another registered name is built with ``likelihood_options``.
    activation : a registered name (``"relu"``, ``"leaky_relu"``, ``"tanh"``, ``"sigmoid"``,
        ``"softplus"``) or an :class:`~minivae.ops.layers.Activation`
    backend : ``"numpy"``, ``"cupy"``, ``"strict"``, ``"auto"`` or None (the process default)
    dtype : ``"float32"`` (default, fast) or ``"float64"`` (gradient checks)
    seed : int or None
        Seeds the initial weights (drawn on the host, so the same seed gives the same weights on
        every backend) and the model's own noise source ``model.random``.
    """

    def __init__(self, input_dim: int, hidden_dims: Sequence[int], latent_dim: int,
                 likelihood: str | Likelihood = "bernoulli", activation: str | Activation = "relu",
                 backend: str | Backend | None = None, dtype: DType = "float32", seed: int | None = None,
                 decoder_hidden_dims: Sequence[int] | None = None, decoder_variance: float | str = 1.0,
                 likelihood_options: dict | None = None):
        self.likelihood_op = self._likelihood_from(likelihood, decoder_variance, likelihood_options)
        self.activation_op = get_activation(activation)
        hidden_dims = self._widths(hidden_dims, "hidden_dims")
        decoder_hidden_dims = (list(reversed(hidden_dims)) if decoder_hidden_dims is None
                               else self._widths(decoder_hidden_dims, "decoder_hidden_dims"))
        self.input_dim = check_count(input_dim, "input_dim")
        self.latent_dim = check_count(latent_dim, "latent_dim")
        self.hidden_dims, self.decoder_hidden_dims = hidden_dims, decoder_hidden_dims
        # the names (what the configuration and the printouts say); the ops are *_op
        self.likelihood, self.activation = self.likelihood_op.name, self.activation_op.name
        self.decoder_variance = getattr(self.likelihood_op, "variance", decoder_variance)
        self.dtype = resolve_dtype(dtype)
        self.backend = get_backend(backend)
        self.xp = self.backend.xp
        self.seed = seed

        self.shapes = parameter_shapes(self.input_dim, hidden_dims, self.latent_dim, decoder_hidden_dims,
                                       self.likelihood_op.parameter_shapes(self.input_dim))
        self.params = Parameters(self.backend.to_device(self._initial_values(seed), dtype=self.dtype),
                                 self.shapes)
        self.params.backend = self.backend   # the optimizers' kernels follow it
        self.random = self.backend.random(None if seed is None else seed + 1)

    @staticmethod
    def _widths(widths, name):
        if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
            raise ValueError(f"{name} must be a sequence of layer widths, e.g. [400], got {widths!r}")
        return [check_count(h, "hidden width") for h in widths]

    @staticmethod
    def _likelihood_from(likelihood, decoder_variance, options):
        if isinstance(likelihood, Likelihood):
            return likelihood
        if likelihood == "gaussian" and not options:
            return Gaussian(variance=decoder_variance)
        return get_likelihood(likelihood, **(options or {}))

    # --- parameters -----------------------------------------------------------------------------
    @property
    def num_params(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes.values())

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this architecture (JSON-serialisable)."""
        return {"input_dim": self.input_dim, "hidden_dims": self.hidden_dims,
                "latent_dim": self.latent_dim, "likelihood": self.likelihood,
                "activation": self.activation, "dtype": np.dtype(self.dtype).name,
                "decoder_hidden_dims": self.decoder_hidden_dims,
                "decoder_variance": self.decoder_variance,
                **({"likelihood_options": self.likelihood_op.options()}
                   if type(self.likelihood_op) is not Gaussian and self.likelihood_op.options() else {})}

    @property
    def flat_params(self) -> Array:
        """All parameters as one contiguous vector (``params`` are views into it)."""
        return self.params.flat

    def _initial_values(self, seed):
        """PyTorch's default for nn.Linear: W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); drawn on the
        host in float64 so that every backend and dtype starts from the same numbers. The
        likelihood's own parameters start where it says (:meth:`Likelihood.initial_value`)."""
        rng = np.random.default_rng(seed)
        own = self.likelihood_op.parameter_shapes(self.input_dim)
        values = []
        for name, shape in self.shapes.items():
            if name in own:
                values.append(np.asarray(self.likelihood_op.initial_value(name, shape), dtype=np.float64))
                continue
            fan_in = self.shapes[name.rsplit(".", 1)[0] + ".W"][0]
            bound = 1.0 / math.sqrt(fan_in)
            values.append(rng.uniform(-bound, bound, size=shape).ravel())
        return np.concatenate([v.ravel() for v in values])

    def zeros_like_params(self) -> Parameters:
        """Zeros with the parameters' names and shapes, backed by one flat vector (``.flat``)."""
        return Parameters(self.xp.zeros_like(self.params.flat), self.shapes)

    # --- the two networks -----------------------------------------------------------------------
    def _mlp_forward(self, h, prefix, depth):
        caches = []
        for i in range(depth):
            h, linear_cache = linear_forward(h, self.params[f"{prefix}.{i}.W"], self.params[f"{prefix}.{i}.b"])
            h, activation_cache = self.activation_op.forward(h)
            caches.append((linear_cache, activation_cache))
        return h, caches

    def _mlp_backward(self, dh, caches, prefix, grads, need_input_grad):
        for i in reversed(range(len(caches))):
            linear_cache, activation_cache = caches[i]
            dh = self.activation_op.backward(dh, activation_cache)
            dx, grads[f"{prefix}.{i}.W"][...], grads[f"{prefix}.{i}.b"][...] = linear_backward(dh, linear_cache)
            dh = dx if (i > 0 or need_input_grad) else None
        return dh

    def _encoder_forward(self, x):
        h, caches = self._mlp_forward(x, "encoder", len(self.hidden_dims))
        head, head_cache = linear_forward(h, self.params["encoder.head.W"], self.params["encoder.head.b"])
        K = self.latent_dim
        return head[:, :K], head[:, K:], (caches, head_cache)

    def _encoder_backward(self, dmu, dlogvar, cache, grads):
        caches, head_cache = cache
        dhead = self.xp.concatenate([dmu, dlogvar], axis=1)
        dh, grads["encoder.head.W"][...], grads["encoder.head.b"][...] = linear_backward(dhead, head_cache)
        self._mlp_backward(dh, caches, "encoder", grads, need_input_grad=False)

    def _decoder_forward(self, z):
        h, caches = self._mlp_forward(z, "decoder", len(self.decoder_hidden_dims))
        out, out_cache = linear_forward(h, self.params["decoder.out.W"], self.params["decoder.out.b"])
        return out, (caches, out_cache)

    def _decoder_backward(self, dout, cache, grads):
        caches, out_cache = cache
        dh, grads["decoder.out.W"][...], grads["decoder.out.b"][...] = linear_backward(dout, out_cache)
        return self._mlp_backward(dh, caches, "decoder", grads, need_input_grad=True)

    def _reconstruction_nll(self, out, x):
        """-log p(x | z) per sample and example: out (L, N, D), x (N, D) -> (L, N), and a cache."""
        return self.likelihood_op.nll(out, x, self.params)

    def _reconstruction_nll_backward(self, dnll, cache, grads):
        return self.likelihood_op.nll_backward(dnll, cache, grads)

    def check_x(self, x: Array, name: str = "x") -> Array:
        """``x`` checked as data for this model: backend, dtype, shape (N, D), finite values inside
        the likelihood's ``data_range`` (e.g. [0, 1] for Bernoulli). Returns ``x``."""
        op = self.likelihood_op
        return check_data(x, self, name=name, value_range=op.data_range, range_hint=op.range_hint)

    def _forward(self, x, eps):
        """x (N, D), eps (L, N, K) -> a :class:`Forward` with every intermediate and the caches."""
        L, N, K = eps.shape
        mu, logvar, encoder_cache = self._encoder_forward(x)
        z, reparameterize_cache = reparameterize(mu, logvar, eps)                     # (L, N, K)
        out, decoder_cache = self._decoder_forward(z.reshape(L * N, K))
        nll, nll_cache = self._reconstruction_nll(out.reshape(L, N, self.input_dim), x)  # (L, N)
        kl, kl_cache = kl_standard_normal(mu, logvar)                                  # (N,)
        return Forward(mu, logvar, z, nll, kl,
                       (encoder_cache, reparameterize_cache, decoder_cache, nll_cache, kl_cache))

    # --- public API -----------------------------------------------------------------------------
    def encode(self, x: Array) -> tuple[Array, Array]:
        """q(z|x): ``(N, D) -> (mu, logvar)``, each ``(N, K)``."""
        x = self.check_x(x)
        mu, logvar, _ = self._encoder_forward(x)
        return mu, logvar

    def decode(self, z: Array) -> Array:
        """p(x|z): ``(N, K) -> (N, D)`` logits (Bernoulli) or means (Gaussian)."""
        z = check_data(z, self, dim=self.latent_dim, name="z")
        return self._decoder_forward(z)[0]

    def decode_mean(self, z: Array) -> Array:
        """E[x | z]: sigmoid(logits) for Bernoulli, the mean for Gaussian. ``(N, K) -> (N, D)``."""
        return self.likelihood_op.mean(self.decode(z), self.params)

    def reconstruct(self, x: Array) -> Array:
        """E[x | z = mu(x)]: the decoded posterior mean. ``(N, D) -> (N, D)``."""
        mu, _ = self.encode(x)
        return self.decode_mean(mu)

    def sample(self, n: int, eps: Array | None = None) -> Array:
        """Draw ``n`` images from the model: z ~ N(0, I), then E[x | z]. Returns ``(n, D)``.

        ``eps`` (n, K) fixes the prior draws."""
        n = check_count(n, "n")
        if eps is not None:
            check_array(eps, self, "eps")           # named as the caller knows it (decode_mean says z)
            if eps.shape != (n, self.latent_dim):
                raise InputError(f"eps must have shape ({n}, {self.latent_dim}) for n = {n}, got {tuple(eps.shape)}")
        z = self.random.normal((n, self.latent_dim), self.dtype) if eps is None else eps
        return self.decode_mean(z)

    def log_likelihood(self, x: Array, z: Array) -> Array:
        """log p(x | z) per sample and example: x (N, D), z (..., N, K) -> (..., N).

        ``z`` may carry leading sample axes (e.g. (L, N, K), or (G, 1, K) for G points against
        one example); the decoder runs once on all of them."""
        x = self.check_x(x)
        check_latent(z, self, x.shape[0])
        lead, K = z.shape[:-1], z.shape[-1]
        out, _ = self._decoder_forward(z.reshape(-1, K))
        nll, _ = self._reconstruction_nll(out.reshape(*lead, self.input_dim), x)
        return -nll

    def log_likelihood_and_grad(self, x: Array, z: Array) -> tuple[Array, Array]:
        """log p(x | z) and its gradient with respect to z, per sample and example:
        x (N, D), z (..., N, K) -> (..., N) and (..., N, K). The decoder's parameters get no
        gradient here (for that: :meth:`forward_backward`)."""
        x = self.check_x(x)
        check_latent(z, self, x.shape[0])
        lead, K = z.shape[:-1], z.shape[-1]
        out, decoder_cache = self._decoder_forward(z.reshape(-1, K))
        nll, nll_cache = self._reconstruction_nll(out.reshape(*lead, self.input_dim), x)
        scratch = self.zeros_like_params()   # the decoder's gradients: computed on the way, not wanted
        dout = self._reconstruction_nll_backward(self.xp.ones(nll.shape, dtype=self.dtype), nll_cache, scratch)
        dz = self._decoder_backward(dout.reshape(-1, self.input_dim), decoder_cache, scratch)
        return -nll, -dz.reshape(z.shape)

    def encoder_backward(self, x: Array, dmu: Array, dlogvar: Array) -> Parameters:
        """Backpropagate head gradients through the encoder: ``sum_n J_n^T (dmu_n, dlogvar_n)``.

        For studying gradient estimators: any estimator of dLoss/d(mu, logvar) becomes an estimator
        of the encoder's parameter gradients. x (N, D), dmu and dlogvar (N, K) -> a
        :class:`Parameters` of gradients, zero outside the encoder.
        """
        x = self.check_x(x)
        _, _, cache = self._encoder_forward(x)
        grads = self.zeros_like_params()
        self._encoder_backward(dmu, dlogvar, cache, grads)
        return grads

    def draw_eps(self, batch_size: int, n_samples: int = 1) -> Array:
        """Fresh noise eps ~ N(0, I) of shape (n_samples, batch_size, K), on the model's device."""
        shape = (check_count(n_samples, "n_samples"), check_count(batch_size, "batch_size"), self.latent_dim)
        return self.random.normal(shape, self.dtype)

    def forward_backward(self, x: Array, eps: Array | None = None, n_samples: int = 1, beta: float = 1.0,
                         grads: Parameters | None = None,
                         need_grads: bool = True) -> tuple[LossTerms, Parameters | None]:
        """One forward and (optionally) backward pass of the negative ELBO.

        Parameters
        ----------
        x : (N, D) array on the model's backend, dtype ``model.dtype``.
        eps : (L, N, K) or (N, K) array, optional
            The noise of the reparameterization; drawn from ``model.random`` when None.
        n_samples : int
            L, used when ``eps`` is None.
        beta : float
            Weight of the KL term.
        grads : dict, optional
            Arrays to write the gradients into (e.g. views of a reused flat buffer).

        Returns
        -------
        (LossTerms, grads) with ``grads`` None when ``need_grads`` is False.
        """
        x = self.check_x(x)
        N = x.shape[0]
        beta = check_beta(beta)
        # noise drawn here is (L, N, K), C order and finite: only a caller's eps is checked (its
        # values cost two host reads, which a GPU step must not pay)
        eps = self.draw_eps(N, n_samples) if eps is None else check_eps(eps, self, N)

        forward = self._forward(x, eps)
        encoder_cache, reparameterize_cache, decoder_cache, nll_cache, kl_cache = forward.caches
        L = eps.shape[0]
        reconstruction = forward.nll.mean()
        kl_mean = forward.kl.mean()
        terms = LossTerms(reconstruction + beta * kl_mean, reconstruction, kl_mean)
        if not need_grads:
            return terms, None

        if grads is None:
            grads = self.zeros_like_params()
        xp = self.xp
        # loss = sum_{l,n} nll[l, n] / (L N) + beta * sum_n kl[n] / N
        dout = self._reconstruction_nll_backward(xp.full((L, N), 1.0 / (L * N), dtype=self.dtype),
                                                 nll_cache, grads)
        dz = self._decoder_backward(dout.reshape(L * N, self.input_dim), decoder_cache, grads)
        dmu, dlogvar = reparameterize_backward(dz.reshape(L, N, self.latent_dim), reparameterize_cache)
        dmu_kl, dlogvar_kl = kl_standard_normal_backward(xp.full((N,), beta / N, dtype=self.dtype),
                                                         kl_cache)
        self._encoder_backward(dmu + dmu_kl, dlogvar + dlogvar_kl, encoder_cache, grads)
        return terms, grads

    def loss_and_grads(self, x: Array, eps: Array | None = None, n_samples: int = 1,
                       beta: float = 1.0) -> tuple[float, Parameters]:
        """The batch-mean negative ELBO (a Python float, nats) and its gradients.

        ``grads`` has exactly the keys of ``params``. Deterministic when ``eps`` is given:
        shape (n_samples, N, K), or (N, K) for one sample.
        """
        terms, grads = self.forward_backward(x, eps=eps, n_samples=n_samples, beta=beta)
        return float(terms.loss), grads

    def loss(self, x: Array, eps: Array | None = None, n_samples: int = 1, beta: float = 1.0) -> float:
        """The batch-mean negative ELBO alone, a Python float (nats)."""
        return float(self.loss_terms(x, eps=eps, n_samples=n_samples, beta=beta).loss)

    def loss_terms(self, x: Array, eps: Array | None = None, n_samples: int = 1,
                   beta: float = 1.0) -> LossTerms:
        """The loss, reconstruction and KL batch means (as device scalars), without gradients."""
        return self.forward_backward(x, eps=eps, n_samples=n_samples, beta=beta, need_grads=False)[0]

    def elbo_per_example(self, x: Array, eps: Array | None = None, n_samples: int = 1) -> Array:
        """Per-example Monte Carlo ELBO estimates, ``(N,)`` on the device (beta = 1)."""
        x = self.check_x(x)
        if eps is None:
            eps = self.draw_eps(x.shape[0], n_samples)
        eps = check_eps(eps, self, x.shape[0])
        forward = self._forward(x, eps)
        return -(forward.nll.mean(axis=0) + forward.kl)

    def log_importance_weights(self, x: Array, eps: Array) -> Array:
        """log w = log p(x | z) + log p(z) - log q(z | x) for z = mu + sigma * eps.

        The building block of the importance-weighted bound IWAE_k = E log mean_k w_k.
        Shapes: x (N, D), eps (k, N, K) -> (k, N).
        """
        x = self.check_x(x)
        eps = check_eps(eps, self, x.shape[0])
        forward = self._forward(x, eps)
        log_q, _ = log_normal(forward.z, forward.mu, forward.logvar)
        return -forward.nll + log_standard_normal(forward.z) - log_q

    def iwae_forward_backward(self, x: Array, eps: Array | None = None, k: int = 1, estimator: str = "reparam",
                              grads: Parameters | None = None,
                              need_grads: bool = True) -> tuple[LossTerms, Parameters | None]:
        """One forward and (optionally) backward pass of the importance-weighted loss -IWAE_k.

            log w_i = log p(x | z_i) + log p(z_i) - log q(z_i | x),   z_i = mu + sigma * eps_i,  i = 1..k
            loss    = -(1/N) sum_n log (1/k) sum_i w_in                (the batch mean, in nats)
            w~_i    = w_i / sum_j w_j = softmax(log w)_i              (the normalized weights)

        The gradient of the loss is  -(1/N) sum_n sum_i w~_in d log w_in  (the derivative of
        log-sum-exp is the softmax). The decoder always gets that; ``estimator`` picks what the
        encoder gets (docs/gradients.md, section 13):

        * ``"reparam"``: the same total derivative, through z_i *and* through log q's own mu, logvar
          (the score term -d log q(z|x) / d(mu, logvar) at fixed z);
        * ``"stl"``: without the score term (log q's mu and logvar treated as constants; only the
          path through z_i remains): sum_i w~_i d log w_i / dz_i  dz_i / dphi;
        * ``"dreg"``: without the score term and with the weights squared:
          sum_i w~_i^2 d log w_i / dz_i  dz_i / dphi.

        "reparam" and "dreg" are unbiased for the gradient of -IWAE_k; "stl" is not for k > 1.
        With k = 1 (w~ = 1), "reparam" is the gradient of the ELBO with the KL *sampled*, and "stl"
        and "dreg" coincide with the path derivative.

        Parameters
        ----------
        x : (N, D); eps : (k, N, K), optional (drawn from ``model.random`` when None; then ``k``
            says how many); estimator : one of :data:`IWAE_ESTIMATORS`; grads : arrays to write into.

        Returns
        -------
        (LossTerms, grads): ``loss`` = -IWAE_k; ``reconstruction`` = the mean over samples and
        examples of -log p(x | z_i) and ``kl`` the mean of log q(z_i|x) - log p(z_i) (a sampled
        KL), so that ``reconstruction + kl`` is the k-sample average of -ELBO estimates.
        """
        if estimator not in IWAE_ESTIMATORS:
            raise ValueError(f"unknown IWAE estimator {estimator!r}; choose one of {IWAE_ESTIMATORS}")
        x = self.check_x(x)
        N = x.shape[0]
        if eps is None:
            if int(k) != k or k < 1:
                raise ValueError(f"k must be a positive integer, got {k!r}")
            eps = self.draw_eps(N, int(k))
        eps = check_eps(eps, self, N)
        k = eps.shape[0]
        xp = self.xp

        forward = self._forward(x, eps)
        encoder_cache, reparameterize_cache, decoder_cache, nll_cache, _ = forward.caches
        log_q, log_q_cache = log_normal(forward.z, forward.mu, forward.logvar)      # (k, N)
        log_prior = log_standard_normal(forward.z)                                  # (k, N)
        log_w = -forward.nll + log_prior - log_q                                    # (k, N)
        log_mean_w = logsumexp(log_w, axis=0) - math.log(k)                         # (N,)
        terms = LossTerms(-log_mean_w.mean(), forward.nll.mean(), (log_q - log_prior).mean())
        if not need_grads:
            return terms, None

        if grads is None:
            grads = self.zeros_like_params()
        # dloss / dlog w_in = -w~_in / N; log w = -nll + log p(z) - log q, so the upstream of the
        # nll, and of log q, is +w~ / N
        w_tilde = xp.exp(log_w - (log_mean_w + math.log(k)))                        # (k, N), sums to 1
        upstream = w_tilde * (1.0 / N)
        dout = self._reconstruction_nll_backward(upstream, nll_cache, grads)
        dz = self._decoder_backward(dout.reshape(k * N, self.input_dim), decoder_cache, grads)
        dz = dz.reshape(k, N, self.latent_dim)
        # log p(z): d/dz = -z;  log q(z | x) at fixed mu, logvar: d/dz = -(z - mu) / sigma^2 = -score_mu
        score_mu, score_logvar = log_normal_backward(upstream, log_q_cache)        # (k, N, K) each
        dz = dz + upstream[..., None] * forward.z - score_mu                        # dloss / dz_i
        if estimator == "dreg":
            dz = dz * w_tilde[..., None]                                            # w~_i -> w~_i^2
        dmu, dlogvar = reparameterize_backward(dz, reparameterize_cache)
        if estimator == "reparam":                                                  # the score term
            dmu = dmu + score_mu.sum(axis=0)
            dlogvar = dlogvar + score_logvar.sum(axis=0)
        self._encoder_backward(dmu, dlogvar, encoder_cache, grads)
        return terms, grads

    def iwae_per_example(self, x: Array, eps: Array) -> Array:
        """The k-sample bound log (1/k) sum_i w_i per example: x (N, D), eps (k, N, K) -> (N,)."""
        log_w = self.log_importance_weights(x, eps)
        return logsumexp(log_w, axis=0) - math.log(log_w.shape[0])

    def __repr__(self):
        widths = "-".join(str(w) for w in [self.input_dim, *self.hidden_dims, self.latent_dim])
        return (f"VAE({widths}, {self.activation}, {self.likelihood}, backend={self.backend.name!r}, "
                f"dtype={np.dtype(self.dtype).name}, params={self.num_params})")
