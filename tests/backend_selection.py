"""Which backends the backend tests run on: ``MINIVAE_TEST_BACKEND``.

Unset (or empty): NumPy, the strict CuPy stand-in, and CuPy where a GPU is usable (else CuPy's
tests are skipped). Set to a comma-separated list of backend names (``cupy``, ``numpy,cupy``) or
``all`` (numpy, strict, cupy): exactly those, and each of them must run here. A named backend that
cannot run fails the whole session at its start (``pytest.UsageError``), and a test that would
skip for want of a GPU or of NVRTC fails instead (see ``tests/conftest.py``), so that a GPU run
can never pass by skipping its GPU tests.

    MINIVAE_TEST_BACKEND=cupy python -m pytest -q      # the backend tests on the GPU only
"""
from __future__ import annotations

import os
import re

ENV = "MINIVAE_TEST_BACKEND"
DEFAULT = ("numpy", "strict")
ALL = ("numpy", "strict", "cupy")
# the skip reasons of tests that need a GPU (or CuPy's compiler): under an explicit selection that
# names cupy they fail instead of skipping
GPU_SKIP = re.compile(r"needs CuPy|NVRTC not available|no usable CUDA GPU")


def requested():
    """The backends named in ``$MINIVAE_TEST_BACKEND`` (None when unset or empty)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if value == "all":
        return list(ALL)
    return [name.strip() for name in value.split(",") if name.strip()]


def problems(names):
    """Why the backends ``names`` cannot all run here: a list of sentences (empty when they can)."""
    from minivae.backend import BACKENDS
    out = []
    for name in names:
        if name not in BACKENDS:
            out.append(f"{name!r} is no backend (known: {', '.join(BACKENDS)})")
        elif not BACKENDS[name].available():
            out.append(f"backend {name!r} cannot run here"
                       + (" (CuPy finds no usable CUDA GPU: cupy.cuda.is_available() is False, or "
                          "CuPy is not installed)" if name == "cupy" else ""))
    return out


def selected():
    """The backends the backend tests run on, in order."""
    names = requested()
    if names is not None:
        return names
    from minivae.backend import cupy_gpu_available
    return list(DEFAULT) + (["cupy"] if cupy_gpu_available() else [])


def gpu_required():
    """True when ``$MINIVAE_TEST_BACKEND`` names cupy: GPU tests must run, not skip."""
    return "cupy" in (requested() or ())


TEST_BACKENDS = selected()
