"""Testing a Segmenter on image/mask pairs at their original resolution."""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from unet.data.pairs import Pair
from unet.evaluation import baselines, objects
from unet.evaluation.metrics import SegmentationMetrics, scores
from unet.evaluation.visualize import confusion_image, overlay, panel
from unet.images.reading import load_image
from unet.inference import instances
from unet.inference.segmenter import TTA_FLIPS, Segmenter, as_written
from unet.labels.classes import Classes, reader
from unet.labels.masks import VOID

# Label images scored beside the model's for an instance model (unet.evaluation.baselines)
OBJECT_BASELINES = ("components", "otsu")


def evaluate_pairs(segmenter: Segmenter, pairs: Sequence[Pair], threshold: float = 0.5,
                   batch_size: int = 16, out_dir: Path | None = None,
                   read_mask=None, read_labels=None) -> dict[str, float]:
    """Accuracy/Dice/IoU per image and micro (see unet.evaluation.metrics), masks scored at full
    size, read by `read_mask` (default: unet.labels.classes.reader of the model's classes, no void;
    void pixels count in no metric).

    With `read_labels` (a mask path -> (H, W) true labels, unet.labels.borders.load_labels:
    masks of objects) the model is also scored per object (unet.evaluation.objects.summarize:
    "map", "ap50", "ap75", "f1_50", "count_error", "splits", "merges", "true_objects",
    "predicted_objects"), its objects made by its own watershed (a model for instances) or, for
    a binary model, by the distance watershed of its foreground
    (unet.evaluation.baselines.distance_watershed); and so are the object baselines on the same
    images (unet.evaluation.baselines: "map_components", "map_otsu", and their ap50, f1_50).

    With out_dir, writes masks/<stem>_mask.png (0/255), overlays/<stem>_overlay.jpg,
    panels/<stem>.jpg (image | truth | prediction | overlay) for the first 8, and
    per_image.csv (stem, accuracy, dice, iou, tp, fp, fn, tn); for objects also
    labels/<stem>_labels.png (16-bit, 0 background, 1..N).
    """
    classes = class_count(segmenter)
    read_truth = read_mask or reader(Classes(segmenter.classes) if not segmenter.binary
                                     else Classes.numbered(2))
    metrics = SegmentationMetrics(classes)
    scored = read_labels is not None and segmenter.binary
    found = ObjectScores()
    if out_dir is not None:
        for sub in ("masks", "overlays", "panels") + (("labels",) if scored else ()):
            (out_dir / sub).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(pairs), desc="test", leave=False, dynamic_ncols=True,
                disable=None)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        images = [load_image(p.image, window=segmenter.window) for p in chunk]
        for index, pair, image, probs in zip(range(start, len(pairs)), chunk, images,
                                             segmenter.probabilities(images,
                                                                     batch_size=batch_size)):
            pred = segmenter.decide(probs, threshold)
            truth = read_truth(pair.mask)
            metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
            if scored:
                labels = segmenter.labels(probs) if segmenter.instances else \
                    baselines.distance_watershed(pred)
                found.add(read_labels(pair.mask), labels, pred, image)
                if out_dir is not None:
                    Image.fromarray(instances.label_image(labels)).save(
                        out_dir / "labels" / f"{pair.stem}_labels.png")
            if out_dir is not None:
                Image.fromarray(as_written(pred, classes == 2)).save(
                    out_dir / "masks" / f"{pair.stem}_mask.png")
                Image.fromarray(overlay(image, pred, classes=classes)).save(
                    out_dir / "overlays" / f"{pair.stem}_overlay.jpg")
                if index < 8:
                    Image.fromarray(panel(image, truth, pred, classes)).save(
                        out_dir / "panels" / f"{pair.stem}.jpg")
        bar.update(len(chunk))
    bar.close()
    if out_dir is not None:
        if classes == 2:
            write_per_image_csv(out_dir / "per_image.csv", pairs, metrics.all_counts())
        else:
            write_confusion(out_dir, metrics.confusion_matrix(), segmenter.classes)
    result = metrics.compute_named(segmenter.classes) if classes > 2 else metrics.compute()
    return {**result, **found.summary()} if scored else result


class ObjectScores:
    """Image by image, the object matches (unet.evaluation.objects) of a model's label images
    and of the object baselines' on the same images (unet.evaluation.baselines)."""

    def __init__(self):
        self.found: dict[str, list[objects.ImageObjects]] = {
            name: [] for name in ("model", *OBJECT_BASELINES)}

    def add(self, truth: np.ndarray, labels: np.ndarray, mask: np.ndarray,
            image: np.ndarray) -> None:
        """(H, W) true labels, the model's labels and its 0/1 mask, the (H, W, 3) image."""
        self.found["model"].append(objects.match(truth, labels))
        self.found["components"].append(objects.match(truth, baselines.components(mask)))
        self.found["otsu"].append(objects.match(truth, baselines.otsu_watershed(image)))

    def summary(self) -> dict[str, float]:
        """The model's objects.summarize, and "<map|ap50|f1_50>_<baseline>"."""
        result = objects.summarize(self.found["model"])
        for name in OBJECT_BASELINES:
            summary = objects.summarize(self.found[name])
            result.update({f"{key}_{name}": summary[key] for key in ("map", "ap50", "f1_50")})
        return result


def class_count(segmenter: Segmenter) -> int:
    """The classes its masks hold: 2 for a binary or an instance model (the foreground)."""
    return 2 if segmenter.binary else len(segmenter.classes)


def write_confusion(out_dir: Path, matrix: np.ndarray, names: tuple[str, ...]) -> None:
    """The (K, K) pixel confusion matrix (rows: truth, columns: prediction) as
    confusion_matrix.csv and confusion_matrix.png (rows normalized, a cell per class pair)."""
    with open(out_dir / "confusion_matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["truth \\ prediction"] + list(names))
        for name, row in zip(names, matrix.tolist()):
            writer.writerow([name] + row)
    Image.fromarray(confusion_image(matrix, names)).save(out_dir / "confusion_matrix.png")


def write_per_image_csv(path: Path, pairs: Sequence[Pair], counts: torch.Tensor) -> None:
    per_image = scores(counts)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["stem", "accuracy", "dice", "iou", "tp", "fp", "fn", "tn"])
        for i, pair in enumerate(pairs):
            writer.writerow([pair.stem] + [f"{per_image[k][i].item():.6f}" for k in
                                           ("accuracy", "dice", "iou")] + counts[i].tolist())


def choose_tta(segmenter: Segmenter, dataset, min_gain: float = 0.002,
               threshold: float = 0.5) -> tuple[str, dict[str, float]]:
    """The test-time augmentation to keep: the mode of TTA_FLIPS with the best per-image Dice
    on `dataset`'s pairs at the training size, if it beats no augmentation by min_gain (each
    flip costs a forward pass: keep them only where they help). Returns (mode, Dice per mode)."""
    pairs = [dataset.resized(i) for i in range(len(dataset))]
    truth = np.stack([mask for _, mask in pairs])
    if segmenter.instances:          # targets background/interior/border: the foreground
        truth = np.where(truth == VOID, truth, truth > 0).astype(truth.dtype)
    truth = torch.from_numpy(truth)
    dice = {}
    for mode in TTA_FLIPS:
        masks = segmenter.with_tta(mode).masks((image for image, _ in pairs), threshold)
        metrics = SegmentationMetrics(class_count(segmenter))
        metrics.update(torch.from_numpy(np.stack(list(masks))), truth)
        dice[mode] = metrics.compute_named(segmenter.classes)["dice"]
    best = max(dice, key=dice.get)
    return (best if dice[best] >= dice["none"] + min_gain else "none"), dice


def choose_watershed(segmenter: Segmenter, dataset, read_labels
                     ) -> tuple[instances.Watershed, float]:
    """An instance model's post-processing settings (unet.inference.instances.choose): those
    whose label images of `dataset`'s images (the validation pairs at the training size) score
    the best DSB mAP against their true labels (`read_labels`, resized to that size by nearest
    neighbour). Returns (settings, their validation mAP)."""
    maps = list(segmenter.probabilities(dataset.resized(i)[0] for i in range(len(dataset))))
    truths = [objects.nearest(read_labels(pair.mask), dataset.size) for pair in dataset.pairs]

    def score(predicted, true) -> float:
        return objects.summarize(objects.match(t, p) for t, p in zip(true, predicted))["map"]

    return instances.choose(maps, truths, score)
