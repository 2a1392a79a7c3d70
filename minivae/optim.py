"""Hand-written optimizers that update parameters in place: SGD with momentum, and Adam.

Each optimizer's ``_update`` is its readable reference math: whole-array operations on one array
and its state, used for any dict of arrays. Both keep their state in flat vectors; when the
parameters and the gradients are both views into one contiguous vector each (``model.params`` and
the model's gradients are: see :class:`minivae.params.Parameters`), a step runs on the flat vectors
instead, with the same arithmetic: :mod:`minivae.fast.updates` (one fused kernel where the
backend has one, else chunked in-place array passes), tested against ``_update``.

``step(grads)`` updates everything; a caller that splits the work (the two-thread training step,
:mod:`minivae.training.step`) calls ``begin_step()`` once and then ``update_range(grads_flat, lo, hi,
scalars)`` for disjoint ranges, on as many threads.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

from minivae.backend import Array, Backend, backend_of, get_array_module, get_backend
from minivae.fast import updates
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.dispatch import get_kernels
from minivae.params import flat_views


def _is_real(value):
    """A real number (a Python or NumPy int or float), not a bool or a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class Optimizer:
    """Shared bookkeeping: the parameters, flat state vectors, and state save/restore.

    ``backend`` runs the flat update (its kernels: :func:`minivae.fast.dispatch.get_kernels`);
    default: ``params.backend`` for a model's parameters, else the backend of the arrays.
    """

    state_names = ()
    scalar_names = ()    # the coefficients of a step, in the order begin_step() returns them

    def __init__(self, params: Mapping[str, Array], lr: float, backend: Backend | str | None = None):
        if not _is_real(lr) or not 0.0 < lr < math.inf:
            raise ValueError(f"learning rate must be a finite positive number, got {lr!r}")
        if not params:
            raise ValueError("no parameters to optimize")
        self.params = params
        self.lr = float(lr)
        self.step_count = 0
        first = next(iter(params.values()))
        if backend is None:   # a model's parameters say their backend; other arrays by their type
            backend = getattr(params, "backend", None) or backend_of(first)
        self.backend = get_backend(backend)
        xp = get_array_module(first)
        total = sum(p.size for p in params.values())
        self.state = {name: xp.zeros(total, dtype=first.dtype) for name in self.state_names}
        self._state_views = {name: flat_views(vector, params) for name, vector in self.state.items()}
        self._flat_update = None if self.flat is None else self.flat_update(get_kernels(self.backend))

    def step(self, grads: Mapping[str, Array]) -> None:
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
    def flat(self) -> Array | None:
        """The parameters' flat vector, when they are views into one (else None)."""
        return getattr(self.params, "flat", None)

    def begin_step(self) -> tuple[float, ...]:
        """Count a step and return its coefficients, for :meth:`update_range` calls (which may
        then run on several threads, on disjoint ranges). :meth:`step` does both."""
        self.step_count += 1
        return self._step_scalars()

    def update_range(self, grads_flat: Array, lo: int, hi: int, scalars: tuple[float, ...]) -> None:
        """Update entries [lo, hi) of the flat parameter vector from the flat gradient vector."""
        if self._flat_update is None:
            raise ValueError("update_range needs parameters that are views into one flat vector "
                             "(minivae.Parameters)")
        self._flat_update(grads_flat, lo, hi, scalars)

    def flat_update(self, kernels: ArrayKernels) -> updates.FlatUpdate:
        """This optimizer's update of ranges of its flat vectors, run by ``kernels``."""
        raise NotImplementedError

    def _update(self, p, g, state):
        """The reference update of one array ``p`` from ``g`` with its ``state`` (whole-array ops)."""
        raise NotImplementedError

    def _step_scalars(self):
        """The Python-float coefficients of this step (never float64 arrays: no promotion)."""
        return ()

    def state_dict(self) -> dict[str, Any]:
        """``{"step": int, "lr": float, ..., <state name>: flat array}``; arrays stay on the device."""
        return {"step": self.step_count, **self.hyperparameters(), **self.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays may come from the host; they are copied in)."""
        for name, vector in self.state.items():
            if name not in state:
                raise KeyError(f"optimizer state has no {name!r}")
            if tuple(state[name].shape) != tuple(vector.shape):
                raise ValueError(f"optimizer state {name!r} has shape {tuple(state[name].shape)}, "
                                 f"expected {tuple(vector.shape)}")
            vector[...] = get_array_module(vector).asarray(state[name], dtype=vector.dtype)
        self.step_count = int(state["step"])

    def hyperparameters(self) -> dict[str, float | bool]:
        return {"lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent with (optionally Nesterov) momentum, PyTorch's convention:

        velocity <- momentum * velocity + g;   p <- p - lr * velocity
        (Nesterov: p <- p - lr * (g + momentum * velocity))
    """

    scalar_names = ("lr", "momentum")

    def __init__(self, params: Mapping[str, Array], lr: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, backend: Backend | str | None = None):
        if not _is_real(momentum) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if nesterov and momentum == 0.0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.state_names = ("velocity",) if momentum else ()
        super().__init__(params, lr, backend)

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

    def flat_update(self, kernels: ArrayKernels) -> updates.FlatUpdate:
        return updates.SGDUpdate(self.flat, self.state, kernels, self.nesterov)

    def hyperparameters(self) -> dict[str, float | bool]:
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
    scalar_names = ("beta1", "beta2", "step_size", "eps_hat")   # see _step_scalars

    def __init__(self, params: Mapping[str, Array], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 backend: Backend | str | None = None):
        beta1, beta2 = betas
        if not (_is_real(beta1) and _is_real(beta2) and 0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        if not _is_real(eps) or not 0.0 < eps < math.inf:
            raise ValueError(f"eps must be a finite positive number, got {eps!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        super().__init__(params, lr, backend)

    def moments(self) -> tuple[Array, Array]:
        """PyTorch's (exp_avg, exp_avg_sq) = ((1 - b1) s, (1 - b2) r), as new flat arrays."""
        return ((1.0 - self.beta1) * self.state["exp_sum"],
                (1.0 - self.beta2) * self.state["exp_sum_sq"])

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
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

    def flat_update(self, kernels: ArrayKernels) -> updates.FlatUpdate:
        return updates.AdamUpdate(self.flat, self.state, kernels)

    def hyperparameters(self) -> dict[str, float | bool]:
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
