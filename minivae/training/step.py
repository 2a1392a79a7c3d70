"""One training step: draw the noise, run forward and backward, update the parameters.

:class:`TrainStep` is what training loops and benchmarks call. It runs the fused step of
:mod:`minivae.fast.engine` (the same math as :meth:`minivae.model.VAE.forward_backward`, in preallocated
buffers), reuses one gradient buffer across steps, draws the noise on the device into a reused
buffer, and returns the loss terms as device scalars, so that a GPU loop never waits for the host.

Input checks: the step checks the batch's backend, dtype and shape (free), but not its values
(finite, in [0, 1] for a Bernoulli decoder): that costs two reductions per step and, on a GPU, a
host synchronisation. Validate the data set once before training (the training loop does:
:func:`minivae.validation.check_data`); ``TrainStep(..., check_values=True)`` checks every batch.
"""
from __future__ import annotations

import os
import warnings

from minivae._types import Array
from minivae.fast import program as recorded
from minivae.fast.engine import FusedStep, unsupported_reason
from minivae.fast.threads import PairRunner, single_threaded_blas
from minivae.model import IWAE_ESTIMATORS, VAE, LossTerms
from minivae.optim import Optimizer
from minivae.validation import check_beta, check_count, check_eps, check_layout


class FastPathWarning(UserWarning):
    """The fast path does not support a model, and the reference path runs instead."""


# ``threads="auto"`` splits a step between two threads when batch size x parameters reaches this:
# handing work to a Python thread costs some 50-100 us, worth it from batch 16 of the 784-400-20
# model (650k parameters) up, not for small models. A recorded step (minivae.fast.program) meets
# its worker at a spinning barrier, a microsecond: worth it from about a tenth of that work
# (2-core EPYC: a 64-32-4 model breaks even at batch 256, the 784-200-200-50 one gains from batch 4).
PARALLEL_MIN_WORK = 10_000_000
PROGRAM_PARALLEL_MIN_WORK = 1_000_000
# the cores this process may run on ("auto" keeps one thread where there is one)
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


OBJECTIVES = ("elbo", "iwae")


def check_objective(objective: str, k: int = 1, estimator: str = "reparam", n_samples: int = 1) -> None:
    """Refuse a combination that would silently train something else (ValueError)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if estimator not in IWAE_ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {IWAE_ESTIMATORS}")
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if objective == "elbo" and (k != 1 or estimator != "reparam"):
        raise ValueError("k and estimator belong to the IWAE objective (objective='iwae'); the ELBO "
                         f"takes n_samples (got k={k!r}, estimator={estimator!r})")
    if objective == "iwae" and n_samples != 1:
        raise ValueError(f"the IWAE objective takes k samples per example, not n_samples (got {n_samples!r})")


class TrainStep:
    """``step = TrainStep(model, optimizer, n_samples=1)``, then ``terms = step(x, beta=1.0)``.

    ``x`` is a batch (N, D) on the model's backend; ``eps`` (L, N, K) may be passed to fix the
    noise, otherwise it is drawn from ``model.random``. The gradients of the last step stay in
    ``step.grads`` (overwritten by the next step).

    ``fused=True`` (default) runs :class:`minivae.fast.engine.FusedStep` where it supports the model
    (:func:`minivae.fast.engine.unsupported_reason`); for any other model (a likelihood or an
    activation without fused kernels, a subclass of VAE) it runs the reference
    ``model.forward_backward`` and the optimizer, and warns once (:class:`FastPathWarning`).
    ``fused=False`` runs the reference without a warning. ``step.path`` says which runs
    (``"fused"`` or ``"reference"``), ``step.reason`` why not the fused one (None when it runs).

    ``program=True`` (default): on the CPU, where :func:`minivae.fast.program.unsupported_reason`
    allows (float32, the NumPy backend with its compiled kernels, ReLU / leaky ReLU / tanh, a
    Bernoulli decoder, Adam or SGD), the fused step is recorded once per batch shape and replayed
    in C++ (:class:`minivae.fast.program.ProgramStep`): the same calls in the same order, without
    the interpreter; on one thread bit for bit the engine's step. ``program=False``, or any other
    case, runs the engine from Python. ``step.runner`` says which: ``"program"``, ``"engine"`` or
    ``"reference"``; ``step.program_reason`` why not the program (None when it runs).

    ``objective``: ``"elbo"`` (default, :meth:`VAE.forward_backward`) or ``"iwae"``, the
    importance-weighted loss -IWAE_k with ``k`` samples per example and the encoder-gradient
    ``estimator`` ("reparam", "stl" or "dreg"; :meth:`VAE.iwae_forward_backward`). The fused step
    trains the ELBO only (:data:`minivae.fast.engine.FUSED_OBJECTIVES`): an IWAE step always runs
    the reference path (with the warning when ``fused=True``). ``k`` and ``estimator`` belong to
    IWAE (the ELBO takes ``n_samples``); an ELBO step refuses ``k != 1`` or another estimator, and
    IWAE refuses ``n_samples != 1`` and ``beta != 1`` (its weights are those of log p(x)).

    ``threads`` (NumPy only): 2 splits each step between two threads (a program shares every
    instruction between them; the engine splits as :meth:`_two_threads` says), 1 runs it on the
    calling thread with the BLAS as configured, ``"auto"`` (default) splits when batch size x
    parameters >= :data:`PROGRAM_PARALLEL_MIN_WORK` (a program) or :data:`PARALLEL_MIN_WORK` (the
    engine). A split step sets every loaded BLAS to one thread while it runs and restores the
    counts after (process-wide: BLAS calls made by other threads during a step run on one thread
    too). The split only reorders a few additions; a run is reproducible for a given setting.
    """

    def __init__(self, model: VAE, optimizer: Optimizer, n_samples: int = 1, fused: bool = True,
                 check_values: bool = False, threads: str | int = "auto", objective: str = "elbo",
                 k: int = 1, estimator: str = "reparam", program: bool = True):
        n_samples = check_count(n_samples, "n_samples")
        if threads not in ("auto", 1, 2):
            raise ValueError(f"threads must be 'auto', 1 or 2, got {threads!r}")
        check_objective(objective, k, estimator, n_samples)
        self.model, self.optimizer, self.n_samples = model, optimizer, int(n_samples)
        self.objective, self.k, self.estimator = objective, int(k), estimator
        self.grads = model.zeros_like_params()
        self.check_values = bool(check_values)
        self.reason = unsupported_reason(model, objective) if fused else "fused=False"
        if fused and self.reason is not None:
            warnings.warn(f"TrainStep runs the reference path (forward_backward + optimizer): {self.reason}. "
                          "Same math, slower.", FastPathWarning, stacklevel=2)
        self.fused = self.reason is None
        self.path = "fused" if self.fused else "reference"
        self._engine = FusedStep(model, self.grads) if self.fused else None
        # the fused step recorded and replayed in C++ where it can be (minivae.fast.program)
        self.program_reason = ("program=False" if not program else
                               recorded.unsupported_reason(model, optimizer, objective) if self.fused
                               else "the fused step does not run")
        self._program = (recorded.ProgramStep(model, optimizer, self.grads) if self.program_reason is None
                         else None)
        self.runner = "program" if self._program is not None else "engine" if self.fused else "reference"
        # two threads where the backend's split_step allows (not CuPy: one device)
        self.threads = threads if model.backend.split_step != "never" and self.fused else 1
        self._pair = None

    def __call__(self, x: Array, beta: float = 1.0, eps: Array | None = None) -> LossTerms:
        model, beta = self.model, check_beta(beta)
        if self.objective == "iwae":
            if beta != 1.0:
                raise ValueError(f"the IWAE objective has no KL weight: beta must be 1, got {beta}")
            terms, _ = model.iwae_forward_backward(x, eps=eps, k=self.k, estimator=self.estimator,
                                                   grads=self.grads)
            self.optimizer.step(self.grads)
            return terms
        if not self.fused:
            terms, _ = model.forward_backward(x, eps=eps, n_samples=self.n_samples, beta=beta,
                                              grads=self.grads)
            self.optimizer.step(self.grads)
            return terms
        if self.check_values:
            model.check_x(x)
        else:
            check_layout(x, model)
        # C order, as the reference and the kernels' raw indexing expect: a Fortran-ordered or
        # strided batch gives bit for bit the result of its contiguous copy (no copy when it is one)
        x = model.xp.ascontiguousarray(x)
        N = x.shape[0]
        if eps is None:
            eps = (self._program.noise(N, self.n_samples) if self._program is not None
                   else self._engine.workspace(N, self.n_samples).eps)
            model.random.normal(eps.shape, model.dtype, out=eps)
        else:
            eps = check_eps(eps, model, N, values=self.check_values)   # in C order
        if self._program is not None:
            nll_sum, kl_sum = self._program(x, eps, beta, 2 if self._use_two_threads(N) else 1)
        elif self._use_two_threads(N):
            nll_sum, kl_sum = self._two_threads(x, eps, beta)
        else:
            nll_sum, kl_sum = self._engine(x, eps, beta)
            self.optimizer.step(self.grads)
        L = eps.shape[0]
        reconstruction = nll_sum * (1.0 / (L * N))
        kl = kl_sum * (1.0 / N)
        return LossTerms(reconstruction + beta * kl, reconstruction, kl)

    def _use_two_threads(self, N):
        if self.threads == "auto":
            minimum = PARALLEL_MIN_WORK if self._program is None else PROGRAM_PARALLEL_MIN_WORK
            return (self.model.backend.split_step == "auto" and N >= 2 and CORES >= 2
                    and N * self.model.params.flat.size >= minimum)
        return self.threads == 2 and N >= 2

    def _two_threads(self, x, eps, beta):
        """Phase 1: each thread runs the forward pass and the deltas of half of the batch.
        Phase 2: one thread computes the decoder's parameter gradients and updates the decoder's
        parameters, the other does the same for the encoder (each network's parameters are one
        contiguous range of the flat vector). Same math as one thread; the loss sums are added per
        half and the matrix products run on one BLAS thread, so the last bits may differ."""
        engine, optimizer, runner = self._engine, self.optimizer, self._runner()
        N, L, h = x.shape[0], eps.shape[0], x.shape[0] // 2
        together = optimizer.params is self.model.params   # else: one update after phase 2
        scalars = []

        def network(name):
            engine.parameter_gradients(x, L, name, parts=2)
            if together:
                optimizer.update_range(self.grads.flat, *self.model.params.range(name), scalars[0])
        with single_threaded_blas():
            ((nll_a, kl_a), _), ((nll_b, kl_b), _) = runner.run_phases(
                [(lambda: engine.deltas(x, eps, beta, rows=(0, h), part=0),
                  lambda: engine.deltas(x, eps, beta, rows=(h, N), part=1)),
                 (lambda: network("decoder"), lambda: network("encoder"))],
                between=(lambda: scalars.append(optimizer.begin_step())) if together else None)
            if not together:
                optimizer.step(self.grads)
        return nll_a + nll_b, kl_a + kl_b

    def _runner(self):
        if self._pair is None:
            self._pair = PairRunner()
        return self._pair
