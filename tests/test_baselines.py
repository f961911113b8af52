"""Trivial baselines and the promotion floor, values computed by hand."""
import numpy as np
import pytest
from PIL import Image

from unet.data.pairs import Pair
from unet.evaluation import baselines


def pair(tmp_path, name: str, mask: np.ndarray) -> Pair:
    image, path = tmp_path / f"{name}.png", tmp_path / f"{name}_mask.png"
    Image.new("RGB", mask.shape[::-1]).save(image)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return Pair(name, image, path)


def test_mean_mask_is_the_share_of_masks_covering_each_relative_position(tmp_path):
    left = np.zeros((40, 80), bool)
    left[:, :40] = True                   # the left half
    top = np.zeros((20, 20), bool)
    top[:10] = True                       # the top half, on an image of another size
    mean = baselines.mean_mask([pair(tmp_path, "a", left), pair(tmp_path, "b", top)])
    h, w = baselines.GRID
    assert mean.shape == (h, w)
    assert mean[0, 0] == 1.0                       # top-left: both
    assert mean[-1, 0] == 0.5 and mean[0, -1] == 0.5
    assert mean[-1, -1] == 0.0


def test_baseline_dice_by_hand(tmp_path):
    quarter = np.zeros((10, 10), bool)
    quarter[:5, :5] = True                # 25 of 100 pixels
    empty = np.zeros((10, 10), bool)
    test = [pair(tmp_path, "q", quarter), pair(tmp_path, "e", empty)]
    mean = np.zeros(baselines.GRID, np.float32)
    mean[: baselines.GRID[0] // 2, : baselines.GRID[1] // 2] = 0.8   # the top-left quarter
    dice = baselines.baseline_dice(test, mean)
    # all background: 0 on the quarter, 1 on the empty image (both empty)
    assert dice["all_background"] == pytest.approx(0.5)
    # all foreground: 2*25 / (25 + 100) = 0.4 on the quarter, 0 on the empty image
    assert dice["all_foreground"] == pytest.approx(0.2)
    # the mean mask above 0.5 is exactly the top-left quarter: 1 on the quarter, 0 on empty
    assert dice["mean_mask"] == pytest.approx(0.5)
