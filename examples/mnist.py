"""Train a VAE on MNIST (or Fashion-MNIST), evaluate it, and draw the pictures.

    python examples/mnist.py                  # ~2 minutes on a 2-core CPU; writes runs/mnist/
    python examples/mnist.py --smoke          # seconds: a tiny run for CI
    python examples/mnist.py --help

The default is PyTorch's examples/vae setting: 784-400-20, ReLU, a Bernoulli decoder on continuous
intensities, Adam 1e-3, batch 128, 10 epochs, on the standard 60,000 / 10,000 split; then the
held-out negative ELBO on the 10,000 test digits (z sampled, as PyTorch's test loss) and the
importance-weighted bound IWAE-100 on the same digits. See docs/mnist.md for the classic setting
of the literature (784-200-200-50 tanh, dynamic binarization, IWAE-5000).

Everything lands in ``--out``: reconstructions.png, samples.png, latent.png (+ manifold.png for a
2-D latent space), traversals.png (a row per latent dimension, by KL), interpolations.png,
curves.png, monitor.png (with --monitor), metrics.json and checkpoint.npz.
Ctrl-C or SIGTERM saves a checkpoint; ``--resume`` continues from it exactly. A second run into
the same ``--out`` while one runs is refused (``OUT/.lock``).

Exit codes: 0 done; 2 a bad flag value, data, checkpoint, backend, or an ``--out`` in use (one
line on stderr, never a traceback); 1 training diverged (the last good checkpoint is kept);
130 / 143 interrupted by SIGINT / SIGTERM (a checkpoint is saved).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import signal
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

try:
    import minivae
except ImportError:  # run from a checkout without `pip install -e .`: use the repository's package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minivae
from minivae import VAE, to_numpy
from minivae.backend import BACKENDS, BackendUnavailableError
from minivae.fast.dispatch import describe_kernels
from minivae.ops.layers import ACTIVATIONS
from minivae.ops.likelihoods import LIKELIHOODS
from minivae.training.checkpoint import CheckpointError, FolderLockedError, atomic_open, folder_lock, load_checkpoint
from minivae.training.data import (DATASETS, PREPROCESSING, DataError, binarize_dynamic, get_dataset_spec,
                                   load_dataset, preprocess)
from minivae.training.evaluate import heldout_elbo, iwae_bound, latent_statistics
from minivae.training.loop import (LR_SCHEDULES, TrainConfig, Trainer, TrainingDiverged, TrainingInterrupted,
                                   derive_seed)

FLOATING_POINT_WARNINGS = r"(overflow|underflow|invalid value|divide by zero) encountered"
TEST_BINARIZATION_SEED = 20160200   # the one Bernoulli draw of the test set under --binarize dynamic
SMOKE = {"subset": 1000, "test_subset": 500, "epochs": 2, "iwae_k": 20, "batch_size": 100}
# options that may change when a run is resumed; all others must match the checkpoint, and
# those not given on the command line are taken from it
RESUME_FREE = {"epochs", "time_limit", "out", "resume", "backend", "data_dir", "no_download",
               "iwae_k", "iwae_n", "iwae_batch_rows", "eval_every", "progress", "smoke"}
COMPARABLE = {
    "none": "continuous [0, 1] intensities with a Bernoulli decoder (cross-entropy): comparable to "
            "PyTorch examples/vae's printed test loss, not to log-likelihoods in the literature",
    "fixed": "binarized at 0.5 once (deterministic): a fixed, easier binary data set; not "
             "comparable to the literature's stochastically binarized MNIST",
    "dynamic": "dynamically binarized (a fresh Bernoulli draw each epoch; the test set drawn once): "
               "comparable to the IWAE literature (Burda et al. 2016: 86.76 nats for 784-200-200-50)",
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose errors are one line (exit code 2) instead of the whole usage text."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    g.add_argument("--data-dir", default=None,
                   help=f"folder with the IDX files (else ${minivae.data.ENV_DATA_DIR}, the user cache, "
                        "system folders, data/ in the repository, then a download)")
    g.add_argument("--no-download", action="store_true", help="never use the network")
    g.add_argument("--binarize", choices=PREPROCESSING, default="none",
                   help="none: [0, 1] intensities; fixed: threshold 0.5; dynamic: a fresh "
                        "Bernoulli draw every epoch")
    g.add_argument("--subset", type=int, default=None, help="train on the first N training digits only")
    g.add_argument("--test-subset", type=int, default=None, help="evaluate on the first N test digits only")
    g = p.add_argument_group("model")
    g.add_argument("--hidden", type=int, nargs="+", default=[400], help="hidden widths of the encoder "
                   "(the decoder mirrors them)")
    g.add_argument("--latent-dim", type=int, default=20)
    g.add_argument("--activation", default="relu", choices=sorted(ACTIVATIONS))
    g.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    g.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                   help="auto: CuPy if a GPU is usable, else NumPy; strict: the CPU stand-in for "
                        "CuPy used in tests")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--lr-decay", type=float, default=1.0, help="learning rate multiplied by this after every epoch")
    g.add_argument("--lr-min", type=float, default=0.0, help="floor of the decayed learning rate")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="exponential",
                   help="exponential: --lr-decay per epoch; burda: Burda et al. 2016, 3^i epochs at "
                        "lr * 10^(-i/7), i = 0..7 (3280 epochs in all)")
    g.add_argument("--beta", type=float, default=1.0, help="weight of the KL term")
    g.add_argument("--warmup-epochs", type=float, default=0.0, help="KL weight ramps from 0 to beta over these epochs")
    g.add_argument("--n-samples", type=int, default=1, help="z samples per digit and step")
    g.add_argument("--objective", choices=["elbo", "iwae"], default="elbo",
                   help="elbo: the negative ELBO (fused fast path); iwae: the importance-weighted loss "
                   "-IWAE_k (reference path, k samples per digit)")
    g.add_argument("--k", type=int, default=None, help="importance samples per digit of --objective iwae "
                   "(default 5; the ELBO takes --n-samples)")
    g.add_argument("--estimator", choices=["reparam", "stl", "dreg"], default="reparam",
                   help="encoder gradient of --objective iwae: reparameterization, sticking the "
                   "landing, or doubly reparameterized")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--time-limit", type=float, default=None, metavar="MINUTES",
                   help="stop training cleanly after this many minutes, then evaluate")
    g.add_argument("--monitor", action="store_true", help="record gradient norms per layer and KL per "
                   "latent dimension every epoch; draws monitor.png")
    g.add_argument("--eval-every", type=int, default=1, help="held-out -ELBO every this many epochs")
    g.add_argument("--threads", choices=["auto", "1", "2"], default="auto",
                   help="threads of a training step and of the IWAE evaluation on NumPy (auto: two "
                   "from batch 16 of this model up; 1 on a CPU shared with other jobs)")
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--iwae-k", type=int, default=100, help="importance samples of the final "
                   "IWAE bound on log p(x) (5000 for publishable numbers; 0 to skip)")
    g.add_argument("--iwae-n", type=int, default=None, help="test digits for IWAE (default: all)")
    g.add_argument("--iwae-batch-rows", type=int, default=None, help="decoder rows per IWAE call")
    g.add_argument("--out", default="runs/mnist", help="output folder")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    g.add_argument("--smoke", action="store_true",
                   help=f"a seconds-long run for CI: {SMOKE} unless given explicitly")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def explicit_options(parser, argv) -> set:
    """The destinations of the options written on the command line (not left at their default)."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {action.dest for action in parser._actions if given & set(action.option_strings)}


def resolve_run(parser, argv):
    """Parse ``argv``; apply --smoke; on --resume take the run configuration from the checkpoint."""
    args = parser.parse_args(argv)
    explicit = explicit_options(parser, argv)
    if args.smoke:
        for name, value in SMOKE.items():
            if name not in explicit:
                setattr(args, name, value)
    if args.resume:
        path = Path(args.out) / "checkpoint.npz"
        _, meta = load_checkpoint(path)
        metadata = meta.get("metadata")
        saved = metadata.get("run") if isinstance(metadata, dict) else None
        if saved is None:
            raise CheckpointError(f"{path} was not written by examples/mnist.py; nothing to resume")
        check_saved_run(parser, saved, path)
        conflicts = [name for name in explicit - RESUME_FREE
                     if name in saved and saved[name] != getattr(args, name)]
        if conflicts:
            parser.error("--resume: these options differ from the checkpoint's run: "
                         + ", ".join(f"--{n.replace('_', '-')} {getattr(args, n)!r} (was "
                                     f"{saved[n]!r})" for n in sorted(conflicts)))
        for name, value in saved.items():      # the saved run, except what is given now
            if name not in explicit and name not in ("resume", "out"):
                setattr(args, name, value)
    return args


def check_saved_run(parser, saved, path) -> None:
    """Refuse the run configuration stored in a checkpoint unless every value is one its flag
    could have parsed to (type, choices, list or not), so that an edited or foreign checkpoint
    is a :class:`CheckpointError`, not a traceback later on."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its run configuration is a {type(saved).__name__}, not a JSON object")
    actions = {action.dest: action for action in parser._actions}

    def parsed_value(action, value):
        if action.choices is not None:
            return value in action.choices
        kind = action.type or str
        if kind is float:
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        return isinstance(value, kind) and not (kind is int and isinstance(value, bool))

    for name, value in saved.items():
        action = actions.get(name)
        if action is None or name == "help":
            continue                       # an option of another version: not used
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            ok = isinstance(value, bool)
        elif value is None:
            ok = action.default is None
        elif action.nargs == "+":
            ok = isinstance(value, list) and len(value) > 0 and all(parsed_value(action, v) for v in value)
        else:
            ok = parsed_value(action, value)
        if not ok:
            raise CheckpointError(f"{path}: its run configuration has {action.option_strings[0]} {value!r}, "
                                  "which that flag cannot take: edited, or not written by examples/mnist.py")


def invalid_flag(args) -> str | None:
    """The first flag whose value cannot make a run, as a sentence; None when all can."""
    def flag(name):
        return "--" + name.replace("_", "-")
    counts = {"epochs": 0, "batch_size": 1, "latent_dim": 1, "n_samples": 1, "seed": 0, "eval_every": 0,
              "iwae_k": 0, "subset": 1, "test_subset": 1, "iwae_n": 1, "iwae_batch_rows": 1}
    for name, minimum in counts.items():
        value = getattr(args, name)
        if value is not None and value < minimum:
            return f"{flag(name)} must be {'positive' if minimum else '>= 0'}, got {value}"
    if any(width < 1 for width in args.hidden):
        return f"--hidden widths must be positive, got {' '.join(map(str, args.hidden))}"
    reals = {"lr": lambda v: v > 0, "lr_decay": lambda v: 0 < v <= 1, "lr_min": lambda v: v >= 0,
             "beta": lambda v: v >= 0, "warmup_epochs": lambda v: v >= 0,
             "time_limit": lambda v: v is None or v > 0}
    rules = {"lr": "> 0", "lr_decay": "in (0, 1]", "lr_min": ">= 0", "beta": ">= 0", "warmup_epochs": ">= 0",
             "time_limit": "> 0 (minutes)"}
    for name, ok in reals.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and ok(value)):
            return f"{flag(name)} must be a finite number {rules[name]}, got {value}"
    return None


def fail(message) -> int:
    """An error the user can fix: one line on stderr (data errors add their instructions), exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def interrupted(error: KeyboardInterrupt) -> int:
    """The exit code of a run stopped by a signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
    return 128 + int(getattr(error, "signal", signal.SIGINT))


def _terminate(signum, frame):
    raise TrainingInterrupted("terminated", signum)


def subset_note(n_train, n_train_full, n_test, n_test_full) -> str:
    """'' for the full split; otherwise a note that goes into every printout, title and file."""
    notes = []
    if n_train < n_train_full:
        notes.append(f"subset: {n_train:,} of {n_train_full:,} training digits")
    if n_test < n_test_full:
        notes.append(f"{n_test:,} of {n_test_full:,} test digits")
    return "; ".join(notes)


def write_json(path, data):
    """Write JSON atomically (temporary file, then rename)."""
    with atomic_open(path, "w") as stream:
        json.dump(data, stream, indent=2)
        stream.write("\n")


def normal_quantile_grid(n):
    """An n x n grid of 2-D z values at the normal quantiles of (0.05 ... 0.95), as in Kingma & Welling's
    figures: (n n, 2) on the host."""
    quantiles = [statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)]
    return np.array([[a, b] for b in reversed(quantiles) for a in quantiles], dtype=np.float64)


def train_config(args) -> TrainConfig:
    """The :class:`TrainConfig` of the command line (ValueError for a combination it refuses)."""
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       lr_decay=args.lr_decay, lr_min=args.lr_min, lr_schedule=args.lr_schedule,
                       beta=args.beta, warmup_epochs=args.warmup_epochs, n_samples=args.n_samples,
                       dynamic_binarization=args.binarize == "dynamic", seed=args.seed,
                       monitor=args.monitor, eval_every=args.eval_every,
                       threads=args.threads if args.threads == "auto" else int(args.threads),
                       objective=args.objective, estimator=args.estimator,
                       k=(5 if args.objective == "iwae" else 1) if args.k is None else args.k)


TRAVERSAL_VALUES = np.linspace(-3.0, 3.0, 11)
TRAVERSAL_ROWS = 20          # the dimensions with the largest KL (all of them when K <= 20)
INTERPOLATION_PAIRS, INTERPOLATION_STEPS = 6, 10


def draw_pictures(model, args, x_test, labels, history, note, out, class_names, kl_per_dim=None) -> list:
    from minivae.plots import training as plots
    suffix = f"\n[{note}]" if note else ""
    label = f"{args.dataset}, {model!r}"
    written = []
    x_show = x_test[:32]
    title = f"test images and reconstructions E[x | z = mu(x)]: {label}{suffix}"
    written.append(plots.plot_reconstructions(x_show, model.reconstruct(x_show), out / "reconstructions.png",
                                              title=title))
    eps = model.backend.random(derive_seed(args.seed, 0, "pictures")).normal((100, model.latent_dim), model.dtype)
    written.append(plots.plot_samples(model.sample(100, eps=eps), out / "samples.png",
                                      title=f"E[x | z], z ~ N(0, I): {label}{suffix}"))
    n_latent = min(x_test.shape[0], 10000)
    mu = np.concatenate([to_numpy(model.encode(x_test[i:min(i + 5000, n_latent)])[0])
                         for i in range(0, n_latent, 5000)])
    written.append(plots.plot_latent(mu, labels[:len(mu)], out / "latent.png", class_names=class_names,
                                     title=f"posterior means of {len(mu):,} test images: {label}{suffix}"))
    if model.latent_dim == 2:
        n = 20
        z = model.backend.to_device(normal_quantile_grid(n), dtype=model.dtype)
        images = to_numpy(model.decode_mean(z)).reshape(n, n, -1)
        written.append(plots.plot_manifold(images, out / "manifold.png",
                                           title=f"E[x | z] over a grid of z at normal quantiles: {label}{suffix}"))
    if kl_per_dim is not None:
        # traversals: around the posterior mean of the first test digit, a row per dimension, by KL
        order = [int(j) for j in np.argsort(-np.asarray(kl_per_dim))[:TRAVERSAL_ROWS]]
        z0 = to_numpy(model.encode(x_test[:1])[0])[0]
        codes = plots.traversal_latents(z0, order, TRAVERSAL_VALUES)
        images = model.decode_mean(model.backend.to_device(codes.reshape(-1, model.latent_dim), dtype=model.dtype))
        shown = f"the {len(order)} of {model.latent_dim} dimensions with the largest KL" \
            if len(order) < model.latent_dim else f"all {model.latent_dim} dimensions"
        written.append(plots.plot_traversals(
            to_numpy(images).reshape(len(order), len(TRAVERSAL_VALUES), -1), kl_per_dim, order, TRAVERSAL_VALUES,
            out / "traversals.png", title=f"latent traversals, {shown}, ordered by KL: {label}{suffix}"))
    # interpolations: straight paths between the posterior means of pairs of test digits
    pairs = min(INTERPOLATION_PAIRS, x_test.shape[0] // 2)
    x_a, x_b = x_test[:pairs], x_test[pairs:2 * pairs]
    codes = plots.interpolation_latents(model.encode(x_a)[0], model.encode(x_b)[0], INTERPOLATION_STEPS)
    images = model.decode_mean(model.backend.to_device(codes.reshape(-1, model.latent_dim), dtype=model.dtype))
    written.append(plots.plot_interpolations(
        x_a, to_numpy(images).reshape(pairs, INTERPOLATION_STEPS, -1), x_b, out / "interpolations.png",
        title=f"E[x | z] on the straight path between two test digits' posterior means: {label}{suffix}"))
    written.append(plots.plot_curves(history, out / "curves.png", title=f"{label}{suffix}"))
    if args.monitor:
        written.append(plots.plot_monitor(history, out / "monitor.png", title=f"{label}{suffix}"))
    return [str(path) for path in written]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    started = time.perf_counter()
    try:
        args = resolve_run(parser, argv)
    except CheckpointError as error:
        return fail(error)
    problem = invalid_flag(args)
    if problem:
        parser.error(problem)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        return fail(f"--out {out} cannot be the output folder: {error.strerror or error}")
    # SIGTERM stops the run as Ctrl-C does: inside training with a checkpoint, elsewhere at once
    # (the lock is released on the way out either way)
    previous = signal.signal(signal.SIGTERM, _terminate) if hasattr(signal, "SIGTERM") else None
    try:
        with folder_lock(out), warnings.catch_warnings():
            # a diverging run overflows: NumPy would warn from inside the kernels, for every
            # thread; the trainer's NaN guard reports it instead, in one line
            warnings.filterwarnings("ignore", FLOATING_POINT_WARNINGS, RuntimeWarning)
            return run_in(out, args, argv, started)
    except FolderLockedError as error:
        return fail(error)
    except KeyboardInterrupt as error:
        print("\ninterrupted", file=sys.stderr)
        return interrupted(error)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_in(out, args, argv, started) -> int:
    """The run itself, in the locked folder ``out``."""
    try:
        backend = minivae.get_backend(args.backend)
    except BackendUnavailableError as error:
        return fail(error)
    spec = get_dataset_spec(args.dataset)

    try:
        train_full = load_dataset(spec, "train", args.data_dir, download=not args.no_download)
        test_full = load_dataset(spec, "test", args.data_dir, download=not args.no_download)
    except DataError as error:
        return fail(error)
    train_set, test_set = train_full.subset(args.subset), test_full.subset(args.test_subset)
    if args.batch_size > len(train_set):
        return fail(f"--batch-size {args.batch_size} is larger than the {len(train_set):,} training digits")
    note = subset_note(len(train_set), len(train_full), len(test_set), len(test_full))

    x_train = preprocess(train_set.images, args.binarize, dtype=args.dtype)
    x_test = backend.to_device(preprocess(test_set.images, args.binarize, dtype=args.dtype))
    if args.binarize == "dynamic":
        x_test = binarize_dynamic(x_test, backend.random(TEST_BINARIZATION_SEED))
    model = VAE(x_train.shape[1], args.hidden, args.latent_dim, likelihood=args.likelihood,
                activation=args.activation, backend=backend, dtype=args.dtype, seed=args.seed)
    try:
        config = train_config(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = {name: value for name, value in vars(args).items()}
    checkpoint = out / "checkpoint.npz"
    trainer = Trainer(model, x_train, config, x_valid=x_test, checkpoint_path=checkpoint,
                      progress=args.progress, metadata={"run": run})
    if args.resume:
        try:
            trainer.restore(checkpoint)
        except CheckpointError as error:
            return fail(error)

    print(f"minivae {minivae.__version__} | backend {backend.name} | {model!r}")
    print(f"data: {args.dataset} {len(train_set):,} training / {len(test_set):,} test digits "
          f"from {Path(train_full.sources['images']).parent} | preprocessing: {args.binarize} "
          f"({COMPARABLE[args.binarize]})")
    if note:
        print(f"NOTE: {note}")
    print(f"training: {config.epochs} epochs of {trainer.steps_per_epoch} steps, batch {config.batch_size}, "
          f"Adam lr {config.lr:g} "
          + ("(Burda et al.'s schedule: 3^i epochs at x10^(-i/7))" if config.lr_schedule == "burda"
             else f"(x{config.lr_decay:g}/epoch, min {config.lr_min:g})")
          + f", beta {config.beta:g}"
          + (f", KL warm-up {config.warmup_epochs:g} epochs" if config.warmup_epochs else "")
          + (f", objective -IWAE_{config.k} ({config.estimator} encoder gradient, reference path)"
             if config.objective == "iwae" else "")
          + (f", resuming at epoch {trainer.epoch + 1} step {trainer.step_in_epoch}" if args.resume else "")
          + (f", time limit {args.time_limit:g} min" if args.time_limit else ""))

    train_began = time.perf_counter()
    try:
        trainer.fit(time_limit=None if args.time_limit is None else 60.0 * args.time_limit)
    except KeyboardInterrupt as error:
        name = signal.Signals(getattr(error, "signal", signal.SIGINT)).name
        if trainer.last_saved is None:
            print(f"\ninterrupted ({name}) before the first checkpoint", file=sys.stderr)
        else:
            epoch, step = trainer.last_saved
            print(f"\ninterrupted ({name}): checkpoint at {checkpoint} ("
                  + (f"end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}")
                  + "); continue with --resume --out " + str(out), file=sys.stderr)
        return interrupted(error)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if trainer.last_saved is None:       # --epochs 0: the untrained model is the run's checkpoint
        trainer.save()
    train_seconds = time.perf_counter() - train_began
    if trainer.stop_reason == "time_limit":
        print(f"time limit reached after {trainer.epoch} complete epochs"
              + (f" and {trainer.step_in_epoch} steps" if trainer.step_in_epoch else ""))

    eval_began = time.perf_counter()
    try:
        final = heldout_elbo(model, x_test, random=backend.random(derive_seed(args.seed, trainer.epoch, "final")))
        iwae = None
        if args.iwae_k > 0:
            x_iwae = x_test[:args.iwae_n] if args.iwae_n else x_test
            iwae = iwae_bound(model, x_iwae, k=args.iwae_k, batch_rows=args.iwae_batch_rows,
                              seed=args.seed, progress=args.progress,
                              threads=args.threads if args.threads == "auto" else int(args.threads))
        stats = latent_statistics(model, x_test)
    except KeyboardInterrupt as error:
        print(f"\ninterrupted during the evaluation; the trained model is in {checkpoint}: "
              f"--resume --out {out} evaluates it again (with the same --epochs nothing is retrained)",
              file=sys.stderr)
        return interrupted(error)
    eval_seconds = time.perf_counter() - eval_began
    seconds = trainer.history["seconds"]
    metrics = {
        "command": ["python", "examples/mnist.py", *argv],
        "note": note or None,
        "run": run,
        "model": model.config,
        "train_config": config.as_dict(),
        "data": {"dataset": args.dataset, "train_examples": len(train_set),
                 "train_examples_full": len(train_full), "test_examples": len(test_set),
                 "test_examples_full": len(test_full), "subset": args.subset,
                 "test_subset": args.test_subset, "preprocessing": args.binarize,
                 "comparable_to": COMPARABLE[args.binarize], "credit": spec.credit,
                 "sources": {"train": train_full.sources, "test": test_full.sources}},
        "backend": backend.name,
        "epochs_completed": trainer.epoch,
        "stop_reason": trainer.stop_reason,
        "final": {"heldout_neg_elbo": final["neg_elbo"], "heldout_reconstruction": final["reconstruction"],
                  "heldout_kl": final["kl"], "heldout_examples": len(test_set),
                  "heldout_definition": "mean over test digits of -ELBO with one z ~ q(z|x) each, nats",
                  "train_neg_elbo_last_epoch": (trainer.history["train_neg_elbo"] or [None])[-1],
                  "iwae": None if iwae is None else iwae.as_dict(),
                  "active_units": stats["active_units"], "kl_per_dim": stats["kl_per_dim"]},
        "timing": {"train_seconds": train_seconds, "seconds_per_epoch": float(np.mean(seconds)) if seconds else None,
                   "eval_seconds": eval_seconds, "total_seconds": time.perf_counter() - started},
        "history": trainer.history,
        "files": {"checkpoint": str(checkpoint), "pictures": []},   # filled in once they are drawn
        "versions": {"minivae": minivae.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        # the last bits of a float32 run depend on it (compiled CPU kernels or NumPy passes)
        "kernels": describe_kernels(backend, args.dtype),
        # the recorded step replayed in C++ ("program"), the engine from Python, or the reference
        "step_runner": {"runner": trainer.step.runner, "why_not_program": trainer.step.program_reason},
    }
    # the numbers are written before the pictures are drawn, so that a failing figure loses none of them
    write_json(out / "metrics.json", metrics)

    where = f"{len(test_set):,} test digits" + (f"; {note}" if note else "")
    print(f"final held-out -ELBO: {final['neg_elbo']:.2f} nats (reconstruction {final['reconstruction']:.2f}, "
          f"KL {final['kl']:.2f}; {where}; one z sample per digit)")
    if iwae is not None:
        print(f"IWAE-{iwae.k}: -log p(x) <= {iwae.neg_log_px:.2f} nats (on {iwae.log_px.size:,} test digits, "
              f"{iwae.seconds:.1f} s)")
    pictures = draw_pictures(model, args, x_test, test_set.labels, trainer.history, note, out,
                             list(spec.classes) if args.dataset != "mnist" else None, stats["kl_per_dim"])
    metrics["files"]["pictures"] = pictures
    metrics["timing"]["total_seconds"] = time.perf_counter() - started
    write_json(out / "metrics.json", metrics)
    print(f"active units: {stats['active_units']}/{model.latent_dim} | training {train_seconds:.1f} s, "
          f"evaluation {eval_seconds:.1f} s | wrote {out}/: metrics.json, checkpoint.npz, "
          + ", ".join(Path(p).name for p in pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
