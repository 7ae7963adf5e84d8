"""mtcsnn.bench runs and its figures are coherent (speed itself is not tested here)."""

from __future__ import annotations

import pytest

from mtcsnn.bench import benchmark, main, summary

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
