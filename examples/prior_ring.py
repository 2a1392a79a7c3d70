"""Why a simple prior is enough: N(0, I) pushed through one fixed function becomes a ring.

A VAE's prior p(z) = N(0, I) looks too simple for data that lie on a curved manifold. But the
decoder is a function of z, and a function can bend a Gaussian into almost any shape. The classic
example (Doersch, "Tutorial on Variational Autoencoders", 2016, figure 2): samples of a 2-D standard
normal mapped through

    g(z) = z / 10 + z / ||z||

lie on a thin ring (radius 1 + ||z|| / 10, about 1.13 on average): z / ||z|| sends every
direction to the unit circle and z / 10 thickens it slightly. A decoder network can learn a g like
this; the prior need not be complex.

    python examples/prior_ring.py                  # < 2 s
    python examples/prior_ring.py --backend cupy   # the samples and the map computed on the GPU

Writes runs/prior_ring/prior_ring.png (or --out): the samples z (left) and g(z) (right), coloured
by the angle of z.
"""
from __future__ import annotations

import time

import numpy as np
from _study_common import count, out_dir, parse, parser

import minivae
from minivae.plots import study as study_plots


def ring_map(z):
    """g(z) = z / 10 + z / ||z||, row by row. (n, 2) -> (n, 2), with the array module of z."""
    xp = minivae.get_array_module(z)
    return z * 0.1 + z / xp.sqrt((z * z).sum(axis=1, keepdims=True))


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "prior_ring")
    p.add_argument("--samples", type=count(), default=5000)
    args = parse(p, argv)
    if args.fast:
        args.samples = 1000
    out = out_dir(args.out)
    start = time.perf_counter()
    backend = minivae.get_backend(args.backend)
    z = backend.random(args.seed).normal((args.samples, 2), args.dtype)
    g = ring_map(z)
    radius = minivae.to_numpy(((g * g).sum(axis=1)) ** 0.5)
    low, high = np.percentile(radius, [1, 99])
    print(f"{args.samples} samples on {backend}: ||g(z)|| has mean {radius.mean():.3f}, "
          f"sd {radius.std():.3f}, 1st-99th percentile {low:.3f}..{high:.3f}")
    path = study_plots.plot_prior_ring(z, g, out / "prior_ring.png",
                                       title="a simple prior plus a fixed map: N(0, I) becomes a ring")
    print(f"wrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
