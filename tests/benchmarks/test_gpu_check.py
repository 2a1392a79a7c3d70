"""CI's run of the GPU check's dry run (``benchmarks/gpu_check.py --dry-run``): the script that a
session lent a GPU fires once must never break unnoticed. No timing is asserted."""
import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCHMARKS)

import gpu_check  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("gpu_check")
    env = {k: v for k, v in os.environ.items() if k not in ("MINIVAE_TEST_REPORT", "OUT")}
    result = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "gpu_check.py"), "--dry-run", "--out", str(out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    return result, out


def test_the_dry_run_passes_every_stage_and_writes_at_most_8_files(dry_run):
    result, out = dry_run
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(os.listdir(out))
    assert len(files) <= gpu_check.MAX_FILES, files
    assert files == ["gpu_check.json", "gpu_check.log", "gpu_check.md", "mnist_strict_metrics.json",
                     "mnist_strict_samples.png", "step_gpu.json", "step_gpu.md", "step_gpu.png"]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["complete"] is True and report["files"] == files
    assert list(report["stages"]) == list(gpu_check.STAGES)
    assert {name: stage["status"] for name, stage in report["stages"].items()} == dict.fromkeys(gpu_check.STAGES,
                                                                                                "passed")
    for name in ("step_gpu.png", "mnist_strict_samples.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    for name in ("step_gpu.json", "mnist_strict_metrics.json"):
        json.loads((out / name).read_text())
    markdown = (out / "gpu_check.md").read_text()
    for heading in ("## Device", "## Tests", "## Step benchmark", "## MNIST, GPU against CPU"):
        assert heading in markdown
    assert "[gpu_check] mnist: passed" in result.stdout


def test_each_stage_reports_what_it_ran(dry_run):
    _, out = dry_run
    stages = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert stages["device"]["info"]["numpy"] and "python" in stages["device"]["info"]
    tests = stages["tests"]
    assert tests["backend"] == "strict"
    for part in tests["parts"].values():
        assert part["counts"].get("passed", 0) > 0 and not part["failed"] and part["rc"] == 0
    assert any("test_backend_parity[strict]" in line for line in (out / "gpu_check.log").read_text().splitlines()) \
        or tests["parts"]["tests_gpu"]["counts"]["passed"] >= 1
    bench = stages["bench"]
    assert bench["complete"] and [row["batch"] for row in bench["rows"]] == [32, 64]   # 128: CPU skipped
    assert "cupy" in bench["skipped_workers"] and "minivae-numpy" in bench["rows"][0]["ms"]
    assert [t["met"] for t in bench["targets"]] == [None, None]                         # no GPU: not measured
    mnist = stages["mnist"]
    assert mnist["comparison"]["within_noise"]
    assert mnist["runs"]["mnist_gpu"]["result"]["backend"] == "strict"
    assert mnist["runs"]["mnist_cpu"]["result"]["backend"] == "numpy"


def test_the_targets_from_a_gpu_record():
    def row(N, **ratios):
        return {"batch": N, "ratios": ratios, "impls": {}}
    record = {"results": [row(128, **{"minivae-cupy/torch-cuda": 0.8}),
                          row(8192, **{"minivae-cupy/gemm-cupy": 1.5}),
                          row(65536, **{"minivae-cupy/gemm-cupy": 2.5})]}
    vs_torch, vs_floor = gpu_check.bench_targets(record)
    assert vs_torch["met"] is True and vs_torch["value"] == 0.8
    assert vs_floor["met"] is False and vs_floor["value"] == {8192: 1.5, 65536: 2.5}


def alive(pid):
    """True for a running process (a killed one that nobody reaped yet is a zombie: not alive)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_stage_past_its_limit_is_ended_with_every_process_it_started(tmp_path):
    runner = gpu_check.Runner(str(tmp_path / "log"), dict(os.environ))
    pid_file = tmp_path / "grandchild"
    child = ("import subprocess, sys, time; p = subprocess.Popen(['sleep', '60']); "
             f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    began = time.monotonic()
    result = runner.run("sleeper", [sys.executable, "-c", child], limit=3)
    assert result["timed_out"] and time.monotonic() - began < 20
    log = (tmp_path / "log").read_text()
    assert "started" in log and "time limit reached" in log
    grandchild = int(pid_file.read_text())
    for _ in range(50):
        if not alive(grandchild):
            break
        time.sleep(0.1)
    assert not alive(grandchild)


def test_the_shell_entry_point_runs_the_script_with_its_arguments():
    result = subprocess.run(["sh", os.path.join(BENCHMARKS, "gpu_check.sh"), "--help"], cwd=REPO,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--dry-run" in result.stdout and "--stages" in result.stdout
