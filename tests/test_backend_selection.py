"""``MINIVAE_TEST_BACKEND``: a GPU run cannot pass by skipping its GPU tests."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from backend_selection import ENV, GPU_SKIP, problems

from minivae.backend import cupy_gpu_available

TESTS = Path(__file__).resolve().parent
SKIP_REASON = re.compile(r"""(?:reason=|pytest\.skip\()f?["']([^"']+)["']""")


def run_pytest(selection, *args):
    env = {k: v for k, v in os.environ.items() if k != "MINIVAE_TEST_REPORT" and not k.startswith("PYTEST_")}
    env.update({ENV: selection, "PYTHONPATH": str(TESTS.parent)})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=120)


def test_every_gpu_skip_reason_of_the_suite_is_recognised():
    """Each skip that is about a GPU (or CuPy's compiler NVRTC) matches ``GPU_SKIP``, so that under
    ``MINIVAE_TEST_BACKEND=cupy`` it fails instead of skipping."""
    reasons = {reason for path in TESTS.rglob("test_*.py")
               for reason in SKIP_REASON.findall(path.read_text())}
    about_gpu = {r for r in reasons if re.search(r"GPU|CuPy|NVRTC", r) and "has a GPU" not in r}
    assert about_gpu, reasons
    assert all(GPU_SKIP.search(reason) for reason in about_gpu), about_gpu


def test_an_unknown_backend_is_refused():
    assert problems(["numpy", "tpu"]) == ["'tpu' is no backend (known: numpy, cupy, strict)"]
    assert problems(["numpy", "strict"]) == []


@pytest.mark.skipif(cupy_gpu_available(), reason="this machine has a GPU")
def test_asking_for_cupy_without_a_gpu_fails_the_session_at_once():
    result = run_pytest("cupy", "tests/test_layout.py")
    assert result.returncode == 4, result.stdout + result.stderr        # pytest's usage error
    assert "MINIVAE_TEST_BACKEND=cupy: backend 'cupy' cannot run here" in result.stderr


def test_a_selection_runs_the_backend_tests_on_those_backends_only():
    result = run_pytest("strict", "tests/test_model.py", "-k", "parity", "-vv")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_backend_parity[strict] PASSED" in result.stdout
    assert "[numpy]" not in result.stdout
    assert "backend tests on: strict" in result.stdout
