"""CI's smoke of the benchmark scripts: they run end to end in seconds and write what they promise.
No timing is asserted (benchmarks are not timed tests)."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCHMARKS = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCHMARKS)


def run_script(script, tmp_path, *extra):
    command = [sys.executable, os.path.join(BENCHMARKS, script), "--smoke", "--workers", "numpy",
               "--out-dir", str(tmp_path), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_bench_step_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    run_script("bench_step.py", tmp_path)
    record = json.loads((tmp_path / "step_cpu.json").read_text())
    assert [row["batch"] for row in record["results"]] == [32, 64]
    for row in record["results"]:
        for impl in ("minivae-numpy", "gemm-numpy"):
            r = row["impls"][impl]
            assert r["median_s"] > 0 and r["faults_per_step"] >= 0 and r["peak_rss_mib"] > 0
        assert "minivae-numpy/gemm-numpy" in row["ratios"]
    assert "bench_step.py" in record["command"] and "--smoke" in record["command"]
    assert record["machine"]["logical_cpus"] >= 1
    assert any(p.get("user_api") == "blas" for p in record["workers"]["numpy"]["threadpools"])
    table = (tmp_path / "step_cpu.md").read_text()
    assert "| 32 |" in table and "Command:" in table
    assert (tmp_path / "step_cpu.png").stat().st_size > 0


def test_bench_step_classic_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    run_script("bench_step.py", tmp_path, "--model", "classic", "--batch-sizes", "100", "--cpu-threads", "1")
    record = json.loads((tmp_path / "step_cpu_classic.json").read_text())
    assert record["model"]["name"] == "classic" and record["model"]["hidden"] == [200, 200]
    assert record["settings"]["cpu_threads"] == 1
    assert all(p["num_threads"] == 1 for p in record["workers"]["numpy"]["threadpools"])
    (row,) = record["results"]
    assert row["batch"] == 100 and row["impls"]["gemm-numpy"]["median_s"] > 0
    assert "784-200-200-50 tanh" in (tmp_path / "step_cpu_classic.md").read_text()


def test_gemm_shapes_of_any_model():
    """The products written out for the 784-400-20 model are what the general rule gives; the
    classic model has 6 forward products, 6 weight gradients and 5 dx (none for the first layer)."""
    import _common as common
    assert common.gemm_shapes(32) == common._pytorch_example_shapes(32)
    tagged = common.tagged_gemm_shapes(100, "classic")
    kinds = [kind for _, kind in tagged]
    assert len(tagged) == 17 and kinds.count("decoder_dw") == 3 and kinds.count("encoder_dw") == 3
    for (a, b, ta, tb), _ in tagged:
        assert a[1] == b[0]


def test_bench_eval_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    command = [sys.executable, os.path.join(BENCHMARKS, "bench_eval.py"), "--smoke", "--out-dir",
               str(tmp_path), "--full-examples", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((tmp_path / "eval_cpu.json").read_text())
    assert [row["threads"] for row in record["results"]] == [1, 2]
    for row in record["results"]:
        for impl in ("minivae", "minivae-reference", "gemm-floor"):
            assert row["impls"][impl]["samples_per_s"] > 0
        assert row["ratios"]["minivae/gemm-floor"] > 0
        # the fused and the reference path compute the same bound from the same noise
        fused, reference = row["impls"]["minivae"]["neg_log_px"], row["impls"]["minivae-reference"]["neg_log_px"]
        assert abs(fused - reference) < 1e-4 * abs(reference)
        if "torch" in row["impls"]:      # other noise: the same bound only roughly
            assert abs(row["impls"]["torch"]["neg_log_px"] - reference) < 0.05 * abs(reference)
    assert record["full"][0]["examples"] == 1 and record["full"][0]["seconds"] > 0
    assert "bench_eval.py" in record["command"] and record["machine"]["logical_cpus"] >= 1
    assert any(p.get("user_api") == "blas" for p in record["workers"]["numpy"]["threadpools"])
    table = (tmp_path / "eval_cpu.md").read_text()
    assert "| 1 |" in table and "Command:" in table
    assert (tmp_path / "eval_cpu.png").stat().st_size > 0


def test_bench_epoch_smoke(tmp_path):
    run_script("bench_epoch.py", tmp_path)
    record = json.loads((tmp_path / "epoch_cpu.json").read_text())
    (row,) = record["results"]
    assert row["worker"] == "numpy" and row["batches"] == 2048 // 256 and row["seconds"] > 0
    assert row["mean_loss"] > 0


def fake_record(with_gpu):
    """A record as a GPU machine would write it, to check the table and the plot's GPU parts."""
    results = []
    for N, cpu, gpu in [(32, 2e-3, 3e-3), (128, 4e-3, 3.2e-3), (1024, 2e-2, 4e-3)]:
        impls = {"minivae-numpy": {"median_s": cpu, "faults_per_step": 0},
                 "gemm-numpy": {"median_s": cpu / 1.3, "faults_per_step": 0}}
        if with_gpu:
            impls["minivae-cupy"] = {"median_s": gpu, "faults_per_step": 0}
            impls["gemm-cupy"] = {"median_s": gpu / 2, "faults_per_step": 0}
        row = {"batch": N, "impls": impls}
        import bench_step
        row["ratios"] = bench_step.ratios(impls)
        results.append(row)
    return {"results": results, "skipped": {} if with_gpu else {"cupy": "no GPU"},
            "workers": {"cupy": {"gpu": "Fake GPU"}} if with_gpu else {}, "machine": {},
            "env": {}, "load_average_before": None, "command": "python benchmarks/bench_step.py",
            "settings": {"max_other_load": 0.15}}


@pytest.mark.parametrize("with_gpu", [True, False])
def test_table_and_plot_mark_the_crossover(tmp_path, with_gpu):
    pytest.importorskip("matplotlib")
    import bench_step
    record = fake_record(with_gpu)
    table = bench_step.markdown(record)
    if with_gpu:
        assert bench_step.crossover(record) == 128
        assert "crossover batch size (minivae): 128" in table
        assert "speedup minivae-cupy vs minivae-numpy" in table
    else:
        assert bench_step.crossover(record) is None
        assert "No GPU" in table
    bench_step.plot(record, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").stat().st_size > 0
