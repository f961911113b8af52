"""Hostile files through every reader (docs/trust.md "Hostile files"): each is refused from what
its header vouches for, in one line naming what it is, before a reader spends the seconds or
gigabytes it asks for; and the cases a hand-made mask breaks."""
from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from bombs import (
    jpeg_with_scans,
    saved_as,
    tiff_inflating_strip,
    tiff_of,
    tiff_tile_bomb,
    tiff_zip_bomb,
)
from PIL import Image

from unet.data.check import check_image, check_mask
from unet.data.pairs import load_mask
from unet.images.formats import UnreadableImage, read_tiff
from unet.images.reading import load_image, read_for_model, read_image
from unet.labels import classes
from unet.labels.masks import compact_labels, mask_says


def readers(path):
    """Every reader a file of a folder or a request meets: predict's and serving's, training's,
    the data check's image and mask checks, and the mask reader."""
    data = path.read_bytes()
    return {
        "read_image (predict, serving)": lambda: read_image(data),
        "read_for_model (predict, serving)": lambda: read_for_model(data, (64, 64)),
        "load_image (training, evaluate)": lambda: load_image(path),
        "load_mask (training)": lambda: load_mask(path),
    }


def refused_quickly(call, match: str) -> float:
    """Seconds the call took to raise UnreadableImage matching `match`; also its peak of
    numpy/python allocations (tracemalloc), which must stay small."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(UnreadableImage, match=match) as refused:
            call()
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(refused.value)
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MB allocated before the refusal"
    return took


@pytest.mark.parametrize("make,match", [
    (tiff_zip_bomb, r"strip of \d+ bytes for 256 bytes of pixels"),
    (tiff_tile_bomb, r"tiles of \(32768, 32768\) are larger than its 16x16 image"),
    (tiff_inflating_strip, r"strip inflates past its 65536 bytes of pixels"),
    (lambda: jpeg_with_scans(2000), r"a JPEG of 2000 scans \(at most 64\)"),
    (lambda: tiff_of(np.zeros((16, 16, 1000), np.uint8), photometric="minisblack",
                     planarconfig="contig"),
     r"a TIFF of 1000 channels"),
    (lambda: tiff_of(np.zeros((2, 16, 16, 3), np.uint8), imagej=True),
     r"axes CYXS\) is a stack or a volume"),
], ids=["tiff-zip-bomb", "tiff-tile-bomb", "tiff-inflating-strip", "jpeg-2000-scans",
        "tiff-1000-samples", "imagej-cyxs"])
def test_a_bomb_is_refused_by_every_reader_from_its_header(make, match, tmp_path):
    path = tmp_path / "x.tif"
    path.write_bytes(make())
    for name, call in readers(path).items():
        assert refused_quickly(call, match) < 1.0, name
    size, findings = check_image(path)
    assert size is None and [f.kind for f in findings] == ["unreadable_image"]
    assert [f.kind for f in check_mask(path, (16, 16), True)] == ["unreadable_mask"]


def test_the_same_files_made_honest_are_read(tmp_path):
    """What the bombs imitate reads: a deflate TIFF, a tiled one, a progressive JPEG of the
    usual 10 scans, an RGB planar TIFF, a grey+alpha one."""
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x, y, x + y], axis=-1).astype(np.uint8)
    assert read_image(tiff_of(rgb, compression="zlib", rowsperstrip=16)).shape == (64, 96, 3)
    assert np.array_equal(read_tiff(tiff_of(rgb, compression="zlib", tile=(32, 32))), rgb)
    assert np.array_equal(read_tiff(tiff_of(np.moveaxis(rgb, -1, 0), photometric="rgb",
                                            planarconfig="separate")), rgb)
    assert read_image(jpeg_with_scans(10, (96, 64))).shape == (64, 96, 3)
    assert read_image(tiff_of(rgb[..., :2], photometric="minisblack",
                              extrasamples=[2])).shape == (64, 96, 3)


def test_a_float64_tiff_for_a_model_without_a_window_is_refused_before_decoding():
    """50 MP of float64 (400 MB of samples, the file zlib-squeezed to under 1 MB): refused by
    its header's dtype, nothing decoded; with a window it would be read."""
    data = tiff_of(np.zeros((5000, 10000), np.float64), compression="zlib")
    assert len(data) < 2_000_000
    took = refused_quickly(lambda: read_image(data), r"a float64 image, and this model has no "
                                                     r"intensity window")
    assert took < 1.0


@pytest.mark.parametrize("fmt,named", [("BMP", "BMP"), ("WEBP", "WebP"), ("ICO", "ICO"),
                                       ("EPS", "PostScript"), ("GIF", "GIF")])
def test_another_format_named_png_is_refused_by_name_for_images(fmt, named, tmp_path):
    """One allow-list: images are JPEG, PNG or TIFF on every path (training too: before, these
    trained silently and were refused at predict); EPS never reaches PIL's Ghostscript plugin."""
    path = tmp_path / "x.png"
    path.write_bytes(saved_as(fmt))
    for call in (lambda: load_image(path), lambda: read_image(path.read_bytes())):
        with pytest.raises(UnreadableImage, match=rf"^a {named}.* file: only JPEG, PNG or "
                                                  r"TIFF files are read \(convert it\)$"):
            call()
    size, findings = check_image(path)
    assert size is None and findings[0].kind == "unreadable_image" and named in findings[0].detail


def test_masks_may_also_be_gif_as_carvana_keeps_them_but_not_bmp(tmp_path):
    gif, bmp = tmp_path / "a_mask.gif", tmp_path / "b_mask.png"
    mask = np.zeros((12, 16), np.uint8)
    mask[3:9, 4:12] = 255
    Image.fromarray(mask).save(gif)
    Image.fromarray(mask).save(bmp, format="BMP")
    assert load_mask(gif).sum() == 48
    assert check_mask(gif, (16, 12), True) == []
    with pytest.raises(UnreadableImage, match=r"^a BMP file: only PNG, GIF, JPEG or TIFF"):
        load_mask(bmp)


def test_a_label_mask_with_a_huge_top_value_costs_its_labels_not_its_top():
    """A 320-byte int32 mask holding labels {1, 2, 3, 50000000} (before: 5.4 s and +1.9 GB in
    find_objects; top 2e9: MemoryError): renumbered before any per-label work."""
    values = np.zeros((8, 10), np.int32)
    values[0:3, 0:3], values[5:8, 0:3], values[0:3, 6:9], values[5:8, 6:10] = 1, 2, 3, 50_000_000
    for top in (50_000_000, 2_000_000_000):
        values[5:8, 6:10] = top
        tracemalloc.start()
        started = time.perf_counter()
        assert compact_labels(values) == 4 and mask_says(values) == "instances"
        took, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert took < 0.5 and peak < 10 * 2**20, (top, took, peak)


def test_a_black_and_white_palette_mask_is_binary_not_class_0_plus_void(tmp_path):
    """Indices 0 and 255 of a black/white palette (before: read as class 0 plus void 255, every
    object pixel left out, and split_data passed)."""
    path = tmp_path / "x_mask.png"
    mask = Image.fromarray(np.where(np.arange(80).reshape(8, 10) % 10 > 4, 255, 0)
                           .astype(np.uint8)).convert("P")
    mask.putpalette([0, 0, 0] + [0, 0, 0] * 254 + [255, 255, 255])
    mask.save(path)
    with Image.open(path) as opened:
        assert opened.mode == "P" and set(np.unique(np.asarray(opened))) == {0, 255}
    detected = classes.detect([path])
    assert detected.ignore is None and detected.count == 2
    assert load_mask(path).sum() == 40
    voc = Image.open(path)
    voc.putpalette([0, 0, 0] + [0, 0, 0] * 254 + [224, 224, 192])    # VOC's void colour
    voc.save(tmp_path / "voc_mask.png")
    assert classes.detect([tmp_path / "voc_mask.png"]).ignore == 255
