"""The kernels compiled for the CPU: the same optimizer updates as the NumPy passes, the step's
passes on the views the engine hands them (and the array operations for any other layout), the
Bernoulli loss to float32 rounding over the whole range of logits, a cache that survives a damaged
file, and the NumPy passes wherever the kernels cannot be built."""
import shutil

import numpy as np
import pytest

import minivae
from minivae.fast import cpu_library
from minivae.fast.array_kernels import ArrayKernels
from minivae.fast.cpu_kernels import CompiledKernels
from minivae.params import Parameters

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no kernels loaded yet in this process (restored after)."""
    monkeypatch.setenv("MINIVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_library, "_loaded", {})
    monkeypatch.setattr(cpu_library, "_status", {})
    return tmp_path / "cache"


def run_updates(make, dtype, compiled, monkeypatch, steps=5):
    """Parameters after ``steps`` updates with the compiled kernels or with the NumPy passes."""
    rng = np.random.default_rng(0)
    params = Parameters(rng.standard_normal(1000).astype(dtype), {"W": (20, 40), "b": (200,)})
    grads = [Parameters(rng.standard_normal(1000).astype(dtype), params.shapes) for _ in range(steps)]
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(cpu_library, "get", lambda dtype: None)
        optimizer = make(params)
        for g in grads:
            optimizer.step(g)
    return params.flat, optimizer


OPTIMIZERS = [lambda p: minivae.Adam(p, lr=0.01, betas=(0.8, 0.99)),
              lambda p: minivae.SGD(p, lr=0.05),
              lambda p: minivae.SGD(p, lr=0.05, momentum=0.9, nesterov=True)]


@needs_compiler
@pytest.mark.parametrize("make", OPTIMIZERS, ids=["adam", "sgd", "sgd-nesterov"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_updates_equal_the_numpy_passes(make, dtype, monkeypatch):
    assert cpu_library.get(dtype) is not None, cpu_library.status()
    compiled, opt_c = run_updates(make, dtype, True, monkeypatch)
    passes, opt_p = run_updates(make, dtype, False, monkeypatch)
    assert compiled.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-13   # a few roundings apart in float32
    np.testing.assert_allclose(compiled, passes, rtol=rtol, atol=rtol)
    for name in opt_c.state_names:
        np.testing.assert_allclose(opt_c.state[name], opt_p.state[name], rtol=rtol, atol=rtol)


@needs_compiler
def test_the_library_is_cached_and_a_damaged_one_is_rebuilt(fresh, monkeypatch):
    _, library = cpu_library.library_source_and_path("float32", cpu_library.find_compiler())
    fresh.mkdir()
    library.write_bytes(b"not a shared library")               # e.g. an interrupted copy
    kernels = cpu_library.get(np.float32)
    assert kernels is not None, cpu_library.status()
    assert cpu_library.status()["float32"] == f"compiled ({library})"
    assert library.stat().st_size > len(b"not a shared library")
    p, g = np.zeros(4, np.float32), np.ones(4, np.float32)
    kernels.sgd(g, 0.5, p)
    np.testing.assert_array_equal(p, -0.5)
    assert [f.name for f in fresh.iterdir()] == [library.name]  # no temporary files left
    built = library.stat().st_mtime_ns
    monkeypatch.setattr(cpu_library, "_loaded", {})
    assert cpu_library.get(np.float32) is not None
    assert library.stat().st_mtime_ns == built                 # loaded from the cache


@pytest.mark.parametrize("setting,reason", [("disabled", "MINIVAE_HOST_KERNELS=0"),
                                            ("no compiler", "building the kernels failed")])
def test_without_kernels_the_optimizers_use_the_numpy_passes(fresh, monkeypatch, setting, reason):
    if setting == "disabled":
        monkeypatch.setenv("MINIVAE_HOST_KERNELS", "0")
    else:
        monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    assert cpu_library.get(np.float32) is None
    assert reason in cpu_library.status()["float32"]
    params, _ = run_updates(OPTIMIZERS[0], np.float32, True, monkeypatch)
    expected, _ = run_updates(OPTIMIZERS[0], np.float32, False, monkeypatch)
    np.testing.assert_array_equal(params, expected)


# --- the step's passes, compiled (CompiledKernels) -------------------------------------------------
# (tests/fast/test_kernels.py checks each pass against the readable ops on plain arrays, and
# tests/training/test_step.py the whole step against the reference; here: what is particular to them)

def compiled_or_skip(dtype):
    kernels = cpu_library.get(dtype)
    if kernels is None:
        pytest.skip(f"no compiled CPU kernels: {cpu_library.status()}")
    return kernels


def test_compiled_bernoulli_over_the_whole_range_of_float32_logits():
    """Every logit from -120 to 120 (the float exponential's polynomial, its range reduction and
    its clamp below -87), and +-1000, in one row of 200,004 entries: the loss to float32
    precision, the gradient to the float64 value rounded to float32 up to 2 float32 epsilons of
    sigma (the exponential's error and the float division); nothing overflows."""
    compiled_or_skip(np.float32)
    logits = np.concatenate([np.linspace(-120, 120, 200_001), [-1000.0, 1000.0, -0.0]])
    x = np.random.default_rng(0).uniform(size=logits.size)
    logits, x = logits.astype(np.float32).reshape(1, -1), x.astype(np.float32).reshape(1, -1)
    l64, x64 = logits.astype(np.float64), x.astype(np.float64)
    nll64 = np.maximum(l64, 0) + np.log1p(np.exp(-np.abs(l64))) - x64 * l64
    grad64 = 0.25 * (np.exp(np.minimum(l64, 0)) / (1 + np.exp(-np.abs(l64))) - x64)
    work = logits.copy()
    with np.errstate(all="raise"):
        total = CompiledKernels(np).bernoulli(work, x, 0.25, None, None)
    assert total.dtype == np.float32
    assert abs(float(total) - nll64.sum()) <= 1e-7 * np.abs(nll64).sum()
    eps32 = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(work, grad64, rtol=0, atol=0.25 * 1.5 * eps32)
    # entry by entry: the rounding of the result, plus sigma's own error, which shows only where
    # sigma - x cancels
    sigma64 = grad64 / 0.25 + x64
    bound = 0.5 * np.spacing(np.abs(grad64).astype(np.float32)) + 0.25 * 2 * eps32 * sigma64
    assert np.all(np.abs(work - grad64) <= bound)


def test_compiled_passes_on_the_layouts_of_the_split_step(monkeypatch):
    """The views the engine hands the kernels: rows [r0, r1) of the batch's buffers, mu and logvar
    as the two halves of the head (rows of stride 2K), eps and dz as (L, rows, K) slices of
    (L, N, K) buffers. The compiled passes take them (no fallback) and equal the array
    operations on them, float64."""
    compiled_or_skip(np.float64)
    N, K, H, L, R = 10, 3, 7, 3, slice(4, 9)
    results = []
    for kernels in (ArrayKernels(np), CompiledKernels(np)):
        if isinstance(kernels, CompiledKernels):
            for name in ("reparameterize_kl", "reparameterize_kl_backward", "bias_activation",
                         "activation_backward"):
                monkeypatch.setattr(ArrayKernels, name, None)   # a fallback would fail
        r = np.random.default_rng(2)
        head, eps, dz = r.standard_normal((N, 2 * K)), r.standard_normal((L, N, K)), r.standard_normal((L, N, K))
        pre, dh, b = r.standard_normal((N, H)), r.standard_normal((N, H)), r.standard_normal(H)
        z, sigma, tmp = np.zeros((L, N, K)), np.zeros((N, K)), np.zeros((N, K))
        d_head = np.zeros((N, 2 * K))
        kl = kernels.reparameterize_kl(head[R, :K], head[R, K:], eps[:, R], z[:, R], sigma[R], tmp[R])
        kernels.reparameterize_kl_backward(dz[:, R], eps[:, R], head[R, :K], head[R, K:], sigma[R], 0.3,
                                           d_head[R, :K], d_head[R, K:], tmp[R])
        kernels.bias_activation(pre[R], b, "relu", pre[R], np.zeros((5, H)))
        kernels.activation_backward(dh[R], "relu", pre[R], pre[R], np.zeros((5, H)), np.zeros((5, H)))
        results.append((kl, z, d_head, pre, dh))
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-14)
    assert np.all(results[1][1][:, :4] == 0) and np.all(results[1][2][9:] == 0)   # other rows untouched


def test_float32_reparameterization_on_the_split_layouts(monkeypatch):
    """The float32 loops (``reparameterize_kl_float`` and its backward) on the views of the split
    step (mu and logvar the halves of the head, rows [4, 9) of (L, N, K) buffers), with logvar
    from -180 to 180 (the exponential's clamps: exp underflows to 0 below -87.3 and overflows to
    inf above 88.7, as NumPy's float32 exp does): they run (the generic kernel is not called) and
    equal the float64 array operations rounded to float32, to a few float32 epsilons; the rows
    outside the view stay untouched."""
    library = compiled_or_skip(np.float32)
    monkeypatch.setattr(type(library), "launch", lambda *args: pytest.fail("generic kernel called"))
    N, K, L, R = 10, 40, 3, slice(4, 9)
    r = np.random.default_rng(4)
    head = r.standard_normal((N, 2 * K))
    head[R, K:] = np.linspace(-180, 180, 5 * K).reshape(5, K)
    eps, dz = r.standard_normal((L, N, K)), r.standard_normal((L, N, K))
    head, eps, dz = (a.astype(np.float32).astype(np.float64) for a in (head, eps, dz))  # same inputs
    results = {}
    for dtype, kernels in ((np.float64, ArrayKernels(np)), (np.float32, CompiledKernels(np))):
        h, e, d = head.astype(dtype), eps.astype(dtype), dz.astype(dtype)
        z, sigma, tmp = np.zeros((L, N, K), dtype), np.zeros((N, K), dtype), np.zeros((N, K), dtype)
        d_head = np.zeros((N, 2 * K), dtype)
        with np.errstate(over="ignore", invalid="ignore"):
            kl = kernels.reparameterize_kl(h[R, :K], h[R, K:], e[:, R], z[:, R], sigma[R], tmp[R])
            kernels.reparameterize_kl_backward(d[:, R], e[:, R], h[R, :K], h[R, K:], sigma[R],
                                               dtype(0.3), d_head[R, :K], d_head[R, K:], tmp[R])
        results[dtype] = kl, z, d_head
    kl32, z32, d32 = results[np.float32]
    kl64, z64, d64 = results[np.float64]
    assert kl32.dtype == np.float32 and z32.dtype == np.float32
    assert np.isinf(kl32)                             # exp(180) overflows in float32
    with np.errstate(over="ignore", invalid="ignore"):   # where z overflows: as in NumPy's float32
        z_numpy32 = h[R, :K] + np.exp(h[R, K:] / np.float32(2)) * e[:, R]
    np.testing.assert_array_equal(np.isfinite(z32[:, R]), np.isfinite(z_numpy32))
    finite = np.abs(head[R, K:]) < 80                 # where float32 represents the values
    eps32 = float(np.finfo(np.float32).eps)
    z_tol = 4 * eps32 * (np.abs(head[R, :K]) + np.exp(head[R, K:] / 2) * np.abs(eps[:, R]))
    assert np.all(np.abs(z32[:, R] - z64[:, R])[:, finite] <= z_tol[:, finite])
    for part in (slice(0, K), slice(K, 2 * K)):
        got, expected = d32[R, part][finite], d64[R, part][finite]
        scale = np.abs(expected) + np.exp(np.abs(head[R, K:][finite]))
        assert np.all(np.abs(got - expected) <= 8 * eps32 * scale)
    assert np.all(z32[:, :4] == 0) and np.all(d32[9:] == 0) and np.all(d32[:4] == 0)
    # the KL of rows with logvar inside float's range: a float sum per row, added up in double
    head[R, K:] = np.linspace(-30, 30, 5 * K).reshape(5, K)
    h = head.astype(np.float32)
    z = np.zeros((L, N, K), np.float32)
    kl = CompiledKernels(np).reparameterize_kl(h[R, :K], h[R, K:], eps.astype(np.float32)[:, R],
                                              z[:, R], np.zeros((5, K), np.float32), np.zeros((5, K), np.float32))
    mu64, lv64 = h[R, :K].astype(np.float64), h[R, K:].astype(np.float64)
    kl_ref = 0.5 * np.sum(mu64 ** 2 + np.exp(lv64) - lv64 - 1)
    assert abs(float(kl) - kl_ref) <= 1e-6 * kl_ref


def test_row_stride_takes_rows_and_shared_vectors_only():
    a = np.zeros((6, 8), np.float32)
    assert cpu_library.row_stride(a, 6, 8) == 8
    assert cpu_library.row_stride(a[2:5], 3, 8) == 8
    assert cpu_library.row_stride(a[:, :4], 6, 4) == 8          # rows of a wider array
    assert cpu_library.row_stride(a[0], 6, 8) == 0              # a vector every row shares
    assert cpu_library.row_stride(a[:, ::2], 6, 4) is None      # columns not contiguous
    assert cpu_library.row_stride(a.T, 8, 6) is None
    assert cpu_library.row_stride(a, 6, 7) is None              # another shape
    assert cpu_library.row_stride(a[0, ::2], 6, 4) is None


def test_compiled_passes_fall_back_to_the_array_operations_for_other_layouts():
    """A Fortran-ordered target, a strided view, another dtype: the library refuses, nothing is
    written by it, and the array operations give the result."""
    kernels = compiled_or_skip(np.float64)
    rng = np.random.default_rng(3)
    logits, x = rng.standard_normal((4, 9)), rng.uniform(size=(4, 9))
    assert kernels.bernoulli(logits.copy(), np.asfortranarray(x), 1.0) is None
    assert kernels.bernoulli(logits.copy(), x.astype(np.float32), 1.0) is None
    assert not kernels.launch("relu_backward", 4, 5, logits[:, ::2], logits[:, :5].copy())
    expected, got = logits.copy(), logits.copy()
    total_expected = ArrayKernels(np).bernoulli(expected, x, 0.5, np.empty_like(x), np.empty_like(x))
    total = CompiledKernels(np).bernoulli(got, np.asfortranarray(x), 0.5,
                                                       np.empty_like(x), np.empty_like(x))
    np.testing.assert_allclose(got, expected, rtol=1e-14)
    np.testing.assert_allclose(total, total_expected, rtol=1e-14)
    with pytest.raises(ValueError, match="contiguous float64"):
        kernels.sgd(np.ones(4)[::2], 0.1, np.ones(2))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_step_with_compiled_passes_tracks_the_array_passes(threads, monkeypatch):
    """float32 training, 20 steps of the 784-64-8 ReLU model: the same losses and parameters as
    the NumPy passes to float32 rounding (the two differ in the last bits only)."""
    compiled_or_skip(np.float32)
    rng = np.random.default_rng(0)
    x = (rng.uniform(size=(64, 784)) < 0.3).astype(np.float32)
    runs = []
    for compiled in (True, False):
        with monkeypatch.context() as patch:
            if not compiled:
                patch.setattr(cpu_library, "get", lambda dtype: None)
            model = minivae.VAE(784, [64], 8, seed=0)
            step = minivae.TrainStep(model, minivae.Adam(model.params, lr=1e-3), threads=threads)
            losses = [float(step(x).loss) for _ in range(20)]
        runs.append((np.array(losses), model.params.flat.copy()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-5)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-3, atol=1e-5)


def test_compiled_bias_tanh_to_float32_precision_over_the_whole_range():
    """The vectorized tanh (1 - e) / (1 + e), e = exp(-2|x|) with 1 - e formed without
    cancellation: within 2 float32 ulps of the float64 tanh of the float32 sum, for tiny, small,
    large and huge arguments (and exact zeros, signs, saturation); float64 arrays are left to NumPy."""
    compiled_or_skip(np.float32)
    rng = np.random.default_rng(1)
    values = np.concatenate([np.linspace(-30, 30, 100_001), rng.standard_normal(10_000) * 1e-3,
                             np.logspace(-38, 1, 2000), -np.logspace(-38, 1, 2000), [0.0, -0.0, 1e30, -1e30]])
    values = values[:values.size // 4 * 4]
    h = values.astype(np.float32).reshape(4, -1)
    b = rng.standard_normal(h.shape[1]).astype(np.float32) * 1e-6
    expected = np.tanh((h + b).astype(np.float64))     # of the float32 sum the kernel takes
    library = cpu_library.get(np.float32)
    with np.errstate(all="raise"):
        assert library.bias_tanh(h, b)
    assert np.all(np.abs(h - expected) <= 2 * np.spacing(np.abs(expected).astype(np.float32)))
    assert np.all(np.abs(h) <= 1.0)
    assert cpu_library.get(np.float64) is None or not cpu_library.get(np.float64).bias_tanh(
        np.zeros((2, 3)), np.zeros(3))
