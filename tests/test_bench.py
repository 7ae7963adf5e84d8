"""mtcsnn.bench runs and its figures are coherent (speed itself is not tested here)."""

from __future__ import annotations

import pytest

from mtcsnn.bench import main
from mtcsnn.benchmarking.loops import benchmark, summary

TINY = [
    "data=synthetic",
    "data.num_train=40",
    "data.num_val=4",
    "data.num_test=4",
    "data.batch_size=16",
    "trainer=cpu",
]


@pytest.mark.slow
def test_bench_times_both_loops_on_the_same_work(tmp_path, capsys):
    result = benchmark(TINY, steps=3, warmup=1)
    # 20 pairs an epoch in batches of 8, 8, 4 pairs; timed steps 2-4 hold 16 + 8 + 16 images
    assert result["bare"]["images"] == result["framework"]["images"] == 40
    assert result["ratio"] == pytest.approx(
        result["framework"]["images_per_s"] / result["bare"]["images_per_s"]
    )
    assert 0 <= result["framework"]["data_share"] < 1
    assert result["gflop_per_image"] > 0.01  # a ResNet-18 step, forward and backward
    assert result["matmul_peak_tflops"] > 0
    assert "ratio framework/bare" in summary(result)
    assert main([*TINY, "--steps", "2", "--warmup", "1", "--json", str(tmp_path / "b.json")]) == 0
    assert (tmp_path / "b.json").exists()


def test_bench_rejects_a_bad_override(capsys):
    assert main(["data=synthetic", "model.net.backbone=resnet19"]) == 1
    assert "model.net.backbone" in capsys.readouterr().err


@pytest.mark.slow
def test_the_sweep_mode_times_whole_runs_of_both_side_by_side(tmp_path, capsys):
    from mtcsnn.benchmarking.sweep import sweep_benchmark, sweep_summary

    small = [*TINY[:-1], "data.num_val=20", "data.num_test=20"]
    result = sweep_benchmark(small, runs=2, jobs=2, epochs=1)
    for name in ("framework", "bare"):
        part = result[name]
        # every run of both finished, validated and tested, and was timed
        assert len(part["val_auroc"]) == len(part["test_auroc"]) == 2
        assert all(0.0 <= v <= 1.0 for v in part["val_auroc"] + part["test_auroc"])
        assert part["s_per_run"] == pytest.approx(part["wall_s"] / 2) and part["wall_s"] > 0
    assert result["ratio"] == pytest.approx(
        result["framework"]["wall_s"] / result["bare"]["wall_s"]
    )
    assert result["epochs"] == 1 and result["jobs"] == 2
    text = sweep_summary(result)
    assert "2 runs of 1 epochs, 2 at a time" in text and "framework/bare" in text


def test_the_sweep_mode_sets_seeds_and_threads_itself(capsys):
    assert main(["--runs", "2", "data=synthetic", "seed=3"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: bench --runs sets seed (1..N) and threads (cores / jobs) itself"
    )
