"""Throughput of the importance-weighted bound IWAE_k (samples per second) on the classic model
(784-200-200-50 tanh, Bernoulli decoder, float32): minivae's ``iwae_bound`` (the fused path, and
the reference path), the same bound written in PyTorch (when installed), and the GEMM-only floor
(the decoder's three matrix products for the same samples, preallocated outputs).

    python benchmarks/bench_eval.py                          # results in benchmarks/results/
    python benchmarks/bench_eval.py --full-examples 1000     # also one timed IWAE-5000 run over 1,000 digits
    python benchmarks/bench_eval.py --smoke --out-dir /tmp   # seconds: CI's smoke test

Everything runs in this one process, side by side: for each thread setting, the implementations
take turns (rotating who goes first, a pause between blocks for the thread pools to go quiet),
each block the bound of ``--examples`` synthetic digits at ``k`` samples, and the median over
``--repeats`` blocks is reported. Threads: minivae ``iwae_bound(threads=t)`` (t Python threads,
one BLAS thread each); PyTorch ``torch.set_num_threads(t)``; the floor on t threads split like
minivae. The weights are random (the cost does not depend on them). Outputs: ``<name>.json``
(everything, with the command, the machine, the BLAS and the load), ``<name>.md``, ``<name>.png``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

CLASSIC = dict(input_dim=784, hidden=[200, 200], latent=50, activation="tanh")
IMPLS = ("minivae", "minivae-reference", "torch", "gemm-floor")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, default=5000, help="importance samples per example")
    parser.add_argument("--examples", type=int, default=4, help="digits per timed block")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per implementation")
    parser.add_argument("--pause", type=float, default=0.3, help="seconds between blocks")
    parser.add_argument("--batch-rows", type=int, default=8192,
                        help="rows per call of iwae_bound and of the PyTorch loop")
    parser.add_argument("--no-reference", action="store_true", help="skip minivae's reference path")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--full-examples", type=int, default=0,
                        help="then time one iwae_bound over this many digits per thread setting "
                             "and extrapolate to the 10,000 test digits")
    parser.add_argument("--out-dir", default=os.path.join(common.HERE, "results"))
    parser.add_argument("--name", default="eval_cpu", help="output file stem")
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.k, args.examples, args.repeats, args.pause = 64, 2, 2, 0.0
        args.batch_rows = 100
    return args


def make_model():
    import minivae
    return minivae.VAE(CLASSIC["input_dim"], CLASSIC["hidden"], CLASSIC["latent"],
                       activation=CLASSIC["activation"], likelihood="bernoulli", seed=0)


class TorchIWAE:
    """The same bound in PyTorch, written as one would: inference mode, the encoder once per call,
    the k samples of an example in calls of ``batch_rows`` rows, log w from
    ``binary_cross_entropy_with_logits`` and the two Gaussian log-densities, a float64
    log-sum-exp over the calls. Weights copied from the minivae model."""

    def __init__(self, model, batch_rows):
        import torch
        self.torch, self.batch_rows = torch, batch_rows
        p = {name: torch.from_numpy(model.params[name].copy()) for name in model.params.keys()}
        self.enc = [(p[f"encoder.{i}.W"].T.contiguous(), p[f"encoder.{i}.b"]) for i in range(2)]
        self.head = (p["encoder.head.W"].T.contiguous(), p["encoder.head.b"])
        self.dec = [(p[f"decoder.{i}.W"].T.contiguous(), p[f"decoder.{i}.b"]) for i in range(2)]
        self.out = (p["decoder.out.W"].T.contiguous(), p["decoder.out.b"])
        self.K = model.latent_dim

    def __call__(self, x, k, seed=0):
        torch = self.torch
        F = torch.nn.functional
        generator = torch.Generator().manual_seed(seed)
        x = torch.from_numpy(x)
        log_px = torch.empty(x.shape[0], dtype=torch.float64)
        with torch.inference_mode():
            h = x
            for W, b in self.enc:
                h = torch.tanh(F.linear(h, W, b))
            mu, logvar = F.linear(h, *self.head).split(self.K, dim=1)
            sigma = torch.exp(0.5 * logvar)
            for n in range(x.shape[0]):
                lse = None
                for first in range(0, k, self.batch_rows):
                    count = min(self.batch_rows, k - first)
                    eps = torch.randn(count, self.K, generator=generator)
                    z = mu[n] + sigma[n] * eps
                    h = z
                    for W, b in self.dec:
                        h = torch.tanh(F.linear(h, W, b))
                    logits = F.linear(h, *self.out)
                    log_px_z = -F.binary_cross_entropy_with_logits(
                        logits, x[n].expand_as(logits), reduction="none").sum(1)
                    log_w = log_px_z - 0.5 * (z * z).sum(1) + 0.5 * (eps * eps).sum(1) + 0.5 * logvar[n].sum()
                    chunk = torch.logsumexp(log_w.double(), 0)
                    lse = chunk if lse is None else torch.logaddexp(lse, chunk)
                log_px[n] = lse - math.log(k)
        return log_px.numpy()


class DecoderFloor:
    """The decoder's three products for ``count`` samples, in blocks of the fused engine's rows,
    on ``threads`` threads (one BLAS thread each, the blocks shared as in minivae)."""

    def __init__(self, model, rows):
        import numpy as np
        self.np, self.rows = np, rows
        rng = np.random.default_rng(0)
        self.W = [model.params[f"decoder.{name}.W"] for name in ("0", "1", "out")]
        self.buffers = [[rng.standard_normal((rows, model.latent_dim), dtype=np.float32)]
                        + [np.zeros((rows, W.shape[1]), np.float32) for W in self.W] for _ in range(2)]

    def blocks(self, part, count):
        np = self.np
        z, *outs = self.buffers[part]
        for _ in range(count):
            h = z
            for W, out in zip(self.W, outs):
                np.matmul(h, W, out=out)
                h = out

    def __call__(self, samples, threads):
        from minivae.fast.threads import PairRunner, single_threaded_blas
        blocks = math.ceil(samples / self.rows)
        with single_threaded_blas():
            if threads == 1:
                self.blocks(0, blocks)
            else:
                if not hasattr(self, "pair"):
                    self.pair = PairRunner()
                self.pair.run(lambda: self.blocks(0, (blocks + 1) // 2), lambda: self.blocks(1, blocks // 2))


def torch_info():
    try:
        import torch
    except ImportError:
        return None
    return {"torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_blas": next((line.strip().lstrip("- ") for line in torch.__config__.show().splitlines()
                                if "Math Kernel" in line or "OpenBLAS" in line), None)}


def blas_info():
    from threadpoolctl import threadpool_info
    return [{k: v for k, v in pool.items() if k != "filepath"} for pool in threadpool_info()]


def set_threads(threads, torch_module):
    from threadpoolctl import threadpool_limits
    threadpool_limits(threads)                # the BLAS outside the fused path's single-thread blocks
    if torch_module is not None:
        torch_module.set_num_threads(threads)


def run(args, argv_for_record):

    from minivae.fast import cpu_library
    from minivae.fast.iwae import BLOCK_ROWS
    from minivae.training.evaluate import iwae_bound

    model = make_model()
    tinfo = None if args.no_torch else torch_info()
    torch_module = None
    if tinfo is not None:
        import torch as torch_module
    impls = [i for i in IMPLS if not (i == "torch" and tinfo is None)
             and not (i == "minivae-reference" and args.no_reference)]
    cpu_library.get("float32")
    record = common.new_record(
        "eval", argv_for_record, [] if tinfo is not None or args.no_torch else ["torch (not installed)"],
        model=dict(CLASSIC, likelihood="bernoulli", dtype="float32", params=int(model.params.flat.size)),
        settings={key: getattr(args, key) for key in ("k", "examples", "threads", "repeats", "pause",
                                                      "batch_rows", "smoke", "full_examples")})
    record["workers"] = {"numpy": {"threadpools": blas_info(), "kernels": cpu_library.status()["float32"],
                                   "block_rows": BLOCK_ROWS, "pid": os.getpid()},
                         "torch": tinfo}
    x = common.synthetic_data(args.examples, seed=1)
    samples = args.examples * args.k
    torch_iwae = TorchIWAE(model, args.batch_rows) if tinfo is not None else None
    floor = DecoderFloor(model, BLOCK_ROWS)
    calls = {
        "minivae": lambda t: iwae_bound(model, x, k=args.k, batch_rows=args.batch_rows, progress=False,
                                        threads=t).neg_log_px,
        "minivae-reference": lambda t: iwae_bound(model, x, k=args.k, batch_rows=args.batch_rows,
                                                  progress=False, fused=False).neg_log_px,
        "torch": lambda t: -float(torch_iwae(x, args.k).mean()),
        "gemm-floor": lambda t: floor(samples, t),
    }
    for threads in args.threads:
        set_threads(threads, torch_module)
        for impl in impls:                       # warm-up: compile, allocate, start the pools
            calls[impl](threads)
        times = {impl: [] for impl in impls}
        values = {}
        for r in range(args.repeats):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for impl in order:
                time.sleep(args.pause)
                began = time.perf_counter()
                values[impl] = calls[impl](threads)
                times[impl].append(time.perf_counter() - began)
        row = {"threads": threads, "samples_per_block": samples, "load_average": common.load_average(),
               "impls": {}}
        for impl in impls:
            q1, q3 = common.quartiles(times[impl])
            median = common.median(times[impl])
            row["impls"][impl] = {"median_s": median, "q1_s": q1, "q3_s": q3, "min_s": min(times[impl]),
                                  "samples_per_s": samples / median,
                                  "neg_log_px": values[impl] if impl != "gemm-floor" else None}
        row["ratios"] = ratios(row["impls"])
        record["results"].append(row)
        print(summary_line(row), flush=True)
    if args.full_examples:
        record["full"] = []
        full_x = common.synthetic_data(args.full_examples, seed=2)
        for threads in args.threads:
            set_threads(threads, torch_module)
            load_before = common.load_average()
            result = iwae_bound(model, full_x, k=5000, progress=False, threads=threads)
            entry = {"threads": threads, "examples": args.full_examples, "k": 5000, "seconds": result.seconds,
                     "extrapolated_10k_s": result.seconds * 10000 / args.full_examples,
                     "load_average_before": load_before, "load_average_after": common.load_average()}
            record["full"].append(entry)
            print(f"IWAE-5000 over {args.full_examples} digits, {threads} thread(s): {result.seconds:.1f} s "
                  f"-> 10,000 digits ~{entry['extrapolated_10k_s']:.0f} s", flush=True)
    record["load_average_after"] = common.load_average()
    record["complete"] = True
    return record


def ratios(impls):
    ratio = functools.partial(common.median_ratio, impls)
    return {"torch/minivae": ratio("torch", "minivae"),                 # minivae's speed-up over PyTorch
            "minivae/gemm-floor": ratio("minivae", "gemm-floor"),        # how far from the floor
            "minivae-reference/minivae": ratio("minivae-reference", "minivae")}


def summary_line(row):
    parts = [f"threads {row['threads']}:"]
    for impl, r in row["impls"].items():
        parts.append(f"{impl} {r['samples_per_s'] / 1e3:.0f}k/s")
    parts += [f"{name} {value:.2f}" for name, value in row["ratios"].items() if value is not None]
    return "  ".join(parts)


def markdown(record):
    s = record["settings"]
    lines = [f"# IWAE_{s['k']} throughput, classic model (784-200-200-50 tanh, Bernoulli, float32)", "",
             f"Samples per second (median of {s['repeats']} blocks of {s['examples']} digits x k = {s['k']}; "
             "higher is better). Ratios: PyTorch's time / minivae's (the speed-up), minivae's time / "
             "the decoder's GEMM-only floor.", "",
             "| threads | minivae | minivae reference | PyTorch | GEMM floor | speed-up vs PyTorch "
             "| minivae / floor | load avg |",
             "|---|---|---|---|---|---|---|---|"]

    def rate(row, impl):
        r = row["impls"].get(impl)
        return f"{r['samples_per_s'] / 1e3:.0f}k" if r else "-"

    def ratio(row, name):
        value = row["ratios"].get(name)
        return f"{value:.2f}x" if value is not None else "-"
    for row in record["results"]:
        load = row.get("load_average")
        lines.append(f"| {row['threads']} | {rate(row, 'minivae')} | {rate(row, 'minivae-reference')} | "
                     f"{rate(row, 'torch')} | {rate(row, 'gemm-floor')} | {ratio(row, 'torch/minivae')} | "
                     f"{ratio(row, 'minivae/gemm-floor')} | {load[0] if load else '-'} |")
    for entry in record.get("full", []):
        lines += ["", f"IWAE-5000 over {entry['examples']} digits on {entry['threads']} thread(s): "
                  f"{entry['seconds']:.1f} s; extrapolated to the 10,000 test digits: "
                  f"{entry['extrapolated_10k_s']:.0f} s (load average {entry['load_average_before']})."]
    m, w = record["machine"], record["workers"]
    blas = [(p.get("internal_api"), p.get("version"), p.get("architecture")) for p in w["numpy"]["threadpools"]]
    lines += ["", f"Command: `{record['command']}`", "",
              f"Machine: {m.get('cpu_model')}, {m.get('logical_cpus')} logical CPUs, SIMD {m.get('simd')}; "
              f"BLAS {blas}; "
              f"minivae kernels: {w['numpy']['kernels']}; PyTorch: {w.get('torch')}; "
              f"load average before {record['load_average_before']}, after {record.get('load_average_after')}; "
              f"env {record['env']}."]
    return "\n".join(lines) + "\n"


def plot(record, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = record["results"]
    impls = [i for i in IMPLS if any(i in row["impls"] for row in rows)]
    width = 0.8 / max(1, len(impls))
    for j, impl in enumerate(impls):
        xs = [i + j * width for i in range(len(rows))]
        ys = [row["impls"][impl]["samples_per_s"] / 1e3 if impl in row["impls"] else 0 for row in rows]
        ax.bar(xs, ys, width, label=impl)
    ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(rows))])
    ax.set_xticklabels([f"{row['threads']} thread(s)" for row in rows])
    ax.set_ylabel("thousand samples / s")
    ax.set_title(f"IWAE_{record['settings']['k']}, 784-200-200-50 tanh (higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def command_line():
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    record = run(args, command_line())
    stem = os.path.join(args.out_dir, args.name)
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(record))
    if not args.no_plot:
        plot(record, stem + ".png")
    print(f"wrote {stem}.json, {stem}.md" + ("" if args.no_plot else f", {stem}.png"))
    return record


if __name__ == "__main__":
    main()
