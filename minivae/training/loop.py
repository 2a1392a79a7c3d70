"""Training: shuffled minibatches, Adam, beta with optional KL warm-up, held-out curves, checkpoints.

One optimisation step is one call of :class:`minivae.TrainStep`; this module decides what goes into
it and keeps the books. Losses are summed *on the device* and read with ``float()`` only every
``log_every`` steps (progress bar, NaN check, time limit) and at the end of an epoch, so that a GPU
never waits for the host.

Per step t (1-based, counted over the whole run), in epoch e (0-based):

    lr_e   = max(lr * lr_decay^e, lr_min)                       (constant within an epoch)
    or, with lr_schedule="burda" (Burda et al. 2016: 3^i epochs at lr * 10^(-i/7), i = 0..7),
    lr_e   = lr * 10^(-i/7)  for  (3^i - 1)/2 <= e < (3^(i+1) - 1)/2
    beta_t = beta * min(1, t / (warmup_epochs * steps_per_epoch))   (linear KL warm-up; beta if none)

Randomness is *counter-based*: at the start of epoch e the data stream (the shuffle, and the
dynamic binarization of the whole training set) and the model's noise stream (``model.random``,
which draws eps) are reseeded from ``(seed, e)``; evaluation draws from a third stream. So a run
resumed from an end-of-epoch checkpoint is bit-exact on every backend. A checkpoint taken in the
middle of an epoch (Ctrl-C, time limit) also stores the noise generator's state where the backend
can export it (NumPy); on CuPy, which cannot, resuming reseeds from ``(seed, e)`` and replays the
draws of the steps already done, which gives the same stream.

A loss or a parameter that becomes NaN or Inf stops training with :class:`TrainingDiverged`;
nothing is saved after the last good checkpoint.

SIGINT (Ctrl-C) and SIGTERM (``kill``, a batch scheduler's stop) are handled alike: the step under
way finishes, a checkpoint of the exact state is written, and :meth:`Trainer.fit` raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt`` that says which signal it was).
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from minivae._types import Array
from minivae.backend import to_numpy
from minivae.optim import Adam
from minivae.training.checkpoint import CheckpointError, check_array, load_checkpoint, require, save_checkpoint
from minivae.training.data import binarize_dynamic
from minivae.training.evaluate import heldout_elbo, latent_statistics
from minivae.training.step import TrainStep, check_objective

if TYPE_CHECKING:
    from minivae.model import VAE
    from minivae.optim import Optimizer


STREAMS = {"data": 0, "noise": 1, "eval": 2, "final": 3, "pictures": 4}
# fields of TrainConfig that do not change the trajectory of the parameters; a resumed run may differ
# in these, not in the others
FREE_FIELDS = ("epochs", "log_every", "eval_every", "eval_batch_size")


class TrainingDiverged(FloatingPointError):
    """The loss or the parameters became NaN or Inf."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal; ``signal`` is its number (``signal.SIGINT``, ``signal.SIGTERM``)."""

    def __init__(self, message: str = "", signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signal = signum


# the signals that stop training cleanly (SIGTERM does not exist on every platform's Python)
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


class InterruptRequest:
    """Turns the first SIGINT (Ctrl-C) or SIGTERM into a request that the loop honours between two
    steps, so that the checkpoint it then writes is a consistent state; a second signal interrupts
    at once. Only in the main thread (Python delivers signals there); elsewhere it does nothing."""

    def __init__(self) -> None:
        self.requested, self.signum, self._previous = False, None, {}

    def __enter__(self) -> InterruptRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise TrainingInterrupted(f"{signal.Signals(signum).name} again: stopped at once", signum)
        self.requested, self.signum = True, signum

    def __exit__(self, *exc_info: object) -> bool:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


def derive_seed(seed: int, epoch: int, stream: str) -> int:
    """A seed for ``stream`` (a key of ``STREAMS``) of epoch ``epoch``: a 32-bit
    integer hashed from the three by NumPy's SeedSequence, the same on every backend."""
    return int(np.random.SeedSequence([int(seed), int(epoch), STREAMS[stream]]).generate_state(1)[0])


LR_SCHEDULES = ("exponential", "burda")
BURDA_EPOCHS = sum(3 ** i for i in range(8))   # 3280: the schedule of Burda et al. (2016), i = 0..7


def burda_stage(epoch: int) -> int:
    """The stage i of 0-based ``epoch`` in Burda et al.'s schedule: stage i lasts 3^i epochs, so it
    starts at epoch (3^i - 1) / 2. Epochs after the eighth stage stay in the last one (i = 7)."""
    stage = 0
    while stage < 7 and epoch >= (3 ** (stage + 1) - 1) // 2:
        stage += 1
    return stage


@dataclass
class TrainConfig:
    """Everything that defines a training run besides the model and the data (JSON-friendly)."""
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0        # learning rate multiplied by this after every epoch
    lr_min: float = 0.0          # ... but never below this
    lr_schedule: str = "exponential"   # or "burda": 3^i epochs at lr * 10^(-i/7) (BURDA_EPOCHS in all)
    beta: float = 1.0            # weight of the KL term
    warmup_epochs: float = 0.0   # KL weight ramps linearly from 0 to beta over these epochs
    n_samples: int = 1           # Monte Carlo samples of z per example and step
    dynamic_binarization: bool = False   # a fresh Bernoulli draw of the training set every epoch
    seed: int = 0
    monitor: bool = False        # record per-layer gradient norms and per-dimension KL every epoch
    log_every: int = 50          # steps between host reads: progress bar, NaN check, time limit
    eval_every: int = 1          # held-out evaluation every this many epochs (0: never)
    eval_batch_size: int = 1000
    threads: object = "auto"     # threads of a training step on NumPy: "auto", 1 or 2 (TrainStep)
    objective: str = "elbo"      # "elbo" or "iwae" (the importance-weighted loss -IWAE_k; reference path)
    k: int = 1                   # importance samples per example of the IWAE objective
    estimator: str = "reparam"   # IWAE encoder gradient: "reparam", "stl" or "dreg"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_samples", "seed", "log_every", "eval_every",
                     "eval_batch_size", "k"):
            value = getattr(self, name)
            if int(value) != value:
                raise ValueError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(value))
        for name in ("lr", "lr_decay", "lr_min", "beta", "warmup_epochs"):
            setattr(self, name, float(getattr(self, name)))
        checks = [*[(name, math.isfinite(getattr(self, name)))
                    for name in ("lr", "lr_decay", "lr_min", "beta", "warmup_epochs")],
                  ("epochs", self.epochs >= 0), ("batch_size", self.batch_size >= 1),
                  ("n_samples", self.n_samples >= 1), ("seed", self.seed >= 0),
                  ("log_every", self.log_every >= 1), ("eval_every", self.eval_every >= 0),
                  ("eval_batch_size", self.eval_batch_size >= 1), ("lr", self.lr > 0.0),
                  ("lr_decay", 0.0 < self.lr_decay <= 1.0), ("lr_min", self.lr_min >= 0.0),
                  ("beta", self.beta >= 0.0), ("warmup_epochs", self.warmup_epochs >= 0.0)]
        checks.append(("lr_schedule", self.lr_schedule in LR_SCHEDULES))
        if self.threads != "auto":
            checks.append(("threads", self.threads in (1, 2)))
        for name, ok in checks:
            if not ok:
                raise ValueError(f"invalid {name}: {getattr(self, name)!r}")
        check_objective(self.objective, self.k, self.estimator, self.n_samples)
        if self.objective == "iwae" and (self.beta != 1.0 or self.warmup_epochs != 0.0):
            raise ValueError("the IWAE objective has no KL weight: it needs beta = 1 and no warm-up")
        self.dynamic_binarization, self.monitor = bool(self.dynamic_binarization), bool(self.monitor)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def layer_groups(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, list[str]]:
    """Parameter names grouped by layer: ``{"encoder.0": ["encoder.0.W", "encoder.0.b"], ...}``."""
    groups = {}
    for name in shapes:
        layer = name.rsplit(".", 1)[0] if name.endswith((".W", ".b")) else name
        groups.setdefault(layer, []).append(name)
    return groups


def new_history() -> dict:
    """The per-epoch record, as lists aligned by epoch (None where a value was not measured)."""
    return {"epoch": [], "lr": [], "beta": [], "seconds": [],
            "train_loss": [], "train_reconstruction": [], "train_kl": [], "train_neg_elbo": [],
            "valid_neg_elbo": [], "valid_reconstruction": [], "valid_kl": [],
            "grad_norm": {}, "kl_per_dim": [], "active_units": []}


class Trainer:
    """Trains ``model`` on ``x_train`` with Adam; evaluates on ``x_valid``; checkpoints.

    Parameters
    ----------
    model : VAE
    x_train : (N, D) array, host or device
        Copied to the model's device once (``backend.to_device``) and validated once here.
        With ``config.dynamic_binarization`` these are the probabilities to draw pixels from.
    config : TrainConfig
    x_valid : (M, D) array, optional
        Held-out data for the per-epoch negative ELBO (z sampled), already preprocessed.
    checkpoint_path : path, optional
        Written at the end of every epoch and on Ctrl-C / time limit (atomically).
    progress : bool
        Show a tqdm bar per epoch with the running loss, reconstruction and KL.
    log : callable or None
        Receives one summary line per epoch (default ``print``; through tqdm when it is shown).
    metadata : dict, optional
        Stored in the checkpoint as is (e.g. the example's command-line configuration).
    optimizer : Optimizer, optional
        Default ``Adam(model.params, lr=config.lr)``; its ``lr`` is set
        from the schedule (``config.lr``, ``lr_decay``, ``lr_min``) at the start of every epoch.
    """

    def __init__(self, model: VAE, x_train: Array, config: TrainConfig | None = None, x_valid: Array | None = None,
                 checkpoint_path: str | os.PathLike | None = None, progress: bool = True,
                 log: Callable[[str], object] | None = print, metadata: Mapping[str, Any] | None = None,
                 optimizer: Optimizer | None = None) -> None:
        self.model, self.backend = model, model.backend
        self.config = config if config is not None else TrainConfig()
        self.x_train = model.check_x(self._on_device(x_train), name="x_train")
        self.x_valid = None if x_valid is None else model.check_x(self._on_device(x_valid), name="x_valid")
        self.optimizer = optimizer if optimizer is not None else Adam(model.params, lr=self.config.lr)
        self.step = TrainStep(model, self.optimizer, n_samples=self.config.n_samples,
                              threads=self.config.threads, objective=self.config.objective,
                              k=self.config.k, estimator=self.config.estimator)
        self.checkpoint_path = checkpoint_path
        self.progress, self.log, self.metadata = progress, log, dict(metadata or {})
        self.groups = layer_groups(model.shapes)
        self.epoch = 0            # completed epochs
        self.step_in_epoch = 0    # steps done in the epoch under way (0 at an epoch boundary)
        self.global_step = 0
        self.history = new_history()
        self.stop_reason = None   # "completed" or "time_limit" after fit()
        self._sums = None         # device sums of the epoch under way
        self._epoch_seconds = 0.0
        self._epoch_buffers = None   # the epoch's shuffled (and binarized) data, and the draws
        self._interrupt = InterruptRequest()
        self.last_saved = None   # (epoch, step_in_epoch) of the last checkpoint written or restored

    def _on_device(self, x):
        return x if self.backend.is_native(x) else self.backend.to_device(x, dtype=self.model.dtype)

    @property
    def samples_per_step(self) -> int:
        """z samples per example in one step: k for IWAE, n_samples for the ELBO."""
        return self.config.k if self.config.objective == "iwae" else self.config.n_samples

    # --- schedules ----------------------------------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.config.batch_size)

    def lr_at(self, epoch: int) -> float:
        c = self.config
        if c.lr_schedule == "burda":
            return c.lr * 10.0 ** (-burda_stage(epoch) / 7.0)
        return max(c.lr * c.lr_decay ** epoch, c.lr_min)

    def beta_at(self, step: int) -> float:
        """The KL weight of global step ``step`` (1-based)."""
        c = self.config
        if c.warmup_epochs == 0.0:
            return c.beta
        return c.beta * min(1.0, step / (c.warmup_epochs * self.steps_per_epoch))

    # --- the loop -----------------------------------------------------------------------------------
    def fit(self, epochs: int | None = None, time_limit: float | None = None) -> dict:
        """Train until ``epochs`` (default ``config.epochs``) epochs are complete, or until
        ``time_limit`` seconds of this call have passed (then stop cleanly: at an epoch boundary if
        the next epoch would not fit, else at a log interval, with a checkpoint). Returns the history.

        Ctrl-C (SIGINT) or SIGTERM finishes the step under way, saves a checkpoint of the exact state
        (resumable with :meth:`restore`) and raises :class:`TrainingInterrupted`; a second signal
        stops at once.
        """
        epochs = self.config.epochs if epochs is None else int(epochs)
        began = time.perf_counter()
        deadline = None if time_limit is None else began + float(time_limit)
        self.stop_reason = "completed"
        epochs_done, epoch_wall = 0, None
        with InterruptRequest() as self._interrupt:
            while self.epoch < epochs:
                if deadline is not None and epoch_wall is not None and (
                        time.perf_counter() + epoch_wall > deadline):
                    self.stop_reason = "time_limit"     # the next epoch would not end in time
                    break
                completed = self._run_epoch(epochs, deadline)
                if completed:   # wall time per epoch in this call: training, evaluation, checkpoint
                    epochs_done += 1
                    epoch_wall = (time.perf_counter() - began) / epochs_done
                if self._interrupt.requested:
                    self.save(quiet_if_bad=True)
                    signum = self._interrupt.signum
                    raise TrainingInterrupted(f"{signal.Signals(signum).name}: interrupted in epoch "
                                              f"{self.epoch + 1}, after step {self.step_in_epoch}; "
                                              f"checkpoint: {self.checkpoint_path}", signum)
                if not completed:
                    self.stop_reason = "time_limit"
                    self.save()
                    break
        return self.history

    def _epoch_data(self, epoch):
        """The training set of epoch ``epoch``, shuffled (and binarized): (N, D) on the device, in
        a buffer reused from epoch to epoch (a fresh copy of MNIST is 188 MB of page faults)."""
        xp = self.model.xp
        data_random = self.backend.random(derive_seed(self.config.seed, epoch, "data"))
        if self._epoch_buffers is None:
            self._epoch_buffers = [xp.empty_like(self.x_train)
                                   for _ in range(2 if self.config.dynamic_binarization else 1)]
        x_epoch = self._epoch_buffers[0]
        xp.take(self.x_train, data_random.permutation(self.x_train.shape[0]), axis=0, out=x_epoch)
        if self.config.dynamic_binarization:
            binarize_dynamic(x_epoch, data_random, out=x_epoch, draws=self._epoch_buffers[1])
        return x_epoch

    def _new_sums(self):
        zero = self.model.xp.zeros((), dtype=self.model.dtype)
        sums = {"loss": zero, "reconstruction": zero, "kl": zero}
        if self.config.monitor:
            sums.update({f"grad_norm.{layer}": zero for layer in self.groups})
        return sums

    def _run_epoch(self, epochs, deadline) -> bool:
        """Run (the rest of) epoch ``self.epoch``. False if stopped by the deadline."""
        c, xp, epoch = self.config, self.model.xp, self.epoch
        N, B, steps = self.x_train.shape[0], c.batch_size, self.steps_per_epoch
        began = time.perf_counter()
        x_epoch = self._epoch_data(epoch)
        if self.step_in_epoch == 0:
            self.model.random = self.backend.random(derive_seed(c.seed, epoch, "noise"))
            self._sums, self._epoch_seconds = self._new_sums(), 0.0
        self.optimizer.lr = self.lr_at(epoch)
        bar = self._bar(epoch, epochs)
        last_read = self.step_in_epoch
        beta = self.beta_at(max(self.global_step, 1))
        try:
            for i in range(self.step_in_epoch, steps):
                xb = x_epoch[i * B:(i + 1) * B]
                beta = self.beta_at(self.global_step + 1)
                terms = self.step(xb, beta=beta)
                weight = xb.shape[0] / N      # sums become per-example means over the epoch
                sums = self._sums
                sums["loss"] = sums["loss"] + terms.loss * weight
                sums["reconstruction"] = sums["reconstruction"] + terms.reconstruction * weight
                sums["kl"] = sums["kl"] + terms.kl * weight
                if c.monitor:
                    for layer, names in self.groups.items():
                        norm = xp.sqrt(sum((self.step.grads[n] * self.step.grads[n]).sum() for n in names))
                        sums[f"grad_norm.{layer}"] = sums[f"grad_norm.{layer}"] + norm * (1.0 / steps)
                self.step_in_epoch, self.global_step = i + 1, self.global_step + 1
                if self.step_in_epoch % c.log_every == 0 or self.step_in_epoch == steps:
                    running = self._read_running(epoch)
                    if bar is not None:
                        bar.update(self.step_in_epoch - last_read)
                        bar.set_postfix(running)
                    last_read = self.step_in_epoch
                    if (deadline is not None and time.perf_counter() > deadline
                            and self.step_in_epoch < steps):
                        self._epoch_seconds += time.perf_counter() - began
                        return False
                if self._interrupt.requested and self.step_in_epoch < steps:
                    self._epoch_seconds += time.perf_counter() - began
                    return False
        finally:
            if bar is not None:
                bar.close()
        self._epoch_seconds += time.perf_counter() - began
        self._end_epoch(epoch, epochs, beta)
        return True

    def _read_running(self, epoch) -> dict:
        """Host copies of the running means (one synchronisation); raises on NaN or Inf."""
        fraction = min(1.0, self.step_in_epoch * self.config.batch_size / self.x_train.shape[0])
        values = {name: float(self._sums[name]) / fraction for name in ("loss", "reconstruction", "kl")}
        if not all(math.isfinite(v) for v in values.values()):
            self._diverged(epoch, f"the training loss became {values['loss']}")
        return {"loss": f"{values['loss']:.2f}", "rec": f"{values['reconstruction']:.2f}",
                "kl": f"{values['kl']:.2f}"}

    def _diverged(self, epoch, what):
        if self.last_saved is None:
            where = "no checkpoint was written"
        else:
            saved_epoch, saved_step = self.last_saved
            when = (f"end of epoch {saved_epoch}" if saved_step == 0
                    else f"epoch {saved_epoch + 1}, step {saved_step}")
            where = f"the last good checkpoint, {self.checkpoint_path} ({when}), is kept"
        raise TrainingDiverged(
            f"training stopped: {what} in epoch {epoch + 1}, by step {self.step_in_epoch} of "
            f"{self.steps_per_epoch} (global step {self.global_step}); {where}. Resuming with the "
            "same settings repeats the same steps: start again with a lower learning rate (--lr), "
            "KL warm-up (--warmup-epochs) or float64.")

    def _parameters_finite(self) -> bool:
        return bool(self.model.xp.isfinite(self.model.flat_params).all())

    def _end_epoch(self, epoch, epochs, beta):
        c = self.config
        if not self._parameters_finite():
            self._diverged(epoch, "a parameter became NaN or Inf")
        train = {name: float(self._sums[name]) for name in ("loss", "reconstruction", "kl")}
        evaluate_now = (self.x_valid is not None and c.eval_every > 0
                        and ((epoch + 1) % c.eval_every == 0 or epoch + 1 == epochs))
        valid = (heldout_elbo(self.model, self.x_valid, c.eval_batch_size,
                              random=self.backend.random(derive_seed(c.seed, epoch, "eval")))
                 if evaluate_now else {})
        if valid and not math.isfinite(valid["neg_elbo"]):
            self._diverged(epoch, f"the held-out -ELBO became {valid['neg_elbo']}")
        record = {"epoch": epoch + 1, "lr": self.optimizer.lr, "beta": beta,
                  "seconds": self._epoch_seconds, "train_loss": train["loss"],
                  "train_reconstruction": train["reconstruction"], "train_kl": train["kl"],
                  "train_neg_elbo": train["reconstruction"] + train["kl"],
                  "valid_neg_elbo": valid.get("neg_elbo"),
                  "valid_reconstruction": valid.get("reconstruction"), "valid_kl": valid.get("kl")}
        if c.monitor:
            grad_norms = {layer: float(self._sums[f"grad_norm.{layer}"]) for layer in self.groups}
            x_stats = self.x_valid if self.x_valid is not None else self.x_train[:10000]
            stats = latent_statistics(self.model, x_stats, c.eval_batch_size)
            record.update(kl_per_dim=stats["kl_per_dim"], active_units=stats["active_units"])
        # the history changes only here, all at once, so that a checkpoint never holds half an epoch
        for name, value in record.items():
            self.history[name].append(value)
        if c.monitor:
            for layer, norm in grad_norms.items():
                self.history["grad_norm"].setdefault(layer, []).append(norm)
        self.epoch, self.step_in_epoch, self._sums = epoch + 1, 0, None
        self.save()
        if self.log is not None:
            self._write(self.summary_line(epochs))

    def summary_line(self, epochs: int) -> str:
        """One line about the last completed epoch."""
        h = self.history
        line = (f"epoch {h['epoch'][-1]}/{epochs}  train -ELBO {h['train_neg_elbo'][-1]:.2f} "
                f"(rec {h['train_reconstruction'][-1]:.2f}, KL {h['train_kl'][-1]:.2f})")
        if h["valid_neg_elbo"][-1] is not None:
            line += (f"  held-out -ELBO {h['valid_neg_elbo'][-1]:.2f} "
                     f"(rec {h['valid_reconstruction'][-1]:.2f}, KL {h['valid_kl'][-1]:.2f})")
        if self.config.objective == "iwae":
            line += f"  train -IWAE_{self.config.k} ({self.config.estimator}) {h['train_loss'][-1]:.2f}"
        if self.config.monitor:
            line += f"  active units {h['active_units'][-1]}/{self.model.latent_dim}"
        return line + f"  lr {h['lr'][-1]:.3g}  beta {h['beta'][-1]:.3g}  [{h['seconds'][-1]:.1f} s]"

    def _bar(self, epoch, epochs):
        if not self.progress:
            return None
        from tqdm.auto import tqdm
        return tqdm(total=self.steps_per_epoch, initial=self.step_in_epoch, leave=False,
                    desc=f"epoch {epoch + 1}/{epochs}", unit="step")

    def _write(self, line):
        if self.progress and self.log is print:
            from tqdm.auto import tqdm
            tqdm.write(line)
        else:
            self.log(line)

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The exact training state as ``(arrays, meta)`` for :func:`minivae.training.checkpoint.save_checkpoint`."""
        arrays = {"params": to_numpy(self.model.flat_params)}
        optimizer_state = self.optimizer.state_dict()
        arrays.update({f"optimizer.{name}": to_numpy(value) for name, value in optimizer_state.items()
                       if hasattr(value, "shape")})
        optimizer_meta = {name: value for name, value in optimizer_state.items() if not hasattr(value, "shape")}
        noise_state = None
        if self.step_in_epoch:
            arrays.update({f"sums.{name}": to_numpy(value) for name, value in self._sums.items()})
            if self.backend.can_export_rng_state:
                noise_state = self.model.random.get_state()
        meta = {"model": self.model.config, "train": self.config.as_dict(),
                "optimizer": {"type": type(self.optimizer).__name__, **optimizer_meta},
                "progress": {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                             "global_step": self.global_step, "n_train": int(self.x_train.shape[0]),
                             "epoch_seconds": self._epoch_seconds},
                "rng": {"scheme": "counter-based: reseeded from (seed, epoch) every epoch",
                        "noise_state": noise_state},
                "history": self.history, "metadata": self.metadata}
        return arrays, meta

    def save(self, path: str | os.PathLike | None = None, quiet_if_bad: bool = False) -> str | os.PathLike | None:
        """Write a checkpoint (to ``checkpoint_path`` by default), if the state is finite."""
        path = path or self.checkpoint_path
        if path is None:
            return None
        if not self._parameters_finite():
            if quiet_if_bad:
                return None
            raise TrainingDiverged(f"not saving {path}: a parameter is NaN or Inf")
        arrays, meta = self.state()
        save_checkpoint(path, arrays, meta)
        self.last_saved = (self.epoch, self.step_in_epoch)
        return path

    def restore(self, path: str | os.PathLike) -> Trainer:
        """Load a checkpoint written by :meth:`save` into this trainer, whose model and config must
        match it (the config may differ in ``epochs``, ``log_every`` and the evaluation settings).

        Nothing is trusted: a missing entry, another architecture or configuration (the message
        names each difference), arrays of the wrong shape or dtype, NaN or Inf, progress counters
        that are not counts or do not add up, a history that is not one entry per epoch, and a
        noise state that does not load are refused with a :class:`CheckpointError`, before
        anything in this trainer changes."""
        arrays, meta = load_checkpoint(path)
        require(path, meta, "model", "train", "optimizer", "progress", "rng", "history", what="metadata")
        for name in ("train", "optimizer", "progress", "rng", "history"):
            if not isinstance(meta[name], dict):
                raise CheckpointError(f"{path}: its {name!r} entry is a {type(meta[name]).__name__}, "
                                      "not a JSON object")
        mine = self.model.config
        if meta["model"] != mine:
            saved = meta["model"] if isinstance(meta["model"], dict) else {}
            differ = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k)) or ["model"]
            raise CheckpointError(f"{path} holds another architecture: "
                                  + ", ".join(f"{k}={saved.get(k)!r} (now {mine.get(k)!r})" for k in differ))
        try:
            saved = TrainConfig.from_dict(meta["train"]).as_dict()
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: its training configuration is invalid: {error}") from error
        mine = self.config.as_dict()
        differ = [k for k in saved if k not in FREE_FIELDS and saved[k] != mine[k]]
        if differ:
            raise CheckpointError(f"{path} was trained with a different configuration: "
                                  + ", ".join(f"{k}={saved[k]!r} (now {mine[k]!r})" for k in differ))
        optimizer_meta, progress = meta["optimizer"], meta["progress"]
        require(path, optimizer_meta, "type", "step", what="optimizer entry")
        if optimizer_meta["type"] != type(self.optimizer).__name__:
            raise CheckpointError(f"{path} holds the state of {optimizer_meta['type']}, not "
                                  f"{type(self.optimizer).__name__}")
        require(path, progress, "epoch", "step_in_epoch", "global_step", "n_train", "epoch_seconds",
                what="progress entry")
        counts = {"optimizer step": optimizer_meta["step"],
                  **{name: progress[name] for name in ("epoch", "step_in_epoch", "global_step", "n_train")}}
        for name, value in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(f"{path}: its {name} is {value!r}, not a count")
        seconds = progress["epoch_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0.0 <= seconds < math.inf:
            raise CheckpointError(f"{path}: its epoch_seconds is {seconds!r}, not a duration")
        if progress["n_train"] != self.x_train.shape[0]:
            raise CheckpointError(f"{path} was trained on {progress['n_train']} examples, "
                                  f"not {self.x_train.shape[0]}")
        epoch, step_in_epoch = progress["epoch"], progress["step_in_epoch"]
        if not step_in_epoch < self.steps_per_epoch:
            raise CheckpointError(f"{path}: progress {progress} does not fit {self.steps_per_epoch} steps per epoch")
        if progress["global_step"] != epoch * self.steps_per_epoch + step_in_epoch:
            raise CheckpointError(f"{path}: progress {progress} does not add up: epoch {epoch} of "
                                  f"{self.steps_per_epoch} steps and step {step_in_epoch} are step "
                                  f"{epoch * self.steps_per_epoch + step_in_epoch}")
        history = self._checked_history(path, meta["history"], epoch)
        dtype, model = self.model.dtype, self.model
        expected = {"params": model.flat_params.shape,
                    **{f"optimizer.{name}": vector.shape for name, vector in self.optimizer.state.items()}}
        if step_in_epoch:
            expected.update({f"sums.{name}": () for name in self._new_sums()})
        require(path, arrays, *expected, what="array")
        for name, shape in expected.items():
            check_array(path, name, arrays[name], shape, dtype, allow_inf=name != "params")
        random = self.model.random
        if step_in_epoch:   # the noise stream first: the one part that can still fail
            try:
                self._restore_noise(meta["rng"].get("noise_state"), epoch, step_in_epoch)
            except (TypeError, ValueError, KeyError, AttributeError) as error:
                self.model.random = random
                raise CheckpointError(f"{path}: its noise generator state cannot be restored: {error}") from error

        self.model.flat_params[...] = self.backend.to_device(arrays["params"], dtype=dtype)
        self.optimizer.load_state_dict({**optimizer_meta, **{
            name[len("optimizer."):]: self.backend.to_device(arrays[name], dtype=dtype)
            for name in expected if name.startswith("optimizer.")}})
        self.epoch, self.step_in_epoch = epoch, step_in_epoch
        self.global_step, self._epoch_seconds = progress["global_step"], float(seconds)
        self.history = history
        self._sums, self.last_saved = None, (self.epoch, self.step_in_epoch)
        if self.step_in_epoch:
            self._sums = {name[len("sums."):]: self.backend.to_device(arrays[name], dtype=dtype)
                          for name in expected if name.startswith("sums.")}
        return self

    @staticmethod
    def _checked_history(path, history, epochs):
        """``history`` if it has every entry of :func:`new_history`, one value per completed epoch
        (the monitoring entries at most one); else a :class:`CheckpointError`."""
        for name, empty in new_history().items():
            value = history.get(name)
            if not isinstance(value, type(empty)):
                raise CheckpointError(f"{path}: its history has no {name!r} list" if isinstance(empty, list)
                                      else f"{path}: its history's {name!r} is not a JSON object")
            per_epoch = name not in ("grad_norm", "kl_per_dim", "active_units")
            lists = value.values() if isinstance(value, dict) else [value]
            if any(not isinstance(v, list) or len(v) > epochs or (per_epoch and len(v) != epochs) for v in lists):
                raise CheckpointError(f"{path}: its history's {name!r} does not hold one value per epoch "
                                      f"of the {epochs} completed")
        return history

    def _restore_noise(self, noise_state, epoch=None, step_in_epoch=None):
        """Put ``model.random`` where it was after ``step_in_epoch`` steps of epoch ``epoch``
        (default: this trainer's)."""
        epoch = self.epoch if epoch is None else epoch
        step_in_epoch = self.step_in_epoch if step_in_epoch is None else step_in_epoch
        self.model.random = self.backend.random(derive_seed(self.config.seed, epoch, "noise"))
        if noise_state is not None and self.backend.can_export_rng_state:
            self.model.random.set_state(noise_state)
            return
        # no exported state (CuPy's generators): replay the draws TrainStep made, same shapes, same order
        N, B = self.x_train.shape[0], self.config.batch_size
        for i in range(step_in_epoch):
            self.model.draw_eps(min(B, N - i * B), self.samples_per_step)


def train(model: VAE, x_train: Array, config: TrainConfig | None = None, x_valid: Array | None = None,
          **kwargs: Any) -> dict:
    """Train ``model`` with a :class:`Trainer` and return the history (see :class:`Trainer`)."""
    return Trainer(model, x_train, config, x_valid, **kwargs).fit()
