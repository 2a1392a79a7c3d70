"""The seed's argument against pixel-space MSE, on real MNIST: one pixel of shift costs more than a cut.

A digit moved one pixel to the right is the same digit; the same digit with its bottom rows erased
is a different (broken) one. The squared error says the opposite: the shift is "farther". So is
the -log p(x' | z) of a trained decoder (Gaussian: squared error / (2 variance) + const;
Bernoulli: per-pixel cross-entropy), since both add up costs pixel by pixel. The consequence:
a VAE trained on squared error (a Gaussian decoder) hedges over positions and produces blurrier
samples than the same VAE with a Bernoulli decoder, trained on the same data for the same steps.

    python examples/pixel_space.py          # ~40 s on 2 CPU cores
    python examples/pixel_space.py --fast   # a few seconds

Data: data/mnist (minivae.load_dataset; 28 x 28, intensities in [0, 1]). Writes
runs/pixel_space/pixel_space.png (or --out).
"""
from __future__ import annotations

import time

import numpy as np
from _study_common import count, number, out_dir, parse, parser, train_quickly

import minivae
from minivae.plots import study as study_plots
from minivae.study import pixels

FRACTIONS = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4)


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "pixel_space")
    p.set_defaults(dtype="float32")
    p.add_argument("--cut", type=number(0.0, 1.0), default=0.2, help="fraction of the digit's rows cut away")
    p.add_argument("--train", type=count(), default=10000, help="training digits of the two VAEs")
    p.add_argument("--steps", type=count(0), default=1500, help="training steps of each VAE (batch 100)")
    p.add_argument("--variance", type=number(0.0), default=0.5,
                   help="the Gaussian decoder's variance (0.5: the summed MSE loss, 0.5 * ||x - mean||^2 / 0.5)")
    args = parse(p, argv)
    if args.train > 60000:
        p.error(f"argument --train: at most 60000 (the training set), got {args.train}")
    if args.fast:
        args.train, args.steps = 2000, 200
    out = out_dir(args.out)
    start = time.perf_counter()
    backend = minivae.get_backend(args.backend)
    test = minivae.load_dataset("mnist", "test", download=False, verbose=False)
    train = minivae.load_dataset("mnist", "train", download=False, verbose=False)
    x_test = backend.to_device(test.images[:1000].reshape(1000, -1) / 255.0, dtype=args.dtype)
    x_train = backend.to_device(train.images[:args.train].reshape(args.train, -1) / 255.0, dtype=args.dtype)

    shifted = pixels.shift(x_test, 28)
    print("squared error to the digit, 1,000 test digits (median):")
    se_shift = minivae.to_numpy(pixels.squared_error(x_test, shifted))
    wins = []
    for fraction in FRACTIONS:
        se_cut = minivae.to_numpy(pixels.squared_error(x_test, pixels.cut_away(x_test, 28, fraction)))
        wins.append(float((se_shift > se_cut).mean()))
        print(f"  cut {fraction:4.0%} of the rows: shift {np.median(se_shift):6.2f}  cut {np.median(se_cut):6.2f}"
              f"  shift > cut for {wins[-1]:6.1%} of digits")

    models = {}
    for likelihood in ("gaussian", "bernoulli"):
        model = minivae.VAE(784, [256], 16, likelihood=likelihood, decoder_variance=args.variance,
                            backend=backend, dtype=args.dtype, seed=args.seed)
        print(f"{model}: {args.steps} steps on {args.train:,} digits")
        models[likelihood] = train_quickly(model, x_train, steps=args.steps, batch_size=100, lr=1e-3,
                                           seed=args.seed, log=None)

    cut = pixels.cut_away(x_test, 28, args.cut)
    versions = {"digit": x_test, "shifted": shifted, "cut": cut}
    table = {name: [minivae.to_numpy(pixels.squared_error(x_test, v))] for name, v in versions.items()}
    for likelihood in ("gaussian", "bernoulli"):
        for name, v in versions.items():
            table[name].append(minivae.to_numpy(pixels.decoder_nll(models[likelihood], x_test, v)))
    print(f"\ncut {args.cut:.0%}; decoders at z = mu(digit); medians over 1,000 test digits (nats):")
    print(f"{'':<9}{'sq. error':>11}{'Gaussian -log p':>17}{'Bernoulli -log p':>18}")
    for name in versions:
        print(f"{name:<9}" + "".join(f"{np.median(v):>{w}.2f}" for v, w in zip(table[name], (11, 17, 18))))
    for i, label in enumerate(["sq. error", "Gaussian -log p", "Bernoulli -log p"]):
        share = (table["shifted"][i] > table["cut"][i]).mean()
        print(f"  {label}: shifted > cut for {share:.1%} of digits")

    shown = [int(i) for i in np.argsort(-(table["shifted"][0] - table["cut"][0]))[[0, 300, 600]]]
    examples = [{"images": {name: minivae.to_numpy(v[i]) for name, v in versions.items()},
                 "numbers": {name: (table[name][0][i], table[name][1][i], table[name][2][i]) for name in versions}}
                for i in shown]
    eps = backend.random(args.seed + 7).normal((64, 16), args.dtype)
    samples = {name: model.sample(64, eps=eps) for name, model in models.items()}
    path = study_plots.plot_pixel_space(
        examples, FRACTIONS, wins, samples, out / "pixel_space.png",
        title=f"pixel space: a 1-pixel shift costs more than cutting {args.cut:.0%} of a digit away; "
              f"VAEs 784-256-16 ({args.steps} steps, {args.train:,} digits; Gaussian variance {args.variance:g})")
    print(f"\nwrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
