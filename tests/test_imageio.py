"""Images as people keep them: TIFF (8/16-bit, float, grey or RGB), grey/RGBA and 16-bit PNG,
decoded to the values they hold; 16-bit and float values through the training images'
intensity window, stored with the model and applied alike by evaluate, predict and serving."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from conftest import TINY, mlflow_run, only
from PIL import Image

from unet.data.check import validate_folder
from unet.data.pairs import Pair, load_mask
from unet.evaluation.scoring import evaluate_pairs
from unet.images import intensity
from unet.images.formats import UnreadableImage, read_deep, read_raw, read_tiff
from unet.images.reading import load_image, read_for_model, read_image
from unet.inference import rle
from unet.inference.segmenter import Segmenter
from unet.inference.streaming import PngSink, predict_stream
from unet.network.model import UNet
from unet.planning.fingerprint import fingerprint
from unet.tracking.serving import as_image, read_cell

# A 16-bit image whose values map through WINDOW to values computed by hand:
# (v - 1000) * 255 / 2000, rounded half to even, clipped to 0..255.
DEEP = np.array([[500, 1000, 1500], [2000, 3000, 4000]], np.uint16)
WINDOW = (1000.0, 3000.0)
DEEP_8BIT = np.array([[0, 0, 64], [128, 255, 255]], np.uint8)   # 63.75 -> 64, 127.5 -> 128


def tiff_bytes(values: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, values, **options)
    return out.getvalue()


@pytest.mark.parametrize("values,options", [
    (np.arange(24, dtype=np.uint8).reshape(4, 6), {}),
    (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000, {}),
    (np.arange(72, dtype=np.uint16).reshape(4, 6, 3) * 900, {}),
    (np.arange(72, dtype=np.uint8).reshape(4, 6, 3), {"compression": "zlib"}),
    (np.linspace(-1, 2, 24, dtype=np.float32).reshape(4, 6), {}),
])
def test_each_tiff_decodes_to_its_values_and_dtype(values, options):
    decoded = read_tiff(tiff_bytes(values, **options))
    assert decoded.dtype == values.dtype and np.array_equal(decoded, values)


@pytest.mark.parametrize("values", [np.arange(64, dtype=np.uint16).reshape(8, 8) * 900,
                                    np.arange(192, dtype=np.uint8).reshape(8, 8, 3)])
def test_an_lzw_tiff_decodes_without_imagecodecs(values):
    lzw = io.BytesIO()
    Image.fromarray(values).save(lzw, "TIFF", compression="tiff_lzw")
    assert np.array_equal(read_tiff(lzw.getvalue()), values)


def test_masks_decode_raw_with_their_dtype_and_tiff_masks_read_as_pngs_do(tmp_path):
    labels = np.zeros((6, 8), np.uint16)
    labels[1:3, 1:4], labels[4:6, 5:8] = 1, 300                  # instance labels
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    Image.fromarray(labels).save(tmp_path / "labels.png")         # the same as 16-bit PNG
    palette = Image.fromarray(np.array([[0, 2], [1, 2]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    for name in ("labels.tif", "labels.png"):
        raw = read_raw(tmp_path / name)
        assert raw.dtype == np.uint16 and np.array_equal(raw, labels), name
    assert np.array_equal(read_raw(tmp_path / "palette.png"), [[0, 2], [1, 2]])
    # load_mask's rule (above half the top value) is the same whatever the file format
    assert np.array_equal(load_mask(tmp_path / "labels.tif"), load_mask(tmp_path / "labels.png"))
    assert load_mask(tmp_path / "labels.tif").sum() == 6


def test_a_planar_rgb_tiff_comes_back_channels_last():
    rgb = np.arange(72, dtype=np.uint16).reshape(4, 6, 3)
    planar = tiff_bytes(np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(read_tiff(planar), rgb)


def test_a_stack_is_refused_with_one_line():
    with pytest.raises(UnreadableImage, match=r"stack or a volume, not one 2-D image: save "
                                              r"each plane as its own file"):
        read_tiff(tiff_bytes(np.zeros((3, 8, 8), np.uint16), photometric="minisblack"))


def test_16bit_tiff_and_png_map_through_the_window_to_known_values(tmp_path):
    tifffile.imwrite(tmp_path / "deep.tif", DEEP)
    Image.fromarray(DEEP).save(tmp_path / "deep.png")               # 16-bit grey PNG (I;16)
    expected = np.repeat(DEEP_8BIT[..., None], 3, axis=2)
    for name in ("deep.tif", "deep.png"):
        path = tmp_path / name
        assert np.array_equal(load_image(path, window=WINDOW), expected), name
        assert np.array_equal(read_image(path, window=WINDOW), expected), name
        assert np.array_equal(read_image(path.read_bytes(), window=WINDOW), expected), name
        image, size = read_for_model(path, (2, 3), window=WINDOW)
        assert np.array_equal(image, expected) and size == (2, 3), name
    # A model without a window (trained on 8-bit images) keeps the rule of before: the top byte.
    assert np.array_equal(load_image(tmp_path / "deep.tif")[..., 0], DEEP >> 8)


def test_float_tiff_maps_through_the_window_and_needs_one():
    values = np.array([[0.0, 0.25], [0.5, 1.5]], np.float32)
    data = tiff_bytes(values)
    assert np.array_equal(read_image(data, window=(0.0, 1.0))[..., 1],
                          np.array([[0, 64], [128, 255]], np.uint8))    # 63.75, 127.5 rounded
    with pytest.raises(UnreadableImage, match="float32 image, and this model has no intensity "
                                              "window"):
        read_image(data)


def test_8bit_images_keep_their_path_whatever_the_window(tmp_path):
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    rgba = np.dstack([grey, grey[::-1], grey, np.full_like(grey, 7)])
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey).save(tmp_path / "grey.jpg", quality=95)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)
    tifffile.imwrite(tmp_path / "grey.tif", grey)
    for name in ("grey.png", "rgba.png", "grey.jpg"):
        with Image.open(tmp_path / name) as image:
            expected = np.asarray(image.convert("RGB"))
        assert np.array_equal(load_image(tmp_path / name, window=WINDOW), expected), name
    assert np.array_equal(load_image(tmp_path / "rgba.tif", window=WINDOW), rgba[..., :3])
    assert np.array_equal(load_image(tmp_path / "grey.tif", window=WINDOW),
                          np.repeat(grey[..., None], 3, axis=2))


def test_the_window_is_the_percentiles_of_the_training_images(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.arange(1000, dtype=np.uint16).reshape(20, 50))
    tifffile.imwrite(tmp_path / "b.tif", np.arange(1000, dtype=np.uint16).reshape(20, 50)[::-1])
    Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / "c.png")   # 8-bit: not used
    paths = [tmp_path / n for n in ("a.tif", "b.tif", "c.png")]
    # numpy's linear percentiles of 0..999 (each twice): 0.005 * 999 and 0.995 * 999
    assert intensity.measure(paths, read_deep) == pytest.approx((4.995, 994.005))
    assert intensity.measure(paths[2:], read_deep) is None
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.full((4, 4), 700, np.uint16))
    assert intensity.measure([flat], read_deep) == (700.0, 701.0)


def test_the_pixel_limit_refuses_a_tiff_by_its_header(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    tifffile.imwrite(photos / "huge.tif", np.zeros((12000, 12000), np.uint8),
                     compression="zlib")                          # ~140 KB, 144 MP declared
    tifffile.imwrite(photos / "small.tif", DEEP)
    # Decoding is not even tried: the refusal comes from the header alone.
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray",
                        lambda *a, **k: pytest.fail("decoded an image over the limit"))
    with pytest.raises(UnreadableImage) as refused:
        read_image((photos / "huge.tif").read_bytes())
    assert str(refused.value) == ("12000x12000 pixels is over the limit of 100 megapixels "
                                  "per image")
    monkeypatch.undo()
    torch.manual_seed(0)
    segmenter = Segmenter(UNet(features=(4, 8)), (8, 8), window=WINDOW)
    outcome = predict_stream(segmenter, sorted(photos.iterdir()), PngSink(tmp_path / "out"),
                             max_pixels=100_000_000)
    assert outcome.predicted == 1
    assert outcome.failed == [(photos / "huge.tif", "12000x12000 pixels is over the limit of "
                                                    "100 megapixels per image")]


def test_serving_takes_tiff_bytes_raw_or_base64():
    data = tiff_bytes(DEEP)
    expected = np.repeat(DEEP_8BIT[..., None], 3, axis=2)
    assert np.array_equal(as_image(0, data, WINDOW), expected)
    assert np.array_equal(as_image(0, base64.b64encode(data), WINDOW), expected)
    image, size = read_cell(0, base64.b64encode(data), (8, 8), WINDOW)
    assert np.array_equal(image, expected) and size == (2, 3)


@pytest.mark.parametrize("image_ext,mask_ext", [(".tif", ".png"), (".png", ".tif")])
def test_tiff_images_and_masks_pair_whatever_the_other_extension(tmp_path, image_ext, mask_ext):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(4):
        image = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * (i + 1)) % 4000
        mask = np.zeros((48, 64), np.uint8)
        mask[10:30, 5 + i:40] = 255
        if image_ext == ".tif":
            tifffile.imwrite(tmp_path / "images" / f"s{i}_1.tif", image)
            Image.fromarray(mask).save(tmp_path / "masks" / f"s{i}_1_mask.png")
        else:
            Image.fromarray(image).save(tmp_path / "images" / f"s{i}_1.png")
            tifffile.imwrite(tmp_path / "masks" / f"s{i}_1_mask.tif", mask.astype(np.uint16) * 257)
    report = validate_folder(tmp_path / "images", tmp_path / "masks", "_mask", mask_ext)
    assert report.problems == [] and len(report.pairs) == 4
    assert {f.kind for f in report.notes} == {"16bit_image"}
    mask = load_mask(report.pairs[0].mask)
    assert mask.dtype == np.uint8 and mask.sum() == 20 * 35
    assert fingerprint(report.pairs, []).median_height == 48
    assert not fingerprint(report.pairs, []).colour


def test_split_data_passes_a_folder_of_tiff_images_with_png_masks(tracking_uri, tmp_path):
    from tools.datasets import fluorescence_folder, png_copy
    fluorescence_folder(tmp_path / "fluo", 12, seed=1, binary_labels=True)   # 3 slides
    png_copy(tmp_path / "fluo", tmp_path / "png")
    (tmp_path / "fluo" / "masks").rename(tmp_path / "fluo" / "tif_masks")
    (tmp_path / "png" / "masks").rename(tmp_path / "fluo" / "masks")     # .tif with .png masks
    result = mlflow_run("split_data", {"data_dir": str(tmp_path / "fluo"), "image_dir": "images",
                                       "mask_dir": "masks", "mask_ext": ".png"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.metrics["data_pairs_ok"] == 12 and run.data.metrics["data_bad_files"] == 0
    assert run.data.metrics["data_16bit_image"] == 12


def test_the_window_travels_in_the_state_and_predict_gives_evaluates_mask(tmp_path):
    torch.manual_seed(0)
    segmenter = Segmenter(UNet(features=(4, 8)), (16, 16), window=(300.0, 3000.0))
    state = segmenter.to_state()
    assert state["window"] == [300.0, 3000.0]
    loaded = Segmenter.from_state(state)
    assert loaded.window == (300.0, 3000.0)
    del state["window"]                                     # a model logged before windows
    assert Segmenter.from_state(state).window is None

    from tools.datasets import fluorescence_folder
    folder = fluorescence_folder(tmp_path / "fluo", 4, seed=3, size=(24, 32), binary_labels=True)
    pairs = [Pair(p.stem, p, folder / "masks" / f"{p.stem}_mask.tif")
             for p in sorted((folder / "images").glob("*.tif"))]
    probs = np.concatenate([p.ravel() for p in loaded.probabilities(
        load_image(p.image, window=loaded.window) for p in pairs)])
    threshold = float(np.median(probs))           # untrained: a cut that gives both values
    evaluate_pairs(loaded, pairs, threshold, out_dir=tmp_path / "evaluated")
    predict_stream(loaded, [p.image for p in pairs], PngSink(tmp_path / "predicted"), threshold)
    unwindowed = Segmenter.from_state(state)     # the same weights without the window
    predict_stream(unwindowed, [p.image for p in pairs], PngSink(tmp_path / "plain"), threshold)
    differ = 0
    for pair in pairs:
        name = f"{pair.stem}_mask.png"
        evaluated = np.asarray(Image.open(tmp_path / "evaluated" / "masks" / name))
        predicted = np.asarray(Image.open(tmp_path / "predicted" / name))
        assert evaluated.shape == (24, 32) and np.array_equal(predicted, evaluated), name
        differ += int((np.asarray(Image.open(tmp_path / "plain" / name)) != predicted).sum())
    assert 0 < np.mean(probs > threshold) < 1 and differ > 0     # the window is what differs


def test_the_logged_model_carries_the_window_and_serves_tiff_as_in_process(tracking_uri):
    from unet.tracking import models
    torch.manual_seed(0)
    segmenter = Segmenter(UNet(features=(4, 8)), (16, 16), window=WINDOW)
    with mlflow.start_run():
        uri = models.log_model(segmenter, np.full((8, 8, 3), 128, np.uint8))
    assert mlflow.models.get_model_info(uri).metadata["intensity_window"] == list(WINDOW)
    loaded = models.load_segmenter(uri)
    assert loaded.window == WINDOW
    rng = np.random.default_rng(0)
    deep = rng.integers(500, 4000, (20, 30)).astype(np.uint16)
    data = tiff_bytes(deep)
    probs = next(loaded.probabilities([read_image(data, window=WINDOW)]))
    threshold = float(np.median(probs))
    expected = next(loaded.masks([read_image(data, window=WINDOW)], threshold))
    served = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [data]}),
                                                   params={"threshold": threshold})
    mask = np.asarray(Image.open(io.BytesIO(served["mask"][0]))) // 255
    assert 0 < expected.mean() < 1 and np.array_equal(mask, expected)
    # format rle: what predict's Spark engine asks the model for, row by row
    rows = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [data]}),
                                                 params={"threshold": threshold, "format": "rle"})
    assert rows["error"][0] == "" and rows["rle_mask"][0] == rle.encode(expected)


def test_the_fluorescence_generator_is_deterministic_and_labels_each_nucleus(tmp_path):
    from tools.datasets import fluorescence_folder, png_copy
    a = fluorescence_folder(tmp_path / "a", 4, seed=5)
    b = fluorescence_folder(tmp_path / "b", 4, seed=5)
    for path in sorted((a / "images").iterdir()) + sorted((a / "masks").iterdir()):
        assert path.read_bytes() == (b / path.parent.name / path.name).read_bytes()
    image = tifffile.imread(a / "images" / "s000_01.tif")
    labels = tifffile.imread(a / "masks" / "s000_01_mask.tif")
    assert image.dtype == labels.dtype == np.uint16 and image.shape == (64, 64)
    found = np.unique(labels)
    assert found[0] == 0 and np.array_equal(found[1:], np.arange(1, len(found)))   # 1..N
    assert len(found) - 1 >= 2
    assert 150 < np.median(image[labels == 0]) < 500 and np.median(image[labels > 0]) > 600
    png = png_copy(a, tmp_path / "png")
    mask = np.asarray(Image.open(png / "masks" / "s000_01_mask.png"))
    assert np.array_equal(mask, np.where(labels > 0, 255, 0))
    assert np.asarray(Image.open(png / "images" / "s000_01.png")).dtype == np.uint8


def dice_of(folder, layout: dict[str, str], tracking_uri: str, **train: str):
    """(test Dice, train run, evaluate run) of split_data -> train -> evaluate on `folder` with
    fixed small settings (and the train parameters `train`)."""
    split = mlflow_run("split_data", {"data_dir": str(folder), **layout, "seed": "3"},
                       tracking_uri)
    assert split.returncode == 0, split.stderr[-3000:]
    split_id = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string="tags.`mlflow.project.entryPoint` = "
                                                "'split_data'", order_by=["start_time DESC"]
                                  )[0].info.run_id
    train = mlflow_run("train", {**only(TINY, "train"), "split_run_id": split_id,
                                 "image_height": "64", "image_width": "64", "epochs": "6",
                                 "features": "8,16,32", "lr": "3e-3", "seed": "1", **train},
                       tracking_uri)
    assert train.returncode == 0, train.stderr[-3000:]
    train_run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                   filter_string="tags.`mlflow.project.entryPoint` = 'train'",
                                   order_by=["start_time DESC"])[0]
    evaluate = mlflow_run("evaluate", {"train_run_id": train_run.info.run_id}, tracking_uri)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    run = mlflow.search_runs(search_all_experiments=True, output_format="list",
                             filter_string="tags.`mlflow.project.entryPoint` = 'evaluate'",
                             order_by=["start_time DESC"])[0]
    return run.data.metrics["test_dice"], train_run, run


@pytest.mark.slow
def test_a_16bit_tiff_folder_trains_as_well_as_its_8bit_png_copy(tracking_uri, tmp_path):
    """The acceptance of issue 19 (images): 24 fields of 64x64, 16-bit TIFF images with
    16-bit TIFF instance labels (every nonzero label foreground: a foreground model, output=mask,
    as its PNG copy's), given only their layout."""
    from tools.datasets import (
        CELLS_LAYOUT,
        FLUORESCENCE_LAYOUT,
        fluorescence_folder,
        png_copy,
    )
    fluo = fluorescence_folder(tmp_path / "fluo", 24, seed=11)
    png = png_copy(fluo, tmp_path / "png")
    deep, train, evaluate = dice_of(fluo, FLUORESCENCE_LAYOUT, tracking_uri, output="mask")
    window = train.data.tags["intensity_window"]
    low, high = (float(v) for v in window.split(".."))
    assert 100 < low < 400 and 2500 < high < 5000          # measured on the 16-bit values
    card = mlflow.MlflowClient().get_model_version(evaluate.data.tags["model_name"],
                                                   evaluate.data.tags["model_version"])
    assert f"intensity window {window}," in card.description      # the model card
    # predict (the real entry point) applies the model's window as evaluate did
    out = tmp_path / "predicted"
    predict = mlflow_run("predict", {"model_uri": train.data.tags["model_uri"],
                                     "input_dir": str(fluo / "images"), "output_dir": str(out)},
                         tracking_uri)
    assert predict.returncode == 0, predict.stderr[-3000:]
    tested = mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                 artifact_path="predictions/masks",
                                                 dst_path=str(tmp_path / "evaluated"))
    names = sorted(p.name for p in Path(tested).iterdir())
    assert len(names) >= 4
    for name in names:
        assert np.array_equal(np.asarray(Image.open(out / name)),
                              np.asarray(Image.open(Path(tested) / name))), name
    flat, plain, _ = dice_of(png, CELLS_LAYOUT, tracking_uri)
    print(f"\ntest Dice: 16-bit TIFF {deep:.4f} (window {window}), 8-bit PNG {flat:.4f}")
    assert plain.data.tags["intensity_window"] == intensity.describe(None) and flat > 0.8
    assert abs(deep - flat) <= 0.01
