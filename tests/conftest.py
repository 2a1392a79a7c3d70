"""Shared fixtures: every backend test runs on NumPy, on the strict CuPy stand-in, and on CuPy
when a GPU is present; ``MINIVAE_TEST_BACKEND`` picks others (``tests/backend_selection.py``)."""
import json
import os

import numpy as np
import pytest
from backend_selection import ENV, GPU_SKIP, TEST_BACKENDS, gpu_required, problems, requested

import minivae


def pytest_configure(config):
    names = requested()
    if names is not None and problems(names):
        raise pytest.UsageError(f"{ENV}={','.join(names)}: " + "; ".join(problems(names)))


def pytest_report_header(config):
    names = requested()
    return f"minivae backend tests on: {', '.join(TEST_BACKENDS)} ({ENV}={','.join(names) if names else 'unset'})"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under a selection that names cupy, a test skipped for want of a GPU or NVRTC fails."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and gpu_required() and GPU_SKIP.search(str(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = (f"{ENV} names cupy, so this test must run here, but it was skipped: "
                           f"{report.longrepr}")


REPORT = os.environ.get("MINIVAE_TEST_REPORT")   # a file that gets one JSON line per test outcome


def pytest_runtest_logreport(report):
    """With ``$MINIVAE_TEST_REPORT``: append each test's outcome as it comes (a run stopped by a
    time limit keeps what it had), once per test, in the controlling process only."""
    if not REPORT or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if report.when == "call" or report.outcome != "passed":   # and a failed or skipped setup or teardown
        line = {"test": report.nodeid, "outcome": report.outcome, "seconds": round(report.duration, 3)}
        if report.outcome != "passed":
            line["detail"] = str(report.longrepr)[-2000:]
        with open(REPORT, "a") as stream:
            stream.write(json.dumps(line) + "\n")


@pytest.fixture(params=TEST_BACKENDS)
def backend(request):
    """A :class:`minivae.Backend`: numpy, strict (CuPy stand-in), cupy (GPU only)."""
    return minivae.get_backend(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
