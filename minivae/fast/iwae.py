"""The importance weights of the IWAE bound through the fast machinery: the same math as
:meth:`minivae.model.VAE.log_importance_weights`, without fresh arrays.

For ``x`` (n, D) and noise ``eps`` (c, n, K) (c samples of each of n examples):

    log w = log p(x | z) + log p(z) - log q(z | x),   z = mu + sigma eps,
    log p(z) - log q(z | x) = 1/2 sum_j (eps_j^2 - z_j^2) + 1/2 sum_j logvar_j   (log 2 pi cancels),
    Bernoulli: log p(x | z) = sum_j x_j a_j - softplus(a_j),  a = the decoder's logits.

The encoder runs once per call: once per example where a call holds all k samples of its examples
(k = 5000 on the CPU's 8,192 rows per call of :func:`minivae.training.evaluate.iwae_bound`). The
decoder runs over blocks of :data:`BLOCK_ROWS` rows (sample rows of the call, row r = sample
r // n of example r % n) in buffers allocated once: per layer a matrix product into its buffer and
one fused pass (bias + activation; for the output layer, bias +
log-likelihood summed per row straight into the float64 log-weights), plus one fused pass for
z and the latent terms. The passes are the kernels of :func:`minivae.fast.dispatch.get_kernels`
(compiled C++ with vectorized exp and tanh on the CPU, CUDA kernels on CuPy, array operations on
the strict stand-in). The floor of this computation is the decoder's three matrix products.

On the CPU the BLAS runs on one thread while the weights are computed (a block's products are
too small to split well), and with two or more cores the blocks are shared between two threads
(the caller and one worker, each with its own buffers: :mod:`minivae.fast.threads`).
The engine runs the models :func:`minivae.fast.engine.unsupported_reason` accepts (any
activation of the fused step; Bernoulli with compiled / CUDA passes, Gaussian with array passes);
:func:`minivae.training.evaluate.iwae_bound` runs the reference path for the others.
"""
from __future__ import annotations

import math
import os

from minivae.fast.dispatch import get_kernels
from minivae.fast.engine import FUSED_ACTIVATIONS, unsupported_reason
from minivae.fast.threads import PairRunner, single_threaded_blas
from minivae.ops.likelihoods import Bernoulli, Gaussian
from minivae.ops.numerics import LOG_2PI

# Decoder rows per block on the CPU: the (rows, 784) logits (1.6 MB in float32) and the hidden
# layers stay in the 2 MiB L2 cache between the product that writes them and the pass that reads
# them, and the products are still large enough to run at the BLAS's full speed (measured on the
# 784-200-200-50 decoder, one thread: 128 to 2048 rows within 6 %).
BLOCK_ROWS = 512
GPU_BLOCK_ROWS = 16384   # a (16384, 784) float32 buffer is 51 MB; the products stay large


def bernoulli_log_likelihood(kernels, model, logits, x, log_w, buffers):
    kernels.bernoulli_log_likelihood(logits, model.params["decoder.out.b"], x, log_w,
                                     buffers.tmp_d, buffers.tmp_d2, buffers.row)


def gaussian_log_likelihood(kernels, model, mean, x, log_w, buffers):
    """-1/2 sum_j (x_j - m_j)^2 / var_j - 1/2 sum_j log var_j - D/2 log 2 pi, fixed or learned var."""
    likelihood, D = model.likelihood_op, model.input_dim
    if likelihood.learned:
        logvar = model.params[Gaussian.PARAMETER]
        xp = model.xp
        precision = xp.exp(-logvar)
        constant = -0.5 * xp.sum(logvar) - 0.5 * D * LOG_2PI
    else:
        precision = 1.0 / likelihood.variance
        constant = -0.5 * D * (math.log(likelihood.variance) + LOG_2PI)
    kernels.gaussian_log_likelihood(mean, model.params["decoder.out.b"], x, precision, constant, log_w,
                                    buffers.tmp_d, buffers.tmp_d2, buffers.row)


# exact likelihood type -> log p(x | decoder output) summed per row into log_w
LOG_LIKELIHOODS = {Bernoulli: bernoulli_log_likelihood, Gaussian: gaussian_log_likelihood}


def iwae_unsupported_reason(model):
    """None when :class:`FusedIWAE` computes exactly the model's log-weights; else why not."""
    reason = unsupported_reason(model)
    if reason is None and type(model.likelihood_op) not in LOG_LIKELIHOODS:
        reason = f"no fused log-likelihood for {model.likelihood_op!r}"
    return reason


class Buffers:
    """One thread's buffers for a block of ``rows`` decoder rows: per hidden layer ``pre`` (and
    ``out`` where the activation is not computed in place), z (rows, K), the decoder output
    (rows, D), scratch ``tmp_d``, ``tmp_d2`` (rows, D), ``tmp_k`` (rows, K), ``row`` (rows,) and
    ``tmp_h`` (rows times the widest hidden layer)."""

    def __init__(self, model, rows):
        xp, dtype = model.xp, model.dtype
        K, D = model.latent_dim, model.input_dim

        def empty(*shape):
            return xp.zeros(shape, dtype=dtype)   # zeros: touch every page now

        self.rows = rows
        self.pre = [empty(rows, H) for H in model.decoder_hidden_dims]
        separate = FUSED_ACTIVATIONS[model.activation_op]
        self.out = [empty(rows, H) if separate else pre
                    for pre, H in zip(self.pre, model.decoder_hidden_dims)]
        self.z, self.tmp_k = empty(rows, K), empty(rows, K)
        self.decoded, self.tmp_d, self.tmp_d2 = empty(rows, D), empty(rows, D), empty(rows, D)
        self.row = empty(rows)
        self.tmp_h = empty(rows * max([1, *model.decoder_hidden_dims]))   # bias + activation's scratch


class FusedIWAE:
    """``FusedIWAE(model).log_weights(x, eps)``: log w (c, n) float64 for x (n, D), eps (c, n, K).

    ``block_rows``: decoder rows per block (default :data:`BLOCK_ROWS`, or
    :data:`GPU_BLOCK_ROWS` on a GPU); ``threads``: 1, 2 or ``"auto"`` (two on NumPy where the
    backend splits work and there are two cores)."""

    def __init__(self, model, block_rows=None, threads="auto"):
        reason = iwae_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the fused IWAE cannot run this model: {reason}; "
                             "use model.log_importance_weights")
        if threads not in ("auto", 1, 2):
            raise ValueError(f"threads must be 'auto', 1 or 2, got {threads!r}")
        self.model = model
        self.kernels = get_kernels(model.backend)
        self.log_likelihood = LOG_LIKELIHOODS[type(model.likelihood_op)]
        gpu = model.backend.split_step == "never"
        self.block_rows = int(block_rows or (GPU_BLOCK_ROWS if gpu else BLOCK_ROWS))
        if threads == "auto":
            threads = 2 if model.backend.split_step == "auto" and (os.cpu_count() or 1) >= 2 else 1
        self.threads = threads
        self._buffers = [None, None]
        self._pair = None

    def buffers(self, part, rows):
        if self._buffers[part] is None or self._buffers[part].rows < rows:
            self._buffers[part] = Buffers(self.model, rows)
        return self._buffers[part]

    def log_weights(self, x, eps, out=None):
        """log w = log p(x | z) + log p(z) - log q(z | x) of each sample: (c, n) float64.

        x (n, D), eps (c, n, K) contiguous, on the model's backend; ``out`` (c, n) float64 or None."""
        model = self.model
        xp = model.xp
        c, n, K = eps.shape
        mu, logvar = model.encode(x)
        mu = xp.ascontiguousarray(mu)                           # (a view of the encoder's head)
        sigma = xp.exp(logvar * 0.5)
        half = xp.sum(logvar.astype(xp.float64), axis=1) * 0.5
        log_w = xp.empty((c, n), dtype=xp.float64) if out is None else out
        eps_rows, log_w_rows = eps.reshape(c * n, K), log_w.reshape(c * n)
        per_block = max(1, self.block_rows // n) * n          # whole samples: row r is example r % n
        blocks = [(start, min(start + per_block, c * n)) for start in range(0, c * n, per_block)]

        def work(part, mine):
            for start, stop in mine:
                self._block(part, x, mu, sigma, half, eps_rows[start:stop], log_w_rows[start:stop])

        if model.backend.split_step == "never":                 # a GPU: one stream
            work(0, blocks)
            return log_w
        with single_threaded_blas():        # small products: one BLAS thread per worker is faster
            if self.threads == 2 and len(blocks) > 1:
                if self._pair is None:
                    self._pair = PairRunner()
                self._pair.run(lambda: work(0, blocks[0::2]), lambda: work(1, blocks[1::2]))
            else:
                work(0, blocks)
        return log_w

    def _block(self, part, x, mu, sigma, half, eps, log_w):
        """The log-weights of one block of rows (eps (rows, K), log_w (rows,))."""
        model, k = self.model, self.kernels
        xp, params = model.xp, model.params
        rows = eps.shape[0]
        b = self.buffers(part, rows)
        z, tmp_k, row = b.z[:rows], b.tmp_k[:rows], b.row[:rows]
        k.iwae_latent(mu, sigma, half, eps, z, log_w, tmp_k, row)
        h = z
        for i, (pre, out) in enumerate(zip(b.pre, b.out)):
            pre_rows = pre[:rows]
            xp.matmul(h, params[f"decoder.{i}.W"], out=pre_rows)
            scratch = b.tmp_h[:pre_rows.size].reshape(pre_rows.shape)
            h = k.bias_activation(pre_rows, params[f"decoder.{i}.b"], model.activation, out[:rows], scratch)
        decoded = b.decoded[:rows]
        xp.matmul(h, params["decoder.out.W"], out=decoded)
        self.log_likelihood(k, model, decoded, x, log_w, _Rows(b, rows))


class _Rows:
    """The first ``rows`` rows of a block's scratch buffers."""

    def __init__(self, buffers, rows):
        self.tmp_d, self.tmp_d2, self.row = buffers.tmp_d[:rows], buffers.tmp_d2[:rows], buffers.row[:rows]
