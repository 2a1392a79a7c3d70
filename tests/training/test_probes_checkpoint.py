"""Probes of checkpoints (docs/reliability.md): truncated at any length, any byte flipped, an
object array (never unpickled), NaN inside, missing entries, another architecture, and SIGKILL
while a checkpoint is written. The property: the loader returns exactly what was saved, or
raises a :class:`CheckpointError` naming the file; never another exception, never a corrupt state."""
import gc
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

import minivae
from minivae.training.checkpoint import (CheckpointError, load_checkpoint, load_model, remove_stale_temporaries,
                                         save_checkpoint)
from minivae.training.loop import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def saved(tmp_path):
    """A checkpoint of a small trainer after one epoch: ``(path, arrays, meta, make_trainer)``."""
    x = (np.random.default_rng(0).random((40, 6)) > 0.5).astype(np.float32)

    def make_trainer(**model_options):
        model = minivae.VAE(6, model_options.pop("hidden", [5]), model_options.pop("latent_dim", 2), seed=0,
                            **model_options)
        return Trainer(model, x.astype(model.dtype), TrainConfig(epochs=1, batch_size=10, seed=0), progress=False,
                       log=None, checkpoint_path=tmp_path / "c.npz")
    make_trainer().fit()
    arrays, meta = load_checkpoint(tmp_path / "c.npz")
    return tmp_path / "c.npz", arrays, meta, make_trainer


def resave(path, arrays, meta):
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    save_checkpoint(path, arrays, meta)


@pytest.mark.parametrize("keep", [0, 1, 22, 100, 0.25, 0.5, 0.9, -22, -1])
def test_a_truncated_checkpoint_is_refused(saved, keep):
    path, *_ = saved
    content = path.read_bytes()
    cut = keep if isinstance(keep, int) else int(keep * len(content))
    path.write_bytes(content[:cut])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_checkpoint(path)
        except CheckpointError as error:
            assert f"{path.name} is not a readable .npz checkpoint" in str(error)
        else:
            raise AssertionError("loaded")
        gc.collect()
    assert [w.message for w in caught if issubclass(w.category, ResourceWarning)] == []    # the file is closed


def test_any_flipped_byte_is_refused_or_harmless(saved):
    """Every 37th byte of the file, flipped one at a time: the zip's CRC-32 covers the arrays and
    the metadata, so a flip is refused, or it hit a field nothing reads (a timestamp) and the
    content loads unchanged."""
    path, arrays, meta, _ = saved
    content = path.read_bytes()
    outcomes = {"refused": 0, "unchanged": 0}
    for offset in range(0, len(content), 37):
        damaged = bytearray(content)
        damaged[offset] ^= 0x55
        path.write_bytes(bytes(damaged))
        try:
            loaded, loaded_meta = load_checkpoint(path)
        except CheckpointError:
            outcomes["refused"] += 1
            continue
        assert loaded_meta == meta and loaded.keys() == arrays.keys(), offset
        for name in arrays:
            np.testing.assert_array_equal(loaded[name], arrays[name], err_msg=f"offset {offset}")
        outcomes["unchanged"] += 1
    assert outcomes["refused"] > 0.9 * sum(outcomes.values()), outcomes


def test_an_object_array_is_never_unpickled(saved, tmp_path):
    path, arrays, meta, make_trainer = saved
    marker = tmp_path / "UNPICKLED"
    np.savez(path, **arrays, params_object=np.array([Unpickled(str(marker))], dtype=object),
             __meta__=np.array(json.dumps(meta)))
    for load in (load_checkpoint, load_model, make_trainer().restore):
        with pytest.raises(CheckpointError, match="Object arrays cannot be loaded when allow_pickle=False"):
            load(path)
    assert not marker.exists()
    np.savez(path, params=np.array([Unpickled(str(marker))], dtype=object), __meta__=np.array(json.dumps(meta)))
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


class Unpickled:
    """An object that, if ever unpickled, creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_the_parameters_is_refused(saved, value):
    path, arrays, meta, make_trainer = saved
    arrays["params"][3] = value
    resave(path, arrays, meta)
    for load in (load_model, make_trainer().restore):
        with pytest.raises(CheckpointError, match="'params' holds 1 NaN or Inf values"):
            load(path)


def test_nan_in_the_optimizer_state_is_refused_inf_is_not(saved):
    """A sum of squared gradients may overflow to Inf and still give finite updates; NaN never."""
    path, arrays, meta, make_trainer = saved
    arrays["optimizer.exp_sum_sq"][0] = np.inf
    resave(path, arrays, meta)
    make_trainer().restore(path)
    arrays["optimizer.exp_sum_sq"][0] = np.nan
    resave(path, arrays, meta)
    with pytest.raises(CheckpointError, match="'optimizer.exp_sum_sq' holds 1 NaN values"):
        make_trainer().restore(path)


@pytest.mark.parametrize("missing", ["array params", "array optimizer.exp_sum", "metadata model",
                                     "metadata progress", "metadata rng", "progress global_step",
                                     "optimizer step"])
def test_a_missing_entry_is_named(saved, missing):
    path, arrays, meta, make_trainer = saved
    kind, name = missing.split(" ")
    if kind == "array":
        del arrays[name]
    elif kind == "metadata":
        del meta[name]
    else:
        del meta[kind][name]
    resave(path, arrays, meta)
    loaders = [make_trainer().restore] + ([load_model] if missing in ("array params", "metadata model") else [])
    for load in loaders:
        with pytest.raises(CheckpointError, match=f"no .*'{name}'"):
            load(path)


def test_a_wrong_shape_or_dtype_is_named(saved):
    path, arrays, meta, make_trainer = saved
    arrays["optimizer.exp_sum"] = arrays["optimizer.exp_sum"][:-1]
    resave(path, arrays, meta)
    with pytest.raises(CheckpointError, match=r"'optimizer.exp_sum' has shape \(\d+,\), the model needs"):
        make_trainer().restore(path)
    arrays["optimizer.exp_sum"] = np.zeros(arrays["params"].shape, np.int32)
    resave(path, arrays, meta)
    with pytest.raises(CheckpointError, match="'optimizer.exp_sum' is stored as int32"):
        make_trainer().restore(path)


@pytest.mark.parametrize("other, difference", [({"hidden": [7]}, "hidden_dims=[5] (now [7])"),
                                               ({"latent_dim": 3}, "latent_dim=2 (now 3)"),
                                               ({"activation": "tanh"}, "activation='relu' (now 'tanh')"),
                                               ({"dtype": "float64"}, "dtype='float32' (now 'float64')")])
def test_another_architecture_is_refused_naming_the_difference(saved, other, difference):
    path, *_, make_trainer = saved
    trainer = make_trainer(**other)
    before = minivae.to_numpy(trainer.model.flat_params).copy()
    with pytest.raises(CheckpointError, match="holds another architecture: .*" + re.escape(difference)):
        trainer.restore(path)
    np.testing.assert_array_equal(minivae.to_numpy(trainer.model.flat_params), before)   # untouched


TAMPERED = {
    "epoch a string": (lambda m: m["progress"].update(epoch="1"), "its epoch is '1', not a count"),
    "epoch a bool": (lambda m: m["progress"].update(epoch=True), "its epoch is True, not a count"),
    "global_step a string": (lambda m: m["progress"].update(global_step="x"), "its global_step is 'x'"),
    "n_train a string": (lambda m: m["progress"].update(n_train="40"), "its n_train is '40', not a count"),
    "epoch_seconds None": (lambda m: m["progress"].update(epoch_seconds=None), "epoch_seconds is None"),
    "epoch 10**30": (lambda m: m["progress"].update(epoch=10 ** 30), "does not add up"),
    "step_in_epoch without its step": (lambda m: m["progress"].update(step_in_epoch=2), "does not add up"),
    "optimizer step a string": (lambda m: m["optimizer"].update(step="x"), "its optimizer step is 'x'"),
    "progress a number": (lambda m: m.update(progress=3), "its 'progress' entry is a int, not a JSON object"),
    "train a number": (lambda m: m.update(train=3), "its 'train' entry is a int"),
    "rng a number": (lambda m: m.update(rng=3), "its 'rng' entry is a int"),
    "history a list": (lambda m: m.update(history=[]), "its 'history' entry is a list"),
    "history without epochs": (lambda m: m["history"].pop("epoch"), "its history has no 'epoch' list"),
    "history of another length": (lambda m: m["history"]["lr"].append(1.0), "'lr' does not hold one value per"),
    "noise state of another generator": (
        lambda m: (m["progress"].update(step_in_epoch=2, global_step=6),
                   m["rng"].update(noise_state={"bit_generator": "MT19937"})),
        "noise generator state cannot be restored"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_tampered_metadata_is_refused_before_anything_changes(saved, case):
    """Progress counters that are not counts or do not add up, entries that are not objects, a
    history that is not one value per epoch, a noise state that does not load (was: TypeError,
    KeyError, ValueError, or accepted: epoch 10**30 'trained' nothing, and a bad noise state was
    found only after the parameters had been overwritten)."""
    path, arrays, meta, make_trainer = saved
    change, message = TAMPERED[case]
    change(meta)
    if meta.get("progress", {}).get("step_in_epoch") if isinstance(meta.get("progress"), dict) else False:
        arrays.update({f"sums.{n}": np.array(1.0, np.float32) for n in ("loss", "reconstruction", "kl")})
    resave(path, arrays, meta)
    trainer = make_trainer()
    before = (minivae.to_numpy(trainer.model.flat_params).copy(), trainer.model.random, trainer.history)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        trainer.restore(path)
    np.testing.assert_array_equal(minivae.to_numpy(trainer.model.flat_params), before[0])
    assert trainer.model.random is before[1] and trainer.history is before[2] and trainer.epoch == 0


def test_a_model_description_that_builds_no_vae(saved):
    path, arrays, meta, _ = saved
    meta["model"]["latent_dim"] = 0
    resave(path, arrays, meta)
    with pytest.raises(CheckpointError, match="does not build a VAE: latent_dim must be a positive integer"):
        load_model(path)
    meta["model"] = ["not", "a", "dict"]
    resave(path, arrays, meta)
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_model(path)


# --- SIGKILL while writing ---------------------------------------------------------------------------

WRITER = r"""
import sys
import numpy as np
from minivae.training.checkpoint import save_checkpoint
params = np.empty(1_000_000, np.float32)           # 4 MB: a write takes a while
for counter in range(1_000_000):
    params.fill(counter)
    save_checkpoint(sys.argv[1], {"params": params}, {"counter": counter})
    if counter == 0:
        print("READY", flush=True)
"""


def test_sigkill_during_checkpoint_writes_never_leaves_a_corrupt_checkpoint(tmp_path):
    """A process writes checkpoints in a loop and is killed (SIGKILL) while a temporary file exists,
    i.e. in the middle of a write. Each time the checkpoint loads and is one complete
    write (every value equals the counter in its metadata); the half-written temporary is a file
    the loader refuses, under a name no one looks for; the next write removes it (up to six kills,
    until one of the last lands mid-write)."""
    path = tmp_path / "checkpoint.npz"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed_mid_write = 0
    for attempt in range(6):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert writer.stdout.readline().strip() == "READY", writer.communicate()
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob(f".checkpoint.npz.{writer.pid}.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.0005)
        writer.kill()
        writer.communicate(timeout=30)
        temporaries = list(tmp_path.glob(f".checkpoint.npz.{writer.pid}.*.tmp"))
        killed_mid_write += bool(temporaries)
        for temporary in temporaries:
            try:                      # a partial write is refused; a finished one is merely unused
                load_checkpoint(temporary)
            except CheckpointError:
                pass
        arrays, meta = load_checkpoint(path)
        assert arrays["params"].shape == (1_000_000,)
        assert (arrays["params"] == meta["counter"]).all()
        if attempt >= 2 and temporaries:       # three kills, the last one mid-write
            break
    assert killed_mid_write >= 1 and temporaries, "no kill landed in the middle of a write"
    leftovers = list(tmp_path.glob(".checkpoint.npz.*.tmp"))
    assert leftovers == temporaries               # the earlier ones went with the next run's first write
    assert sorted(remove_stale_temporaries(path)) == sorted(leftovers)
    save_checkpoint(path, {"params": np.zeros(3, np.float32)}, {"counter": -1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz"]
