"""The optimizer kernels compiled for the CPU: the same updates as the NumPy passes, a cache that
survives a damaged file, and the NumPy passes wherever the kernels cannot be built."""
import shutil

import numpy as np
import pytest

import minivae
from minivae import host_kernels
from minivae.params import Parameters

HAS_COMPILER = any(shutil.which(c) for c in ("c++", "g++", "clang++"))
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no kernels loaded yet in this process (restored after)."""
    monkeypatch.setenv("MINIVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(host_kernels, "_loaded", {})
    monkeypatch.setattr(host_kernels, "_status", {})
    return tmp_path / "cache"


def run_updates(make, dtype, compiled, monkeypatch, steps=5):
    """Parameters after ``steps`` updates with the compiled kernels or with the NumPy passes."""
    rng = np.random.default_rng(0)
    params = Parameters(rng.standard_normal(1000).astype(dtype), {"W": (20, 40), "b": (200,)})
    grads = [Parameters(rng.standard_normal(1000).astype(dtype), params.shapes) for _ in range(steps)]
    with monkeypatch.context() as patch:
        if not compiled:
            patch.setattr(host_kernels, "get", lambda dtype: None)
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
    assert host_kernels.get(dtype) is not None, host_kernels.status()
    compiled, opt_c = run_updates(make, dtype, True, monkeypatch)
    passes, opt_p = run_updates(make, dtype, False, monkeypatch)
    assert compiled.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-13   # a few roundings apart in float32
    np.testing.assert_allclose(compiled, passes, rtol=rtol, atol=rtol)
    for name in opt_c.state_names:
        np.testing.assert_allclose(opt_c.state[name], opt_p.state[name], rtol=rtol, atol=rtol)


@needs_compiler
def test_the_library_is_cached_and_a_damaged_one_is_rebuilt(fresh, monkeypatch):
    _, library = host_kernels.library_source_and_path("float32", host_kernels.find_compiler())
    fresh.mkdir()
    library.write_bytes(b"not a shared library")               # e.g. an interrupted copy
    kernels = host_kernels.get(np.float32)
    assert kernels is not None, host_kernels.status()
    assert host_kernels.status()["float32"] == f"compiled ({library})"
    assert library.stat().st_size > len(b"not a shared library")
    p, g = np.zeros(4, np.float32), np.ones(4, np.float32)
    kernels.sgd(g, 0.5, p)
    np.testing.assert_array_equal(p, -0.5)
    assert [f.name for f in fresh.iterdir()] == [library.name]  # no temporary files left
    built = library.stat().st_mtime_ns
    monkeypatch.setattr(host_kernels, "_loaded", {})
    assert host_kernels.get(np.float32) is not None
    assert library.stat().st_mtime_ns == built                 # loaded from the cache


@pytest.mark.parametrize("setting,reason", [("disabled", "MINIVAE_HOST_KERNELS=0"),
                                            ("no compiler", "building the kernels failed")])
def test_without_kernels_the_optimizers_use_the_numpy_passes(fresh, monkeypatch, setting, reason):
    if setting == "disabled":
        monkeypatch.setenv("MINIVAE_HOST_KERNELS", "0")
    else:
        monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    assert host_kernels.get(np.float32) is None
    assert reason in host_kernels.status()["float32"]
    params, _ = run_updates(OPTIMIZERS[0], np.float32, True, monkeypatch)
    expected, _ = run_updates(OPTIMIZERS[0], np.float32, False, monkeypatch)
    np.testing.assert_array_equal(params, expected)
