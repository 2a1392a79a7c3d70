"""Shared fixtures: every backend test runs on NumPy, on the strict CuPy stand-in, and on CuPy
when a GPU is present."""
import numpy as np
import pytest

import minivae
from minivae.backend import cupy_gpu_available

BACKENDS = ["numpy", "strict"] + (["cupy"] if cupy_gpu_available() else [])


@pytest.fixture(params=BACKENDS)
def backend(request):
    """A :class:`minivae.Backend`: numpy, strict (CuPy stand-in), cupy (GPU only)."""
    return minivae.get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
