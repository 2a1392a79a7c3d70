"""The fused elementwise kernels of the fast training step, written twice: as array operations and
as CUDA source (which :mod:`minivae.fast.cpu_library` also compiles for the CPU).

The fast step (:mod:`minivae.fast.engine`) spends its time in the matrix products and in a handful of
elementwise passes: bias + activation, the activation's derivative, the reparameterization with the
KL term, the reconstruction loss with its gradient, and the optimizer update. Each pass is a
*kernel* here, with one formula and two implementations:

* :class:`ArrayKernels` — in-place array operations (``out=`` everywhere, no allocation) for NumPy
  and for the strict CuPy stand-in. They are also the CPU reference of the CUDA kernels: the tests
  check them against the readable ops of :mod:`minivae.ops.layers`, :mod:`minivae.ops.likelihoods` and
  :mod:`minivae.ops.latent`, and check that the CUDA sources compile (NVRTC, no GPU needed).
* :class:`CupyKernels` — the same formulas as CUDA source, one launch per pass
  (``cupy.ElementwiseKernel``), selected when the backend is CuPy. Every source is listed in
  :data:`CUDA_KERNELS` so that a test can compile it with NVRTC on a machine without a GPU.
* On NumPy, where a C++ compiler is at hand, the same CUDA formulas wrapped in C++ loops
  (:func:`host_function`) replace the hot array passes: :class:`minivae.fast.cpu_kernels.CompiledKernels`.

The formulas (``l`` logits, ``x`` data, ``s`` a scale, ``e = exp(-|l|)``):

    BCE      nll = max(l, 0) + log1p(e) - x l        dl = s (sigma(l) - x)
             sigma(l) = max(e, [l >= 0]) / (1 + e)  (1/(1+e) for l >= 0, e/(1+e) for l < 0: no overflow)
    Gaussian nll = r^2 / (2 var),  r = mean - x      dmean = s r / var        (fixed variance)
    reparam  sigma = exp(logvar / 2),  z = mu + sigma eps
    KL       kl = (mu^2 + exp(logvar) - logvar - 1) / 2
             dmu = sum_l dz + c mu,  dlogvar = sigma/2 sum_l dz eps + c (exp(logvar) - 1) / 2
    Adam     s <- b1 s + g;  r <- b2 r + g^2   (weighted sums: s = m / (1 - b1), r = v / (1 - b2))
             p <- p - a s / (sqrt(r) + eps sqrt(W2)),  a = lr sqrt(W2) / W1,  W = (1 - b^t) / (1 - b)

(the Adam line is PyTorch's ``m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)`` with the bias
corrections multiplied through: fewer passes, equal up to rounding; see :class:`minivae.optim.Adam`.)

Scalars are Python floats: NumPy 2 keeps float32 arrays float32 then.
"""
from __future__ import annotations

LEAKY_RELU_SLOPE = 0.01  # the default of minivae.ops.layers.leaky_relu_forward
# the activations these kernels implement (by name; the engine maps them to the registered objects)
KERNEL_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus")
# activations whose derivative needs the pre-activation; the others use their output
NEEDS_PREACTIVATION = ("leaky_relu", "softplus")
# Entries per block of the BCE passes: the block's buffers stay in the cache for all its passes,
# and a block is long enough that NumPy's per-call cost (1-3 us) stays small against the passes.
# Measured at batch 2048 on a 2-core EPYC (Zen 3, 512 KiB L2): 8192 -> 21 ms, 16384 -> 14 ms,
# 32768 -> 12 ms, 65536 -> 10.5 ms per BCE call (before the passes were cut to the present ones;
# then 65536 -> 6.5 ms, 131072 -> 6.0 ms, 262144 -> 5.6 ms, unblocked 7.8 ms).
BLOCK = 131072


class ArrayKernels:
    """The kernels as in-place array operations, for NumPy and the strict stand-in.

    Every method writes into the buffers it is given and allocates nothing but the 0-d results of
    reductions. ``tmp`` arguments are scratch buffers of the same shape as the data. Sums are
    ``add.reduce`` rather than ``sum``: the same pairwise summation without ``sum``'s Python
    wrapper, which costs more than a pass over a small layer.
    """

    def __init__(self, xp):
        self.xp = xp

    # --- the affine map -------------------------------------------------------------------------
    def matmul(self, a, b, out):
        """out = a @ b: (M, K) @ (K, N) -> (M, N), into ``out`` (either operand may be a ``.T`` view)."""
        self.xp.matmul(a, b, out=out)

    def bias_add(self, out, b):
        """out += b: (rows, cols) plus a bias (cols,) that every row shares."""
        out += b

    # --- bias + activation ----------------------------------------------------------------------
    def bias_activation(self, pre, b, activation, out, tmp):
        """pre += b; out = act(pre). ``out`` may be ``pre`` unless the backward needs ``pre``."""
        xp = self.xp
        pre += b
        if activation == "relu":  # (x + |x|) / 2: exact, and cheaper than maximum(x, 0) in NumPy
            xp.abs(pre, out=tmp)
            xp.add(pre, tmp, out=out)
            out *= 0.5
        elif activation == "tanh":
            xp.tanh(pre, out=out)
        elif activation == "sigmoid":
            self.sigmoid(pre, out, tmp)
        elif activation == "leaky_relu":  # max(x, slope x): x for x > 0, slope x otherwise
            xp.multiply(pre, LEAKY_RELU_SLOPE, out=tmp)
            xp.maximum(pre, tmp, out=out)
        elif activation == "softplus":  # max(x, 0) + log1p(exp(-|x|))
            xp.abs(pre, out=tmp)
            xp.negative(tmp, out=tmp)
            xp.exp(tmp, out=tmp)
            xp.log1p(tmp, out=tmp)
            xp.maximum(pre, 0.0, out=out)
            out += tmp
        else:
            raise ValueError(f"no kernel for activation {activation!r}")
        return out

    def activation_backward(self, dh, activation, out, pre, tmp, tmp2):
        """dh *= act'(x), from the saved output ``out`` (or the pre-activation ``pre``)."""
        xp = self.xp
        if activation == "relu":  # [out > 0]: 1 where x > 0, 0 where the unit is off
            xp.greater(out, 0.0, out=tmp)
        elif activation == "tanh":  # 1 - tanh(x)^2
            xp.multiply(out, out, out=tmp)
            xp.subtract(1.0, tmp, out=tmp)
        elif activation == "sigmoid":  # s (1 - s)
            xp.subtract(1.0, out, out=tmp)
            tmp *= out
        elif activation == "leaky_relu":  # 1 where x > 0, slope elsewhere
            xp.greater(pre, 0.0, out=tmp)
            tmp *= 1.0 - LEAKY_RELU_SLOPE
            tmp += LEAKY_RELU_SLOPE
        elif activation == "softplus":  # sigma(x)
            self.sigmoid(pre, tmp, tmp2)
        else:
            raise ValueError(f"no kernel for activation {activation!r}")
        dh *= tmp
        return dh

    def sigmoid(self, x, out, tmp):
        """out = exp(min(x, 0)) / (1 + exp(-|x|)): 1/(1+e) for x >= 0 and e/(1+e) for x < 0.

        ``out`` may be ``x`` (the numerator is taken first)."""
        xp = self.xp
        xp.minimum(x, 0.0, out=tmp)
        xp.exp(tmp, out=tmp)
        xp.abs(x, out=out)
        xp.negative(out, out=out)
        xp.exp(out, out=out)
        out += 1.0
        xp.divide(tmp, out, out=out)
        return out

    # --- reparameterization and KL --------------------------------------------------------------
    def reparameterize_kl(self, mu, logvar, eps, z, sigma, tmp):
        """sigma = exp(logvar / 2); z = mu + sigma eps; returns sum_n KL_n as a 0-d array.

        mu, logvar, sigma, tmp (N, K); eps, z (L, N, K)."""
        xp = self.xp
        xp.multiply(logvar, 0.5, out=sigma)
        xp.exp(sigma, out=sigma)
        xp.multiply(eps, sigma, out=z)
        z += mu
        xp.exp(logvar, out=tmp)            # variance
        tmp -= logvar
        tmp -= 1.0
        kl_sum = xp.add.reduce(tmp.reshape(-1))
        xp.multiply(mu, mu, out=tmp)
        kl_sum += xp.add.reduce(tmp.reshape(-1))
        return kl_sum * 0.5

    def reparameterize_kl_backward(self, dz, eps, mu, logvar, sigma, c, dmu, dlogvar, tmp):
        """dmu = sum_l dz + c mu;  dlogvar = sigma/2 sum_l dz eps + c (exp(logvar) - 1)/2.

        dz, eps (L, N, K); the rest (N, K); ``c`` = beta / N, the KL term's weight per example."""
        xp = self.xp
        xp.add.reduce(dz, axis=0, out=dmu)
        xp.multiply(dz[0], eps[0], out=dlogvar)
        for l in range(1, dz.shape[0]):
            xp.multiply(dz[l], eps[l], out=tmp)
            dlogvar += tmp
        dlogvar *= sigma
        dlogvar *= 0.5
        xp.multiply(mu, c, out=tmp)
        dmu += tmp
        xp.exp(logvar, out=tmp)
        tmp -= 1.0
        tmp *= 0.5 * c
        dlogvar += tmp

    # --- reconstruction losses ------------------------------------------------------------------
    def bernoulli(self, logits, x, scale, tmp, tmp2):
        """Sum of BCE over all entries (0-d); overwrites ``logits`` with scale * (sigma(l) - x).

        logits, tmp, tmp2 (M, D) where M = L N; x (N, D) is matched to each of the L row blocks.
        The rows are cut into blocks of about :data:`BLOCK` entries that stay in the cache for all
        the passes of :meth:`bernoulli_block`; the partial sums are added in block order."""
        N, D = x.shape
        rows = max(1, BLOCK // D) if N * D > 2 * BLOCK else N   # small batches: one block per sample
        a_flat, num_flat = tmp.reshape(-1), tmp2.reshape(-1)
        total = None
        for start in range(0, logits.shape[0], N):
            for r0 in range(0, N, rows):
                n = min(rows, N - r0)
                partial = self.bernoulli_block(logits[start + r0:start + r0 + n], x[r0:r0 + n], scale,
                                               a_flat[:n * D].reshape(n, D), num_flat[:n * D].reshape(n, D))
                total = partial if total is None else total + partial
        return total

    def bernoulli_block(self, logits, x, scale, a, num):
        """BCE summed over a block of rows (0-d), ``logits`` overwritten by its gradient.

        One transcendental pass, ``e = exp(-|l|)``, serves the loss and the gradient:

        * sum max(l, 0) = l . [l >= 0], a dot product with the indicator that sigma needs anyway;
        * sigma(l) = max(e, [l >= 0]) / (1 + e): 1/(1+e) for l >= 0, e/(1+e) for l < 0;
        * sum log1p(e) = sum over groups of log(prod (1 + e)) (:meth:`sum_log_products`): a
          product of 1 + e in (1, 2] cannot overflow, and one ``log`` per group replaces a
          ``log1p`` per entry, which NumPy computes with scalar libm code on CPUs without AVX-512
          (11 ns per float32 against 0.2 ns for a product). Where 1 + e rounds to 1 (e < 6e-8 in
          float32), the entry's log1p(e) < 6e-8 is dropped: below the rounding of max(l, 0) - x l.
        """
        xp = self.xp
        l_flat = logits.reshape(-1)
        xp.greater_equal(logits, 0.0, out=num)             # [l >= 0]
        total = xp.dot(l_flat, num.reshape(-1))            # sum max(l, 0)
        total -= xp.dot(x.reshape(-1), l_flat)             # - sum x l
        xp.abs(logits, out=a)
        xp.negative(a, out=a)
        xp.exp(a, out=a)                                   # e = exp(-|l|)
        xp.fmax(num, a, out=num)                           # sigma's numerator: 1 (l >= 0) or e (l < 0)
        a += 1.0
        total += self.sum_log_products(a, logits)          # (the logits are not needed any more)
        xp.divide(num, a, out=logits)                      # sigma(l)
        logits -= x
        logits *= scale
        return total

    def sum_log_products(self, a, scratch, factors=64):
        """sum(log(a)) (0-d) for entries of ``a`` in [1, 2], as the sum of the logs of products of
        ``factors`` entries each (<= 2^64: no overflow in float32). ``scratch``: a buffer with at
        least a.size / factors entries; ``a`` is left unchanged."""
        xp = self.xp
        flat = a.reshape(-1)
        cols = flat.size // factors
        total = 0.0
        if cols:
            products = scratch.reshape(-1)[:cols]
            xp.multiply.reduce(flat[:factors * cols].reshape(factors, cols), axis=0, out=products)
            xp.log(products, out=products)
            total = xp.add.reduce(products)
        if flat.size > factors * cols:
            total = total + xp.log(xp.multiply.reduce(flat[factors * cols:]))
        return total

    def gaussian_fixed(self, mean, x, scale, tmp):
        """Sum of r^2 (0-d) with r = mean - x; overwrites ``mean`` with scale * r.

        mean (M, D), x (N, D) matched to each of the L row blocks."""
        xp = self.xp
        N = x.shape[0]
        for start in range(0, mean.shape[0], N):
            mean[start:start + N] -= x
        r_flat = mean.reshape(-1)
        total = xp.dot(r_flat, r_flat)
        mean *= scale
        return total

    def gaussian_learned(self, mean, x, logvar, scale, dlogvar, tmp, row):
        """Sum of r^2 exp(-logvar) (0-d); overwrites ``mean`` with scale r exp(-logvar) and writes
        dlogvar = scale/2 sum_rows (1 - r^2 exp(-logvar)). ``row``: a (D,) scratch vector."""
        xp = self.xp
        N, M = x.shape[0], mean.shape[0]
        for start in range(0, M, N):
            mean[start:start + N] -= x
        xp.multiply(mean, mean, out=tmp)
        xp.sum(tmp, axis=0, out=dlogvar)                   # sum_rows r^2
        xp.negative(logvar, out=row)
        xp.exp(row, out=row)                               # precision exp(-logvar)
        dlogvar *= row
        total = xp.sum(dlogvar)
        xp.subtract(float(M), dlogvar, out=dlogvar)
        dlogvar *= 0.5 * scale
        row *= scale
        mean *= row
        return total

    # --- the importance weights of the evaluation (minivae.fast.iwae) ----------------------------
    # Rows r of a block are sample r // n of example r % n (n examples per call); log_w (rows,) is
    # float64. The log 2 pi terms of log p(z) and log q(z | x) cancel.
    def iwae_latent(self, mu, sigma, half, eps, z, log_w, tmp, row):
        """z = mu + sigma eps;  log_w = log p(z) - log q(z | x) = 1/2 sum_j (eps_j^2 - z_j^2) + half,
        half (n,) = 1/2 sum_j logvar_j (float64). mu, sigma (n, K); eps, z, tmp (rows, K); row (rows,)
        in the data's dtype."""
        xp = self.xp
        (rows, K), n = eps.shape, mu.shape[0]
        z3 = z.reshape(rows // n, n, K)
        xp.multiply(eps.reshape(rows // n, n, K), sigma, out=z3)
        z3 += mu
        xp.multiply(eps, eps, out=tmp)
        xp.add.reduce(tmp, axis=1, out=row)                 # sum_j eps_j^2
        log_w[...] = row
        xp.multiply(z, z, out=tmp)
        xp.add.reduce(tmp, axis=1, out=row)                 # sum_j z_j^2
        log_w -= row
        log_w *= 0.5
        log_w3 = log_w.reshape(rows // n, n)
        log_w3 += half

    def bernoulli_log_likelihood(self, logits, b, x, log_w, tmp, tmp2, row):
        """log_w += sum_j x_j a_j - softplus(a_j),  a = logits + b, softplus(a) = max(a, 0) +
        log1p(exp(-|a|)). logits, tmp, tmp2 (rows, D) (``logits`` is overwritten); x (n, D)."""
        xp = self.xp
        (rows, D), n = logits.shape, x.shape[0]
        logits += b
        xp.abs(logits, out=tmp)
        xp.negative(tmp, out=tmp)
        xp.exp(tmp, out=tmp)
        xp.log1p(tmp, out=tmp)
        xp.maximum(logits, 0.0, out=tmp2)
        tmp += tmp2                                         # softplus(a)
        a3 = logits.reshape(rows // n, n, D)
        a3 *= x                                             # x a
        logits -= tmp
        xp.add.reduce(logits, axis=1, out=row)
        log_w += row

    def gaussian_log_likelihood(self, mean, b, x, precision, constant, log_w, tmp, tmp2, row):
        """log_w += constant - 1/2 sum_j (x_j - m_j)^2 precision_j,  m = mean + b; ``precision``
        a (D,) vector or a Python float, ``constant`` = -1/2 (sum_j logvar_j + D log 2 pi);
        mean, tmp (rows, D) (``mean`` is overwritten); x (n, D)."""
        xp = self.xp
        (rows, D), n = mean.shape, x.shape[0]
        mean += b
        m3 = mean.reshape(rows // n, n, D)
        m3 -= x
        xp.multiply(mean, mean, out=tmp)
        tmp *= precision
        xp.add.reduce(tmp, axis=1, out=row)
        row *= -0.5
        log_w += row
        log_w += constant

    def bias_grad(self, dout, db):
        """db = sum over rows of dout."""
        self.xp.add.reduce(dout, axis=0, out=db)

    # The optimizers' fused updates (minivae.fast.updates): none here. Each returns False ("no
    # fused update: run the array passes"); the kernels that have one run it and return True.
    def adam(self, g, beta1, beta2, step_size, eps_hat, p, s, r) -> bool:
        """Adam on flat vectors: s = b1 s + g, r = b2 r + g^2, p -= a s / (sqrt(r) + eps_hat)."""
        return False

    def sgd(self, g, lr, p) -> bool:
        """SGD on flat vectors: p -= lr g."""
        return False

    def sgd_momentum(self, g, lr, momentum, nesterov, p, velocity) -> bool:
        """SGD with momentum on flat vectors: velocity = momentum velocity + g;
        p -= lr (g + momentum velocity if nesterov else velocity)."""
        return False
