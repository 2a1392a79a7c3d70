"""Time one training epoch over 60,000 MNIST-sized examples (784 binary pixels, synthetic), data
resident on the device, for every backend that runs here and PyTorch when installed.

    python benchmarks/bench_epoch.py                          # results in benchmarks/results/
    python benchmarks/bench_epoch.py --smoke --out-dir /tmp   # a few seconds

The loop is what a training loop does: a fresh permutation per epoch (drawn on the device), each
batch gathered into one preallocated buffer (``take(..., out=)`` / ``index_select(out=)``), one
training step, the loss accumulated on the device and read once at the end of the epoch. A short
warm-up pass runs first. Each framework runs in its own worker process; they take turns, one
epoch each, and the best epoch of each is reported (all of them are in the JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402
from bench_step import command_line  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--examples", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=3,
                        help="epochs timed per implementation (the best is reported)")
    parser.add_argument("--workers", nargs="+", default=list(common.WORKERS))
    parser.add_argument("--tf32", action="store_true")
    parser.add_argument("--out-dir", default=os.path.join(common.HERE, "results"))
    parser.add_argument("--name", default="epoch_cpu")
    parser.add_argument("--smoke", action="store_true", help="2,048 examples, one batch size")
    args = parser.parse_args(argv)
    if args.smoke:
        args.examples, args.batch_sizes, args.repeats = 2048, [256], 1
    return args


def main(argv=None):
    args = parse_args(argv)
    names, skipped = common.available_workers(args.workers)
    record = common.new_record("epoch", command_line(), skipped, examples=args.examples)
    with common.open_workers(names, args.tf32, record) as handles:
        for B in args.batch_sizes:
            runs = {name: [] for name in handles}
            for r in range(args.repeats):   # the frameworks take turns, epoch by epoch
                for name, handle in handles.items():
                    runs[name].append(handle.call("epoch", B, args.examples))
            for name, epochs in runs.items():
                best = min(epochs, key=lambda e: e["seconds"])
                record["results"].append({"worker": name, "batch": B, **best,
                                          "all_seconds": [e["seconds"] for e in epochs]})
                print(f"{name:11s} batch {B:5d}: epoch {best['seconds']:.2f} s "
                      f"({best['examples_per_second']:.0f} examples/s, "
                      f"{best['faults_per_step']:.0f} faults/step, loss {best['mean_loss']:.1f})",
                      flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, args.name)
    with open(stem + ".json", "w") as f:
        json.dump(record, f, indent=1)
    lines = [f"Epoch time over {args.examples} examples (best of {args.repeats}), 784-400-20 VAE, "
             "float32, Adam, data resident on the device.", "",
             "| implementation | batch | epoch s | examples/s | faults/step | peak RSS MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in record["results"]:
        impl = "minivae-" + r["worker"] if r["worker"] in ("numpy", "cupy") else r["worker"]
        lines.append(f"| {impl} | {r['batch']} | {r['seconds']:.2f} | {r['examples_per_second']:.0f} "
                     f"| {r['faults_per_step']:.0f} | {r['peak_rss_mib']:.0f} |")
    lines += [""] + [f"Skipped {k}: {v}." for k, v in skipped.items()]
    lines += [f"Load average before {record['load_average_before']}, after "
              f"{record['load_average_after']}.", f"Command: `{record['command']}`", ""]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {stem}.json, {stem}.md")
    return record


if __name__ == "__main__":
    main()
