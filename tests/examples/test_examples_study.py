"""The study examples run as the README says (``python examples/<name>.py``), in their --fast mode,
and write real PNG figures; the two that compute on a model also run on the strict backend (the
GPU code path without a GPU)."""
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

EXAMPLES = {
    "gradient_variance": ["gradient_variance.png", "gradient_clouds.png"],
    "elbo_gap": ["elbo_gap.png", "iwae.png"],
    "prior_ring": ["prior_ring.png"],
    "iwae_snr": ["iwae_snr.png"],
    "inference_gap": ["inference_gap.png"],
    "pixel_space": ["pixel_space.png"],
}


def run_example(name, out, *options):
    env = dict(os.environ, MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, str(ROOT / "examples" / f"{name}.py"), "--fast",
                             "--out", str(out), *options],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def check_png(path):
    """A PNG by signature and header, of plausible size, that decodes to a non-blank image."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 400 <= width <= 5000 and 300 <= height <= 5000, (path, width, height)
    assert len(data) > 20_000, (path, len(data))
    from matplotlib import image
    pixels = image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert np.std(pixels[..., :3]) > 0.05          # not a blank canvas


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_writes_its_figures(name, tmp_path):
    stdout = run_example(name, tmp_path)
    for figure in EXAMPLES[name]:
        check_png(tmp_path / figure)
        assert f"wrote {tmp_path / figure}" in stdout


@pytest.mark.parametrize("name", ["gradient_variance", "elbo_gap", "inference_gap"])
def test_example_runs_on_the_strict_backend(name, tmp_path):
    run_example(name, tmp_path, "--backend", "strict")
    for figure in EXAMPLES[name]:
        check_png(tmp_path / figure)


def test_elbo_gap_prints_the_identity(tmp_path):
    stdout = run_example("elbo_gap", tmp_path, "--examples", "1")
    header = next(i for i, line in enumerate(stdout.splitlines()) if "residual" in line)
    row = stdout.splitlines()[header + 1].split()
    log_px, elbo, kl, residual = (float(v) for v in row[1:5])
    assert abs(residual) < 1e-8
    assert kl > 0 and elbo < log_px
    assert abs(log_px - elbo - kl) < 1e-5            # the printed numbers are rounded to 1e-6
