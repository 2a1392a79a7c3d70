"""The fast training step: the same math as :meth:`minivae.model.VAE.forward_backward`, with every
intermediate written into preallocated buffers.

``VAE.forward_backward`` is the readable reference: each op returns fresh arrays. Here the same
forward and backward run in a :class:`Workspace` allocated once per (batch size, samples), in two
phases:

1. :meth:`FusedStep.deltas`: the forward pass, the loss, and the backward pass of the *deltas*
   (dL/d(pre-activation) of every layer) for a range of the batch's rows. Rows are independent
   here, so two threads can each take half of the batch.
2. :meth:`FusedStep.parameter_gradients`: dW = h_in^T delta and db = sum_rows delta of every layer
   of one network over the whole batch. The two networks are independent, so two threads can
   each take one (and go on to update its parameters: they are contiguous in the flat vector).

Either way, nothing is allocated in steady state (no page faults), every matrix product writes
into its buffer (``matmul(..., out=)``) and the gradients go straight into the flat gradient
vector's views; the first layer's dx is never computed; the elementwise work is done by the
kernels of :mod:`minivae.fast.dispatch` (in-place array operations on NumPy and the strict stand-in,
fused CUDA kernels on CuPy), and nothing is copied to the host, so a GPU step never waits for it.

The engine declares what it supports (:func:`unsupported_reason`): a :class:`minivae.VAE` itself
(not a subclass) of any depth, any number of samples, float32 or float64, with an activation of
:data:`FUSED_ACTIVATIONS` and a likelihood of :data:`FUSED_LIKELIHOODS` (Bernoulli, Gaussian with a
fixed or learned variance). Support is decided by the registered objects themselves, never by a
name: an activation or likelihood defined anywhere else, or a subclass of a built-in one, is not
supported, and :class:`minivae.TrainStep` runs the reference path for it (with a warning). The
tests check the engine against the reference (loss terms, gradients, updated parameters).
"""
from __future__ import annotations

import math
import threading

from minivae.fast import array_kernels
from minivae.fast.dispatch import get_kernels
from minivae.model import VAE
from minivae.ops.layers import ACTIVATIONS
from minivae.ops.likelihoods import Bernoulli, Gaussian
from minivae.ops.numerics import LOG_2PI

PARTS = 2  # row ranges that may run at the same time (each has its own small scratch)

# The activations that have fused kernels (bias + activation, derivative), as the registered
# objects -> whether the derivative needs the pre-activation (else the layer's output suffices).
FUSED_ACTIVATIONS = {ACTIVATIONS[name]: name in array_kernels.NEEDS_PREACTIVATION
                     for name in array_kernels.KERNEL_ACTIVATIONS}


class FusedLikelihood:
    """What the fused step needs of a likelihood: its loss and gradient in place, its constants,
    its own parameters' gradients. One subclass per likelihood that has fused kernels."""

    def loss_and_delta(self, k, model, ws, out, x, scale, part, first):
        """Sum over the rows of ``out`` (the decoder's output, (rows, D)) of the NLL without its
        constants; overwrites ``out`` with scale dNLL/dout. ``first``: the first block of a part."""
        raise NotImplementedError

    def with_constants(self, model, nll_sum, rows):
        """The NLL summed over ``rows`` decoded rows, from what :meth:`loss_and_delta` summed."""
        return nll_sum

    def parameter_gradients(self, model, ws, grads, parts):
        """The gradients of the likelihood's own parameters, from the ``parts`` row ranges."""


class FusedBernoulli(FusedLikelihood):
    """The Bernoulli NLL and its gradient from the logits in one kernel pass."""

    def loss_and_delta(self, k, model, ws, logits, x, scale, part, first):
        return k.bernoulli(logits, x, scale, ws.scratch(0, logits.shape, part), ws.scratch(1, logits.shape, part))


class FusedGaussianFixed(FusedLikelihood):
    """-log N(x | mean, variance I): the kernel sums r^2 and writes scale r / variance."""

    def loss_and_delta(self, k, model, ws, mean, x, scale, part, first):
        return k.gaussian_fixed(mean, x, scale / model.likelihood_op.variance, ws.scratch(0, mean.shape, part))

    def with_constants(self, model, nll_sum, rows):
        variance = model.likelihood_op.variance
        return (0.5 / variance) * nll_sum + 0.5 * rows * model.input_dim * (LOG_2PI + math.log(variance))


class FusedGaussianLearned(FusedLikelihood):
    """-log N(x | mean, diag(exp(logvar))) with a learned logvar (D,): the kernel sums
    r^2 exp(-logvar) and writes the gradients; dlogvar's partial sums go to ``ws.logvar_parts``
    (one row per row range, added up over the blocks of a part)."""

    def loss_and_delta(self, k, model, ws, mean, x, scale, part, first):
        into = ws.logvar_parts[part] if first else ws.logvar_tmp[part]
        total = k.gaussian_learned(mean, x, model.params[Gaussian.PARAMETER], scale, into,
                                   ws.scratch(0, mean.shape, part), ws.row[part])
        if not first:
            ws.logvar_parts[part] += into
        return total

    def with_constants(self, model, nll_sum, rows):
        logvar = model.params[Gaussian.PARAMETER]
        return 0.5 * nll_sum + (0.5 * rows) * model.xp.sum(logvar) + 0.5 * rows * model.input_dim * LOG_2PI

    def parameter_gradients(self, model, ws, grads, parts):
        model.xp.sum(ws.logvar_parts[:parts], axis=0, out=grads[Gaussian.PARAMETER])


def _fused_gaussian(likelihood):
    return FusedGaussianLearned() if likelihood.learned else FusedGaussianFixed()


# The likelihoods that have fused kernels: exact type -> the fused implementation for an instance.
FUSED_LIKELIHOODS = {Bernoulli: lambda likelihood: FusedBernoulli(), Gaussian: _fused_gaussian}


FUSED_OBJECTIVES = ("elbo",)
"""The training objectives the fused step computes: the negative ELBO with the KL in closed form
(:meth:`minivae.VAE.forward_backward`). The importance-weighted loss (``"iwae"``,
:meth:`minivae.VAE.iwae_forward_backward`) has no fused kernel."""


def unsupported_reason(model, objective="elbo"):
    """None when the fused step computes exactly the math of ``model`` trained on ``objective``
    (``"elbo"`` or ``"iwae"``); else why not (a sentence)."""
    if objective not in FUSED_OBJECTIVES:
        return f"the fused step trains the ELBO only, not the objective {objective!r}"
    if type(model) is not VAE:
        return f"{type(model).__name__} is not minivae.VAE itself (a subclass may change the math)"
    if model.activation_op not in FUSED_ACTIVATIONS:
        return f"no fused kernel for the activation {model.activation_op!r}"
    if type(model.likelihood_op) not in FUSED_LIKELIHOODS:
        return f"no fused kernel for the likelihood {model.likelihood_op!r}"
    return None


class Workspace:
    """Every buffer one step needs for a batch of ``N`` examples and ``L`` samples.

    Encoder layer i: ``enc_pre[i]``, ``enc_out[i]`` (N, H_i) (the same buffer unless the
    activation's derivative needs the pre-activation) and its delta ``enc_delta[i]``; the head
    (N, 2K) holds [mu | logvar] and ``d_head`` its delta; decoder layers likewise with M = L N rows
    (row l N + n: sample l of example n); ``out`` (M, D) holds the logits, then their delta.
    ``scratch(i, shape, part)``: scratch views; ``row``, ``logvar_parts``, ``logvar_tmp``:
    (PARTS, D) scratch and partial gradients of a learned decoder variance, one row per row range.
    """

    def __init__(self, model, N, L):
        xp, dtype = model.xp, model.dtype

        def empty(*shape):
            return xp.zeros(shape, dtype=dtype)  # zeros: touch every page now, not in the first step

        self.N, self.L = N, L
        K, D, M = model.latent_dim, model.input_dim, L * N
        separate = FUSED_ACTIVATIONS[model.activation_op]
        self.enc_pre = [empty(N, H) for H in model.hidden_dims]
        self.enc_out = [empty(N, H) if separate else pre for pre, H in zip(self.enc_pre, model.hidden_dims)]
        self.enc_delta = [empty(N, H) for H in model.hidden_dims]
        self.dec_pre = [empty(M, H) for H in model.decoder_hidden_dims]
        self.dec_out = [empty(M, H) if separate else pre
                        for pre, H in zip(self.dec_pre, model.decoder_hidden_dims)]
        self.dec_delta = [empty(M, H) for H in model.decoder_hidden_dims]
        self.head, self.d_head = empty(N, 2 * K), empty(N, 2 * K)
        self.sigma, self.tmp_k = empty(N, K), empty(N, K)
        self.eps, self.z, self.d_z = empty(L, N, K), empty(L, N, K), empty(L, N, K)
        self.out = empty(M, D)
        widest = max([D, *model.hidden_dims, *model.decoder_hidden_dims])
        # two scratch vectors for any layer's (rows, width); views of the right shape are cut from
        # them: from the front for part 0, from the back for part 1. Two parts hold at most M rows
        # together, of width <= widest, so their views never overlap.
        self._scratch = [empty(M * widest) for _ in range(2)]
        self.row, self.logvar_parts, self.logvar_tmp = empty(PARTS, D), empty(PARTS, D), empty(PARTS, D)

    def scratch(self, i, shape, part=0):
        size, vector = math.prod(shape), self._scratch[i]
        view = vector[:size] if part == 0 else vector[vector.size - size:]
        return view.reshape(shape)


class FusedStep:
    """Forward and backward of the negative ELBO into a workspace; gradients into ``grads``.

    ``step(x, eps, beta)`` runs both phases over the whole batch; a caller that splits the work
    calls :meth:`deltas` for row ranges and :meth:`parameter_gradients` per network itself."""

    def __init__(self, model, grads, objective="elbo", kernels=None):
        reason = unsupported_reason(model, objective)
        if reason is not None:
            raise ValueError(f"the fused step cannot run this model: {reason}; use model.forward_backward")
        self.model, self.grads = model, grads
        self.likelihood = FUSED_LIKELIHOODS[type(model.likelihood_op)](model.likelihood_op)
        # the backend's kernels; minivae.fast.program passes kernels that record the calls instead
        self.kernels = get_kernels(model.backend) if kernels is None else kernels
        self.workspaces = {}
        self._lock = threading.Lock()   # two threads working on one batch share its workspace

    def workspace(self, N, L):
        key = (N, L)
        with self._lock:
            if key not in self.workspaces:
                if len(self.workspaces) >= 4:  # e.g. a smaller last batch: keep a few, not every size
                    self.workspaces.pop(next(iter(self.workspaces)))
                self.workspaces[key] = Workspace(self.model, N, L)
            return self.workspaces[key]

    def __call__(self, x, eps, beta):
        """x (N, D); eps (L, N, K). Returns the sums over the batch of the reconstruction NLL and
        of the KL term (0-d arrays); the gradients of the batch's mean loss are in ``grads``."""
        nll_sum, kl_sum = self.deltas(x, eps, beta)
        for network in ("decoder", "encoder"):
            self.parameter_gradients(x, eps.shape[0], network)
        return nll_sum, kl_sum

    # --- phase 1: forward, loss and deltas for rows [r0, r1) ------------------------------------
    def deltas(self, x, eps, beta, rows=None, part=0):
        """Forward pass, loss and backward pass of the deltas for the examples ``rows`` = (r0, r1)
        of the batch (default all), weighted as part of the mean over all N examples. ``part``
        (< PARTS): which scratch row ranges running at the same time use. Returns the partial sums
        of the reconstruction NLL and the KL term."""
        model, k = self.model, self.kernels
        L, N, K = eps.shape
        ws = self.workspace(N, L)
        r0, r1 = rows if rows is not None else (0, N)
        R = slice(r0, r1)

        # --- encoder
        self._forward(ws, x[R], "encoder", R, part)
        mu, logvar = ws.head[R, :K], ws.head[R, K:]

        # --- latent: z = mu + sigma eps, KL
        kl_sum = k.reparameterize_kl(mu, logvar, eps[:, R], ws.z[:, R], ws.sigma[R], ws.tmp_k[R])

        # --- decoder, per block of rows of the (M, .) buffers: all M rows at once for the whole
        # batch, else rows l N + [r0, r1) of each sample l
        if (r0, r1) == (0, N):
            blocks = [(slice(0, L * N), ws.z.reshape(L * N, K), ws.d_z.reshape(L * N, K))]
        else:
            blocks = [(slice(l * N + r0, l * N + r1), ws.z[l, R], ws.d_z[l, R]) for l in range(L)]
        scale = 1.0 / (L * N)          # d(mean over the L N samples)/d(sample's loss)
        nll_sum = None
        for j, (S, z, d_z) in enumerate(blocks):
            self._forward(ws, z, "decoder", S, part)
            # reconstruction loss and its gradient: ws.out becomes dL/dout
            nll = self.likelihood.loss_and_delta(self.kernels, model, ws, ws.out[S], x[R], scale, part, j == 0)
            nll_sum = nll if nll_sum is None else nll_sum + nll
            delta, W = self._backward(ws, "decoder", S, part)
            k.matmul(delta, W.T, d_z)
        nll_sum = self.likelihood.with_constants(model, nll_sum, (r1 - r0) * L)

        # --- latent backward: reparameterization + KL (weight beta / N per example)
        k.reparameterize_kl_backward(ws.d_z[:, R], eps[:, R], mu, logvar, ws.sigma[R], beta / N,
                                     ws.d_head[R, :K], ws.d_head[R, K:], ws.tmp_k[R])

        # --- encoder deltas (no dx for the first layer: x gets no gradient)
        self._backward(ws, "encoder", R, part)
        return nll_sum, kl_sum

    def _layers(self, ws, network):
        """(pre-activations, outputs, deltas, result, result's delta, last layer's name)."""
        if network == "encoder":
            return ws.enc_pre, ws.enc_out, ws.enc_delta, ws.head, ws.d_head, "head"
        return ws.dec_pre, ws.dec_out, ws.dec_delta, ws.out, ws.out, "out"

    def _forward(self, ws, h, network, S, part):
        """Rows ``S`` of ``network``: hidden layers (bias + activation fused), then the affine
        last layer into the result buffer (the head, or the decoder's output)."""
        model, k = self.model, self.kernels
        params = model.params
        pres, outs, _, result, _, last = self._layers(ws, network)
        for i, (pre, out) in enumerate(zip(pres, outs)):
            pre_rows = pre[S]
            k.matmul(h, params[f"{network}.{i}.W"], pre_rows)
            h = k.bias_activation(pre_rows, params[f"{network}.{i}.b"], model.activation, out[S],
                                  ws.scratch(0, pre_rows.shape, part))
        result_rows = result[S]
        k.matmul(h, params[f"{network}.{last}.W"], result_rows)
        k.bias_add(result_rows, params[f"{network}.{last}.b"])

    def _backward(self, ws, network, S, part):
        """Rows ``S`` of the hidden layers' deltas, from the result's delta (set by the caller).
        Returns (the first layer's delta, its W) -- the result's delta and the last layer's W
        without hidden layers -- so that the caller may form dx = delta W^T."""
        model, k = self.model, self.kernels
        params = model.params
        pres, outs, deltas, _, top, last = self._layers(ws, network)
        delta, W = top[S], params[f"{network}.{last}.W"]
        for i in reversed(range(len(deltas))):
            rows = deltas[i][S]
            k.matmul(delta, W.T, rows)
            k.activation_backward(rows, model.activation, outs[i][S], pres[i][S],
                                  ws.scratch(0, rows.shape, part), ws.scratch(1, rows.shape, part))
            delta, W = rows, params[f"{network}.{i}.W"]
        return delta, W

    # --- phase 2: the parameter gradients of one network over the whole batch -------------------
    def parameter_gradients(self, x, L, network, parts=1):
        """dW and db of every layer of ``network`` ("encoder" or "decoder") from the deltas of
        all rows; ``parts``: how many row ranges wrote a learned variance's partial gradient."""
        model, grads, k = self.model, self.grads, self.kernels
        N = x.shape[0]
        ws = self.workspace(N, L)
        _, outs, deltas, _, top, last = self._layers(ws, network)
        if network == "encoder":
            inputs = x
        else:
            inputs = ws.z.reshape(L * N, -1)
            self.likelihood.parameter_gradients(model, ws, grads, parts)
        layer_inputs = [inputs, *outs]
        k.matmul(layer_inputs[-1].T, top, grads[f"{network}.{last}.W"])
        k.bias_grad(top, grads[f"{network}.{last}.b"])
        for i, delta in enumerate(deltas):
            k.matmul(layer_inputs[i].T, delta, grads[f"{network}.{i}.W"])
            k.bias_grad(delta, grads[f"{network}.{i}.b"])
