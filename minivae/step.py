"""One training step: draw the noise, run forward and backward, update the parameters.

:class:`TrainStep` is what training loops and benchmarks call. It runs the fused step of
:mod:`minivae.engine` (the same math as :meth:`minivae.model.VAE.forward_backward`, in preallocated
buffers), reuses one gradient buffer across steps, draws the noise on the device into a reused
buffer, and returns the loss terms as device scalars, so that a GPU loop never waits for the host.

Input checks: the step checks the batch's backend, dtype and shape (free), but not its values
(finite, in [0, 1] for a Bernoulli decoder): that costs two reductions per step and, on a GPU, a
host synchronisation. Validate the data set once before training (the training loop does:
:func:`minivae.validation.check_data`); ``TrainStep(..., check_values=True)`` checks every batch.
"""
from __future__ import annotations

from minivae.engine import FusedStep
from minivae.model import VAE, LossTerms
from minivae.validation import check_data, check_eps, check_layout


class TrainStep:
    """``step = TrainStep(model, optimizer, n_samples=1)``, then ``terms = step(x, beta=1.0)``.

    ``x`` is a batch (N, D) on the model's backend; ``eps`` (L, N, K) may be passed to fix the
    noise, otherwise it is drawn from ``model.random``. The gradients of the last step stay in
    ``step.grads`` (overwritten by the next step).

    ``fused=True`` (default) runs :class:`minivae.engine.FusedStep`; ``fused=False`` (and any model
    that is not a plain :class:`~minivae.model.VAE`, e.g. a subclass with its own forward) runs the
    reference ``model.forward_backward``.
    """

    def __init__(self, model, optimizer, n_samples=1, fused=True, check_values=False):
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        self.model, self.optimizer, self.n_samples = model, optimizer, int(n_samples)
        self.grads = model.zeros_like_params()
        self.check_values = bool(check_values)
        self.fused = bool(fused) and type(model) is VAE
        self._engine = FusedStep(model, self.grads) if self.fused else None

    def __call__(self, x, beta=1.0, eps=None) -> LossTerms:
        model, beta = self.model, float(beta)
        if not self.fused:
            terms, _ = model.forward_backward(x, eps=eps, n_samples=self.n_samples, beta=beta,
                                              grads=self.grads)
            self.optimizer.step(self.grads)
            return terms
        if self.check_values:
            check_data(x, model, unit_interval=model.likelihood == "bernoulli")
        else:
            check_layout(x, model)
        N = x.shape[0]
        if eps is None:
            eps = self._engine.workspace(N, self.n_samples).eps
            model.random.normal(eps.shape, model.dtype, out=eps)
        else:
            eps = check_eps(eps, model, N)
        nll_sum, kl_sum = self._engine(x, eps, beta)
        L = eps.shape[0]
        reconstruction = nll_sum * (1.0 / (L * N))
        kl = kl_sum * (1.0 / N)
        self.optimizer.step(self.grads)
        return LossTerms(reconstruction + beta * kl, reconstruction, kl)
