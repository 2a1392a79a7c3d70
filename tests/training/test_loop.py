"""The training loop: it learns; schedules; resuming is bit-exact (Ctrl-C, time limit, epoch
boundary, with and without an exported RNG state); the NaN guard; gradient and latent monitoring."""
import os
import signal

import numpy as np
import pytest

import minivae
from minivae import VAE
from minivae.training.checkpoint import CheckpointError, load_checkpoint
from minivae.training.loop import (BURDA_EPOCHS, TrainConfig, Trainer, TrainingDiverged, burda_stage, derive_seed,
                                   layer_groups)
from minivae.validation import InputError

D, K = 16, 3


@pytest.fixture(scope="module")
def toy_data():
    """Probabilities of 16 pixels: two prototypes with noise (Bernoulli targets or intensities)."""
    rng = np.random.default_rng(0)
    prototypes = np.array([np.r_[np.ones(8), np.zeros(8)], np.r_[np.zeros(8), np.ones(8)]])
    labels = rng.integers(0, 2, 300)
    x = np.clip(0.1 + 0.8 * prototypes[labels] + 0.05 * rng.standard_normal((300, D)), 0.0, 1.0)
    return x[:240].astype(np.float32), x[240:].astype(np.float32)


def make_trainer(backend, toy_data, path=None, **changes):
    x_train, x_valid = toy_data
    settings = dict(epochs=4, batch_size=50, lr=3e-3, lr_decay=0.9, warmup_epochs=1.5,
                    dynamic_binarization=True, seed=7, monitor=True, log_every=2, eval_batch_size=25)
    settings.update(changes)
    model = VAE(D, [12], K, backend=backend, seed=1)
    return Trainer(model, x_train, TrainConfig(**settings), x_valid=x_valid, checkpoint_path=path,
                   progress=False, log=None)


def host_params(trainer):
    return minivae.to_numpy(trainer.model.flat_params).copy()   # on NumPy, to_numpy is the array itself


def without_seconds(history):
    return {name: values for name, values in history.items() if name != "seconds"}


def test_training_lowers_the_negative_elbo(backend, toy_data):
    trainer = make_trainer(backend, toy_data, epochs=8, lr=1e-2, lr_decay=1.0, warmup_epochs=0.0,
                           monitor=False, dynamic_binarization=False)
    history = trainer.fit()
    assert history["epoch"] == list(range(1, 9)) and trainer.stop_reason == "completed"
    assert history["train_neg_elbo"][-1] < history["train_neg_elbo"][0] - 1.0
    assert history["valid_neg_elbo"][-1] < history["valid_neg_elbo"][0] - 1.0
    for name in ("train_neg_elbo", "valid_neg_elbo"):
        assert all(np.isfinite(history[name]))
    np.testing.assert_allclose(history["train_neg_elbo"],
                               np.add(history["train_reconstruction"], history["train_kl"]))


def test_schedules(backend, toy_data):
    trainer = make_trainer(backend, toy_data, beta=2.0, warmup_epochs=1.5, lr=1e-2, lr_decay=0.5, lr_min=2e-3)
    assert trainer.steps_per_epoch == 5           # 240 examples in batches of 50: the last has 40
    assert trainer.beta_at(1) == pytest.approx(2.0 / 7.5)
    assert trainer.beta_at(6) == pytest.approx(2.0 * 6 / 7.5)
    assert trainer.beta_at(8) == 2.0 and trainer.beta_at(100) == 2.0
    assert [trainer.lr_at(e) for e in range(4)] == pytest.approx([1e-2, 5e-3, 2.5e-3, 2e-3])
    trainer.fit(epochs=2)
    assert trainer.history["lr"] == pytest.approx([1e-2, 5e-3])
    assert trainer.history["beta"] == pytest.approx([2.0 * 5 / 7.5, 2.0])
    assert trainer.global_step == 10


def test_burda_schedule_is_3_to_the_i_epochs_at_lr_times_10_to_the_minus_i_over_7(backend, toy_data):
    trainer = make_trainer(backend, toy_data, lr=1e-3, lr_schedule="burda")
    lrs = [trainer.lr_at(e) for e in range(BURDA_EPOCHS + 5)]
    assert BURDA_EPOCHS == 3280
    for stage in range(8):
        first = (3 ** stage - 1) // 2
        assert lrs[first:first + 3 ** stage] == pytest.approx([1e-3 * 10 ** (-stage / 7)] * 3 ** stage)
    assert lrs[BURDA_EPOCHS:] == pytest.approx([1e-4] * 5)     # past the schedule: its last rate
    assert [burda_stage(e) for e in (0, 1, 3, 4, 12, 13, 39, 40, 3279)] == [0, 1, 1, 2, 2, 3, 3, 4, 7]
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


def test_config_is_validated():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr_decay"):
        TrainConfig(lr_decay=1.5)
    with pytest.raises(ValueError, match="seed"):
        TrainConfig(seed=-1)
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=4)
    assert TrainConfig(threads=1).threads == 1
    assert TrainConfig.from_dict({**TrainConfig(epochs=3).as_dict(), "unknown": 1}).epochs == 3


def test_data_is_validated_once_up_front(toy_data):
    x_train, x_valid = toy_data
    bad = x_train.copy()
    bad[5, 3] = np.nan
    with pytest.raises(InputError, match="x_train contains NaN"):
        Trainer(VAE(D, [4], K), bad, TrainConfig(), progress=False, log=None)
    with pytest.raises(InputError, match=r"x_valid has values outside \[0, 1\]"):
        Trainer(VAE(D, [4], K), x_train, TrainConfig(), x_valid=x_valid * 2.0, progress=False, log=None)


def test_seeds_are_counter_based():
    assert derive_seed(0, 3, "data") == derive_seed(0, 3, "data")
    seeds = {derive_seed(s, e, stream) for s in range(3) for e in range(3) for stream in ("data", "noise", "eval")}
    assert len(seeds) == 27


class SigintAfter:
    """Wraps a TrainStep and sends this process SIGINT (Ctrl-C) after its ``at``-th call."""

    def __init__(self, step, at):
        self.step, self.at, self.calls = step, at, 0

    def __call__(self, *args, **kwargs):
        terms = self.step(*args, **kwargs)
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return terms

    def __getattr__(self, name):
        return getattr(self.step, name)


@pytest.mark.parametrize("interruption", ["ctrl-c", "time-limit", "epoch-boundary", "ctrl-c-replayed-noise"])
def test_resume_is_bit_exact(backend, toy_data, tmp_path, interruption):
    """An interrupted and resumed run ends with exactly the parameters, optimizer state and
    history of an uninterrupted run with the same seed."""
    straight = make_trainer(backend, toy_data)
    straight.fit()

    path = tmp_path / "run.npz"
    first = make_trainer(backend, toy_data, path)
    if interruption.startswith("ctrl-c"):
        first.step = SigintAfter(first.step, at=8)           # epoch 2, step 3 of 5
        with pytest.raises(KeyboardInterrupt):
            first.fit()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
        assert (first.epoch, first.step_in_epoch) == (1, 3)
    elif interruption == "time-limit":
        first.fit(time_limit=0.0)                            # stops at the first log interval
        assert first.stop_reason == "time_limit" and (first.epoch, first.step_in_epoch) == (0, 2)
    else:
        first.fit(epochs=2)
    _, meta = load_checkpoint(path)
    assert (meta["progress"]["epoch"], meta["progress"]["step_in_epoch"]) == (first.epoch, first.step_in_epoch)

    resumed = make_trainer(backend, toy_data, path).restore(path)
    if interruption == "ctrl-c-replayed-noise":                  # what happens on CuPy: no RNG state
        resumed._restore_noise(None)
    resumed.fit()
    np.testing.assert_array_equal(host_params(resumed), host_params(straight))
    for name in resumed.optimizer.state_names:
        np.testing.assert_array_equal(minivae.to_numpy(resumed.optimizer.state[name]),
                                      minivae.to_numpy(straight.optimizer.state[name]))
    assert resumed.optimizer.step_count == straight.optimizer.step_count == 20
    assert without_seconds(resumed.history) == without_seconds(straight.history)


def test_two_thread_training_follows_the_one_thread_run(toy_data):
    """threads=2 (each step split between two threads) trains the same model to float32 rounding
    of the one-thread run, and resumes only with the same setting (it moves the trajectory)."""
    one = make_trainer("numpy", toy_data, threads=1)
    two = make_trainer("numpy", toy_data, threads=2)
    assert one.step.threads == 1 and two.step.threads == 2
    one.fit(epochs=2)
    two.fit(epochs=2)
    np.testing.assert_allclose(host_params(two), host_params(one), rtol=1e-4, atol=1e-5)
    from minivae.training.loop import FREE_FIELDS
    assert "threads" not in FREE_FIELDS


def test_resume_refuses_a_different_configuration(toy_data, tmp_path):
    path = tmp_path / "run.npz"
    make_trainer("numpy", toy_data, path).fit(epochs=1)
    with pytest.raises(CheckpointError, match=r"lr=0.003 \(now 0.01\)"):
        make_trainer("numpy", toy_data, path, lr=1e-2).restore(path)
    make_trainer("numpy", toy_data, path, epochs=9, log_every=1).restore(path)     # allowed to differ
    trainer = make_trainer("numpy", toy_data, path)
    trainer.x_train = trainer.x_train[:100]
    with pytest.raises(CheckpointError, match="240 examples"):
        trainer.restore(path)


class CorruptAt:
    """Wraps a TrainStep and writes NaN into a parameter after its ``at``-th call."""

    def __init__(self, step, model, at):
        self.step, self.model, self.at, self.calls = step, model, at, 0

    def __call__(self, *args, **kwargs):
        terms = self.step(*args, **kwargs)
        self.calls += 1
        if self.calls == self.at:
            self.model.params["decoder.out.b"][0] = float("nan")
        return terms

    def __getattr__(self, name):
        return getattr(self.step, name)


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(backend, toy_data, tmp_path):
    path = tmp_path / "run.npz"
    trainer = make_trainer(backend, toy_data, path, log_every=1)
    trainer.fit(epochs=1)
    good = host_params(trainer)
    trainer.step = CorruptAt(trainer.step, trainer.model, at=2)     # in epoch 2
    with pytest.raises(TrainingDiverged, match=r"loss became nan in epoch 2, by step 3 .*"
                                               r"run.npz \(end of epoch 1\), is kept"):
        trainer.fit()
    arrays, meta = load_checkpoint(path)
    np.testing.assert_array_equal(arrays["params"], good)
    assert meta["progress"]["epoch"] == 1 and meta["progress"]["step_in_epoch"] == 0
    assert len(meta["history"]["epoch"]) == 1


def test_non_finite_parameters_are_caught_at_the_end_of_the_epoch(toy_data, tmp_path):
    path = tmp_path / "run.npz"
    trainer = make_trainer("numpy", toy_data, path, log_every=100)
    trainer.step = CorruptAt(trainer.step, trainer.model, at=5)     # the last step of epoch 1
    with pytest.raises(TrainingDiverged, match="parameter became NaN or Inf.*no checkpoint was written"):
        trainer.fit()
    assert not path.exists()


def test_monitoring_records_gradient_norms_and_kl_per_dimension(backend, toy_data, tmp_path):
    x_train, x_valid = toy_data
    trainer = make_trainer(backend, (x_train[:50], x_valid), batch_size=50, warmup_epochs=0.0,
                           dynamic_binarization=False)           # one step per epoch
    history = trainer.fit(epochs=2)
    groups = layer_groups(trainer.model.shapes)
    assert list(groups) == ["encoder.0", "encoder.head", "decoder.0", "decoder.out"]
    assert groups["encoder.0"] == ["encoder.0.W", "encoder.0.b"]
    assert history["grad_norm"].keys() == groups.keys()
    # with one step per epoch the recorded norm is the norm of that step's gradient
    grads = {name: minivae.to_numpy(g) for name, g in trainer.step.grads.items()}
    for layer, names in groups.items():
        assert len(history["grad_norm"][layer]) == 2
        expected = np.sqrt(sum(float((grads[n].astype(np.float64) ** 2).sum()) for n in names))
        assert history["grad_norm"][layer][-1] == pytest.approx(expected, rel=1e-5)
    # the KL of the latent dimensions adds up to the held-out KL term (closed form, no sampling)
    for epoch in range(2):
        kl = history["kl_per_dim"][epoch]
        assert len(kl) == K and min(kl) >= 0.0
        assert sum(kl) == pytest.approx(history["valid_kl"][epoch], rel=1e-4)
        assert 0 <= history["active_units"][epoch] <= K

    from minivae.plots import training as plots
    png = plots.plot_monitor(history, tmp_path / "monitor.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plots.plot_curves(history, tmp_path / "curves.png")
    assert png.stat().st_size > 1000


def test_monitoring_off_records_nothing(toy_data):
    history = make_trainer("numpy", toy_data, monitor=False).fit(epochs=1)
    assert history["grad_norm"] == {} and history["kl_per_dim"] == [] and history["active_units"] == []


def test_eval_every(toy_data):
    history = make_trainer("numpy", toy_data, eval_every=2, epochs=3).fit()
    assert [v is not None for v in history["valid_neg_elbo"]] == [False, True, True]   # and the last


def test_progress_bar_and_summary_lines(toy_data, capsys):
    lines = []
    trainer = make_trainer("numpy", toy_data, epochs=1)
    trainer.progress, trainer.log = True, lines.append
    trainer.fit()
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1  train -ELBO")
    assert "held-out -ELBO" in lines[0] and "active units" in lines[0]
    assert "loss=" in capsys.readouterr().err      # tqdm's postfix shows loss, rec and kl


def test_any_optimizer_follows_the_schedule(toy_data, tmp_path):
    model = VAE(D, [12], K, seed=1)
    optimizer = minivae.SGD(model.params, lr=1.0, momentum=0.5)
    trainer = Trainer(model, toy_data[0], TrainConfig(epochs=2, batch_size=50, lr=0.05, lr_decay=0.5),
                      optimizer=optimizer, checkpoint_path=tmp_path / "sgd.npz", progress=False, log=None)
    trainer.fit()
    assert trainer.history["lr"] == [0.05, 0.025] and optimizer.lr == 0.025
    _, meta = load_checkpoint(tmp_path / "sgd.npz")
    assert meta["optimizer"]["type"] == "SGD" and meta["optimizer"]["step"] == 10
    with pytest.raises(CheckpointError, match="state of SGD, not Adam"):
        Trainer(VAE(D, [12], K), toy_data[0], TrainConfig(epochs=2, batch_size=50, lr=0.05, lr_decay=0.5),
                progress=False, log=None).restore(tmp_path / "sgd.npz")


def test_epoch_data_reuses_its_buffers(backend, toy_data):
    """Every epoch shuffles (and binarizes) the training set into the same buffers, and draws what
    a fresh array would hold: the permutation and the Bernoulli draws of the epoch's data stream."""
    trainer = make_trainer(backend, toy_data, dynamic_binarization=True)
    x = trainer.x_train
    first = trainer._epoch_data(0)
    host_first = minivae.to_numpy(first).copy()
    second = trainer._epoch_data(1)
    assert second is first
    for epoch, got in ((0, host_first), (1, minivae.to_numpy(second))):
        random = backend.random(derive_seed(trainer.config.seed, epoch, "data"))
        shuffled = x[random.permutation(x.shape[0])]
        expected = (random.uniform(shuffled.shape, shuffled.dtype) < shuffled).astype(shuffled.dtype)
        np.testing.assert_array_equal(got, minivae.to_numpy(expected))
