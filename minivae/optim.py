"""Hand-written optimizers that update parameters in place: SGD with momentum, and Adam.

Both keep their state in flat vectors. When the parameters and the gradients are both views into
one contiguous vector each (``model.params`` and the model's gradients are: see
:class:`minivae.params.Parameters`), a step runs on the flat vectors:

* on CuPy, one fused kernel updates parameters and state (:mod:`minivae.kernels`);
* on NumPy, the same kernels compiled for the CPU, where a C++ compiler is at hand
  (:mod:`minivae.fast.cpu_library`): one pass, called without the interpreter lock;
* otherwise (and on the strict stand-in), in place on chunks of at most :data:`CHUNK` entries with
  one preallocated scratch buffer per range (no allocation, no page faults): Adam is ten passes
  at NumPy's per-element speed.

``step(grads)`` updates everything; a caller that splits the work (the two-thread training step,
:mod:`minivae.training.step`) calls ``begin_step()`` once and then ``update_range(grads_flat, lo, hi,
scalars)`` for disjoint ranges, on as many threads. Otherwise (any dict of arrays) each array
gets the readable whole-array update, ``_update``, which is also the reference the fast path is
tested against.
"""
from __future__ import annotations

import math

from minivae.backend import get_array_module
from minivae.params import flat_views

# Elements per chunk of the flat update (and the size of its scratch vector). Chunks that fit the
# L2 cache (32k) were no faster on a 2-core EPYC (Zen 3) than 1M-entry ones, and on two threads
# they were slower: every NumPy call hands the interpreter lock over, so fewer, longer calls win
# (batch 128, two threads: 8.1 ms per step with 64k chunks, 7.5 ms unchunked).
CHUNK = 1 << 20


class Optimizer:
    """Shared bookkeeping: the parameters, flat state vectors, and state save/restore."""

    state_names = ()

    def __init__(self, params, lr):
        if not lr > 0.0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not params:
            raise ValueError("no parameters to optimize")
        self.params = params
        self.lr = float(lr)
        self.step_count = 0
        xp = get_array_module(next(iter(params.values())))
        total = sum(p.size for p in params.values())
        self.state = {name: xp.zeros(total, dtype=next(iter(params.values())).dtype)
                      for name in self.state_names}
        self._state_views = {name: flat_views(vector, params) for name, vector in self.state.items()}
        self._chunk_cache = {}

    def step(self, grads) -> None:
        """Apply one update, in place, from ``grads`` (same keys and shapes as the parameters)."""
        if grads.keys() != self.params.keys():
            missing = sorted(set(self.params) ^ set(grads))
            raise KeyError(f"grads and params have different keys: {missing}")
        scalars = self.begin_step()
        grads_flat = getattr(grads, "flat", None)
        if self.flat is not None and grads_flat is not None:
            self.update_range(grads_flat, 0, self.flat.size, scalars)
            return
        for name, p in self.params.items():
            self._update(p, grads[name], {k: views[name] for k, views in self._state_views.items()})

    @property
    def flat(self):
        """The parameters' flat vector, when they are views into one (else None)."""
        return getattr(self.params, "flat", None)

    def begin_step(self):
        """Count a step and return its coefficients, for :meth:`update_range` calls (which may
        then run on several threads, on disjoint ranges). :meth:`step` does both."""
        self.step_count += 1
        return self._step_scalars()

    def update_range(self, grads_flat, lo, hi, scalars):
        """Update entries [lo, hi) of the flat parameter vector from the flat gradient vector."""
        kernels = self._fused_kernels(grads_flat)
        if kernels is not None:
            state = {name: vector[lo:hi] for name, vector in self.state.items()}
            self._kernel_update(kernels, self.flat[lo:hi], grads_flat[lo:hi], state, scalars)
            return
        for chunk in self._chunks(grads_flat, lo, hi):
            self._update_chunk(*chunk, scalars)

    def _fused_kernels(self, grads_flat):
        """The one-pass update kernels for these vectors: CUDA on CuPy; on NumPy the same kernels
        compiled for the CPU (:mod:`minivae.fast.cpu_library`) when they could be built; else None."""
        module = get_array_module(self.flat).__name__
        if module == "cupy":
            from minivae.backend import get_backend
            from minivae.fast.dispatch import get_kernels
            return get_kernels(get_backend("cupy"))
        if module == "numpy" and grads_flat.dtype == self.flat.dtype and grads_flat.flags.c_contiguous:
            from minivae.fast import cpu_library
            return cpu_library.get(self.flat.dtype)
        return None

    def _update(self, p, g, state):
        """The reference update of one array ``p`` from ``g`` with its ``state`` (whole-array ops)."""
        raise NotImplementedError

    def _update_chunk(self, p, g, state, tmp, scalars):
        """The same update as :meth:`_update`, in place, on 1-D slices, with the scratch ``tmp``."""
        raise NotImplementedError

    def _kernel_update(self, kernels, p, g, state, scalars):
        """The same update as one fused CuPy kernel."""
        raise NotImplementedError

    def _step_scalars(self):
        """The Python-float coefficients of this step (never float64 arrays: no promotion)."""
        return ()

    def _chunks(self, grads_flat, lo, hi):
        """[lo, hi) of the flat vectors cut into chunks of :data:`CHUNK`: a list of (p, g, {state name:
        view}, scratch) views with a scratch buffer of the range's own, made once per range and
        gradient vector (slicing some 60 views per step costs more than a pass)."""
        key = (lo, hi)
        cached = self._chunk_cache.get(key)
        if cached is not None and cached[0] is grads_flat:
            return cached[1]
        p = self.flat
        scratch = get_array_module(p).zeros(min(CHUNK, max(1, hi - lo)), dtype=p.dtype)
        chunks = [(p[a:b], grads_flat[a:b], {name: vector[a:b] for name, vector in self.state.items()},
                   scratch[:b - a])
                  for a in range(lo, hi, CHUNK) for b in [min(a + CHUNK, hi)]]
        self._chunk_cache[key] = (grads_flat, chunks)
        return chunks

    def state_dict(self) -> dict:
        """``{"step": int, "lr": float, ..., <state name>: flat array}``; arrays stay on the device."""
        return {"step": self.step_count, **self.hyperparameters(), **self.state}

    def load_state_dict(self, state) -> None:
        """Restore what :meth:`state_dict` returned (arrays may come from the host; they are copied in)."""
        for name, vector in self.state.items():
            if name not in state:
                raise KeyError(f"optimizer state has no {name!r}")
            if tuple(state[name].shape) != tuple(vector.shape):
                raise ValueError(f"optimizer state {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(vector.shape)}")
            vector[...] = get_array_module(vector).asarray(state[name], dtype=vector.dtype)
        self.step_count = int(state["step"])

    def hyperparameters(self) -> dict:
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum, PyTorch's convention:

        velocity <- momentum * velocity + g;   p <- p - lr * velocity
        (Nesterov: p <- p - lr * (g + momentum * velocity))
    """

    def __init__(self, params, lr=0.01, momentum=0.0, nesterov=False):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.state_names = ("velocity",) if momentum else ()
        super().__init__(params, lr)

    def _update(self, p, g, state):
        if not self.momentum:
            p -= self.lr * g
            return
        velocity = state["velocity"]
        velocity *= self.momentum
        velocity += g
        p -= self.lr * (g + self.momentum * velocity if self.nesterov else velocity)

    def _step_scalars(self):
        return (self.lr, self.momentum)

    def _update_chunk(self, p, g, state, tmp, scalars):
        lr, momentum = scalars
        if not momentum:
            tmp[...] = g
        else:
            velocity = state["velocity"]
            velocity *= momentum
            velocity += g
            if self.nesterov:
                get_array_module(p).multiply(velocity, momentum, out=tmp)
                tmp += g
            else:
                tmp[...] = velocity
        tmp *= lr
        p -= tmp

    def _kernel_update(self, kernels, p, g, state, scalars):
        lr, momentum = scalars
        if not momentum:
            kernels.sgd(g, lr, p)
        else:
            kernels.sgd_momentum(g, lr, momentum, 1.0 if self.nesterov else 0.0, p, state["velocity"])

    def hyperparameters(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015), with PyTorch's placement of epsilon:

        m <- b1 m + (1 - b1) g;        v <- b2 v + (1 - b2) g^2
        p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    The state holds the exponentially weighted *sums* of the gradients and of their squares,

        s <- b1 s + g;                 r <- b2 r + g^2          (s = m / (1 - b1), r = v / (1 - b2))

    and the bias correction is a division by the sum of the weights, W_t = 1 + b + ... + b^(t-1)
    = (1 - b^t) / (1 - b): m / (1 - b1^t) = s / W1_t is the weighted *mean* of the gradients so
    far (likewise v). The update is the same; each step costs two fewer passes over the parameters
    (no (1 - b) g term). ``state_dict()`` holds ``exp_sum`` (s) and ``exp_sum_sq`` (r); PyTorch's
    ``exp_avg`` and ``exp_avg_sq`` are (1 - b1) s and (1 - b2) r (:meth:`moments`), and a state
    saved with them loads too.
    """

    state_names = ("exp_sum", "exp_sum_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        beta1, beta2 = betas
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"eps must be positive, got {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        super().__init__(params, lr)

    def moments(self):
        """PyTorch's (exp_avg, exp_avg_sq) = ((1 - b1) s, (1 - b2) r), as new flat arrays."""
        return ((1.0 - self.beta1) * self.state["exp_sum"],
                (1.0 - self.beta2) * self.state["exp_sum_sq"])

    def load_state_dict(self, state) -> None:
        if "exp_sum" not in state and "exp_avg" in state:   # PyTorch's moments (older checkpoints)
            xp = get_array_module(self.state["exp_sum"])
            state = {**state,
                     "exp_sum": xp.asarray(state["exp_avg"]) / (1.0 - self.beta1),
                     "exp_sum_sq": xp.asarray(state["exp_avg_sq"]) / (1.0 - self.beta2)}
        super().load_state_dict(state)

    def _update(self, p, g, state):
        s, r = state["exp_sum"], state["exp_sum_sq"]
        t = self.step_count
        s *= self.beta1
        s += g
        r *= self.beta2
        r += g * g
        weights1 = (1.0 - self.beta1 ** t) / (1.0 - self.beta1)   # 1 + b1 + ... + b1^(t-1)
        weights2 = (1.0 - self.beta2 ** t) / (1.0 - self.beta2)
        xp = get_array_module(p)
        denominator = xp.sqrt(r / weights2)
        denominator += self.eps
        p -= self.lr * ((s / weights1) / denominator)

    def _step_scalars(self):
        """(b1, b2, a, eps_hat) with a = lr sqrt(W2) / W1 and eps_hat = eps sqrt(W2) (W: the sums of
        the weights): p -= a s / (sqrt(r) + eps_hat) is the update above."""
        t = self.step_count
        weights1 = (1.0 - self.beta1 ** t) / (1.0 - self.beta1)
        sqrt_weights2 = math.sqrt((1.0 - self.beta2 ** t) / (1.0 - self.beta2))
        return (self.beta1, self.beta2, self.lr * sqrt_weights2 / weights1, self.eps * sqrt_weights2)

    def _update_chunk(self, p, g, state, tmp, scalars):
        beta1, beta2, step_size, eps_hat = scalars
        xp = get_array_module(p)
        s, r = state["exp_sum"], state["exp_sum_sq"]
        s *= beta1                           # s = b1 s + g
        s += g
        xp.multiply(g, g, out=tmp)           # r = b2 r + g^2
        r *= beta2
        r += tmp
        xp.sqrt(r, out=tmp)                  # p -= a s / (sqrt(r) + eps_hat)
        tmp += eps_hat
        xp.divide(s, tmp, out=tmp)
        tmp *= step_size
        p -= tmp

    def _kernel_update(self, kernels, p, g, state, scalars):
        beta1, beta2, step_size, eps_hat = scalars
        kernels.adam(g, beta1, beta2, step_size, eps_hat, p, state["exp_sum"], state["exp_sum_sq"])

    def hyperparameters(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
