"""Why the reparameterization trick works: its gradient has far less variance than REINFORCE's.

Trains a small VAE (2-D latent) for a few seconds, then estimates the gradient of one example's
negative ELBO with respect to the encoder's parameters in four ways (see minivae/study/estimators.py):
reparameterization, its path-derivative variant, the score function (REINFORCE), and the score
function with a leave-one-out baseline. For each L (samples per estimate) it repeats the estimate
R times and compares mean, variance and signal-to-noise ratio per parameter with a high-sample
reference, for both ways of writing the ELBO (KL sampled inside the integrand, or in closed form).

    python examples/gradient_variance.py                  # ~25 s on 2 CPU cores
    python examples/gradient_variance.py --backend cupy   # the same on the GPU

Writes runs/gradient_variance/gradient_variance.png and gradient_clouds.png (or --out).
"""
from __future__ import annotations

import time

import numpy as np
from _study_common import count, counts, dataset, out_dir, parse, parser, train_quickly

import minivae
from minivae.plots import study as study_plots
from minivae.study import estimators


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "gradient_variance")
    p.add_argument("--data", default="blobs", choices=["blobs", "mnist", "auto"])
    p.add_argument("--samples", type=counts, default="1,3,10,30,100,300", help="the L values, comma-separated")
    p.add_argument("--repeats", type=count(2), default=200, help="R estimates per (estimator, L)")
    p.add_argument("--reference-samples", type=count(2), default=100_000)
    p.add_argument("--steps", type=count(0), default=1500, help="training steps before measuring")
    args = parse(p, argv)
    if args.fast:
        args.samples, args.repeats, args.reference_samples, args.steps = "1,10", 50, 5000, 200
    sample_sizes = [int(s) for s in args.samples.split(",")]
    out = out_dir(args.out)
    start = time.perf_counter()

    data, side = dataset(args.data, 4000, seed=args.seed)
    model = minivae.VAE(data.shape[1], [64], 2, activation="tanh", backend=args.backend,
                        dtype=args.dtype, seed=args.seed)
    print(f"{model}; data {args.data} {data.shape}, dtype {args.dtype}")
    x_all = model.backend.to_device(data, dtype=model.dtype)
    train_quickly(model, x_all, steps=args.steps, seed=args.seed)
    x = x_all[:1]                                       # one example: the gradient of its -ELBO
    random = model.backend.random(args.seed + 100)

    results = {}
    for kl in ("sampled", "analytic"):
        names = estimators.ESTIMATORS if kl == "sampled" else ("reparam", "score", "score_loo")
        results[kl] = estimators.compare_estimators(
            model, x, sample_sizes, names, n_repeats=args.repeats, kl=kl,
            reference_samples=args.reference_samples, random=random)
        print(f"\nkl={kl!r}: {args.repeats} repeats per row, reference from "
              f"{args.reference_samples} reparameterization samples")
        print(f"{'estimator':<14}{'L':>5}{'total variance':>16}{'/ reparam':>11}"
              f"{'median SNR':>12}{'max |z|':>9}")
        for (name, L), stats in results[kl].items():
            ratio = stats.total_variance / results[kl][("reparam", L)].total_variance
            snr = np.nanmedian(minivae.to_numpy(stats.snr))
            z = np.nanmax(np.abs(minivae.to_numpy(stats.z_scores)))
            print(f"{name:<14}{L:>5}{stats.total_variance:>16.4g}{ratio:>11.3g}{snr:>12.3g}{z:>9.2f}")

    path = study_plots.plot_gradient_variance(
        results, out / "gradient_variance.png",
        title=f"encoder gradient of one example's -ELBO, {model}")
    print(f"\nwrote {path}")

    # single-sample gradients with respect to mu: the clouds the estimators draw from
    S = 1000 if args.fast else 3000
    eps_reference = random.normal((args.reference_samples, 1, 2), model.dtype)
    dmu_reference, _ = estimators.head_gradient_terms(model, x, eps_reference, "reparam", "sampled")
    clouds = {}
    for name in estimators.ESTIMATORS:
        dmu, _ = estimators.head_gradient_terms(model, x, random.normal((S, 1, 2), model.dtype),
                                                name, "sampled")
        clouds[name] = dmu[:, 0, :]
    path = study_plots.plot_gradient_clouds(
        clouds, dmu_reference.mean(axis=0)[0], out / "gradient_clouds.png",
        title="one-sample estimates of d(-ELBO)/d mu for one example (kl='sampled'); same axes")
    print(f"wrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
