"""Time one full training step (noise, forward, backward, Adam) of the 784-400-20 ReLU VAE with a
Bernoulli decoder, float32, against the batch size, for every backend that runs here, PyTorch when
it is installed, and the GEMM-only floor (just the step's matrix products, preallocated outputs).

    python benchmarks/bench_step.py                          # full run, results in benchmarks/results/
    python benchmarks/bench_step.py --smoke --out-dir /tmp   # a few seconds: CI's smoke test

Each framework runs in its own worker process (see ``_common.py``); the parent asks the workers in
turn for blocks of steps, pausing between blocks, and reports the median over the blocks of the
mean step time in a block (GPU: synchronised at the end of the block; warm-up steps first, so that
kernel compilation and the CUDA context are not timed). Page faults per step are the worker's
``ru_minflt`` over a block divided by its steps. Outputs: ``<name>.json`` (everything, with the
machine and the exact command), ``<name>.md`` (a table) and ``<name>.png`` (the plot).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as common  # noqa: E402

DEFAULT_BATCHES = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    parser.add_argument("--workers", nargs="+", default=list(common.WORKERS),
                        help="frameworks to time (those that cannot run here are skipped)")
    parser.add_argument("--repeats", type=int, default=7, help="timed blocks per implementation")
    parser.add_argument("--block-seconds", type=float, default=0.3, help="target length of a block")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--pause", type=float, default=0.3,
                        help="seconds between blocks: longer than the spin time of the thread pools "
                             "(Intel OpenMP spins 200 ms after a parallel region by default)")
    parser.add_argument("--max-other-load", type=float, default=0.15,
                        help="retry a block when other processes used more than this share of the "
                             "CPUs during it (the machine may be shared)")
    parser.add_argument("--max-retries", type=int, default=12,
                        help="retries per implementation and batch size before keeping busy blocks")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on the GPU")
    parser.add_argument("--threads", choices=["auto", "1", "2"], default="auto",
                        help="minivae's TrainStep(threads=...) on NumPy (default auto: two threads)")
    parser.add_argument("--runner", choices=["program", "engine"], default="program",
                        help="minivae's step on NumPy: the recorded step replayed in C++ where it runs "
                             "(default), or the engine from Python (TrainStep(program=False))")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="threads of the BLAS and of PyTorch in every worker (threadpoolctl, "
                             "torch.set_num_threads; default: as configured)")
    parser.add_argument("--max-cpu-batch", type=int, default=None,
                        help="CPU workers skip larger batch sizes (the GPU's large batches)")
    parser.add_argument("--out-dir", default=os.path.join(common.HERE, "results"))
    parser.add_argument("--model", choices=list(common.MODELS), default=common.DEFAULT_MODEL,
                        help="pytorch-example: 784-400-20 ReLU (default); classic: 784-200-200-50 tanh "
                             "(Burda et al.'s setting; batch 100 is its training batch)")
    parser.add_argument("--name", default=None, help="output file stem (default step_cpu, or "
                                                     "step_cpu_classic with --model classic)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny run for CI: two batch sizes, two short blocks")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes = args.batch_sizes or [32, 64]
        args.repeats, args.block_seconds, args.warmup, args.pause = 2, 0.02, 1, 0.0
        args.max_retries = 0
    args.batch_sizes = args.batch_sizes or ([100] if args.model == "classic" else DEFAULT_BATCHES)
    args.name = args.name or ("step_cpu" if args.model == common.DEFAULT_MODEL else f"step_cpu_{args.model}")
    return args


def run(args, argv_for_record, on_row=None):
    """Time every batch size; ``on_row(record)`` after each one (the partial record)."""
    names, skipped = common.available_workers(args.workers)
    record = common.new_record(
        "step", argv_for_record, skipped,
        model=dict(common.MODELS[args.model], name=args.model, likelihood="bernoulli", dtype="float32",
                   optimizer="Adam(lr=1e-3)"),
        settings={k: getattr(args, k) for k in ("repeats", "block_seconds", "warmup", "pause", "tf32",
                                                "threads", "smoke", "max_other_load", "max_retries",
                                                "max_cpu_batch", "model", "cpu_threads", "runner")})
    record["complete"] = False
    threads = args.threads if args.threads == "auto" else int(args.threads)
    with common.open_workers(names, args.tf32, record, threads=threads, model=args.model,
                             cpu_threads=args.cpu_threads, program=args.runner == "program") as handles:
        for N in args.batch_sizes:
            row = {"batch": N, "impls": {}}
            steps = {}
            for name, handle in handles.items():
                if (args.max_cpu_batch is not None and N > args.max_cpu_batch
                        and name not in common.GPU_WORKERS):
                    continue
                for impl, seconds in handle.call("setup", N, args.warmup).items():
                    steps[impl] = (handle, max(2, int(args.block_seconds / max(seconds, 1e-6))))
            if not steps:   # every worker skips this size (--max-cpu-batch, no GPU)
                continue
            samples = {impl: [] for impl in steps}
            rejected = {impl: [] for impl in steps}
            for r in range(args.repeats):
                order = list(steps)
                order = order[r % len(order):] + order[:r % len(order)]   # rotate who goes first
                for impl in order:
                    handle, n = steps[impl]
                    while True:
                        time.sleep(args.pause)
                        busy0 = common.busy_cpu_seconds()
                        block = handle.call("time", impl, n)
                        block["other_load"] = common.other_load(busy0, common.busy_cpu_seconds(), block)
                        busy = block["other_load"] is not None and block["other_load"] > args.max_other_load
                        if busy and len(rejected[impl]) < args.max_retries:
                            rejected[impl].append(block)   # another process took the CPU: retry
                            continue
                        samples[impl].append(block)
                        break
            for impl, blocks in samples.items():
                times = [b["seconds_per_step"] for b in blocks]
                q1, q3 = common.quartiles(times)
                loads = [b["other_load"] for b in blocks if b["other_load"] is not None]
                row["impls"][impl] = {
                    "median_s": common.median(times), "min_s": min(times), "q1_s": q1, "q3_s": q3,
                    "wall_median_s": common.median([b["wall_seconds_per_step"] for b in blocks]),
                    "steps_per_block": steps[impl][1], "blocks": len(times),
                    "faults_per_step": common.median([b["faults_per_step"] for b in blocks]),
                    "peak_rss_mib": max(b["peak_rss_mib"] for b in blocks),
                    "device_pool_bytes": blocks[-1]["device_pool_bytes"],
                    "other_load_mean": sum(loads) / len(loads) if loads else None,
                    "busy_blocks_rejected": len(rejected[impl]),
                }
            row["ratios"] = ratios(row["impls"])
            record["results"].append(row)
            print(summary_line(row), flush=True)
            if on_row is not None:
                on_row(record)
    record["complete"] = True
    return record


def ratios(impls):
    ratio = functools.partial(common.median_ratio, impls)
    out = {}
    for backend in ("numpy", "cupy"):
        mine = f"minivae-{backend}"
        device = "cpu" if backend == "numpy" else "cuda"
        out[f"{mine}/torch-{device}"] = ratio(mine, f"torch-{device}")
        out[f"{mine}/gemm-{backend}"] = ratio(mine, f"gemm-{backend}")
    out["minivae-numpy/gemm-numpy-split"] = ratio("minivae-numpy", "gemm-numpy-split")
    out["torch-cpu/gemm-numpy"] = ratio("torch-cpu", "gemm-numpy")
    out["speedup minivae-cupy vs minivae-numpy"] = ratio("minivae-numpy", "minivae-cupy")
    out["speedup torch-cuda vs torch-cpu"] = ratio("torch-cpu", "torch-cuda")
    return {k: v for k, v in out.items() if v is not None}


def summary_line(row):
    parts = [f"batch {row['batch']:5d}"]
    for impl, r in row["impls"].items():
        parts.append(f"{impl} {r['median_s'] * 1e3:.3f} ms ({r['faults_per_step']:.0f} pf, "
                     f"{r['busy_blocks_rejected']} busy)")
    parts += [f"{k} {v:.2f}" for k, v in row["ratios"].items()]
    return " | ".join(parts)


def crossover(record):
    """The smallest batch from which minivae on the GPU is faster than on the CPU (None: never /
    no GPU)."""
    for row in sorted(record["results"], key=lambda r: r["batch"]):
        speedup = row["ratios"].get("speedup minivae-cupy vs minivae-numpy")
        if speedup is not None and speedup >= 1.0:
            return row["batch"]
    return None


def model_label(record):
    """'784-400-20 relu' or '784-200-200-50 tanh': the widths and activation of the record's model."""
    model = record.get("model", {})
    hidden = model.get("hidden", 400)
    widths = [model.get("input_dim", 784), *(hidden if isinstance(hidden, list) else [hidden]),
              model.get("latent", 20)]
    return "-".join(map(str, widths)) + f" {model.get('activation', 'relu')}"


def markdown(record):
    rows = sorted(record["results"], key=lambda r: r["batch"])
    impls = [i for i in ("minivae-numpy", "torch-cpu", "gemm-numpy", "gemm-numpy-split",
                         "gemm-torch-cpu", "minivae-cupy", "torch-cuda", "gemm-cupy", "gemm-torch-cuda")
             if any(i in r["impls"] for r in rows)]
    ratio_names = [k for k in ("minivae-numpy/torch-cpu", "minivae-numpy/gemm-numpy",
                               "minivae-numpy/gemm-numpy-split",
                               "minivae-cupy/torch-cuda", "minivae-cupy/gemm-cupy",
                               "speedup minivae-cupy vs minivae-numpy")
                   if any(k in r["ratios"] for r in rows)]
    fault_impls = [i for i in ("minivae-numpy", "torch-cpu", "minivae-cupy", "torch-cuda")
                   if i in impls]
    lines = [f"Step time (ms, median over blocks) of one training step of the {model_label(record)} VAE, "
             "float32, Adam; ratios < 1 mean minivae is faster.", ""]
    header = (["batch"] + [f"{i} ms" for i in impls] + ratio_names
              + [f"{i} faults/step" for i in fault_impls])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" for _ in header) + "|")
    for r in rows:
        cells = [str(r["batch"])]
        cells += [common.fmt_ms(r["impls"].get(i, {}).get("median_s")) for i in impls]
        cells += [common.fmt_ratio(r["ratios"].get(k)) for k in ratio_names]
        cells += [(f"{r['impls'][i]['faults_per_step']:.0f}" if i in r["impls"] else "—")
                  for i in fault_impls]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    loads = [r["impls"][i].get("other_load_mean") for r in rows for i in r["impls"]]
    loads = [x for x in loads if x is not None]
    rejected = sum(r["impls"][i].get("busy_blocks_rejected", 0) for r in rows for i in r["impls"])
    if loads:
        lines.append(f"Other processes used on average {100 * sum(loads) / len(loads):.0f} % of the "
                     f"CPUs during the kept blocks (max {100 * max(loads):.0f} %); {rejected} blocks "
                     f"were retried because other processes used more than "
                     f"{100 * record['settings']['max_other_load']:.0f} %.")
    if "cupy" in record["skipped"]:
        lines.append(f"No GPU: {record['skipped']['cupy']}; CPU only, no GPU/CPU crossover.")
    else:
        cross = crossover(record)
        lines.append(f"GPU/CPU crossover batch size (minivae): {cross if cross else 'none in range'}.")
    for name, why in record["skipped"].items():
        if name != "cupy":
            lines.append(f"Skipped {name}: {why}.")
    m = record["machine"]
    numpy_info = record["workers"].get("numpy", {})
    blas = [f"{p.get('internal_api')} {p.get('version')} ({p.get('architecture')}, "
            f"{p.get('num_threads')} threads)" for p in numpy_info.get("threadpools", [])]
    torch_info = record["workers"].get("torch-cpu", {})
    lines += ["", f"Machine: {m.get('cpu_model')} (family/model {m.get('cpu_family_model')}), "
              f"{m.get('logical_cpus')} logical CPUs, {m.get('mem_total')}; "
              f"NumPy {numpy_info.get('numpy')}, BLAS: {', '.join(blas) or 'unknown'}, "
              f"minivae's CPU kernels: {numpy_info.get('kernels', 'unknown')}, "
              f"its step: {numpy_info.get('step_runner', 'unknown')}"
              + (f"; PyTorch {torch_info.get('torch')} ({torch_info.get('torch_blas')}, "
                 f"{torch_info.get('torch_threads')} threads)" if torch_info else "") + ".",
              f"Environment: {record['env'] or 'no OPENBLAS_/OMP_/MKL_ variables set'}; load average "
              f"before {record['load_average_before']}, after {record.get('load_average_after')}.",
              f"Command: `{record['command']}`", ""]
    return "\n".join(lines)


def plot(record, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(record["results"], key=lambda r: r["batch"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = {"minivae-numpy": ("C0", "-", "o"), "torch-cpu": ("C1", "-", "s"),
              "gemm-numpy": ("C0", ":", None), "gemm-numpy-split": ("C4", ":", None),
              "gemm-torch-cpu": ("C1", ":", None),
              "minivae-cupy": ("C2", "-", "o"), "torch-cuda": ("C3", "-", "s"),
              "gemm-cupy": ("C2", ":", None), "gemm-torch-cuda": ("C3", ":", None)}
    for impl, (color, line, marker) in styles.items():
        points = [(r["batch"], r["impls"][impl]["median_s"] * 1e3) for r in rows if impl in r["impls"]]
        if points:
            label = impl + (" (GEMM-only floor)" if impl.startswith("gemm") else "")
            ax.plot(*zip(*points), color=color, linestyle=line, marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("time per training step (ms)")
    ax.set_title("Step time (lower is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    speedups = [(r["batch"], r["ratios"]["speedup minivae-cupy vs minivae-numpy"]) for r in rows
                if "speedup minivae-cupy vs minivae-numpy" in r["ratios"]]
    if speedups:
        ax2.plot(*zip(*speedups), "o-", color="C2", label="minivae: CPU time / GPU time")
        torch_speedups = [(r["batch"], r["ratios"]["speedup torch-cuda vs torch-cpu"]) for r in rows
                          if "speedup torch-cuda vs torch-cpu" in r["ratios"]]
        if torch_speedups:
            ax2.plot(*zip(*torch_speedups), "s--", color="C3", label="PyTorch: CPU / GPU")
        ax2.axhline(1.0, color="gray", linewidth=1)
        cross = crossover(record)
        if cross:
            ax2.axvline(cross, color="k", linestyle="--", linewidth=1)
            ax2.annotate(f"crossover: batch {cross}", (cross, 1.0), textcoords="offset points",
                         xytext=(5, 10), fontsize=9)
        ax2.set_yscale("log")
        ax2.set_ylabel("GPU speedup over CPU (x)")
        ax2.set_title("GPU/CPU speedup (above 1: the GPU is faster)")
    else:
        for key, label, color in (("minivae-numpy/torch-cpu", "minivae / PyTorch", "C1"),
                                  ("minivae-numpy/gemm-numpy", "minivae / GEMM-only floor", "C0")):
            points = [(r["batch"], r["ratios"][key]) for r in rows if key in r["ratios"]]
            if points:
                ax2.plot(*zip(*points), "o-", color=color, label=label)
        ax2.axhline(1.0, color="gray", linewidth=1)
        ax2.set_ylabel("time ratio (below 1: minivae is faster)")
        ax2.set_title("No GPU on this machine: no GPU/CPU speedup or crossover;\n"
                      "CPU ratios shown instead", fontsize=10)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("batch size")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    m = record["machine"]
    fig.suptitle(f"minivae {model_label(record)} VAE, float32, Adam — {m.get('cpu_model')}, "
                 f"{m.get('logical_cpus')} CPUs" + (
                     f", {record['workers'].get('cupy', {}).get('gpu')}" if "cupy" in record["workers"]
                     else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(record, path):
    """Write ``record`` as JSON atomically (a reader never sees half a file)."""
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def write_outputs(record, args):
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, args.name)
    write_json(record, stem + ".json")
    with open(stem + ".md", "w") as f:
        f.write(markdown(record))
    if not args.no_plot:
        plot(record, stem + ".png")
    return stem


def command_line():
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    partial = os.path.join(args.out_dir, args.name + ".json")   # rewritten after every batch size
    record = run(args, command_line(), on_row=lambda record: write_json(record, partial))
    stem = write_outputs(record, args)
    print(f"wrote {stem}.json, {stem}.md" + ("" if args.no_plot else f", {stem}.png"))
    return record


if __name__ == "__main__":
    main()
