"""The fast training step: the same math as :meth:`minivae.model.VAE.forward_backward`, with every
intermediate written into preallocated buffers.

``VAE.forward_backward`` is the readable reference: each op returns fresh arrays. Here the same
forward and backward run in a :class:`Workspace` allocated once per (batch size, samples):

* every matrix product writes into its buffer (``matmul(..., out=)``) and the gradients go straight
  into the flat gradient vector's views; the first layer's dx is never computed;
* the elementwise work is done by the kernels of :mod:`minivae.kernels` (in-place array operations
  on NumPy and the strict stand-in, fused CUDA kernels on CuPy): BCE and its gradient share one
  ``exp(-|l|)``; the logits buffer is overwritten by its gradient;
* nothing is allocated in steady state, so the CPU pays no page faults per step, and nothing is
  copied to the host, so a GPU step never waits for it.

Every model the VAE class builds takes this path: any depth, every activation, Bernoulli and
Gaussian (fixed or learned variance) decoders, any number of samples, float32 and float64. The
tests check it against the reference (loss terms, gradients, updated parameters).
"""
from __future__ import annotations

import math

from minivae.kernels import NEEDS_PREACTIVATION, get_kernels

LOG_2PI = math.log(2.0 * math.pi)


class Workspace:
    """Every buffer one step needs for a batch of ``N`` examples and ``L`` samples.

    Encoder layer i: ``enc_pre[i]`` and ``enc_out[i]`` (N, H_i) (the same buffer unless the
    activation's derivative needs the pre-activation); head (N, 2K) holds [mu | logvar];
    decoder layers likewise with L N rows; ``out`` (L N, D) holds the logits, then their gradient.
    ``d_*`` are the matching gradient buffers; ``tmp_*`` scratch.
    """

    def __init__(self, model, N, L):
        xp, dtype = model.xp, model.dtype

        def empty(*shape):
            return xp.zeros(shape, dtype=dtype)  # zeros: touch every page now, not in the first step

        self.N, self.L = N, L
        K, D = model.latent_dim, model.input_dim
        separate = model.activation in NEEDS_PREACTIVATION
        self.enc_pre = [empty(N, H) for H in model.hidden_dims]
        self.enc_out = [empty(N, H) if separate else pre for pre, H in zip(self.enc_pre, model.hidden_dims)]
        self.dec_pre = [empty(L * N, H) for H in model.decoder_hidden_dims]
        self.dec_out = [empty(L * N, H) if separate else pre
                        for pre, H in zip(self.dec_pre, model.decoder_hidden_dims)]
        self.head = empty(N, 2 * K)
        self.d_head = empty(N, 2 * K)
        self.sigma, self.tmp_k = empty(N, K), empty(N, K)
        self.eps, self.z, self.d_z = empty(L, N, K), empty(L, N, K), empty(L, N, K)
        self.out = empty(L * N, D)
        widths = [D, *model.hidden_dims, *model.decoder_hidden_dims]
        rows = L * N
        # scratch big enough for any layer's (rows, width); views of the right shape are cut from it
        self._tmp = [empty(rows * max(widths)) for _ in range(2)]
        self._dh = [empty(rows * max(widths)) for _ in range(2)]
        self.row = empty(D)

    def tmp(self, i, shape):
        return self._tmp[i][:math.prod(shape)].reshape(shape)

    def dh(self, i, shape):
        return self._dh[i][:math.prod(shape)].reshape(shape)


class FusedStep:
    """Forward and backward of the negative ELBO into a workspace; gradients into ``grads``."""

    def __init__(self, model, grads):
        self.model, self.grads = model, grads
        self.kernels = get_kernels(model.backend)
        self.workspaces = {}

    def workspace(self, N, L):
        key = (N, L)
        if key not in self.workspaces:
            if len(self.workspaces) >= 4:  # e.g. a smaller last batch: keep a few, not every size
                self.workspaces.pop(next(iter(self.workspaces)))
            self.workspaces[key] = Workspace(self.model, N, L)
        return self.workspaces[key]

    def __call__(self, x, eps, beta):
        """x (N, D); eps (L, N, K) already in the workspace or given. Returns (loss, recon, kl)."""
        model, grads, k = self.model, self.grads, self.kernels
        xp, params = model.xp, model.params
        L, N, K = eps.shape
        D = model.input_dim
        ws = self.workspace(N, L)
        M = L * N

        # --- encoder
        self._network_forward(x, "encoder", "head", ws.enc_pre, ws.enc_out, ws.head, ws)
        mu, logvar = ws.head[:, :K], ws.head[:, K:]

        # --- latent: z = mu + sigma eps, KL
        kl_sum = k.reparameterize_kl(mu, logvar, eps, ws.z, ws.sigma, ws.tmp_k)

        # --- decoder
        z = ws.z.reshape(M, K)
        self._network_forward(z, "decoder", "out", ws.dec_pre, ws.dec_out, ws.out, ws)

        # --- reconstruction loss and its gradient (ws.out becomes dL/dout), scale 1/(L N)
        scale = 1.0 / M
        if model.likelihood == "bernoulli":
            nll_sum = k.bernoulli(ws.out, x, scale, ws.tmp(0, ws.out.shape), ws.tmp(1, ws.out.shape))
        elif model.decoder_variance == "learned":
            logvar_x = params["decoder.logvar"]
            nll_sum = k.gaussian_learned(ws.out, x, logvar_x, scale, grads["decoder.logvar"],
                                         ws.tmp(0, ws.out.shape), ws.row)
            nll_sum = 0.5 * nll_sum + (0.5 * M) * xp.sum(logvar_x) + 0.5 * M * D * LOG_2PI
        else:
            variance = model.decoder_variance
            nll_sum = k.gaussian_fixed(ws.out, x, scale / variance, ws.tmp(0, ws.out.shape))
            nll_sum = (0.5 / variance) * nll_sum + 0.5 * M * D * (LOG_2PI + math.log(variance))
        dout = ws.out

        # --- decoder backward, down to dL/dz
        dout, W = self._network_backward(dout, z, "decoder", "out", ws.dec_pre, ws.dec_out, ws)
        xp.matmul(dout, W.T, out=ws.d_z.reshape(M, K))

        # --- latent backward: reparameterization + KL (weight beta / N per example)
        k.reparameterize_kl_backward(ws.d_z, eps, mu, logvar, ws.sigma, beta / N,
                                     ws.d_head[:, :K], ws.d_head[:, K:], ws.tmp_k)

        # --- encoder backward (no dx for the first layer: x gets no gradient)
        self._network_backward(ws.d_head, x, "encoder", "head", ws.enc_pre, ws.enc_out, ws)

        return nll_sum, kl_sum

    def _network_forward(self, h, prefix, last, pres, outs, result, ws):
        """Hidden layers ``{prefix}.{i}`` (bias + activation fused), then the affine layer
        ``{prefix}.{last}`` into ``result``. ``pres``/``outs``: the workspace's layer buffers."""
        model, k = self.model, self.kernels
        xp, params = model.xp, model.params
        for i, (pre, out) in enumerate(zip(pres, outs)):
            xp.matmul(h, params[f"{prefix}.{i}.W"], out=pre)
            k.bias_activation(pre, params[f"{prefix}.{i}.b"], model.activation, out, ws.tmp(0, pre.shape))
            h = out
        xp.matmul(h, params[f"{prefix}.{last}.W"], out=result)
        result += params[f"{prefix}.{last}.b"]

    def _network_backward(self, dout, inputs, prefix, last, pres, outs, ws):
        """Gradients of every layer of the network fed with ``inputs``, from ``dout`` = dL/d(its
        result). Returns (dL/d(first hidden layer's pre-activation), that layer's W) -- or
        (dout, W of the last layer) without hidden layers -- so the caller may form dx = d W^T."""
        model, grads, k = self.model, self.grads, self.kernels
        xp, params = model.xp, model.params
        h_last = outs[-1] if outs else inputs
        xp.matmul(h_last.T, dout, out=grads[f"{prefix}.{last}.W"])
        k.bias_grad(dout, grads[f"{prefix}.{last}.b"])
        W = params[f"{prefix}.{last}.W"]
        for i in reversed(range(len(outs))):
            dh = ws.dh(i % 2, outs[i].shape)
            xp.matmul(dout, W.T, out=dh)
            k.activation_backward(dh, model.activation, outs[i], pres[i],
                                  ws.tmp(0, dh.shape), ws.tmp(1, dh.shape))
            h_in = outs[i - 1] if i > 0 else inputs
            xp.matmul(h_in.T, dh, out=grads[f"{prefix}.{i}.W"])
            k.bias_grad(dh, grads[f"{prefix}.{i}.b"])
            dout, W = dh, params[f"{prefix}.{i}.W"]
        return dout, W
