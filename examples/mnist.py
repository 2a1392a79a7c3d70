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
Ctrl-C saves a checkpoint; ``--resume`` continues from it exactly.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import minivae
except ImportError:  # run from a checkout without `pip install -e .`: use the repository's package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import minivae
from minivae import VAE, to_numpy
from minivae.backend import BACKENDS
from minivae.fast.dispatch import describe_kernels
from minivae.ops.layers import ACTIVATIONS
from minivae.ops.likelihoods import LIKELIHOODS
from minivae.training.checkpoint import CheckpointError, atomic_open, load_checkpoint
from minivae.training.data import (DATASETS, PREPROCESSING, DataError, binarize_dynamic, get_dataset_spec,
                                   load_dataset, preprocess)
from minivae.training.evaluate import heldout_elbo, iwae_bound, latent_statistics
from minivae.training.loop import TrainConfig, Trainer, TrainingDiverged, derive_seed

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
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
                   help="threads of a training step on NumPy (auto: two from batch 16 of this model "
                   "up; 1 on a CPU shared with other jobs)")
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
        saved = meta.get("metadata", {}).get("run")
        if saved is None:
            raise CheckpointError(f"{path} was not written by examples/mnist.py; nothing to resume")
        conflicts = [name for name in explicit - RESUME_FREE
                     if name in saved and saved[name] != getattr(args, name)]
        if conflicts:
            raise SystemExit("--resume: these options differ from the checkpoint's run: "
                             + ", ".join(f"--{n.replace('_', '-')} {getattr(args, n)!r} (was "
                                         f"{saved[n]!r})" for n in sorted(conflicts)))
        for name, value in saved.items():      # the saved run, except what is given now
            if name not in explicit and name not in ("resume", "out"):
                setattr(args, name, value)
    return args


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
                       lr_decay=args.lr_decay, lr_min=args.lr_min, beta=args.beta,
                       warmup_epochs=args.warmup_epochs, n_samples=args.n_samples,
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
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = minivae.get_backend(args.backend)
    spec = get_dataset_spec(args.dataset)

    try:
        train_full = load_dataset(spec, "train", args.data_dir, download=not args.no_download)
        test_full = load_dataset(spec, "test", args.data_dir, download=not args.no_download)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train_set, test_set = train_full.subset(args.subset), test_full.subset(args.test_subset)
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
        trainer.restore(checkpoint)

    print(f"minivae {minivae.__version__} | backend {backend.name} | {model!r}")
    print(f"data: {args.dataset} {len(train_set):,} training / {len(test_set):,} test digits "
          f"from {Path(train_full.sources['images']).parent} | preprocessing: {args.binarize} "
          f"({COMPARABLE[args.binarize]})")
    if note:
        print(f"NOTE: {note}")
    print(f"training: {config.epochs} epochs of {trainer.steps_per_epoch} steps, batch {config.batch_size}, "
          f"Adam lr {config.lr:g} (x{config.lr_decay:g}/epoch, min {config.lr_min:g}), beta {config.beta:g}"
          + (f", KL warm-up {config.warmup_epochs:g} epochs" if config.warmup_epochs else "")
          + (f", objective -IWAE_{config.k} ({config.estimator} encoder gradient, reference path)"
             if config.objective == "iwae" else "")
          + (f", resuming at epoch {trainer.epoch + 1} step {trainer.step_in_epoch}" if args.resume else "")
          + (f", time limit {args.time_limit:g} min" if args.time_limit else ""))

    train_began = time.perf_counter()
    try:
        trainer.fit(time_limit=None if args.time_limit is None else 60.0 * args.time_limit)
    except KeyboardInterrupt:
        if trainer.last_saved is None:
            print("\ninterrupted before the first checkpoint", file=sys.stderr)
        else:
            epoch, step = trainer.last_saved
            print(f"\ninterrupted: checkpoint at {checkpoint} ("
                  + (f"end of epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}")
                  + "); continue with --resume --out " + str(out), file=sys.stderr)
        return 130
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
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
                              seed=args.seed, progress=args.progress)
        stats = latent_statistics(model, x_test)
    except KeyboardInterrupt:
        print(f"\ninterrupted during the evaluation; the trained model is in {checkpoint}: "
              f"--resume --out {out} evaluates it again (with the same --epochs nothing is retrained)",
              file=sys.stderr)
        return 130
    eval_seconds = time.perf_counter() - eval_began
    pictures = draw_pictures(model, args, x_test, test_set.labels, trainer.history, note, out,
                             list(spec.classes) if args.dataset != "mnist" else None, stats["kl_per_dim"])

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
        "files": {"checkpoint": str(checkpoint), "pictures": pictures},
        "versions": {"minivae": minivae.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        # the last bits of a float32 run depend on it (compiled CPU kernels or NumPy passes)
        "kernels": describe_kernels(backend, args.dtype),
    }
    write_json(out / "metrics.json", metrics)

    where = f"{len(test_set):,} test digits" + (f"; {note}" if note else "")
    print(f"final held-out -ELBO: {final['neg_elbo']:.2f} nats (reconstruction {final['reconstruction']:.2f}, "
          f"KL {final['kl']:.2f}; {where}; one z sample per digit)")
    if iwae is not None:
        print(f"IWAE-{iwae.k}: -log p(x) <= {iwae.neg_log_px:.2f} nats (on {iwae.log_px.size:,} test digits, "
              f"{iwae.seconds:.1f} s)")
    print(f"active units: {stats['active_units']}/{model.latent_dim} | training {train_seconds:.1f} s, "
          f"evaluation {eval_seconds:.1f} s | wrote {out}/: metrics.json, checkpoint.npz, "
          + ", ".join(Path(p).name for p in pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
