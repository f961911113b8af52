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
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

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
