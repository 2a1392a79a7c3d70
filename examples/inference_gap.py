"""The inference gap, split: log p(x) - ELBO = approximation gap + amortization gap (Cremer et al. 2018).

Trains a small VAE with a 2-D latent space for a few seconds (as elbo_gap.py), then, for a
handful of digits: log p(x) exactly on a latent grid (minivae/study/posterior.py), the best
Gaussian q* for each digit by gradient ascent on (mu, logvar) with the model's hand-written
gradients (minivae/study/inference.py), and the ELBOs of q* and of the encoder's q on the same grid:

    approximation gap = log p(x) - ELBO(q*)        what no Gaussian can do better
    amortization gap  = ELBO(q*) - ELBO(q_encoder) what one shared encoder loses

    python examples/inference_gap.py          # ~30 s on 2 CPU cores (MNIST 14 x 14)
    python examples/inference_gap.py --fast   # a few seconds (blobs)

Writes runs/inference_gap/inference_gap.png (or --out).
"""
from __future__ import annotations

import time

from _study_common import count, out_dir, parse, parser, trained_2d_model

from minivae.plots import study as study_plots
from minivae.study import inference, posterior


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "inference_gap")
    p.add_argument("--data", default="auto", choices=["blobs", "mnist", "auto"])
    p.add_argument("--examples", type=count(), default=4, help="how many digits to decompose (at most 5000)")
    p.add_argument("--grid", type=count(2), default=301, help="grid points per latent axis")
    p.add_argument("--steps", type=count(0), default=2000, help="training steps of the VAE")
    p.add_argument("--ascent-steps", type=count(0), default=1000, help="Adam steps of the search for q*")
    args = parse(p, argv)
    if args.examples > 5000:
        p.error(f"argument --examples: at most 5000 (the data set), got {args.examples}")
    if args.fast:
        args.examples, args.grid, args.steps, args.ascent_steps = 2, 101, 300, 300
        args.data = "blobs" if args.data == "auto" else args.data
    out = out_dir(args.out)
    start = time.perf_counter()

    model, x, side = trained_2d_model(args)

    t = time.perf_counter()
    grid = posterior.latent_grid(model, x, n_grid=args.grid)
    gap = inference.inference_gap(model, x, grid=grid, steps=args.ascent_steps)
    numbers = gap.as_floats()
    print(f"\ngrid {args.grid} x {args.grid}, {args.ascent_steps} ascent steps ({time.perf_counter() - t:.1f} s)")
    print(f"{'':>3}{'log p(x)':>11}{'ELBO(q*)':>11}{'ELBO(enc)':>11}{'approx.':>10}{'amort.':>10}"
          f"{'q* mass-1':>11}")
    for n in range(args.examples):
        print(f"{n:>3}{numbers['log_px'][n]:>11.4f}{numbers['elbo_optimal'][n]:>11.4f}"
              f"{numbers['elbo_encoder'][n]:>11.4f}{numbers['approximation'][n]:>10.4f}"
              f"{numbers['amortization'][n]:>10.4f}{numbers['q_mass_optimal'][n] - 1:>11.1e}")
    mean = {name: sum(values) / len(values) for name, values in numbers.items()}
    print(f"mean: approximation gap {mean['approximation']:.4f} nats, amortization gap "
          f"{mean['amortization']:.4f} nats")

    path = study_plots.plot_inference_gap(
        x, side, grid, gap, out / "inference_gap.png",
        title=f"log p(x) - ELBO = approximation gap + amortization gap; {model}")
    print(f"\nwrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
