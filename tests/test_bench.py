import pytest
from torch import nn

from tools import bench
from unet.network.model import UNet


def test_step_flops_counts_forward_and_backward_convolutions():
    # conv1 3->4 (3x3) then conv2 4->1 (1x1) on 8x8, one image; a multiply-add is 2 FLOPs.
    # forward: conv1 2*64*4*27, conv2 2*64*1*4; backward: both weight grads (same counts) and
    # conv2's input grad (2*64*4); no input grad for conv1 (the image needs none).
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 1, 1))
    by_hand = 2 * 64 * (4 * 27 + 4) + 2 * 64 * (4 * 27 + 4) + 2 * 64 * 4
    assert bench.step_flops(model, (8, 8)) == by_hand


def test_step_flops_on_meta_matches_the_seed_unet_figure():
    import torch
    with torch.device("meta"):
        model = UNet(features=(64, 128, 256, 512))
    assert bench.step_flops(model, (160, 240)) / 1e9 == pytest.approx(169.2, abs=0.1)


def test_summarize_gives_the_ratios_from_medians():
    rounds = {"fp32_peak": [100, 160, 170], "bf16_peak": [400, 380, 50], "tutorial": [0.5, 0.7, 0.8],
              "project": [2.0, 1.0, 1.9], "predict": [6.0, 5.7, 1.0]}
    r = bench.summarize(rounds, flops_per_image=150e9, data_images_per_second=380,
                        evaluate_images_per_second=3.8)
    assert r["train_speedup"] == pytest.approx(1.9 / 0.7)
    assert r["bf16_peak_fraction"] == pytest.approx(1.9 * 150 / 380)
    assert r["data_vs_train"] == pytest.approx(200)
    assert r["eval_vs_train"] == pytest.approx(3.0)
    assert r["evaluate_full_size_vs_train"] == pytest.approx(2.0)
    assert r["matmul_peak_gflops"] == {"fp32": 160, "bf16": 380}
