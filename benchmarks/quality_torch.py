"""Side by side on the same data: PyTorch's examples/vae against minivae's default MNIST run.

PyTorch's examples/vae (main.py) trains 784-400-20 ReLU with a sigmoid output, BCE summed over
pixels plus the KL, Adam 1e-3, batch 128, 10 epochs, on MNIST as ``ToTensor()`` intensities in
[0, 1], and prints "Test set loss": the summed test loss with one z sample per digit, divided by
10,000. This script replays that loop (same model, same loss, same data files as minivae, read by
``minivae.training.data``) for a few seeds, and runs ``examples/mnist.py`` with the same seeds, so the two
held-out numbers can be compared within their seed-to-seed noise. PyTorch is a benchmark-only
tool here (``pip install torch==2.13.0``), never a dependency of minivae.

    python benchmarks/quality_torch.py --seeds 0 1 2 --out benchmarks/results/quality_torch.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def torch_run(seed, epochs, threads):
    """PyTorch examples/vae, as in its main.py, on minivae's copy of MNIST. Returns test loss."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from minivae.training.data import load_dataset, preprocess

    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    train = torch.from_numpy(preprocess(load_dataset("mnist", "train", verbose=False).images))
    test = torch.from_numpy(preprocess(load_dataset("mnist", "test", verbose=False).images))

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
            self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

        def forward(self, x):
            h1 = F.relu(self.fc1(x))
            mu, logvar = self.fc21(h1), self.fc22(h1)
            z = mu + torch.randn_like(logvar) * torch.exp(0.5 * logvar)
            return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

    def loss_function(recon_x, x, mu, logvar):
        bce = F.binary_cross_entropy(recon_x, x, reduction="sum")
        return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())

    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train)).split(128):
            x = train[batch]
            optimizer.zero_grad()
            recon, mu, logvar = model(x)
            loss = loss_function(recon, x, mu, logvar)
            loss.backward()
            optimizer.step()
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x in test.split(128):
            recon, mu, logvar = model(x)
            total += loss_function(recon, x, mu, logvar).item()
    return total / len(test)


def minivae_run(seed, epochs):
    """``examples/mnist.py`` with its defaults (PyTorch's setting) and ``--seed``; its held-out -ELBO."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, str(ROOT / "examples" / "mnist.py"), "--seed", str(seed),
                        "--epochs", str(epochs), "--iwae-k", "0", "--no-progress", "--out", out,
                        "--backend", "numpy"], check=True, stdout=subprocess.DEVNULL)
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    return metrics


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch intra-op threads")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        torch_loss = torch_run(seed, args.epochs, args.threads)
        torch_seconds = time.perf_counter() - start
        start = time.perf_counter()
        metrics = minivae_run(seed, args.epochs)
        minivae_seconds = time.perf_counter() - start
        heldout = metrics["final"]["heldout_neg_elbo"]
        rows.append((seed, torch_loss, heldout, torch_seconds, minivae_seconds))
        print(f"seed {seed}: PyTorch test loss {torch_loss:.2f}  minivae held-out -ELBO {heldout:.2f}  "
              f"({torch_seconds:.0f} s / {minivae_seconds:.0f} s)", flush=True)
    torch_mean = statistics.mean(r[1] for r in rows)
    minivae_mean = statistics.mean(r[2] for r in rows)
    spread = lambda values: statistics.stdev(values) if len(values) > 1 else float("nan")  # noqa: E731
    lines = ["| seed | PyTorch examples/vae test loss | minivae held-out -ELBO | PyTorch s | minivae s |",
             "|---:|---:|---:|---:|---:|"]
    lines += [f"| {s} | {t:.2f} | {m:.2f} | {ts:.0f} | {ms:.0f} |" for s, t, m, ts, ms in rows]
    lines.append(f"| mean (sd) | {torch_mean:.2f} ({spread([r[1] for r in rows]):.2f}) | "
                 f"{minivae_mean:.2f} ({spread([r[2] for r in rows]):.2f}) | | |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        command = " ".join(["python", "benchmarks/quality_torch.py"] + sys.argv[1:])
        Path(args.out).write_text(
            "PyTorch examples/vae vs minivae's default run (784-400-20 ReLU, Bernoulli on [0, 1] "
            f"intensities, Adam 1e-3, batch 128, {args.epochs} epochs), the same MNIST files; "
            "held-out loss on the 10,000 test digits with one z per digit, in nats.\n\n"
            f"{table}\n\nCommand: `{command}` (PyTorch with {args.threads} thread(s)).\n")


if __name__ == "__main__":
    main()
