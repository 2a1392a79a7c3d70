"""The CuPy API that minivae calls exists as it is called, in the installed CuPy (13 or 14), with or
without a GPU (``import cupy`` works without one); where a GPU is present, it also behaves so."""
import inspect

import numpy as np
import pytest

from minivae.backend import cupy_gpu_available

cupy = pytest.importorskip("cupy")


def parameters(function):
    return list(inspect.signature(function).parameters)


def test_the_random_generator_draws_float32_into_a_buffer():
    """CupyRandom: ``default_rng(seed)``, ``standard_normal(size, dtype, out)``, ``random(size,
    dtype)`` (a permutation is an argsort of uniform keys: CuPy's Generator has no permutation)."""
    assert parameters(cupy.random.default_rng) == ["seed"]
    assert parameters(cupy.random.Generator.standard_normal) == ["self", "size", "dtype", "out"]
    assert parameters(cupy.random.Generator.random)[:3] == ["self", "size", "dtype"]
    assert callable(cupy.argsort)


def test_the_kernel_timing_and_memory_calls_exist():
    for name in ("ElementwiseKernel", "asnumpy", "get_default_memory_pool", "ascontiguousarray", "matmul",
                 "take"):
        assert hasattr(cupy, name), name
    for name in ("Event", "get_elapsed_time", "get_current_stream", "is_available", "Device"):
        assert hasattr(cupy.cuda, name), name
    assert hasattr(cupy.cuda.runtime, "getDeviceProperties")


@pytest.mark.skipif(not cupy_gpu_available(), reason="needs CuPy and a CUDA GPU")
def test_cupy_draws_float32_in_place():
    import minivae
    backend = minivae.get_backend("cupy")
    random = backend.random(0)
    out = cupy.empty((4, 1000, 20), dtype=cupy.float32)
    assert random.normal(out.shape, "float32", out=out) is out
    draws = minivae.to_numpy(out)
    assert draws.dtype == np.float32 and abs(draws.mean()) < 0.02 and abs(draws.std() - 1) < 0.02
    uniform = minivae.to_numpy(random.uniform((1000,), "float32"))
    assert uniform.dtype == np.float32 and 0 <= uniform.min() and uniform.max() < 1
    order = minivae.to_numpy(random.permutation(1000))
    assert sorted(order.tolist()) == list(range(1000))
