"""Print the gradient check of whole models, per parameter: the numbers quoted in the README.

    python benchmarks/gradcheck_report.py

Small 12-9-7-3 tanh models with each likelihood, L = 1 and 3 samples, beta = 0.7 (every element
checked), and the 784-400-20 model with ReLU and tanh (large tensors along random directions).
Relative error = max|analytic - numeric| / max(max|analytic|, max|numeric|) per parameter.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import minivae  # noqa: E402


def show(title, report):
    print(title)
    print("   " + "  ".join(f"{name}={error:.1e}" for name, error in report.errors.items()))


def main():
    rng = np.random.default_rng(0)
    for likelihood, options in [("bernoulli", {}), ("gaussian", {}),
                                ("gaussian", {"decoder_variance": "learned"})]:
        for L in (1, 3):
            model = minivae.VAE(12, [9, 7], 3, likelihood=likelihood, activation="tanh",
                                dtype="float64", seed=3, **options)
            x = rng.random((5, 12)) if likelihood == "bernoulli" else rng.standard_normal((5, 12))
            report = minivae.check_model_gradients(model, x, eps=rng.standard_normal((L, 5, 3)), beta=0.7)
            show(f"12-9-7-3 tanh {likelihood}{' learned variance' if options else ''}, L={L}, beta=0.7",
                 report)
    for activation in ("relu", "tanh"):
        model = minivae.VAE(784, [400], 20, activation=activation, dtype="float64", seed=0)
        x = np.random.default_rng(0).random((8, 784))
        report = minivae.check_model_gradients(model, x, eps=model.draw_eps(8, 3))
        show(f"784-400-20 {activation} bernoulli, L=3", report)


if __name__ == "__main__":
    main()
