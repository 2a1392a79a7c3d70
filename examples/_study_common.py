"""Shared by the study examples (gradient_variance.py, elbo_gap.py, prior_ring.py): command-line
options, a small data set, and a few seconds of training. Not part of the library.

The default data set is synthetic: 8 x 8 binary images of one Gaussian blob whose centre (two
continuous factors) is drawn uniformly, so a 2-D latent space can represent it well and a small
model learns it in seconds. Real MNIST digits (downsampled to 14 x 14, binarised) are used instead
when ``--data mnist`` is given, or by default when ``data/mnist/t10k-images-idx3-ubyte.gz`` exists.
"""
from __future__ import annotations

import argparse
import gzip
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import minivae  # noqa: E402

MNIST_FILE = ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one line (exit code 2) instead of the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def count(minimum=1):
    """An argparse ``type``: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def number(low, high=None):
    """An argparse ``type``: a finite float with low < value (< high where given)."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (math.isfinite(value) and value > low and (high is None or value < high)):
            bounds = f"in ({low:g}, {high:g})" if high is not None else f"> {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}, got {text}")
        return value
    return parse


def counts(text):
    """An argparse ``type``: comma-separated positive integers, e.g. "1,10,100"."""
    values = [count()(part) for part in text.split(",")]
    return ",".join(map(str, values))


def parse(p, argv):
    """``p.parse_args(argv)``, the backend and --out checked: a GPU asked for where there is none,
    or a file as the output folder, is one line with exit code 2, as every other bad option."""
    args = p.parse_args(argv)
    try:
        minivae.get_backend(args.backend)
    except minivae.BackendUnavailableError as error:
        p.error(str(error))
    if Path(args.out).exists() and not Path(args.out).is_dir():
        p.error(f"argument --out: {args.out} is a file, not a folder")
    return args


def parser(description, name):
    """The options every study example shares: --backend, --dtype, --out, --seed, --fast."""
    p = OneLineParser(description=description)
    p.add_argument("--backend", default="numpy", choices=["numpy", "cupy", "strict", "auto"],
                   help="array backend (default numpy; 'cupy' runs the same code on the GPU)")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                   help="float64 by default: these are measurements, not a training run")
    p.add_argument("--out", default=str(Path("runs") / name), help="folder for the PNG files")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--fast", action="store_true", help="a few seconds, for tests (coarser numbers)")
    return p


def blob_images(n, side=8, width=1.0, seed=0):
    """n binary side x side images of one blob: pixel (i, j) is on with probability
    exp(-((i - a)^2 + (j - b)^2) / (2 width^2)), centre (a, b) ~ U([0.5, side - 1.5]^2). (n, side^2)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.5, side - 1.5, size=(n, 2))
    i, j = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    d2 = (i[None] - centres[:, 0, None, None]) ** 2 + (j[None] - centres[:, 1, None, None]) ** 2
    probabilities = np.exp(-d2 / (2.0 * width ** 2)).reshape(n, side * side)
    return (rng.random(probabilities.shape) < probabilities).astype(np.float64)


def mnist_images(n, path=None, seed=0):
    """n MNIST test digits, 2 x 2 average-pooled to 14 x 14 and binarised at 0.5: (n, 196)."""
    with gzip.open(MNIST_FILE if path is None else path, "rb") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    images = raw[rng.permutation(len(raw))[:n]].astype(np.float64) / 255.0
    pooled = images.reshape(n, 14, 2, 14, 2).mean(axis=(2, 4))
    return (pooled > 0.5).astype(np.float64).reshape(n, 196)


def dataset(kind, n, seed=0):
    """('blobs' | 'mnist' | 'auto', n) -> host array (n, D) in [0, 1], and the image side."""
    if kind == "auto":
        kind = "mnist" if MNIST_FILE.exists() else "blobs"
    if kind == "mnist":
        return mnist_images(n, seed=seed), 14
    return blob_images(n, seed=seed), 8


def train_quickly(model, x, steps=1500, batch_size=64, lr=3e-3, seed=0, log=print):
    """A few seconds of Adam on the whole-data batches of ``x`` (on the model's device)."""
    optimizer = minivae.Adam(model.params, lr=lr)
    step = minivae.TrainStep(model, optimizer)
    random = model.backend.random(seed)
    n = x.shape[0]
    start = time.perf_counter()
    order = random.permutation(n)
    position = 0
    for i in range(steps):
        if position + batch_size > n:
            order, position = random.permutation(n), 0
        terms = step(x[order[position:position + batch_size]])
        position += batch_size
        if log is not None and (i + 1) % max(1, steps // 4) == 0:
            log(f"  step {i + 1:5d}/{steps}  loss {float(terms.loss):8.3f} nats")
    if log is not None:
        log(f"  trained {steps} steps in {time.perf_counter() - start:.1f} s")
    return model


def trained_2d_model(args, n_data=5000):
    """The 2-D latent model of the gap examples, trained briefly on ``args.data`` (tanh; 128 hidden
    units for 14 x 14 MNIST, 64 for the 8 x 8 blobs): ``(model, x, side)``, where ``x`` are the
    last ``args.examples`` images of the data, on the model's device, and ``side`` their width."""
    data, side = dataset(args.data, n_data, seed=args.seed)
    hidden = [128] if side == 14 else [64]
    model = minivae.VAE(data.shape[1], hidden, 2, activation="tanh", backend=args.backend,
                        dtype=args.dtype, seed=args.seed)
    print(f"{model}; data {data.shape} ({side} x {side}), dtype {args.dtype}")
    x_all = model.backend.to_device(data, dtype=model.dtype)
    train_quickly(model, x_all, steps=args.steps, batch_size=100, seed=args.seed)
    return model, x_all[-args.examples:], side


def out_dir(path):
    os.makedirs(path, exist_ok=True)
    return Path(path)
