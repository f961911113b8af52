"""Masks beyond 0/255 and class indices: instance labels (every nonzero label is foreground)
and void (VOC's 255 borders, parameter ignore_index) left out of loss, metrics and baselines."""
from __future__ import annotations

import csv
import math
import os

import mlflow
import numpy as np
import pytest
import torch
from conftest import TINY, mlflow_run
from mlflow.tracking import MlflowClient
from PIL import Image, ImageDraw
from test_bad_input import error_lines, run_step

from tools.datasets import VOC_LAYOUT, voc_folder
from unet.data.check import validate_folder
from unet.data.pairs import Pair, load_mask
from unet.data.synthetic import render
from unet.errors import UserError
from unet.evaluation import baselines, label_quality
from unet.evaluation.metrics import SegmentationMetrics, confusion
from unet.labels.classes import Classes, detect, load_binary, load_class_map, reader
from unet.labels.masks import VOID, instance_objects, parse_ignore
from unet.training.losses import make_loss


def label_mask(count: int, side: int = 16) -> tuple[np.ndarray, int]:
    """(H, W) int32 labels 1..count on a grid, one object each: odd labels a 3x3 square, even
    ones 4x4 (a gap between them); and the object pixels: 9 per odd label, 16 per even one."""
    rows = math.ceil(count / side)
    labels = np.zeros((rows * 6, side * 6), np.int32)
    for value in range(1, count + 1):
        y, x = (value - 1) // side * 6, (value - 1) % side * 6
        size = 3 if value % 2 else 4
        labels[y:y + size, x:x + size] = value
    return labels, 9 * ((count + 1) // 2) + 16 * (count // 2)


def save_16bit(labels: np.ndarray, path) -> None:
    Image.fromarray(labels.astype(np.uint16)).save(path)      # mode I;16 PNG


def random_labels(seed: int, count: int, size: int = 128) -> np.ndarray:
    """Ellipses numbered 1..count, touching but not overlapping (a placement that would cover
    another object is drawn again), cut by the border: as nuclei labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    value = 1
    while value <= count:
        cy, cx = rng.uniform(0, size, 2)
        a, b = rng.uniform(2, 10, 2)
        inside = ((yy - cy) / b) ** 2 + ((xx - cx) / a) ** 2 <= 1
        if inside.any() and not labels[inside].any():
            labels[inside] = value
            value += 1
    return labels


def antialiased(seed: int, size: int = 128) -> np.ndarray:
    """A 0/255 mask of ellipses and boxes drawn at 4x and shrunk with Lanczos: edge levels."""
    rng = np.random.default_rng(seed)
    big = Image.new("L", (size * 4, size * 4), 0)
    draw = ImageDraw.Draw(big)
    for _ in range(5):
        x, y, r = rng.uniform(0, size * 4, 3) * (1, 1, 0.4)
        (draw.ellipse if rng.uniform() < 0.5 else draw.rectangle)(
            [x - r, y - 0.7 * r, x + r, y + 0.7 * r], fill=255)
    return np.asarray(big.resize((size, size), Image.LANCZOS))


# ---- instance labels -------------------------------------------------------------------------

def test_the_rule_tells_labels_from_antialiasing_and_classes():
    """The measurement the rule's constants come from (unet.labels.masks): generated label masks
    pass, antialiased 0/255 masks, Carvana-style cars and part masks do not."""
    assert all(instance_objects(random_labels(s, 60)) for s in range(12))
    assert not any(instance_objects(antialiased(s)) for s in range(12))
    for seed in range(8):
        _, car = render(100 + seed, seed % 4 + 1, 96, 144)
        _, parts = render(100 + seed, seed % 4 + 1, 96, 144, classes=4)
        assert instance_objects(np.asarray(car)) is None
        assert instance_objects(np.asarray(parts)) is None
    labels, _ = label_mask(200)
    assert instance_objects(labels) == 200


def test_labels_1_to_200_in_16_bits_are_all_foreground(tmp_path):
    labels, pixels = label_mask(200)
    for n in range(3):
        save_16bit(labels, tmp_path / f"m{n}.png")
    assert Image.open(tmp_path / "m0.png").mode == "I;16"
    found = detect(sorted(tmp_path.iterdir()))
    assert found.instances and found.count == 2 and found.ignore is None
    mask = reader(Classes.numbered(2), found.ignore, found.instances)(tmp_path / "m0.png")
    assert mask.dtype == np.uint8 and mask.sum() == pixels == 2500
    # every object, those labelled below max/2 = 100 included
    assert all(mask[labels == value].all() for value in range(1, 201))
    # the old reading thresholded at half the top label and lost labels 1..100
    assert load_mask(tmp_path / "m0.png").sum() == 9 * 50 + 16 * 50


def test_small_labels_are_labels_not_classes_by_the_folder(tmp_path):
    """8-bit labels 1..20 could pass as class indices mask by mask; the folder decides."""
    for n in range(4):
        labels, _ = label_mask(20 - n)
        Image.fromarray(labels.astype(np.uint8)).save(tmp_path / f"m{n}.png")
    found = detect(sorted(tmp_path.iterdir()))
    assert found.instances and found.count == 2
    labels, pixels = label_mask(20)
    assert load_binary(tmp_path / "m0.png", instances=True).sum() == pixels == 9 * 10 + 16 * 10


def instance_folder(root, count: int = 8) -> list[int]:
    """Images with 8-bit label masks of 30, 80, 130 or 180 objects (values far above 31, half
    of them below max/2); returns the object counts."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    counts = []
    for n in range(count):
        labels, _ = label_mask(30 + 50 * (n % 4))
        Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"s{n // 4}_{n}_mask.png")
        Image.fromarray(np.repeat((labels > 0).astype(np.uint8)[..., None] * 200, 3, 2)).save(
            root / "images" / f"s{n // 4}_{n}.png")
        counts.append(30 + 50 * (n % 4))
    return counts


def test_a_folder_of_instance_labels_is_reported(tmp_path):
    counts = instance_folder(tmp_path)
    report = validate_folder(tmp_path / "images", tmp_path / "masks", "_mask", ".png")
    assert report.instances and report.classes.count == 2 and not report.problems
    assert report.reading() == ["mask values read as instances (mask_kind=auto, from 8 masks: "
                                "8 instances)",
                                f"8 masks hold instance labels (up to {max(counts)} objects): "
                                f"every nonzero label read as foreground"]
    assert "READING (how the masks are read)\n  mask values read as instances" in report.to_text()
    assert report.counts["instance_labels"] == 8
    notes = {f.path.name: f.detail for f in report.notes}
    assert notes["s0_1_mask.png"] == "80 objects"


def test_antialiased_0_255_masks_keep_the_threshold(tmp_path):
    for n in range(3):
        Image.fromarray(antialiased(n)).save(tmp_path / f"aa{n}.png")
    found = detect(sorted(tmp_path.iterdir()))
    assert not found.instances and found.count == 2 and found.ignore is None
    grey = antialiased(0)
    read = reader(Classes.numbered(2))(tmp_path / "aa0.png")
    assert np.array_equal(read, (grey > grey.max() / 2).astype(np.uint8))
    assert np.array_equal(read, load_mask(tmp_path / "aa0.png"))


# ---- void ----------------------------------------------------------------------------------

def test_voc_void_borders_are_detected_as_void_not_classes(tmp_path):
    folder = voc_folder(tmp_path / "voc", 8, seed=3, classes=1)
    layout = {k: v for k, v in VOC_LAYOUT.items() if k != "image_dir" and k != "mask_dir"}
    report = validate_folder(folder / "JPEGImages", folder / "SegmentationClass", **layout)
    assert report.classes.count == 2 and report.ignore_index == 255 and not report.problems
    values = np.stack([np.asarray(Image.open(p)) for p in
                       sorted((folder / "SegmentationClass").iterdir())])
    assert set(np.unique(values)) == {0, 1, 255}
    share = (values == 255).mean()
    assert report.void_share == pytest.approx(share)
    assert report.reading()[1:] == [f"void value 255 found: {share:.1%} of pixels, left out of "
                                f"loss and metrics"]
    mask = load_binary(folder / "SegmentationClass" / "2026_000001.png", ignore=255)
    assert np.array_equal(mask, np.where(values[0] == 255, VOID, values[0]))
    two = voc_folder(tmp_path / "voc2", 8, seed=3, classes=2)
    report = validate_folder(two / "JPEGImages", two / "SegmentationClass", **layout)
    assert report.classes.count == 3 and report.ignore_index == 255 and not report.problems
    # ignore_index=none: 255 is a class index again, as before (256 classes)
    off = validate_folder(two / "JPEGImages", two / "SegmentationClass", **layout,
                          ignore_index=None)
    assert off.ignore_index is None and off.classes.count == 256
    assert off.reading() == ["mask values read as classes (mask_kind=auto, from 8 masks: 8 "
                             "classes)"]


def test_a_declared_void_in_grey_masks(tmp_path):
    """-P ignore_index=128 on 0/1/128 grey masks: 128 is void, 1 foreground."""
    values = np.array([[0, 1, 128], [1, 1, 0]], np.uint8)
    Image.fromarray(values).save(tmp_path / "m.png")
    assert np.array_equal(load_binary(tmp_path / "m.png", ignore=128),
                          [[0, 1, VOID], [1, 1, 0]])
    classes = Classes.numbered(3)
    Image.fromarray(np.array([[0, 2, 128]], np.uint8)).save(tmp_path / "c.png")
    assert load_class_map(tmp_path / "c.png", classes, ignore=128).tolist() == [[0, 2, VOID]]


def test_bad_ignore_index_is_one_line(tracking_uri, tmp_path):
    assert parse_ignore("auto") == "auto" and parse_ignore("none") is None
    assert parse_ignore("255") == 255
    with pytest.raises(UserError, match=r"^parameter ignore_index=-3: give auto"):
        parse_ignore("-3")
    result = run_step("split_data", {"ignore_index": "void"}, tracking_uri)
    assert result.returncode != 0
    (line,) = error_lines(result)
    assert line.startswith("error: parameter ignore_index=void: give auto (VOC's void 255")


def test_void_pixels_are_out_of_the_binary_losses():
    """2x2 logits, one void pixel: the loss is the loss of the other three, by hand."""
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 3.0]]]])
    masks = torch.tensor([[[[1.0, 0.0], [VOID, 1.0]]]])
    kept_logits, kept_masks = torch.tensor([[[[2.0, -1.0, 3.0]]]]), torch.tensor([[[[1., 0., 1.]]]])
    p = [1 / (1 + math.exp(-z)) for z in (2.0, -1.0, 3.0)]
    bce = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2])) / 3
    assert make_loss("bce")(logits, masks).item() == pytest.approx(bce, rel=1e-6)
    dice = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
    assert make_loss("bce_dice")(logits, masks).item() == pytest.approx(bce + dice, rel=1e-6)
    assert make_loss("bce_dice")(logits, masks).item() == pytest.approx(
        make_loss("bce_dice")(kept_logits, kept_masks).item(), rel=1e-6)


def test_void_pixels_are_out_of_the_class_losses():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 3, 3)
    labels = torch.tensor([[[0, 1, 2], [2, VOID, 1], [0, 0, 1]]])
    keep = (labels != VOID).flatten()
    kept_logits = logits.flatten(2)[..., keep][..., None]            # (1, 3, 8, 1)
    kept_labels = labels.flatten()[keep][None, :, None]              # (1, 8, 1)
    for name in ("bce", "bce_dice"):
        loss = make_loss(name, classes=3)
        assert loss(logits, labels).item() == pytest.approx(
            loss(kept_logits, kept_labels).item(), rel=1e-6)
    # by hand: cross-entropy is the mean of -log softmax of the 8 kept pixels
    logp = torch.log_softmax(kept_logits[0, :, :, 0], 0)
    ce = -logp[kept_labels[0, :, 0], torch.arange(8)].mean().item()
    assert make_loss("bce", classes=3)(logits, labels).item() == pytest.approx(ce, rel=1e-6)


def test_void_pixels_are_out_of_the_metrics():
    """3x3, two void pixels: TP 2, FP 1, FN 1, TN 3 counted by hand on the other seven."""
    truth = torch.tensor([[[1, 1, 0], [1, VOID, 0], [0, 0, VOID]]], dtype=torch.uint8)
    pred = torch.tensor([[[1, 1, 1], [0, 1, 0], [0, 0, 1]]], dtype=torch.uint8)
    assert confusion(pred, truth).tolist() == [[2, 1, 1, 3]]
    metrics = SegmentationMetrics()
    metrics.update(pred, truth)
    result = metrics.compute()
    assert result["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))      # 0.667
    assert result["iou"] == pytest.approx(2 / (2 + 1 + 1))               # 0.5
    assert result["accuracy"] == pytest.approx(5 / 7)
    # K = 3 classes: void pixels are in no class's counts and not in the confusion matrix
    truth3 = torch.tensor([[[1, 2, 0], [2, VOID, 0]]], dtype=torch.uint8)
    pred3 = torch.tensor([[[1, 1, 0], [2, 2, 0]]], dtype=torch.uint8)
    metrics3 = SegmentationMetrics(3)
    metrics3.update(pred3, truth3)
    assert metrics3.confusion_matrix().tolist() == [[2, 0, 0], [0, 1, 0], [0, 1, 1]]
    result = metrics3.compute()
    # class 1: TP 1, FP 1, FN 0 -> Dice 2/3; class 2: TP 1, FP 0, FN 1 -> Dice 2/3
    assert result["dice"] == pytest.approx(2 / 3) and result["accuracy"] == pytest.approx(4 / 5)


def test_void_pixels_are_out_of_the_baselines_and_label_quality(tmp_path):
    values = np.array([[1, 1, 255, 0], [0, 255, 0, 0]], np.uint8)
    mask = Image.fromarray(values, "P")
    mask.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 253 + [224, 224, 192])
    mask.save(tmp_path / "m.png")
    pair = Pair("m", tmp_path / "m.png", tmp_path / "m.png")
    read = reader(Classes.numbered(2), 255)
    shares = baselines.mean_mask([pair], read_mask=read)
    assert shares.max() == 1.0 and shares.mean() == pytest.approx(2 / 8)    # void is no object
    dice = baselines.baseline_dice([pair], shares, classes=Classes.numbered(2), read_mask=read)
    # all foreground over the 6 non-void pixels: TP 2, FP 4 -> 4 / 8
    assert dice["all_foreground"] == pytest.approx(2 * 2 / (2 * 2 + 4))
    assert dice["all_background"] == 0.0
    probs = np.array([[0.9, 0.9, 0.9, 0.1], [0.1, 0.9, 0.1, 0.1]], np.float32)
    truth = read(pair.mask)
    assert label_quality.prediction_dice(probs, truth) == (1.0, 0)   # void disagrees with nothing
    assert label_quality.disagreement(probs, truth)[0, 0, 2] == 0


@pytest.mark.slow
def test_voc_folder_end_to_end_leaves_void_out(tmp_path, tracking_uri):
    folder = voc_folder(tmp_path / "voc", 24, seed=5, classes=1)
    tiny = {k: v for k, v in TINY.items() if not k.startswith(("num_images", "synthetic"))}
    result = mlflow_run("main", {"data_dir": str(folder), **VOC_LAYOUT, **tiny,
                                 "model_name": "voc"}, tracking_uri)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "void value 255 found:" in result.stdout
    client = MlflowClient()
    runs = {r.data.tags["step"]: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    split = runs["split_data"].info.run_id
    text = mlflow.artifacts.load_text(f"runs:/{split}/data_report.txt")
    assert "READING (how the masks are read)\n  mask values read as binary" in text
    assert "\n  void value 255 found: " in text
    record = mlflow.artifacts.load_dict(f"runs:/{split}/split.json")
    assert record["ignore_index"] == 255 and record["classes"] == ["background", "foreground"]
    evaluate = runs["evaluate"]
    assert 0 <= evaluate.data.metrics["test_dice"] <= 1
    folder_out = mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                     artifact_path="predictions")
    with open(os.path.join(folder_out, "per_image.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(record["test"])
    for row in rows:       # every test image scored on its non-void pixels only
        values = np.asarray(Image.open(folder / "SegmentationClass" / f"{row['stem']}.png"))
        counted = sum(int(row[k]) for k in ("tp", "fp", "fn", "tn"))
        assert (values == 255).any() and counted == (values != 255).sum()
        assert int(row["tp"]) + int(row["fn"]) == (values == 1).sum()
    assert "baseline_dice_all_foreground" in evaluate.data.metrics


def test_panels_show_void_in_vocs_void_colour():
    from unet.evaluation.visualize import colour_mask
    binary = colour_mask(np.array([[0, 1, VOID]], np.uint8))
    assert binary.tolist() == [[[0, 0, 0], [255, 255, 255], [224, 224, 192]]]
    classes = colour_mask(np.array([[0, 2, VOID]], np.uint8), classes=3)
    assert classes[0, 0].tolist() == [0, 0, 0] and classes[0, 2].tolist() == [224, 224, 192]
    assert classes[0, 1].tolist() not in ([0, 0, 0], [224, 224, 192])
