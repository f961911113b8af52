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


def test_colour_images_get_colour_augmentation_and_grey_images_do_not(tmp_path):
    """The plan's appearance follows the data: hue, channel shuffle and greyscale for colour
    photos; brightness and contrast only for grey images, even when saved as RGB JPEGs."""
    from unet.fingerprint import has_colour
    from unet.planning import make_plan
    from unet.config import read_params
    from unet.fingerprint import Machine, Speed
    rng = np.random.default_rng(0)
    grey = (rng.random((64, 96)) * 255).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(tmp_path / "grey_rgb.jpg", quality=90)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    colour = grey[..., None] * np.array([1.0, 0.6, 0.2])
    Image.fromarray(colour.astype(np.uint8)).save(tmp_path / "colour.jpg", quality=90)
    assert not has_colour(tmp_path / "grey_rgb.jpg") and not has_colour(tmp_path / "grey.png")
    assert has_colour(tmp_path / "colour.jpg")
    rules, machine = read_params()["plan"], Machine("cpu", False, 2)
    for image, expected in (("colour.jpg", "colour"), ("grey_rgb.jpg", "grey")):
        mask = tmp_path / "m.png"
        Image.fromarray((grey > 128).astype(np.uint8) * 255).save(mask)
        pairs = [Pair("x", tmp_path / image, mask)] * 4
        plan = make_plan(fingerprint(pairs, pairs), machine, 5, {"epochs": 2}, rules)
        assert plan.values["appearance"] == expected
        assert plan.values["patience"] == 0                      # the schedule is spent
        assert plan.values["average_steps"] == 10                # 5% of 4 steps, at least 10
