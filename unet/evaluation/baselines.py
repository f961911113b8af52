"""Trivial baselines: what a model must clearly beat before it may become champion.

A model that learned nothing useful still gets a test Dice: predicting background everywhere
scores 1 on every image without an object and 0 elsewhere; predicting the object everywhere
scores 2|T| / (|T| + HW); and the per-pixel mean of the training masks (the object where
objects usually are) can score well on centred photos. These are computed on the same test
images and with the same per-image Dice as the model.

With K > 2 classes: all background (every foreground class missed), and the most frequent
class of the training masks at each relative position; scored as the model is, by the mean
over foreground classes (unet.evaluation.metrics.summarize_classes). Void pixels
(unet.labels.masks) count nowhere: not in the mean mask, not in the scores.

Objects (scored per object by unet.evaluation.objects): what a model's objects must beat.
`components`: each connected region of the model's own foreground is an object (objects that
touch stay one). `distance_watershed`: a foreground split by a watershed on the distance to the
background, one seed per local maximum of that distance (on a 5x5 square, after smoothing) at
least MIN_SEED_DISTANCE pixels deep: two round objects that touch along a neck come apart; it
assumes objects are about round (an elongated one may be cut in two). On a binary model's
foreground it is how that model's objects are made. `otsu_watershed`: no model at all, the
classic of cell counting (CellProfiler's): the image's grey levels cut at Otsu's threshold, the
objects the side that covers less of the image (bright nuclei on a dark field, dark cells on a
bright one; it assumes the objects cover under half of the image), then `distance_watershed`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed

from unet.data.pairs import Pair
from unet.evaluation.metrics import SegmentationMetrics, confusion, scores
from unet.images.transforms import resize_mask
from unet.labels.classes import Classes, reader
from unet.sampling import spread

GRID = (160, 160)   # where training masks are averaged: positions relative to the image size


def mean_mask(pairs: Sequence[Pair], limit: int = 500, classes: Classes | None = None,
              read_mask: Callable[[Path], np.ndarray] | None = None) -> np.ndarray:
    """(GRID) float32 share of training masks covering each relative position (up to `limit`
    masks, spread evenly over the pairs); with K > 2 classes, (K, *GRID) shares per class.
    `read_mask` reads a mask (default unet.labels.classes.reader of `classes`: no void)."""
    chosen = spread(pairs, limit)
    classes = classes or Classes.numbered(2)
    read_mask = read_mask or reader(classes)
    total = np.zeros(GRID if classes.binary else (classes.count, *GRID), np.float64)
    for pair in chosen:
        labels = resize_mask(read_mask(pair.mask), GRID)
        if classes.binary:
            total += labels == 1
        else:
            total += labels[None] == np.arange(classes.count)[:, None, None]
    return (total / max(1, len(chosen))).astype(np.float32)


def class_baseline_dice(test: Sequence[Pair], shares: np.ndarray, classes: Classes,
                        read_mask: Callable[[Path], np.ndarray]) -> dict[str, float]:
    """Mean foreground Dice on `test` of: all_background, and most_frequent_class (the argmax
    of the training shares (K, *GRID), stretched to each image's size)."""
    guess = shares.argmax(0).astype(np.uint8)
    metrics = {"all_background": SegmentationMetrics(classes.count),
               "most_frequent_class": SegmentationMetrics(classes.count)}
    for pair in test:
        truth = torch.from_numpy(read_mask(pair.mask))[None]
        metrics["all_background"].update(torch.zeros_like(truth), truth)
        metrics["most_frequent_class"].update(
            torch.from_numpy(resize_mask(guess, truth.shape[1:]))[None], truth)
    return {name: m.compute_named(classes.names)["dice"] for name, m in metrics.items()}


def baseline_dice(test: Sequence[Pair], mean: np.ndarray, threshold: float = 0.5,
                  classes: Classes | None = None,
                  read_mask: Callable[[Path], np.ndarray] | None = None) -> dict[str, float]:
    """Per-image mean Dice on `test` of: all_background, all_foreground and mean_mask (the
    training mean above `threshold`, stretched to each image's size). K > 2 classes:
    class_baseline_dice. `read_mask` as mean_mask's."""
    classes = classes or Classes.numbered(2)
    read_mask = read_mask or reader(classes)
    if not classes.binary:
        return class_baseline_dice(test, mean, classes, read_mask)
    per_image: dict[str, list[float]] = {"all_background": [], "all_foreground": [],
                                         "mean_mask": []}
    guess = (mean > threshold).astype(np.uint8)
    for pair in test:
        truth = torch.from_numpy(read_mask(pair.mask))[None]
        predictions = {"all_background": torch.zeros_like(truth),
                       "all_foreground": torch.ones_like(truth),
                       "mean_mask": torch.from_numpy(resize_mask(guess, truth.shape[1:]))[None]}
        for name, pred in predictions.items():
            per_image[name].append(scores(confusion(pred, truth))["dice"].item())
    return {name: float(np.mean(values)) for name, values in per_image.items()}


MIN_SEED_DISTANCE = 2.0    # pixels: a seed of the Otsu watershed lies this deep in an object
EIGHT = np.ones((3, 3), bool)


def components(mask: np.ndarray) -> np.ndarray:
    """(H, W) 0/1 foreground -> (H, W) int32 labels: its 8-connected regions, 1..N."""
    labels, _ = ndimage.label(mask == 1, structure=EIGHT)
    return labels.astype(np.int32)


def otsu_threshold(grey: np.ndarray) -> int:
    """(H, W) uint8 -> Otsu's threshold t: the cut (<= t, > t) of the histogram with the
    largest between-class variance."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)                        # pixels <= t
    total = weight[-1]
    mean = np.cumsum(hist * np.arange(256))         # their sum of levels
    below, above = weight, total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean[-1] * below - mean * total) ** 2 / (below * above)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def otsu_watershed(image: np.ndarray, min_area: int = 8) -> np.ndarray:
    """(H, W, 3) uint8 image -> (H, W) int32 labels (module docstring); objects smaller than
    min_area pixels are dropped."""
    grey = image.mean(axis=2).round().astype(np.uint8)
    bright = grey > otsu_threshold(grey)
    return distance_watershed(bright if bright.mean() <= 0.5 else ~bright, min_area)


def distance_watershed(objects: np.ndarray, min_area: int = 8) -> np.ndarray:
    """(H, W) foreground (bool or 0/1) -> (H, W) int32 labels 1..N (module docstring); objects
    smaller than min_area pixels are dropped."""
    objects = np.asarray(objects, bool)
    if not objects.any():
        return np.zeros(objects.shape, np.int32)
    distance = ndimage.distance_transform_edt(objects)
    # A seed is a plateau of the smoothed distance that no pixel of its 5x5 square tops.
    smooth = ndimage.gaussian_filter(distance, 1.0)
    peaks = (smooth == ndimage.maximum_filter(smooth, size=5)) & \
        (distance >= MIN_SEED_DISTANCE)
    # A region too thin for a seed is one object, its own seed.
    parts, count = ndimage.label(objects, structure=EIGHT)
    unseeded = np.setdiff1d(np.arange(1, count + 1), parts[peaks])
    seeds, _ = ndimage.label(peaks | np.isin(parts, unseeded), structure=EIGHT)
    # skimage's priority flood inside the objects (scipy's watershed_ift is no minimax flood:
    # unet.inference.instances)
    grown = watershed(-distance, seeds, connectivity=2, mask=objects)
    sizes = np.bincount(grown.ravel())
    grown[sizes[grown] < min_area] = 0
    values, inverse = np.unique(grown, return_inverse=True)     # renumbered 1..N
    labels = inverse.reshape(grown.shape).astype(np.int32)
    return labels if values[0] == 0 else labels + 1
