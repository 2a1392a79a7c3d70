"""The fused kernels as CUDA kernels (CuPy), one launch per pass."""
from __future__ import annotations

from minivae.fast.array_kernels import LEAKY_RELU_SLOPE, ArrayKernels
from minivae.fast.sources import CUDA_KERNELS


def _int32(value):
    import numpy
    return numpy.int32(value)


class CupyKernels(ArrayKernels):
    """The kernels as fused CUDA kernels (``cupy.ElementwiseKernel``), compiled on first use.

    Bias + activation, the activation's derivative, reparameterization + KL (forward and backward),
    BCE + gradient, Gaussian (fixed variance) + gradient, Adam and SGD are one launch each (plus a
    CUB sum where a loss is reduced). The Gaussian with a learned variance uses the array
    operations of :class:`ArrayKernels` (several launches; still no host synchronisation)."""

    def __init__(self, xp):
        super().__init__(xp)
        self._compiled = {}

    def kernel(self, name):
        if name not in self._compiled:
            in_params, out_params, body = CUDA_KERNELS[name]
            self._compiled[name] = self.xp.ElementwiseKernel(in_params, out_params, body,
                                                             f"minivae_{name}")
        return self._compiled[name]

    @staticmethod
    def _scalar(value, like):
        """A Python number as a scalar of ``like``'s dtype (what the kernel's ``T`` binds to)."""
        return like.dtype.type(value)

    def bias_activation(self, pre, b, activation, out, tmp):
        if activation == "leaky_relu":
            self.kernel("bias_leaky_relu")(b, self._scalar(LEAKY_RELU_SLOPE, b), pre, out)
        elif activation == "softplus":
            self.kernel("bias_softplus")(b, pre, out)
        else:   # out is pre
            self.kernel(f"bias_{activation}")(b, out)
        return out

    def activation_backward(self, dh, activation, out, pre, tmp, tmp2):
        if activation == "leaky_relu":
            self.kernel("leaky_relu_backward")(pre, self._scalar(LEAKY_RELU_SLOPE, dh), dh)
        elif activation == "softplus":
            self.kernel("softplus_backward")(pre, dh)
        else:
            self.kernel(f"{activation}_backward")(out, dh)
        return dh

    def reparameterize_kl(self, mu, logvar, eps, z, sigma, tmp):
        L, N, K = eps.shape
        eps = self.xp.ascontiguousarray(eps)   # indexed as raw memory (a no-op for drawn noise)
        self.kernel("reparameterize_kl")(mu, logvar, eps, _int32(L), _int32(N * K), tmp, z)
        return self.xp.sum(tmp)

    def reparameterize_kl_backward(self, dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp):
        L, N, K = eps.shape
        eps = self.xp.ascontiguousarray(eps)
        self.kernel("reparameterize_kl_backward")(mu, logvar, dz, eps, _int32(L), _int32(N * K),
                                                  self._scalar(c, mu), dmu, dlogvar)

    def bernoulli(self, logits, x, scale, tmp, tmp2):
        N, D = x.shape
        L = logits.shape[0] // N
        self.kernel("bernoulli")(x, self._scalar(scale, x), logits.reshape(L, N, D), tmp.reshape(L, N, D))
        return self.xp.sum(tmp)

    def gaussian_fixed(self, mean, x, scale, tmp):
        N, D = x.shape
        L = mean.shape[0] // N
        self.kernel("gaussian_fixed")(x, self._scalar(scale, x), mean.reshape(L, N, D), tmp.reshape(L, N, D))
        return self.xp.sum(tmp)

    def iwae_latent(self, mu, sigma, half, eps, z, log_w, tmp, row):
        (rows, K), n = eps.shape, mu.shape[0]
        self.kernel("iwae_latent")(mu, sigma, eps, _int32(n), _int32(K), z, tmp)
        self.xp.sum(tmp, axis=1, out=row)
        self.xp.add(row.reshape(rows // n, n), half, out=log_w.reshape(rows // n, n))

    def bernoulli_log_likelihood(self, logits, b, x, log_w, tmp, tmp2, row):
        n, D = x.shape
        x = self.xp.ascontiguousarray(x)       # indexed as raw memory
        self.kernel("bernoulli_log_likelihood")(b, x, _int32(n), _int32(D), logits)
        self.xp.sum(logits, axis=1, out=row)
        log_w += row

    def bias_grad(self, dout, db):
        self.xp.sum(dout, axis=0, out=db)

    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r) -> bool:
        t = g.dtype.type
        self.kernel("adam")(g, t(beta1), t(beta2), t(step_size), t(eps_hat), p, s, r)
        return True

    def sgd(self, g, lr, p) -> bool:
        self.kernel("sgd")(g, g.dtype.type(lr), p)
        return True

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity) -> bool:
        t = g.dtype.type
        self.kernel("sgd_momentum")(g, t(lr), t(momentum), t(nesterov), p, velocity)
        return True
