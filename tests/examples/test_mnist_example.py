"""CI smoke runs of examples/mnist.py: the pictures and metrics.json it writes, and --resume."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(tmp_path, *args, check=True):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT),
           "DISPLAY": ""}            # no display needed
    env.pop("MINIVAE_DATA_DIR", None)
    env.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "mnist.py"), "--no-progress", *args],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def assert_picture(path):
    import matplotlib.image
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.05, f"{path} is blank"


def test_smoke_run_writes_pictures_and_metrics(tmp_path):
    """The CI run, on the strict CuPy stand-in: no implicit host/device copy anywhere in the example."""
    out = tmp_path / "out"
    result = run_example(tmp_path, "--smoke", "--monitor", "--backend", "strict", "--out", str(out))
    for name in ("reconstructions", "samples", "latent", "curves", "monitor", "traversals", "interpolations"):
        assert_picture(out / f"{name}.png")
    assert {"traversals.png", "interpolations.png"} <= {Path(p).name for p in json.loads(
        (out / "metrics.json").read_text())["files"]["pictures"]}
    assert not (out / "manifold.png").exists()          # 20-D latent space: no grid
    metrics = json.loads((out / "metrics.json").read_text())
    final = metrics["final"]
    assert 50.0 < final["heldout_neg_elbo"] < 600.0
    assert final["heldout_neg_elbo"] == pytest.approx(final["heldout_reconstruction"] + final["heldout_kl"])
    assert final["iwae"]["k"] == 20 and final["iwae"]["n"] == 500
    assert final["iwae"]["neg_log_px"] < final["iwae"]["neg_elbo"]
    assert metrics["data"]["train_examples"] == 1000 and metrics["data"]["subset"] == 1000
    assert metrics["data"]["train_examples_full"] == 60000
    assert "subset: 1,000 of 60,000 training digits" in metrics["note"]
    assert metrics["run"]["smoke"] is True and metrics["run"]["backend"] == "strict"
    assert metrics["backend"] == "strict" and metrics["epochs_completed"] == 2
    assert metrics["kernels"] == "NumPy passes"   # which kernels ran: the last bits depend on it
    assert metrics["step_runner"] == {"runner": "engine", "why_not_program":
                                      "the strict backend's kernels are not compiled for the CPU"}
    assert metrics["model"]["hidden_dims"] == [400] and metrics["model"]["latent_dim"] == 20
    assert metrics["train_config"]["batch_size"] == 100 and metrics["train_config"]["monitor"] is True
    assert len(metrics["history"]["valid_neg_elbo"]) == 2
    assert set(metrics["history"]["grad_norm"]) == {"encoder.0", "encoder.head", "decoder.0", "decoder.out"}
    assert Path(metrics["data"]["sources"]["train"]["images"]).parent == ROOT / "data" / "mnist"
    # the subset is said in what it prints, too
    assert "NOTE: subset: 1,000 of 60,000 training digits" in result.stdout
    assert "final held-out -ELBO:" in result.stdout and "IWAE-20" in result.stdout


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    """3 epochs straight == 2 epochs, then --resume --epochs 3 (2-D latent space: manifold too)."""
    common = ["--smoke", "--latent-dim", "2", "--binarize", "dynamic", "--iwae-k", "0"]
    run_example(tmp_path, *common, "--epochs", "3", "--out", "straight")
    run_example(tmp_path, *common, "--epochs", "2", "--out", "resumed")
    refused = run_example(tmp_path, "--resume", "--out", "resumed", "--lr", "0.01", check=False)
    assert refused.returncode != 0 and "--lr 0.01" in refused.stderr
    result = run_example(tmp_path, "--resume", "--epochs", "3", "--out", "resumed")
    assert "resuming at epoch 3" in result.stdout
    with np.load(tmp_path / "straight" / "checkpoint.npz") as a, np.load(tmp_path / "resumed" / "checkpoint.npz") as b:
        np.testing.assert_array_equal(a["params"], b["params"])
        np.testing.assert_array_equal(a["optimizer.exp_sum_sq"], b["optimizer.exp_sum_sq"])
    straight, resumed = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("straight", "resumed"))
    for name in ("train_neg_elbo", "valid_neg_elbo", "lr"):
        assert resumed["history"][name] == straight["history"][name]
    assert resumed["final"]["heldout_neg_elbo"] == straight["final"]["heldout_neg_elbo"]
    assert resumed["run"]["binarize"] == "dynamic" and resumed["run"]["latent_dim"] == 2
    assert_picture(tmp_path / "resumed" / "manifold.png")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = run_example(tmp_path, "--resume", "--out", "nothing", check=False)
    assert result.returncode == 2 and "no checkpoint at" in result.stderr


def test_iwae_objective_from_the_command_line(tmp_path):
    """--objective iwae --k K --estimator E reaches the TrainConfig and the reference path."""
    result = run_example(tmp_path, "--smoke", "--epochs", "1", "--objective", "iwae", "--k", "3",
                         "--estimator", "dreg", "--iwae-k", "0", "--out", "iwae")
    assert "objective -IWAE_3 (dreg encoder gradient, reference path)" in result.stdout
    assert "train -IWAE_3 (dreg)" in result.stdout
    metrics = json.loads((tmp_path / "iwae" / "metrics.json").read_text())
    config = metrics["train_config"]
    assert (config["objective"], config["k"], config["estimator"]) == ("iwae", 3, "dreg")
    history = metrics["history"]
    assert history["train_loss"][0] < history["train_neg_elbo"][0]      # -IWAE_3 below -ELBO
    refused = run_example(tmp_path, "--smoke", "--k", "3", "--out", "refused", check=False)
    assert refused.returncode == 2 and "belong to the IWAE objective" in refused.stderr
