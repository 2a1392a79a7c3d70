"""Probes of examples/mnist.py (docs/reliability.md): every invalid flag value, --data-dir, --resume
with a bad or foreign checkpoint, divergence, SIGINT / SIGTERM mid-epoch then --resume, two runs
into one --out, a lock left by a killed run.

Most probes call ``main(argv)`` in this process (an exception other than the ``SystemExit`` of
argparse would be the traceback the user sees); the signal and lock probes run the real process,
through a driver that pauses it at a chosen step, so that the signal lands mid-epoch at the
same step every time. Every run is tiny: 200 training digits, 784-8-2, batch 20, no IWAE, no
pictures (``draw_pictures`` is stubbed: they are not what is probed)."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from minivae.backend import cupy_gpu_available
from minivae.training.checkpoint import folder_lock, load_checkpoint, load_model, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "examples" / "mnist.py"
TINY = ["--no-progress", "--subset", "200", "--test-subset", "100", "--batch-size", "20", "--hidden", "8",
        "--latent-dim", "2", "--iwae-k", "0"]

# the real process, paused after its PAUSE_AT-th training step until it gets a signal (or
# $PROBE_SIGNALS of them) or GO exists
DRIVER = r"""
import importlib.util, os, sys, time
from pathlib import Path
mnist_path, pause_at, go, *argv = sys.argv[1:]
spec = importlib.util.spec_from_file_location("mnist_example", mnist_path)
mnist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mnist)
mnist.draw_pictures = lambda *args, **kwargs: []
import minivae.training.loop as loop
from minivae.training.step import TrainStep
signalled, handle = [], loop.InterruptRequest._handle
def recording_handle(self, signum, frame):
    signalled.append(signum)
    handle(self, signum, frame)
loop.InterruptRequest._handle = recording_handle
step, calls = TrainStep.__call__, [0]
def pausing_step(self, *args, **kwargs):
    terms = step(self, *args, **kwargs)
    calls[0] += 1
    if calls[0] == int(pause_at):
        print("PAUSED", flush=True)
        deadline, wanted, told = time.monotonic() + 60, int(os.environ.get("PROBE_SIGNALS", "1")), False
        while len(signalled) < wanted and not Path(go).exists() and time.monotonic() < deadline:
            if signalled and not told:
                print("GOT ONE", flush=True)     # still in the step: the next signal lands here
                told = True
            time.sleep(0.005)
    return terms
TrainStep.__call__ = pausing_step
sys.exit(mnist.main(argv))
"""


def import_mnist():
    """examples/mnist.py as a module (its ``main(argv)`` returns the exit code)."""
    spec = importlib.util.spec_from_file_location("mnist_example_probes", MNIST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULE = import_mnist()


@pytest.fixture(scope="module")
def mnist():
    return MODULE


LOADED = {}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch, mnist):
    """An empty user cache; no pictures; the shipped data read once per test process (runs
    with --data-dir read theirs every time)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIVAE_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist, "draw_pictures", lambda *args, **kwargs: [])
    load_dataset = mnist.load_dataset

    def load_once(spec, split, data_dir=None, **options):
        if data_dir is not None:
            return load_dataset(spec, split, data_dir, **options)
        if (spec.name, split) not in LOADED:
            LOADED[spec.name, split] = load_dataset(spec, split, data_dir, **options)
        return LOADED[spec.name, split]
    monkeypatch.setattr(mnist, "load_dataset", load_once)


def run_main(mnist, capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``main(argv)`` in this process. Warnings are part of
    stderr, as in the real process (where pytest would otherwise catch them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = mnist.main([str(a) for a in argv])
        except SystemExit as stop:          # argparse's errors
            code = stop.code
    captured = capsys.readouterr()
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return code, captured.out, captured.err + shown


def assert_one_line_error(code, err, *expected, exit_code=2):
    assert code == exit_code, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for text in expected:
        assert text in err, err


def environment(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("MINIVAE_DATA_DIR", None)
    return env


def start_driver(tmp_path, pause_at, *argv, signals=1):
    """The real process of examples/mnist.py ``argv``, paused after step ``pause_at`` (0: never)
    until ``signals`` signals arrived."""
    env = {**environment(tmp_path), "PROBE_SIGNALS": str(signals)}
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(MNIST), str(pause_at), str(tmp_path / "GO"),
                             *map(str, argv)], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_until_paused(process, line_wanted="PAUSED"):
    for line in process.stdout:
        if line.strip() == line_wanted:
            return
    raise AssertionError(f"ended before pausing: {process.wait()} {process.stderr.read()}")


def finish(process, timeout=60):
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def assert_same_run(out_a, out_b):
    """Bit for bit: every checkpoint array, the history (but wall times) and the final numbers."""
    arrays_a, meta_a = load_checkpoint(out_a / "checkpoint.npz")
    arrays_b, meta_b = load_checkpoint(out_b / "checkpoint.npz")
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        np.testing.assert_array_equal(arrays_a[name], arrays_b[name], err_msg=name)
    assert meta_a["progress"]["global_step"] == meta_b["progress"]["global_step"]
    metrics_a, metrics_b = (json.loads((out / "metrics.json").read_text()) for out in (out_a, out_b))
    for history in (metrics_a["history"], metrics_b["history"]):
        history.pop("seconds")
    assert metrics_a["history"] == metrics_b["history"]
    assert metrics_a["final"] == metrics_b["final"]


# --- every invalid flag value: one line, exit code 2 -----------------------------------------------

INVALID = {
    "negative epochs": (["--epochs", "-1"], "--epochs must be >= 0, got -1"),
    "non-integral epochs": (["--epochs", "1.5"], "invalid int value: '1.5'"),
    "batch size 0": (["--batch-size", "0"], "--batch-size must be positive, got 0"),
    "batch size larger than the data": (["--batch-size", "201"], "--batch-size 201 is larger than the 200"),
    "latent dim 0": (["--latent-dim", "0"], "--latent-dim must be positive, got 0"),
    "hidden width 0": (["--hidden", "8", "0"], "--hidden widths must be positive, got 8 0"),
    "no hidden width": (["--hidden"], "--hidden: expected at least one argument"),
    "unknown dataset": (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    "negative iwae-k": (["--iwae-k", "-1"], "--iwae-k must be >= 0, got -1"),
    "iwae-n 0": (["--iwae-n", "0"], "--iwae-n must be positive"),
    "iwae-batch-rows 0": (["--iwae-batch-rows", "0"], "--iwae-batch-rows must be positive"),
    "lr 0": (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    "lr negative": (["--lr", "-0.001"], "--lr must be a finite number > 0, got -0.001"),
    "lr negative, exponent": (["--lr=-1e-3"], "--lr must be a finite number > 0, got -0.001"),
    "lr negative, exponent, no =": (["--lr", "-1e-3"], "argument --lr: expected one argument"),
    "lr NaN": (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    "lr Inf": (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    "lr-decay 0": (["--lr-decay", "0"], "--lr-decay must be a finite number in (0, 1]"),
    "lr-decay above 1": (["--lr-decay", "1.5"], "--lr-decay must be a finite number in (0, 1]"),
    "lr-min negative": (["--lr-min", "-1"], "--lr-min must be a finite number >= 0"),
    "beta negative": (["--beta", "-1"], "--beta must be a finite number >= 0"),
    "beta NaN": (["--beta", "nan"], "--beta must be a finite number >= 0, got nan"),
    "warmup negative": (["--warmup-epochs", "-2"], "--warmup-epochs must be a finite number >= 0"),
    "time limit 0": (["--time-limit", "0"], "--time-limit must be a finite number > 0 (minutes)"),
    "n-samples 0": (["--n-samples", "0"], "--n-samples must be positive, got 0"),
    "negative seed": (["--seed", "-1"], "--seed must be >= 0, got -1"),
    "negative eval-every": (["--eval-every", "-1"], "--eval-every must be >= 0, got -1"),
    "subset 0": (["--subset", "0"], "--subset must be positive, got 0"),
    "test-subset 0": (["--test-subset", "0"], "--test-subset must be positive, got 0"),
    "threads 3": (["--threads", "3"], "argument --threads: invalid choice: '3'"),
    "float16": (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    "unknown activation": (["--activation", "swish"], "argument --activation: invalid choice: 'swish'"),
    "unknown flag": (["--learning-rate", "1"], "unrecognized arguments: --learning-rate 1"),
    "abbreviated flag": (["--epoch", "1"], "unrecognized arguments: --epoch 1"),
    "k 0": (["--objective", "iwae", "--k", "0"], "k must be a positive integer, got 0"),
    "k with the ELBO": (["--k", "5"], "k and estimator belong to the IWAE objective"),
    "unknown estimator": (["--estimator", "score"], "argument --estimator: invalid choice: 'score'"),
    "IWAE with beta": (["--objective", "iwae", "--beta", "0.5"], "the IWAE objective has no KL weight"),
    "IWAE with n-samples": (["--objective", "iwae", "--n-samples", "3"], "not n_samples (got 3)"),
    "unknown lr schedule": (["--lr-schedule", "cosine"], "argument --lr-schedule: invalid choice: 'cosine'"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_flag_value_is_one_line_with_exit_code_2(mnist, capsys, tmp_path, case):
    flags, message = INVALID[case]
    code, out, err = run_main(mnist, capsys, *TINY, "--out", tmp_path / "out", *flags)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "out" / "checkpoint.npz").exists()


@pytest.mark.skipif(cupy_gpu_available(), reason="this machine has a GPU: --backend cupy runs")
def test_backend_cupy_without_a_gpu(mnist, capsys, tmp_path):
    code, out, err = run_main(mnist, capsys, *TINY, "--backend", "cupy", "--out", tmp_path / "out")
    assert_one_line_error(code, err, "backend 'cupy' was requested but CuPy")
    assert sorted(os.listdir(tmp_path / "out")) == []          # the lock is gone, nothing written


def test_iwae_k_0_skips_the_bound(mnist, capsys, tmp_path):
    """--iwae-k 0 is documented as "skip IWAE", so it is valid (negative values are not)."""
    code, out, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["final"]["iwae"] is None
    assert "IWAE" not in out
    assert "0 to skip" in mnist.build_parser().format_help()


def test_epochs_0_evaluates_the_untrained_model_and_writes_its_checkpoint(mnist, capsys, tmp_path):
    code, out, err = run_main(mnist, capsys, *TINY, "--epochs", "0", "--monitor", "--out", tmp_path / "out")
    assert code == 0 and err == "", err
    _, meta = load_checkpoint(tmp_path / "out" / "checkpoint.npz")      # what the summary claims
    assert meta["progress"]["epoch"] == 0
    code, out, err = run_main(mnist, capsys, "--resume", "--epochs", "1", "--no-progress", "--out", tmp_path / "out")
    assert code == 0 and "resuming at epoch 1" in out, err


@pytest.mark.parametrize("where", ["missing", "a file", "holding a zero-byte file", "holding a folder"])
def test_data_dir_problems_are_one_line(mnist, capsys, tmp_path, where):
    data_dir = tmp_path / "data"
    if where == "a file":
        data_dir.write_text("")
    elif where != "missing":
        data_dir.mkdir()
        target = data_dir / "train-images-idx3-ubyte.gz"
        target.mkdir() if where == "holding a folder" else target.write_bytes(b"")
    expected = {"missing": "no such folder", "a file": "not a folder",
                "holding a zero-byte file": "empty (0 bytes)",
                "holding a folder": "a folder or special file where the IDX file"}[where]
    code, out, err = run_main(mnist, capsys, *TINY, "--data-dir", data_dir, "--out", tmp_path / "out")
    assert_one_line_error(code, err, expected, str(data_dir))


def test_a_bad_out_is_one_line(mnist, capsys, tmp_path):
    (tmp_path / "file").write_text("")
    code, out, err = run_main(mnist, capsys, *TINY, "--out", tmp_path / "file")
    assert_one_line_error(code, err, "cannot be the output folder")


def test_the_real_process_prints_one_line_not_a_traceback(tmp_path):
    for flags in (["--epochs", "-1"], ["--data-dir", str(tmp_path / "nowhere")]):
        result = subprocess.run([sys.executable, str(MNIST), *TINY, "--out", str(tmp_path / "out"), *flags],
                                cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                                timeout=60)
        assert_one_line_error(result.returncode, result.stderr)


# --- --resume with a bad or foreign checkpoint -------------------------------------------------------

@pytest.fixture
def trained(mnist, capsys, tmp_path):
    """An --out holding the checkpoint of one tiny epoch."""
    out = tmp_path / "trained"
    code, _, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--out", out)
    assert code == 0, err
    return out


def rewrite(out, change):
    """Apply ``change(arrays, meta)`` to ``out``'s checkpoint and save it again."""
    path = out / "checkpoint.npz"
    arrays, meta = load_checkpoint(path)
    change(arrays, meta)
    for key in ("format", "version"):
        meta.pop(key)
    save_checkpoint(path, arrays, meta)


def resume(mnist, capsys, out, *flags):
    return run_main(mnist, capsys, "--resume", "--no-progress", "--epochs", "2", "--out", out, *flags)


def test_resume_with_other_architecture_or_flags_names_the_difference(mnist, capsys, trained):
    for flags, expected in ((["--hidden", "16"], "--hidden [16] (was [8])"),
                            (["--latent-dim", "3"], "--latent-dim 3 (was 2)"),
                            (["--binarize", "fixed"], "--binarize 'fixed' (was 'none')"),
                            (["--batch-size", "10", "--seed", "1"], "--batch-size 10 (was 20), --seed 1 (was 0)")):
        code, _, err = resume(mnist, capsys, trained, *flags)
        assert_one_line_error(code, err, "--resume: these options differ from the checkpoint's run", expected)


def test_resume_of_a_checkpoint_of_another_architecture_names_it(mnist, capsys, trained):
    """A checkpoint whose parameters are of another model than its run configuration says."""
    def other_model(arrays, meta):
        meta["model"]["latent_dim"] = 3
    rewrite(trained, other_model)
    code, _, err = resume(mnist, capsys, trained)
    assert_one_line_error(code, err, "holds another architecture: latent_dim=3 (now 2)")


@pytest.mark.parametrize("damage", ["truncated", "zero bytes", "a folder", "NaN in params", "NaN in the sums",
                                    "missing optimizer array", "missing progress", "params of another dtype",
                                    "run is not an object", "run with a bad value", "run with a bad list",
                                    "object array"])
def test_resume_of_a_damaged_checkpoint_is_one_line(mnist, capsys, trained, tmp_path, damage):
    path = trained / "checkpoint.npz"
    marker = tmp_path / "UNPICKLED"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "zero bytes":
        path.write_bytes(b"")
    elif damage == "a folder":
        path.unlink()
        path.mkdir()
    elif damage == "object array":
        arrays, meta = load_checkpoint(path)
        np.savez(path, **arrays, evil=np.array([Unpickled(str(marker))], dtype=object),
                 __meta__=np.array(json.dumps(meta)))
    else:
        def change(arrays, meta):
            if damage == "NaN in params":
                arrays["params"][5] = np.nan
            elif damage == "NaN in the sums":           # a mid-epoch checkpoint's running sums
                meta["progress"].update(step_in_epoch=3, global_step=13)
                arrays.update({f"sums.{n}": np.array(1.0, np.float32) for n in ("loss", "reconstruction", "kl")})
                arrays["sums.loss"] = np.array(np.nan, np.float32)
            elif damage == "missing optimizer array":
                del arrays["optimizer.exp_sum_sq"]
            elif damage == "missing progress":
                del meta["progress"]
            elif damage == "params of another dtype":
                arrays["params"] = arrays["params"].astype(np.float64)
            elif damage == "run is not an object":
                meta["metadata"]["run"] = [1, 2]
            elif damage == "run with a bad value":
                meta["metadata"]["run"]["epochs"] = "ten"
            elif damage == "run with a bad list":
                meta["metadata"]["run"]["hidden"] = "abc"
        rewrite(trained, change)
    expected = {"truncated": "is not a readable .npz checkpoint", "zero bytes": "is not a readable .npz checkpoint",
                "a folder": "(a folder)", "NaN in params": "'params' holds 1 NaN or Inf values",
                "NaN in the sums": "'sums.loss' holds 1 NaN values",
                "missing optimizer array": "no array 'optimizer.exp_sum_sq'",
                "missing progress": "no metadata 'progress'",
                "params of another dtype": "'params' is stored as float64, the model computes in float32",
                "run is not an object": "its run configuration is a list",
                "run with a bad value": "--epochs 'ten', which that flag cannot take",
                "run with a bad list": "--hidden 'abc', which that flag cannot take",
                "object array": "Object arrays cannot be loaded when allow_pickle=False"}[damage]
    code, _, err = resume(mnist, capsys, trained)
    assert_one_line_error(code, err, expected)
    assert not marker.exists()                                   # nothing was unpickled


class Unpickled:
    """An object that, if ever unpickled, creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- divergence ----------------------------------------------------------------------------------

def test_a_huge_learning_rate_stops_with_the_last_good_checkpoint_kept(mnist, capsys, tmp_path):
    """One step per epoch: epoch 1 moves every parameter by ~1e30 (finite, saved), epoch 2's loss
    overflows. No warnings from inside NumPy: the one line says it all."""
    out = tmp_path / "out"
    code, _, err = run_main(mnist, capsys, *TINY, "--subset", "20", "--epochs", "3", "--eval-every", "0",
                            "--lr", "1e30", "--out", out)
    assert_one_line_error(code, err, "training stopped: the training loss became nan in epoch 2",
                          f"the last good checkpoint, {out / 'checkpoint.npz'} (end of epoch 1), is kept",
                          "lower learning rate (--lr)", exit_code=1)
    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["progress"]["epoch"] == 1 and np.isfinite(arrays["params"]).all()
    assert load_model(out / "checkpoint.npz").num_params == arrays["params"].size
    assert not (out / "metrics.json").exists() and not (out / ".lock").exists()


def test_divergence_before_any_checkpoint_writes_none(mnist, capsys, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_main(mnist, capsys, *TINY, "--subset", "20", "--epochs", "2", "--lr", "1e30", "--out", out)
    assert_one_line_error(code, err, "the held-out -ELBO became nan in epoch 1", "no checkpoint was written",
                          exit_code=1)
    assert sorted(os.listdir(out)) == []


# --- interruption ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run: 2 epochs of 10 steps."""
    folder = tmp_path_factory.mktemp("straight")
    code, out, err = finish(start_driver(folder, 0, *TINY, "--epochs", "2", "--out", folder / "out"))
    assert code == 0, err
    return folder / "out"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_epoch_then_resume_ends_bit_identical(mnist, capsys, straight, tmp_path, signum):
    out = tmp_path / "out"
    process = start_driver(tmp_path, 13, *TINY, "--epochs", "2", "--out", out)    # epoch 2, step 3
    wait_until_paused(process)
    process.send_signal(signum)
    code, _, err = finish(process)
    name = signal.Signals(signum).name
    assert code == 128 + signum, err
    assert f"interrupted ({name}): checkpoint at {out / 'checkpoint.npz'} (epoch 2, step 3); continue with " \
           f"--resume --out {out}" in err and "Traceback" not in err, err
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert (meta["progress"]["epoch"], meta["progress"]["step_in_epoch"]) == (1, 3)
    assert sorted(os.listdir(out)) == ["checkpoint.npz"]                           # the lock is gone
    code, stdout, err = run_main(mnist, capsys, "--no-progress", "--resume", "--out", out)
    assert code == 0 and "resuming at epoch 2 step 3" in stdout, err
    assert_same_run(out, straight)


def test_a_second_sigint_stops_at_once_and_the_checkpoint_stays_consistent(mnist, capsys, straight, tmp_path):
    """A second SIGINT while the step the first one let finish is still running: it stops the
    run at once, in the middle of the step; the checkpoint on disk is the last whole state, the
    end of epoch 1, and --resume from it ends bit-identical to the uninterrupted run."""
    out = tmp_path / "out"
    process = start_driver(tmp_path, 13, *TINY, "--epochs", "2", "--out", out, signals=2)
    wait_until_paused(process)
    process.send_signal(signal.SIGINT)
    wait_until_paused(process, "GOT ONE")
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130 and "Traceback" not in err, err
    assert f"interrupted (SIGINT): checkpoint at {out / 'checkpoint.npz'} (end of epoch 1)" in err, err
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert (meta["progress"]["epoch"], meta["progress"]["step_in_epoch"]) == (1, 0)
    assert not list(out.glob(".*.tmp")) and not (out / ".lock").exists()
    code, _, err = run_main(mnist, capsys, "--no-progress", "--resume", "--out", out)
    assert code == 0, err
    assert_same_run(out, straight)


# --- one --out, two runs ---------------------------------------------------------------------------

def test_a_second_run_into_the_same_out_is_refused_and_nothing_is_mixed(mnist, capsys, straight, tmp_path):
    out = tmp_path / "out"
    first = start_driver(tmp_path, 3, *TINY, "--epochs", "2", "--out", out)
    wait_until_paused(first)
    code, _, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--seed", "1", "--out", out)
    assert_one_line_error(code, err, f"{out} is in use by another run (pid {first.pid} on",
                          "choose another output folder")
    assert sorted(os.listdir(out)) == [".lock"]                  # the second wrote nothing
    (tmp_path / "GO").touch()
    code, _, err = finish(first)
    assert code == 0, err
    assert_same_run(out, straight)                               # the first's run, undisturbed
    assert not (out / ".lock").exists()


HOLDER = r"""
import sys, time
from minivae.training.checkpoint import folder_lock
with folder_lock(sys.argv[1]):
    print("PAUSED", flush=True)
    time.sleep(60)
"""


def test_a_lock_left_by_a_killed_run_does_not_block(mnist, capsys, tmp_path):
    """The holder takes the lock as a run does (``folder_lock``), then is killed with SIGKILL: no
    cleanup at all, its .lock stays."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], env=environment(tmp_path), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_until_paused(holder)
    code, _, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--out", out)
    assert_one_line_error(code, err, f"pid {holder.pid} on")
    holder.kill()
    holder.communicate(timeout=30)
    assert (out / ".lock").exists() and str(holder.pid) in (out / ".lock").read_text()
    code, _, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--out", out)
    assert code == 0, err
    assert not (out / ".lock").exists() and (out / "metrics.json").exists()


def test_a_stale_lock_file_naming_a_dead_pid_does_not_block(mnist, capsys, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("pid 999999999 on elsewhere, since 2026-01-01 00:00:00\n")
    code, _, err = run_main(mnist, capsys, *TINY, "--epochs", "1", "--out", out)
    assert code == 0, err
    assert not (out / ".lock").exists()


def test_the_lock_is_held_for_the_whole_run(tmp_path):
    with folder_lock(tmp_path) as path:
        assert path == tmp_path / ".lock" and f"pid {os.getpid()}" in path.read_text()
    assert not path.exists()


# --- pictures of degenerate runs ---------------------------------------------------------------------

def test_the_curves_of_a_run_without_epochs(tmp_path):
    """``--epochs 0 --monitor``: curves.png and monitor.png of an empty history, without warnings
    (was: "No artists with labels found to put in legend", on stderr)."""
    from minivae.plots.training import plot_curves, plot_monitor
    from minivae.training.loop import new_history
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for plot in (plot_curves, plot_monitor):
            assert plot(new_history(), tmp_path / f"{plot.__name__}.png").stat().st_size > 0


@pytest.mark.parametrize("n, latent_dim", [(1, 3), (2, 5), (100, 1), (1, 1)])
def test_the_latent_picture_of_one_digit_or_a_1d_latent_space(tmp_path, n, latent_dim):
    """``--test-subset 1`` with K > 2 (one row has one principal component) and ``--latent-dim 1``
    (one coordinate): the picture is drawn, the missing coordinate is 0 (was: an IndexError
    traceback after training)."""
    from minivae.plots.training import plot_latent, principal_components
    mu = np.random.default_rng(0).standard_normal((n, latent_dim))
    points = principal_components(mu)
    assert points.shape == (n, 2) and np.isfinite(points).all()
    if latent_dim == 1 or n == 1:
        np.testing.assert_array_equal(points[:, 1], 0.0)
    assert plot_latent(mu, np.arange(n) % 10, tmp_path / "latent.png").stat().st_size > 0


# --- the study examples' flags ---------------------------------------------------------------------

STUDY_INVALID = {
    ("elbo_gap", "examples 0"): (["--examples", "0"], "argument --examples: must be >= 1, got 0"),
    ("elbo_gap", "examples above the data"): (["--examples", "6000"], "at most 5000 (the data set), got 6000"),
    ("elbo_gap", "grid 1"): (["--grid", "1"], "argument --grid: must be >= 2, got 1"),
    ("elbo_gap", "ks 0"): (["--ks", "1,0"], "argument --ks: must be >= 1, got 0"),
    ("elbo_gap", "ks not numbers"): (["--ks", "1,x"], "argument --ks: not an integer: 'x'"),
    ("elbo_gap", "repeats 1"): (["--repeats", "1"], "argument --repeats: must be >= 2, got 1"),
    ("elbo_gap", "steps -1"): (["--steps", "-1"], "argument --steps: must be >= 0, got -1"),
    ("gradient_variance", "samples 0"): (["--samples", "0"], "argument --samples: must be >= 1, got 0"),
    ("gradient_variance", "reference-samples 0"): (["--reference-samples", "0"], "must be >= 2, got 0"),
    ("prior_ring", "samples -3"): (["--samples", "-3"], "argument --samples: must be >= 1, got -3"),
    ("prior_ring", "seed -1"): (["--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    ("prior_ring", "out a file"): (["--out", "FILE"], "is a file, not a folder"),
    ("prior_ring", "float16"): (["--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    ("inference_gap", "examples 0"): (["--examples", "0"], "argument --examples: must be >= 1, got 0"),
    ("inference_gap", "examples above the data"): (["--examples", "6000"], "at most 5000 (the data set), got 6000"),
    ("inference_gap", "grid 1"): (["--grid", "1"], "argument --grid: must be >= 2, got 1"),
    ("inference_gap", "ascent-steps -1"): (["--ascent-steps", "-1"], "argument --ascent-steps: must be >= 0"),
    ("iwae_snr", "ks 0"): (["--ks", "1,0"], "argument --ks: must be >= 1, got 0"),
    ("iwae_snr", "ks not numbers"): (["--ks", "1,x"], "argument --ks: not an integer: 'x'"),
    ("iwae_snr", "repeats 1"): (["--repeats", "1"], "argument --repeats: must be >= 2, got 1"),
    ("iwae_snr", "examples 0"): (["--examples", "0"], "argument --examples: must be >= 1, got 0"),
    ("iwae_snr", "out a file"): (["--out", "FILE"], "is a file, not a folder"),
    ("pixel_space", "cut 0"): (["--cut", "0"], "argument --cut: must be a finite number in (0, 1), got 0"),
    ("pixel_space", "cut 1"): (["--cut", "1"], "argument --cut: must be a finite number in (0, 1), got 1"),
    ("pixel_space", "train 0"): (["--train", "0"], "argument --train: must be >= 1, got 0"),
    ("pixel_space", "train above the data"): (["--train", "70000"], "at most 60000 (the training set)"),
    ("pixel_space", "variance 0"): (["--variance", "0"], "argument --variance: must be a finite number > 0"),
    ("pixel_space", "variance NaN"): (["--variance", "nan"], "argument --variance: must be a finite number > 0"),
    ("pixel_space", "steps -1"): (["--steps", "-1"], "argument --steps: must be >= 0, got -1"),
}


@pytest.fixture(scope="module")
def study_examples():
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        modules = {}
        for name in ("elbo_gap", "gradient_variance", "prior_ring", "inference_gap", "iwae_snr", "pixel_space"):
            spec = importlib.util.spec_from_file_location(f"{name}_probes", ROOT / "examples" / f"{name}.py")
            modules[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(modules[name])
        yield modules
    finally:
        sys.path.remove(str(ROOT / "examples"))


@pytest.mark.parametrize("case", sorted(STUDY_INVALID), ids=" / ".join)
def test_an_invalid_flag_of_a_study_example_is_one_line(study_examples, capsys, tmp_path, case):
    """(was: a traceback for a negative seed, a GPU that is not there, a file as --out, a bad --ks,
    prior_ring's --samples 0; the other counts were not checked)"""
    flags, message = STUDY_INVALID[case]
    (tmp_path / "FILE").write_text("")
    flags = [str(tmp_path / "FILE") if flag == "FILE" else flag for flag in flags]
    with pytest.raises(SystemExit) as stop:
        study_examples[case[0]].main(["--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert_one_line_error(stop.value.code, err, message)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(cupy_gpu_available(), reason="this machine has a GPU: --backend cupy runs")
def test_a_study_example_with_backend_cupy_without_a_gpu(study_examples, capsys, tmp_path):
    with pytest.raises(SystemExit) as stop:
        study_examples["prior_ring"].main(["--backend", "cupy", "--out", str(tmp_path / "out")])
    assert_one_line_error(stop.value.code, capsys.readouterr().err, "backend 'cupy' was requested but CuPy")


def test_a_failing_figure_loses_no_number(mnist, capsys, tmp_path, monkeypatch):
    """(was: the pictures were drawn before metrics.json was written, so a figure that failed,
    e.g. matplotlib missing, lost the evaluation it came after, IWAE-5000 included)"""
    def no_matplotlib(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'matplotlib'")
    monkeypatch.setattr(mnist, "draw_pictures", no_matplotlib)
    out = tmp_path / "out"
    with pytest.raises(ModuleNotFoundError):
        mnist.main([str(a) for a in (*TINY, "--epochs", "1", "--iwae-k", "5", "--out", out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 1 and metrics["files"]["pictures"] == []
    assert np.isfinite(metrics["final"]["heldout_neg_elbo"]) and metrics["final"]["iwae"]["k"] == 5
    assert "final held-out -ELBO" in capsys.readouterr().out
