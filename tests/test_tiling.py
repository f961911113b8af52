"""unet/inference/tiling.py and the Segmenter's scale: the grid and weights by hand, tiled equal to
whole where both fit, every image predicted at the model's scale."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet.inference import onnx_runtime, tiling
from unet.inference.segmenter import Segmenter
from unet.network.model import UNet
from unet.network.precision import choose_precision

FP32 = choose_precision("fp32", "cpu")


def test_offsets_cover_every_pixel_and_overlap_as_stated():
    # 100 pixels, tiles of 32, stride 16 (overlap 1/2): 0, 16, ..., 64 and the last at 68.
    assert tiling.offsets(100, 32, 16) == [0, 16, 32, 48, 64, 68]
    assert tiling.offsets(32, 32, 16) == [0]           # one tile fits: no overlap
    assert tiling.offsets(20, 32, 16) == [0]
    # Stride 24 (overlap 1/4): 0, 24, 48 and the last at 64 (overlap 16 with the one before).
    starts = tiling.offsets(96, 32, 24)
    assert starts == [0, 24, 48, 64]
    covered = np.zeros(96, int)
    for s in starts:
        covered[s:s + 32] += 1
    assert covered.min() == 1 and covered.tolist()[:24] == [1] * 24
    assert all(b - a <= 24 for a, b in zip(starts, starts[1:]))     # overlap >= 32 - 24


def test_grid_pads_to_the_step_and_never_takes_a_tile_larger_than_the_image():
    # 70 x 200 image, step 16: sides padded to 80 x 208; tiles of 64 x 64, stride 32.
    (th, tw), rows, cols = tiling.tile_grid((70, 200), (64, 64), (32, 32), 16)
    assert (th, tw) == (64, 64)
    assert rows == [0, 16]                    # 80 - 64 = 16: a multiple of the step
    assert cols == [0, 32, 64, 96, 128, 144]  # 208 - 64 = 144
    # A side smaller than the tile: one tile of the padded side (40 -> 48).
    (th, tw), rows, cols = tiling.tile_grid((40, 200), (64, 64), (32, 32), 16)
    assert (th, rows) == (48, [0])


def test_gaussian_weights_by_hand():
    # Tile 8: sigma 1, centre 3.5; the weight of pixel i is exp(-(i - 3.5)**2 / 2).
    g = tiling.gaussian(8)
    assert g.dtype == np.float32
    expected = [math.exp(-(i - 3.5) ** 2 / 2) for i in range(8)]
    assert np.allclose(g, expected, rtol=1e-6)
    assert g[0] == pytest.approx(math.exp(-6.125), rel=1e-6) and g[3] == g[4]
    # The 2-D map is the outer product; at a tile's corner exp(-6.125)**2.
    weights = np.outer(g, g)
    assert weights[0, 0] == pytest.approx(math.exp(-12.25), rel=1e-5)
    # Tile 64: sigma 8, the edge pixel at 31.5 / 8 sigmas: exp(-7.75) of the centre's.
    assert tiling.gaussian(64)[0] == pytest.approx(math.exp(-31.5 ** 2 / 128), rel=1e-5)


def test_blending_is_the_weighted_mean_of_the_covering_tiles_by_hand():
    # A "network" that predicts, for every pixel of a tile, the tile's column offset / 100
    # (read from a marker in the image): each pixel gets the Gaussian-weighted mean of the
    # offsets of the tiles covering it.
    image = np.zeros((8, 24, 3), np.uint8)
    image[..., 0] = np.arange(24)[None, :]

    def predict(tiles):
        return np.broadcast_to(tiles[:, :1, :1, 0].astype(np.float32) / 100,
                               tiles.shape[:3]).copy()

    probs = tiling.sliding_window(predict, image, (8, 16), (8, 8), step=8)
    # Columns: tiles at 0 and 8; column 12 is pixel 12 of the first tile, 4 of the second.
    g = tiling.gaussian(16)
    assert probs.shape == (8, 24)
    assert probs[3, 12] == pytest.approx((g[12] * 0 + g[4] * 0.08) / (g[12] + g[4]), rel=1e-5)
    assert probs[0, 2] == pytest.approx(0.0) and probs[0, 20] == pytest.approx(0.08)


def randomized(seed: int = 0, classes: int = 1) -> UNet:
    """An untrained, seeded 2-level U-Net with BatchNorm statistics away from (0, 1) and its
    head set so that its logits on a picture span about -4..4 (probabilities over most of
    (0, 1): a flat map would agree tiled or not)."""
    torch.manual_seed(seed)
    model = UNet(out_channels=classes, features=(4, 8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
        model.eval()
        from unet.images.transforms import to_input
        logits = model(torch.from_numpy(to_input(picture(64, 64, seed)[None])))
        low, high = torch.quantile(logits.flatten(), torch.tensor([0.05, 0.95]))
        factor = 8 / float(high - low)
        model.head.weight.mul_(factor)
        model.head.bias.mul_(factor).sub_(factor * float(low + high) / 2)
    return model


def picture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth blobs plus noise: content at every position, no two tiles alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3)).astype(np.uint8)
    import cv2
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return (0.8 * smooth + 0.2 * rng.integers(0, 256, (height, width, 3))).astype(np.uint8)


def away_from_tile_borders(size, segmenter: Segmenter, margin: int) -> np.ndarray:
    """(h, w) bool: pixels at least `margin` from every edge of a tile that lies inside the
    image (a tile's edge on the image's edge is where the whole image ends too)."""
    height, width = size
    (th, tw), rows, cols = tiling.tile_grid(size, segmenter.tile_size,
                                            segmenter.tile_stride, segmenter.step)
    near = np.zeros(size, bool)
    for start in rows:
        for edge in (start, start + th):
            if 0 < edge < height:
                near[max(0, edge - margin):edge + margin] = True
    for start in cols:
        for edge in (start, start + tw):
            if 0 < edge < width:
                near[:, max(0, edge - margin):edge + margin] = True
    return ~near


@pytest.mark.parametrize("tta,classes", [("none", 1), ("hflip", 1), ("none", 3)])
def test_tiled_equals_whole_image_away_from_tile_borders(tta, classes):
    names = ("background", "a", "b") if classes == 3 else None
    segmenter = Segmenter(randomized(classes=classes), (64, 64), FP32, tta=tta, classes=names,
                          scale=(1.0, 1.0))
    image = picture(320, 384, seed=1)              # multiples of 2**2
    # Tiles of twice the input, half of each shared with the next: rows 0, 64, ..., 192.
    assert (segmenter.tile_size, segmenter.tile_stride) == ((128, 128), (64, 64))
    assert segmenter.tiled((320, 384))
    tiled = next(segmenter.probabilities([image]))
    whole = segmenter.probabilities_resized(image[None])[0]
    assert tiled.shape == whole.shape == ((320, 384) if classes == 1 else (320, 384, 3))
    assert np.percentile(whole, 95) - np.percentile(whole, 5) > 0.8   # not a flat map
    # Away from tile borders: farther than the 2-level U-Net's reach (~20 px) minus a little.
    inside = away_from_tile_borders((320, 384), segmenter, margin=16)
    assert inside.mean() > 0.3
    assert np.abs(tiled - whole)[inside].max() <= 1e-3        # measured: < 4e-5
    # Near the tile borders the Gaussian weights keep it close too (measured: ~1e-3).
    assert np.abs(tiled - whole).max() <= 5e-3


def test_onnx_tiles_the_same_way(tmp_path):
    model = randomized()
    path = onnx_runtime.export(model, tmp_path / onnx_runtime.ONNX_FILE, (32, 48))
    reference = Segmenter(model, (32, 48), FP32, scale=(1.0, 1.0))
    exported = onnx_runtime.OnnxSegmenter(reference, path)
    image = picture(150, 230, seed=2)              # not multiples of the step: padded tiles
    expected = next(reference.probabilities([image]))
    got = next(exported.probabilities([image]))
    assert got.shape == expected.shape == (150, 230)
    assert np.abs(got - expected).max() <= 1e-4
    assert exported.tiled(exported.input_size(150, 230))


def test_every_image_is_predicted_at_the_models_scale(monkeypatch):
    # Trained at 32x48 on 128x192 images: scale 1/4. A 128x192 image lands on the input
    # exactly; a 512x768 one on 128x192 (larger than the 64x96 tile: tiled); a 40x40 one on
    # the network's smallest input (4 for 2 levels) at least: 10x10.
    segmenter = Segmenter(randomized(), (32, 48), FP32, scale=(0.25, 0.25))
    assert segmenter.input_size(128, 192) == (32, 48)
    assert segmenter.input_size(512, 768) == (128, 192)
    assert segmenter.input_size(40, 40) == (10, 10)
    assert segmenter.input_size(8, 8) == (4, 4)
    seen = []
    original = segmenter.probabilities_resized
    monkeypatch.setattr(segmenter, "probabilities_resized",
                        lambda batch: seen.append(batch.shape[:3]) or original(batch))
    images = [picture(128, 192, 3), picture(512, 768, 4), picture(128, 192, 5)]
    maps = list(segmenter.probabilities(images, batch_size=4))
    assert [m.shape for m in maps] == [(128, 192), (512, 768), (128, 192)]
    # The small ones first (before the large one, which flushes the batch), one at a time in
    # order; the large one in tiles of 64x96: rows 0, 32, 64; columns 0, 48, 96 -> 9 tiles,
    # 4 at a time.
    assert seen == [(1, 32, 48), (4, 64, 96), (4, 64, 96), (1, 64, 96), (1, 32, 48)]


def test_without_a_scale_every_image_is_resized_to_the_input_as_before():
    model = randomized()
    old = Segmenter(model, (32, 48), FP32)                  # a model logged before scales
    state = old.to_state()
    del state["scale"]                                       # as such a model's file holds
    loaded = Segmenter.from_state(state, FP32)
    assert loaded.scale is None and loaded.input_size(1000, 3000) == (32, 48)
    image = picture(300, 500, seed=6)
    expected = cv2_resize(loaded.probabilities_resized(
        cv2_resize(image, (32, 48))[None])[0], (300, 500))
    assert np.array_equal(next(loaded.probabilities([image])), expected)


def test_the_scale_travels_in_the_state():
    segmenter = Segmenter(randomized(), (32, 48), FP32, scale=(0.1, 0.125))
    loaded = Segmenter.from_state(segmenter.to_state(), FP32)
    assert loaded.scale == (0.1, 0.125) and loaded.input_size(1280, 1920) == (128, 240)
    assert loaded.predict_scale == "native"


def test_fit_resizes_every_image_to_the_input_and_travels_in_the_state():
    # A photo model: trained at 32x48 on 128x192 photos (scale 1/4), predict_scale fit.
    photos = Segmenter(randomized(), (32, 48), FP32, scale=(0.25, 0.25), predict_scale="fit")
    assert photos.input_size(1280, 1920) == photos.input_size(40, 40) == (32, 48)
    assert not photos.tiled(photos.input_size(8000, 8000))
    loaded = Segmenter.from_state(photos.to_state(), FP32)
    assert (loaded.predict_scale, loaded.scale) == ("fit", (0.25, 0.25))
    image = picture(512, 768, seed=7)
    expected = cv2_resize(loaded.probabilities_resized(
        cv2_resize(image, (32, 48))[None])[0], (512, 768))
    assert np.array_equal(next(loaded.probabilities([image])), expected)
    # States of before predict_scale: native where they have a scale, as they predicted.
    old = photos.to_state()
    del old["predict_scale"]
    assert Segmenter.from_state(old, FP32).predict_scale == "native"
    del old["scale"]
    assert Segmenter.from_state(old, FP32).predict_scale == "fit"


def test_the_mode_is_overridden_per_call_and_the_onnx_runtime_follows(tmp_path):
    model = randomized()
    segmenter = Segmenter(model, (32, 48), FP32, scale=(0.25, 0.25), predict_scale="fit")
    assert segmenter.with_predict_scale("auto") is segmenter
    assert segmenter.with_predict_scale("fit") is segmenter
    native = segmenter.with_predict_scale("native")
    assert native.input_size(512, 768) == (128, 192) and native.model is segmenter.model
    assert segmenter.predict_scale == "fit"                  # the model's own is untouched
    with pytest.raises(ValueError, match="predict_scale=huge: use native or fit"):
        segmenter.with_predict_scale("huge")
    unscaled = Segmenter(model, (32, 48), FP32)              # logged before scales: fit only
    with pytest.raises(ValueError, match="records no training scale"):
        unscaled.with_predict_scale("native")
    path = onnx_runtime.export(model, tmp_path / onnx_runtime.ONNX_FILE, (32, 48))
    exported = onnx_runtime.OnnxSegmenter(segmenter, path)
    assert exported.predict_scale == "fit" and exported.input_size(512, 768) == (32, 48)
    at_scale = exported.with_predict_scale("native")
    assert at_scale.runtime == "onnx" and at_scale.input_size(512, 768) == (128, 192)
    image = picture(160, 240, seed=8)           # 40x60 at scale: multiples of the step
    assert np.abs(next(at_scale.probabilities([image]))
                  - next(native.probabilities([image]))).max() <= 1e-4


def cv2_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    from unet.images.transforms import resize_image
    if array.dtype == np.uint8:
        return resize_image(array, size)
    return cv2.resize(array, size[::-1], interpolation=cv2.INTER_LINEAR)


def test_reading_ahead_holds_no_more_pixels_than_its_window(tmp_path, monkeypatch):
    from PIL import Image

    from unet.inference import streaming
    sizes = [(100, 100), (300, 300), (100, 100), (100, 100), (100, 100)]
    paths = []
    for i, (h, w) in enumerate(sizes):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(paths[-1])
    assert streaming.declared_pixels(paths[1]) == 90_000
    assert streaming.declared_pixels(tmp_path / "missing.png") == 0
    submitted = []                      # declared_pixels runs as a read is submitted
    declared = streaming.declared_pixels
    monkeypatch.setattr(streaming, "declared_pixels",
                        lambda path: submitted.append(path.name) or declared(path))
    seen = []
    for path, (image, size) in streaming.read_ahead(paths, (32, 32), workers=1, ahead=10,
                                                    ahead_pixels=25_000):
        seen.append((path.name, len(submitted)))
        assert size == sizes[int(path.stem)]
    # A window of 10 images but 25,000 pixels: the 90,000-pixel image is submitted with one
    # small one pending, which is handed over at once; it is handed over as the next is
    # submitted; then three small ones (30,000) are over: the first of them goes.
    assert seen == [("0.png", 2), ("1.png", 3), ("2.png", 5), ("3.png", 5), ("4.png", 5)]


@pytest.mark.parametrize("median,input_size", [((1280, 1918), (128, 192)), ((48, 72), (32, 48)),
                                               ((6000, 8000), (784, 1056)), ((333, 517), (96, 160))])
def test_a_folder_of_one_size_lands_exactly_on_the_training_input(median, input_size):
    from types import SimpleNamespace

    from unet.planning.fingerprint import Fingerprint
    from unet.tracking.training import training_scale
    cfg = SimpleNamespace(image_height=input_size[0], image_width=input_size[1])
    scale = training_scale(cfg, Fingerprint(10, 2, *median, 0.2, None))
    assert scale == (input_size[0] / median[0], input_size[1] / median[1])
    segmenter = Segmenter(randomized(), input_size, FP32, scale=scale)
    assert segmenter.input_size(*median) == input_size
    assert not segmenter.tiled(input_size)          # predicted whole, as before scales
