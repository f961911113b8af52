"""The data fingerprint the plan is derived from."""
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unet.data import Pair
from unet.fingerprint import fingerprint


def test_fingerprint_measures_sizes_and_object_diameters(tmp_path):
    pairs, shares = [], []
    for i, (height, width) in enumerate([(100, 150), (120, 160), (140, 170)]):
        image, mask = tmp_path / f"c_{i}.png", tmp_path / f"c_{i}_mask.png"
        Image.new("RGB", (width, height)).save(image)
        drawing = Image.new("L", (width, height), 0)
        # discs of radius 10 (area ~ pi 10^2 -> diameter ~ 20) and one speck of 1 pixel
        ImageDraw.Draw(drawing).ellipse([10, 10, 30, 30], fill=255)
        ImageDraw.Draw(drawing).ellipse([50, 50, 70, 70], fill=255)
        drawing.putpixel((90, 5), 255)
        drawing.save(mask)
        shares.append((np.asarray(drawing) > 0).mean())
        pairs.append(Pair(f"c_{i}", image, mask))
    fp = fingerprint(pairs, pairs[:1])
    assert (fp.train_images, fp.val_images) == (3, 1)
    assert (fp.median_height, fp.median_width) == (120, 160)
    disc = (np.asarray(drawing)[:40, :40] > 0).sum()             # one disc's pixels
    assert fp.small_object_px == pytest.approx(2 * math.sqrt(disc / math.pi))  # not the speck
    assert fp.foreground_fraction == pytest.approx(np.mean(shares))
