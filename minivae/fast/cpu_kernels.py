"""The array kernels with the training step's hot passes compiled for the CPU."""
from __future__ import annotations

from minivae.fast import cpu_library
from minivae.fast.array_kernels import LEAKY_RELU_SLOPE, ArrayKernels


class CompiledKernels(ArrayKernels):
    """:class:`~minivae.fast.array_kernels.ArrayKernels` (NumPy) with the step's passes and the
    optimizers' updates compiled where the library is built (:mod:`minivae.fast.cpu_library`):
    the same formulas as the CUDA kernels, one call each. Any other case (another activation,
    dtype or layout, no library) runs the array operations."""

    def _library(self, a):
        return cpu_library.get(a.dtype) if a.dtype.kind == "f" else None

    def bias_activation(self, pre, b, activation, out, tmp):
        library = self._library(pre)
        if library is not None and pre.ndim == 2:
            rows, cols = pre.shape
            if (activation == "tanh" and out.ctypes.data == pre.ctypes.data
                    and library.bias_tanh(out, b)):
                return out
            if (activation == "relu" and out.ctypes.data == pre.ctypes.data
                    and library.launch("bias_relu", rows, cols, b, out)):
                return out
            if activation == "leaky_relu" and library.launch("bias_leaky_relu", rows, cols, b,
                                                             LEAKY_RELU_SLOPE, pre, out):
                return out
        return super().bias_activation(pre, b, activation, out, tmp)

    def activation_backward(self, dh, activation, out, pre, tmp, tmp2):
        library = self._library(dh)
        if library is not None and dh.ndim == 2:
            rows, cols = dh.shape
            if activation == "leaky_relu":
                ran = library.launch("leaky_relu_backward", rows, cols, pre, LEAKY_RELU_SLOPE, dh)
            elif activation in ("relu", "tanh", "sigmoid"):
                ran = library.launch(f"{activation}_backward", rows, cols, out, dh)
            else:
                ran = False
            if ran:
                return dh
        return super().activation_backward(dh, activation, out, pre, tmp, tmp2)

    def reparameterize_kl(self, mu, logvar, eps, z, sigma, tmp):
        library, NK = self._library(mu), sample_stride(eps, z)
        if library is not None and NK is not None:
            total = library.reparameterize_kl(mu, logvar, eps, z, NK)     # float32
            if total is not None:
                return mu.dtype.type(total)
        if (library is not None and NK is not None and mu.ndim == 2
                and library.launch("reparameterize_kl", *mu.shape, mu, logvar, eps, eps.shape[0], NK, tmp, z)):
            return self.xp.add.reduce(tmp, axis=None)
        return super().reparameterize_kl(mu, logvar, eps, z, sigma, tmp)

    def reparameterize_kl_backward(self, dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp):
        library, NK = self._library(mu), sample_stride(eps, dz)
        if library is not None and NK is not None and library.reparameterize_kl_backward(
                dz, eps, mu, logvar, c, dmu, dlogvar, NK):       # float32
            return
        if (library is not None and NK is not None and mu.ndim == 2
                and library.launch("reparameterize_kl_backward", *mu.shape, mu, logvar, dz, eps,
                                   eps.shape[0], NK, c, dmu, dlogvar)):
            return
        # the array operations read sigma, which the compiled forward pass does not write
        self.xp.multiply(logvar, 0.5, out=sigma)
        self.xp.exp(sigma, out=sigma)
        super().reparameterize_kl_backward(dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp)

    def bernoulli(self, logits, x, scale, tmp, tmp2):
        library = self._library(logits)
        total = None if library is None else library.bernoulli(logits, x, scale)
        if total is None:
            return super().bernoulli(logits, x, scale, tmp, tmp2)
        return logits.dtype.type(total)

    # The importance weights of the evaluation (minivae.fast.iwae): one pass each.
    def iwae_latent(self, mu, sigma, half, eps, z, log_w, tmp, row):
        library = self._library(mu)
        if library is None or not library.iwae_latent(mu, sigma, half, eps, z, log_w):
            super().iwae_latent(mu, sigma, half, eps, z, log_w, tmp, row)

    def bernoulli_log_likelihood(self, logits, b, x, log_w, tmp, tmp2, row):
        library = self._library(logits)
        if library is None or not library.bernoulli_log_likelihood(logits, b, x, log_w):
            super().bernoulli_log_likelihood(logits, b, x, log_w, tmp, tmp2, row)

    # The optimizers' updates: one compiled pass over the flat vectors where the library is built
    # for their dtype and they are contiguous, of one dtype and length; else False (the array passes
    # of minivae.fast.updates run instead).
    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r) -> bool:
        library = self._library(p)
        return library is not None and library.launch("adam", 1, g.size, g, beta1, beta2, step_size,
                                                      eps_hat, p, s, r)

    def sgd(self, g, lr, p) -> bool:
        library = self._library(p)
        return library is not None and library.launch("sgd", 1, g.size, g, lr, p)

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity) -> bool:
        library = self._library(p)
        return library is not None and library.launch("sgd_momentum", 1, g.size, g, lr, momentum,
                                                      nesterov, p, velocity)


def sample_stride(eps, other):
    """The stride (elements) between the samples of ``eps`` (L, rows, K), when ``eps`` and
    ``other`` share one layout with contiguous (rows, K) blocks (the raw indexing of the
    reparameterization kernels); else None."""
    if eps.ndim != 3 or other.shape != eps.shape or other.strides != eps.strides:
        return None
    L, rows, K = eps.shape
    if K > 1 and eps.strides[2] != eps.itemsize or rows > 1 and eps.strides[1] != K * eps.itemsize:
        return None
    stride, remainder = divmod(eps.strides[0], eps.itemsize)
    return stride if remainder == 0 else None
