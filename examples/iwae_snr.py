"""Why tighter bounds can hurt the encoder: the SNR of IWAE gradient estimates against k.

Rainforth et al. (2018): with the importance-weighted bound IWAE_k, the decoder's gradient gets
better as k grows (SNR ~ sqrt(k)) but the encoder's, with the plain reparameterization gradient,
gets *worse* (SNR ~ 1/sqrt(k)): its expectation shrinks like 1/k, its noise only like 1/sqrt(k).
The doubly reparameterized gradient (DReG, Tucker et al. 2019) has the same expectation and an
encoder SNR that grows like the decoder's; STL grows too, but it is biased for k > 1.

Builds a small VAE (2-D latent, 8 x 8 blob images), at initialization (``--steps`` trains it), then for
each k repeats the gradient of -IWAE_k on a batch of ``--examples`` images R times per estimator
(minivae/study/tighter.py; the estimates are the training step's own, VAE.iwae_forward_backward)
and writes the log-log figure of SNR against k for the encoder and the decoder.

    python examples/iwae_snr.py          # ~25 s on 2 CPU cores
    python examples/iwae_snr.py --fast   # a few seconds

Writes runs/iwae_snr/iwae_snr.png (or --out).
"""
from __future__ import annotations

import time

import numpy as np
from _study_common import count, counts, dataset, out_dir, parse, parser, train_quickly

import minivae
from minivae.fast.threads import single_threaded_blas
from minivae.model import IWAE_ESTIMATORS
from minivae.plots import study as study_plots
from minivae.study import tighter


def main(argv=None):
    p = parser(__doc__.splitlines()[0], "iwae_snr")
    p.add_argument("--ks", type=counts, default="1,3,10,30,100,300", help="the k values, comma-separated")
    p.add_argument("--repeats", type=count(2), default=300, help="R gradient estimates per (estimator, k)")
    p.add_argument("--examples", type=count(), default=16, help="images in the batch of each estimate")
    p.add_argument("--steps", type=count(0), default=0, help="training steps (ELBO) before measuring "
                   "(default 0: at initialization, where no gradient is near zero)")
    args = parse(p, argv)
    if args.fast:
        args.ks, args.repeats = "1,3,10,30", 100
    ks = [int(k) for k in args.ks.split(",")]
    out = out_dir(args.out)
    start = time.perf_counter()

    data, side = dataset("blobs", 4000, seed=args.seed)
    model = minivae.VAE(data.shape[1], [32], 2, activation="tanh", backend=args.backend,
                        dtype=args.dtype, seed=args.seed)
    print(f"{model}; data blobs {data.shape}, dtype {args.dtype}")
    x_all = model.backend.to_device(data, dtype=model.dtype)
    if args.steps:
        train_quickly(model, x_all, steps=args.steps, seed=args.seed)
    x = x_all[:args.examples]
    with single_threaded_blas():        # many small products: one BLAS thread is faster
        results = tighter.gradient_snr(model, x, ks, IWAE_ESTIMATORS, n_repeats=args.repeats,
                                       seed=args.seed + 1)
    print(f"\nSNR = ||E g|| / sqrt(sum_p Var g_p) of each network's gradient of -IWAE_k, "
          f"{args.repeats} repeats, batch of {args.examples}")
    print(f"{'estimator':<10}{'network':<9}" + "".join(f"{'k=' + str(k):>9}" for k in ks) + f"{'slope':>8}")
    for est in IWAE_ESTIMATORS:
        for network in tighter.NETWORKS:
            snr = [results[(est, k)].network_snr[network] for k in ks]
            resolved = [(k, v) for k, v in zip(ks, snr) if v > 0]
            slope = tighter.log_log_slope(*zip(*resolved)) if len(resolved) >= 2 else float("nan")
            print(f"{est:<10}{network:<9}" + "".join(f"{v:>9.3g}" for v in snr) + f"{slope:>8.2f}")
    medians = np.array([[results[(e, k)].median_snr["encoder"] for k in ks] for e in IWAE_ESTIMATORS])
    print("median per-parameter encoder SNR: "
          + "; ".join(f"{e} " + " ".join(f"{v:.3g}" for v in row) for e, row in zip(IWAE_ESTIMATORS, medians)))
    path = study_plots.plot_iwae_snr(results, out / "iwae_snr.png",
                                     title=f"SNR of IWAE_k gradient estimates ({args.repeats} repeats); {model}")
    print(f"\nwrote {path}\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
