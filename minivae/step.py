"""One training step: draw the noise, run forward and backward, update the parameters.

:class:`TrainStep` is what training loops and benchmarks call. It reuses one gradient buffer across
steps and returns the loss terms as device scalars, so that a GPU loop never waits for the host.
"""
from __future__ import annotations

from minivae.model import LossTerms


class TrainStep:
    """``step = TrainStep(model, optimizer, n_samples=1)``, then ``terms = step(x, beta=1.0)``.

    ``x`` is a batch (N, D) on the model's backend; ``eps`` (L, N, K) may be passed to fix the
    noise, otherwise it is drawn from ``model.random``. The gradients of the last step stay in
    ``step.grads`` (overwritten by the next step).
    """

    def __init__(self, model, optimizer, n_samples=1):
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self.model, self.optimizer, self.n_samples = model, optimizer, int(n_samples)
        self.grads = model.zeros_like_params()

    def __call__(self, x, beta=1.0, eps=None) -> LossTerms:
        terms, _ = self.model.forward_backward(x, eps=eps, n_samples=self.n_samples, beta=beta,
                                               grads=self.grads)
        self.optimizer.step(self.grads)
        return terms
