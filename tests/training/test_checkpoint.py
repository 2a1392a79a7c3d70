"""Checkpoints: a round trip, allow_pickle=False, atomic writes, clear errors, rebuilding a model."""
import json

import numpy as np
import pytest

import minivae
from minivae.training import checkpoint
from minivae.training.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint


def test_round_trip(tmp_path, rng):
    arrays = {"params": rng.standard_normal(10).astype(np.float32), "optimizer.exp_avg": np.zeros(10),
              "sums.loss": np.array(3.5, dtype=np.float32)}
    meta = {"epoch": 3, "rng": {"state": 2 ** 127 + 5}, "history": {"loss": [1.0, None]}}
    path = save_checkpoint(tmp_path / "sub" / "c.npz", arrays, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded.keys() == arrays.keys()
    for name in arrays:
        assert loaded[name].dtype == arrays[name].dtype
        np.testing.assert_array_equal(loaded[name], arrays[name])
    assert loaded_meta["epoch"] == 3 and loaded_meta["rng"]["state"] == 2 ** 127 + 5
    assert loaded_meta["history"]["loss"] == [1.0, None]
    # the file is a plain npz whose metadata is JSON text: no pickle needed to read it
    with np.load(path, allow_pickle=False) as archive:
        assert json.loads(str(archive["__meta__"]))["format"] == "minivae.training.checkpoint"


def test_refuses_what_would_need_pickle(tmp_path):
    with pytest.raises(TypeError, match="Python objects"):
        save_checkpoint(tmp_path / "c.npz", {"x": np.array([{"a": 1}], dtype=object)}, {})
    with pytest.raises(TypeError, match="to_numpy"):
        save_checkpoint(tmp_path / "c.npz", {"x": [1, 2]}, {})
    assert not (tmp_path / "c.npz").exists()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.npz", {"params": np.arange(3.0)}, {"epoch": 1})

    def broken_savez(stream, **arrays):
        stream.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full")
    monkeypatch.setattr(checkpoint.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"params": np.arange(5.0)}, {"epoch": 2})
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    assert meta["epoch"] == 1 and arrays["params"].shape == (3,)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]     # no temporary file left


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(CheckpointError, match="not a minivae checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    np.savez(tmp_path / "other.npz", __meta__=np.array(json.dumps({"format": "x", "version": 1})))
    with pytest.raises(CheckpointError, match="format 'x'"):
        load_checkpoint(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.npz", {"__meta__": np.zeros(1)}, {})


def test_load_model_rebuilds_architecture_and_parameters(tmp_path, backend):
    model = minivae.VAE(12, [7, 5], 3, activation="tanh", likelihood="gaussian", backend=backend, seed=4)
    model.flat_params[...] = model.flat_params * 2.0 + 0.5
    save_checkpoint(tmp_path / "m.npz", {"params": minivae.to_numpy(model.flat_params)},
                    {"model": model.config})
    rebuilt = load_model(tmp_path / "m.npz", backend=backend)
    assert rebuilt.config == model.config and rebuilt.backend == backend
    np.testing.assert_array_equal(minivae.to_numpy(rebuilt.flat_params), minivae.to_numpy(model.flat_params))
    x = backend.to_device(np.linspace(0, 1, 24, dtype=np.float32).reshape(2, 12))
    np.testing.assert_array_equal(minivae.to_numpy(rebuilt.reconstruct(x)), minivae.to_numpy(model.reconstruct(x)))
