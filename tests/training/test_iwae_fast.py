"""The fused importance weights (minivae.fast.iwae) equal the reference log_importance_weights.

With the same noise the fast path and ``model.log_importance_weights`` compute the same numbers up
to the dtype's rounding: every supported activation and likelihood, on every test backend, in
float32 and float64, with one example or several per call, blocks that cut a call into pieces,
one thread or two; ``iwae_bound`` gives the same bound on both paths, and runs the reference for a
model the fast path does not support.
"""
import numpy as np
import pytest
from backend_selection import TEST_BACKENDS

import minivae
from minivae.fast import cpu_library
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.fast.iwae import FusedIWAE, iwae_unsupported_reason
from minivae.training.evaluate import iwae_bound

ARCHITECTURES = [
    ([16, 12], "tanh", "bernoulli", 1.0), ([10], "relu", "bernoulli", 1.0),
    ([9], "leaky_relu", "bernoulli", 1.0), ([8], "sigmoid", "gaussian", 0.5),
    ([10, 7], "softplus", "gaussian", "learned"), ([], "relu", "bernoulli", 1.0),
]
# float32: the sums of D terms of size ~1-10 agree to a few float32 ulps of the magnitude
TOLERANCE = {"float32": 2e-5, "float64": 1e-11}


def make_model(arch, backend, dtype, seed=1):
    hidden, activation, likelihood, variance = arch
    return minivae.VAE(20, hidden, 5, activation=activation, likelihood=likelihood, backend=backend,
                       dtype=dtype, seed=seed, decoder_variance=variance)


def data(model, n, rng):
    if model.likelihood == "bernoulli":
        x = (rng.random((n, model.input_dim)) < 0.4).astype(model.dtype)
    else:
        x = rng.standard_normal((n, model.input_dim)).astype(model.dtype)
    return model.backend.to_device(x)


def assert_close(actual, expected, dtype):
    actual, expected = minivae.to_numpy(actual), minivae.to_numpy(expected).astype(np.float64)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE[dtype] * scale)


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHITECTURES, ids=lambda a: f"{a[1]}-{a[2]}-{a[3]}-{len(a[0])}")
@pytest.mark.parametrize("n, block_rows, threads", [(1, 3, 1), (3, 6, 2), (4, 100, "auto")])
def test_fused_log_weights_equal_the_reference(backend, dtype, arch, n, block_rows, threads):
    model = make_model(arch, backend, dtype)
    rng = np.random.default_rng(0)
    x = data(model, n, rng)
    eps = model.backend.to_device(rng.standard_normal((7, n, model.latent_dim)).astype(dtype))
    engine = FusedIWAE(model, block_rows=block_rows, threads=threads)
    log_w = engine.log_weights(x, eps)
    assert log_w.shape == (7, n) and log_w.dtype == np.float64
    assert_close(log_w, model.log_importance_weights(x, eps), dtype)
    again = engine.log_weights(x, eps)             # the buffers are reused: the same numbers
    np.testing.assert_array_equal(minivae.to_numpy(again), minivae.to_numpy(log_w))


@pytest.mark.parametrize("backend", TEST_BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_iwae_bound_is_the_same_on_both_paths(backend, dtype):
    model = make_model(ARCHITECTURES[0], backend, dtype)
    x = data(model, 6, np.random.default_rng(2))
    for k, batch_rows in [(1, None), (13, 20), (40, 16)]:       # many examples per call; k split
        fast = iwae_bound(model, x, k=k, batch_rows=batch_rows, progress=False, seed=4)
        ref = iwae_bound(model, x, k=k, batch_rows=batch_rows, progress=False, seed=4, fused=False)
        assert_close(fast.log_px, ref.log_px, dtype)
        assert_close(fast.elbo, ref.elbo, dtype)


class Custom(minivae.VAE):
    """A subclass: the fast path must not assume it computes VAE's math."""


def test_an_unsupported_model_runs_the_reference():
    model = Custom(20, [8], 5, seed=1)
    assert "not minivae.VAE itself" in iwae_unsupported_reason(model)
    with pytest.raises(ValueError, match="cannot run"):
        FusedIWAE(model)
    x = data(model, 3, np.random.default_rng(0))
    result = iwae_bound(model, x, k=5, progress=False)
    ref = iwae_bound(model, x, k=5, progress=False, fused=False)
    np.testing.assert_array_equal(result.log_px, ref.log_px)


def test_compiled_passes_equal_the_array_passes_over_extreme_logits():
    """The vectorized exp of the compiled Bernoulli pass, and its per-row log of a product kept as
    mantissa and exponent, against the array pass in float64, logits from -100 to 100 over a row
    much longer than a SIMD register file (no overflow of the product)."""
    if cpu_library.get("float32") is None:
        pytest.skip(f"no compiled CPU kernels: {cpu_library.status()}")
    rng = np.random.default_rng(3)
    rows, D, n = 6, 5000, 2
    logits = np.concatenate([np.linspace(-100, 100, rows * D // 2),
                             rng.standard_normal(rows * D // 2) * 1e-3]).astype(np.float32).reshape(rows, D)
    b = rng.standard_normal(D).astype(np.float32) * 1e-3
    x = (rng.random((n, D)) < 0.5).astype(np.float32)
    got = np.full(rows, 0.25)
    CompiledKernels(np).bernoulli_log_likelihood(logits.copy(), b, x, got, None, None, None)
    expected = np.full(rows, 0.25)
    d = logits.astype(np.float64)
    ArrayKernels(np).bernoulli_log_likelihood(d, b.astype(np.float64), x.astype(np.float64), expected,
                                             np.empty_like(d), np.empty_like(d), np.empty(rows))
    np.testing.assert_allclose(got, expected, rtol=2e-7 * 50, atol=1e-3)
    assert np.isfinite(got).all()


def test_no_block_sized_allocation_in_steady_state():
    """After the first call, a call allocates only per-call vectors (the encoder's (n, .) arrays),
    nothing of a block's (rows, D) size: the decoder runs in the buffers."""
    import tracemalloc
    model = minivae.VAE(784, [64, 32], 8, activation="tanh", seed=1)
    rng = np.random.default_rng(0)
    x = data(model, 2, rng)
    eps = rng.standard_normal((300, 2, model.latent_dim)).astype(np.float32)
    out = np.empty((300, 2))
    engine = FusedIWAE(model, block_rows=128, threads=1)
    engine.log_weights(x, eps, out=out)
    tracemalloc.start()
    try:
        engine.log_weights(x, eps, out=out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 128 * model.input_dim * 4 // 8, peak      # an eighth of one (128, 784) buffer
