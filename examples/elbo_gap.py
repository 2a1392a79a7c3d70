"""The ELBO gap, made exact: log p(x) = ELBO + KL(q(z|x) || p(z|x)), per example, to ~1e-10 nats.

Trains a small VAE with a 2-D latent space for a few seconds, then, for a handful of examples,
integrates p(x|z) p(z) over a fine latent grid (minivae/study/posterior.py) to get log p(x) and the true
posterior p(z|x), computes the ELBO (E_q[log p(x|z)] on the same grid, KL to the prior in closed
form) and KL(q || p(z|x)) on the grid, and checks that the three add up. Then estimates the
importance-weighted bound IWAE_k for growing k and shows it closing the gap to log p(x).

    python examples/elbo_gap.py                   # ~25 s on 2 CPU cores (MNIST), ~5 s (blobs)
    python examples/elbo_gap.py --backend cupy    # the same on the GPU

Data: real MNIST digits (14 x 14, binarised) when data/mnist/ holds them, else 8 x 8 blobs
(--data picks). Writes runs/elbo_gap/elbo_gap.png and iwae.png (or --out).
"""
from __future__ import annotations

import time

import numpy as np
from _study_common import count, counts, out_dir, parse, parser, trained_2d_model

import minivae
from minivae.plots import study as study_plots
from minivae.study import posterior


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "elbo_gap")
    p.add_argument("--data", default="auto", choices=["blobs", "mnist", "auto"])
    p.add_argument("--examples", type=count(), default=4, help="how many examples to decompose (at most 5000)")
    p.add_argument("--grid", type=count(2), default=401, help="grid points per latent axis")
    p.add_argument("--ks", type=counts, default="1,3,10,30,100,300,1000", help="IWAE k values, comma-separated")
    p.add_argument("--repeats", type=count(2), default=100,
                   help="at least this many independent IWAE_k estimates per k")
    p.add_argument("--steps", type=count(0), default=2000, help="training steps")
    args = parse(p, argv)
    if args.examples > 5000:
        p.error(f"argument --examples: at most 5000 (the data set), got {args.examples}")
    if args.fast:
        args.examples, args.grid, args.ks, args.repeats, args.steps = 2, 101, "1,10,100", 20, 200
        args.data = "blobs" if args.data == "auto" else args.data
    ks = [int(k) for k in args.ks.split(",")]
    out = out_dir(args.out)
    start = time.perf_counter()

    model, x, side = trained_2d_model(args)

    t = time.perf_counter()
    grid = posterior.latent_grid(model, x, n_grid=args.grid)
    gap = posterior.elbo_gap(model, x, grid=grid)
    print(f"\ngrid {args.grid} x {args.grid} per example ({time.perf_counter() - t:.1f} s)")
    numbers = gap.as_floats()
    print(f"{'':>3}{'log p(x)':>12}{'ELBO':>12}{'KL(q||p(z|x))':>15}{'residual':>11}"
          f"{'q mass - 1':>12}{'edge mass':>11}")
    for n in range(args.examples):
        print(f"{n:>3}{numbers['log_px'][n]:>12.6f}{numbers['elbo'][n]:>12.6f}"
              f"{numbers['kl_posterior'][n]:>15.6f}{numbers['residual'][n]:>11.1e}"
              f"{numbers['q_mass'][n] - 1:>12.1e}{numbers['posterior_edge_mass'][n]:>11.1e}")

    t = time.perf_counter()
    random = model.backend.random(args.seed + 100)
    # R_k = max(repeats, budget / k) independent k-sample bounds: the same number of samples per k
    budget = 2_000 if args.fast else 100_000
    estimates = [posterior.iwae_bound_repeats(model, x, k, n_repeats=max(args.repeats, budget // k),
                                              random=random) for k in ks]
    iwae = np.stack([minivae.to_numpy(e) for e, _ in estimates])                 # (M, N)
    iwae_se = np.stack([minivae.to_numpy(se) for _, se in estimates])
    print(f"\nIWAE_k (max({args.repeats}, {budget} / k) repeats each, "
          f"{time.perf_counter() - t:.1f} s); last column: log p(x)")
    print(f"{'':>3}" + "".join(f"{'k=' + str(k):>12}" for k in ks) + f"{'log p(x)':>12}")
    for n in range(args.examples):
        print(f"{n:>3}" + "".join(f"{v:>12.4f}" for v in iwae[:, n]) + f"{numbers['log_px'][n]:>12.4f}")
    print(f"{'se':>3}" + "".join(f"{v:>12.4f}" for v in iwae_se.max(axis=1)))

    path = study_plots.plot_elbo_gap(x, side, grid, gap, out / "elbo_gap.png",
                                     title=f"log p(x) = ELBO + KL(q || p(z|x)) on a "
                                           f"{args.grid} x {args.grid} grid; {model}")
    print(f"\nwrote {path}")
    path = study_plots.plot_iwae(ks, iwae, iwae_se, gap.log_px, gap.kl_posterior, out / "iwae.png",
                                 title="the importance-weighted bound closes the ELBO gap")
    print(f"wrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
