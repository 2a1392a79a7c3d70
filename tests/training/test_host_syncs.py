"""No host synchronisation inside the training loop.

On a GPU every read of a device value by the host (``float()``, ``bool()``, ``.item()``, a check
such as ``(x < 0).any()`` in an ``if``) waits until the device has finished all queued work, so a
loop that reads once per step runs at the speed of its slowest launch. The strict stand-in counts
such reads (:func:`minivae.backend.strict.host_reads`): a training step makes none, and a training
epoch makes a fixed number per log interval, whatever its number of steps. On a GPU the same is
checked with CuPy's own detector.
"""
import warnings

import numpy as np
import pytest

import minivae
from minivae.backend import cupy_gpu_available, strict
from minivae.training.loop import TrainConfig, Trainer


def data(n, D=12, seed=0):
    return (np.random.default_rng(seed).random((n, D)) < 0.3).astype(np.float32)


def model_on(backend, **kwargs):
    return minivae.VAE(12, [8], 3, backend=backend, seed=0, **kwargs)


def reads_per_step(step, x, steps=5):
    step(x)                                    # the first step allocates the workspace
    before = strict.host_reads()
    total = step.model.xp.zeros((), dtype=step.model.dtype)
    for _ in range(steps):
        total = total + step(x).loss           # accumulated on the device, as the loop does
    reads = (strict.host_reads() - before) / steps
    assert np.isfinite(float(total))
    return reads


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("optimizer", [minivae.Adam, minivae.SGD])
def test_a_training_step_reads_nothing_on_the_host(threads, likelihood, optimizer):
    options = {"decoder_variance": "learned"} if likelihood == "gaussian" else {}
    model = model_on("strict", likelihood=likelihood, **options)
    step = minivae.TrainStep(model, optimizer(model.params), threads=threads)
    assert step.path == "fused"
    assert reads_per_step(step, model.backend.to_device(data(16))) == 0


def test_the_reference_path_reads_the_batch_values_every_step():
    """The reference fallback (models without fused kernels) runs ``model.forward_backward``,
    which checks every batch's values (its min and max: two reads). Known and bounded; the
    fused path, which every built-in model takes, reads nothing."""
    model = model_on("strict")
    step = minivae.TrainStep(model, minivae.Adam(model.params), fused=False)
    assert reads_per_step(step, model.backend.to_device(data(16))) == 2


def test_checking_every_batch_reads_on_the_host():
    """``check_values=True`` is opt-in: it reads the batch's min and max every step."""
    model = model_on("strict")
    step = minivae.TrainStep(model, minivae.Adam(model.params), check_values=True)
    x = model.backend.to_device(data(16))
    before = strict.host_reads()
    step(x)
    assert strict.host_reads() > before


def epoch_reads(n_train, log_every, epochs=2):
    """Host reads of ``epochs`` training epochs over ``n_train`` examples (batch 4), with a
    held-out set, after the trainer's setup (which validates the data once)."""
    model = model_on("strict")
    config = TrainConfig(epochs=epochs, batch_size=4, log_every=log_every, eval_batch_size=8)
    trainer = Trainer(model, data(n_train), config, x_valid=data(8, seed=1), progress=False,
                      log=None)
    before = strict.host_reads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer.fit()
    return strict.host_reads() - before, trainer.steps_per_epoch


def test_a_training_epoch_reads_per_log_interval_not_per_step():
    reads_short, steps_short = epoch_reads(n_train=16, log_every=100)
    reads_long, steps_long = epoch_reads(n_train=64, log_every=100)
    assert (steps_short, steps_long) == (4, 16)
    assert reads_long == reads_short            # 4 times the steps, not one read more
    # every log interval reads the running means (loss, reconstruction, KL) once
    reads_logged, _ = epoch_reads(n_train=64, log_every=4)
    assert reads_logged == reads_long + 2 * 3 * (16 // 4 - 1)


@pytest.mark.skipif(not cupy_gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.parametrize("activation, likelihood", [("relu", "bernoulli"), ("softplus", "gaussian")])
def test_a_cupy_training_step_never_synchronizes(activation, likelihood):
    """CuPy's detector (``cupyx.allow_synchronize``) raises on any synchronising CuPy call."""
    import cupyx
    model = minivae.VAE(12, [8], 3, activation=activation, likelihood=likelihood, backend="cupy",
                        seed=0)
    step = minivae.TrainStep(model, minivae.Adam(model.params))
    x = model.backend.to_device(data(16))
    step(x)                                    # compiles the kernels, allocates the workspace
    total = model.xp.zeros((), dtype=model.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # the detector is deprecated in CuPy, still present
        with cupyx.allow_synchronize(False):
            for _ in range(5):
                total = total + step(x).loss
    assert np.isfinite(float(total))
