"""The data fingerprint the plan is derived from, and the rule of predict_scale on it."""
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unet.data.pairs import Pair
from unet.planning.fingerprint import Fingerprint, fingerprint


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
    from unet.config.pipeline import read_params
    from unet.planning.fingerprint import Machine, has_colour
    from unet.planning.plan import make_plan
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


def stats(mask: np.ndarray) -> np.ndarray:
    """The objects of a 0/1 mask as unet.planning.fingerprint reads them: (N, 5) x, y, w, h,
    area."""
    import cv2
    _, _, rows, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return rows[1:]


def disc(size, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[0:size[0], 0:size[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)


def test_a_mask_frames_its_object_when_it_is_whole_and_a_quarter_of_a_side():
    from unet.planning.fingerprint import frames_object
    # 100 x 200: a disc of radius 20 spans 41 px, 41% of the height (>= 25%): framed.
    assert frames_object(stats(disc((100, 200), (50, 100), 20)), (100, 200))
    # Radius 12: 25 px of 100 is 25% of the height: framed; radius 11 (23 px): too small.
    assert frames_object(stats(disc((100, 200), (50, 100), 12)), (100, 200))
    assert not frames_object(stats(disc((100, 200), (50, 100), 11)), (100, 200))
    # The large disc whole, but a speck-sized object (>= 4 px) cut by the right border.
    cut = disc((100, 200), (50, 100), 20) | disc((100, 200), (50, 199), 2)
    assert not frames_object(stats(cut), (100, 200))
    # The large disc itself touching the top border.
    assert not frames_object(stats(disc((100, 200), (20, 100), 20)), (100, 200))


def test_the_rule_counts_framed_masks_and_decides_at_half():
    from unet.planning.sizing import scale_rule
    fp = Fingerprint(32, 8, 160, 240, 0.2, 80.0)
    assert scale_rule(fp)[0] == "fit"                      # no object: the data cannot tell
    assert "no object in the sampled masks" in scale_rule(fp)[1]
    mode, why = scale_rule(dataclasses.replace(fp, object_masks=30, framed_masks=15))
    assert mode == "fit" and why.startswith("photos: 15 of 30 sampled masks frame their object")
    mode, why = scale_rule(dataclasses.replace(fp, object_masks=30, framed_masks=14))
    assert mode == "native" and why.startswith("fields, tiles or scans: 14 of 30 sampled masks")


def folder_pairs(images: Path, masks: Path, suffix: str, ext: str) -> list[Pair]:
    return [Pair(p.stem, p, masks / f"{p.stem}{suffix}{ext}") for p in sorted(images.iterdir())]


def test_generated_photos_fit_and_generated_fields_keep_their_scale(tmp_path):
    """The rule on every kind of generated folder (small sizes where the kind allows), each
    mask read as its split reads it: the measured share of framed masks and the decision."""
    from tools import datasets
    from unet.data import synthetic
    from unet.labels.classes import Classes, reader
    from unet.planning.sizing import scale_rule

    binary, instances = reader(Classes.numbered(2)), reader(Classes.numbered(2), None, True)
    carvana = ("train", "train_masks", "_mask", ".gif")
    cells = ("images", "masks", "_mask", ".png")
    voc = ("JPEGImages", "SegmentationClass", "", ".png")
    synthetic.generate(tmp_path / "cars", 32, 160, 240, seed=42)
    synthetic.generate(tmp_path / "parts", 32, 160, 240, seed=42, classes=4)
    datasets.carvana_folder(tmp_path / "carvana", 16, 2026, size=(320, 480))
    datasets.carvana_folder(tmp_path / "carvana_parts", 16, 2026, size=(320, 480), parts=True)
    datasets.voc_folder(tmp_path / "voc", 32, 3, classes=2)
    datasets.cells_folder(tmp_path / "cells", 16, 7)
    datasets.fluorescence_folder(tmp_path / "fluorescence", 32, 3)
    datasets.tiled_field_folder(tmp_path / "tiles", fields=3, held_out=1, seed=7)
    datasets.large_folder(tmp_path / "large", images=4, seed=1, size=(600, 800))
    folders = {   # name: (layout, how its split reads a mask, framed / with objects, decision)
        "cars": (carvana, binary, (31, 32), "fit"),
        "parts": (carvana, reader(Classes.numbered(4)), (31, 32), "fit"),
        "carvana": (carvana, binary, (16, 16), "fit"),
        "carvana_parts": (("train", "train_masks", "_mask", ".png"),
                          reader(Classes.numbered(3)), (16, 16), "fit"),
        "voc": (voc, reader(Classes.numbered(3), 255), (29, 32), "fit"),
        "cells": (cells, binary, (0, 16), "native"),
        "fluorescence": (("images", "masks", "_mask", ".tif"), instances, (2, 32), "native"),
        "tiles": (cells, binary, (1, 30), "native"),
        "large": (cells, binary, (0, 4), "native"),
    }
    measured = {}
    for name, (layout, read_mask, _, _) in folders.items():
        images, masks, suffix, ext = layout
        fp = fingerprint(folder_pairs(tmp_path / name / images, tmp_path / name / masks,
                                      suffix, ext), [], read_mask=read_mask)
        measured[name] = ((fp.framed_masks, fp.object_masks), scale_rule(fp)[0])
    assert measured == {name: (share, mode) for name, (_, _, share, mode) in folders.items()}
