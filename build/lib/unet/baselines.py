"""Trivial baselines: what a model must clearly beat before it may become champion.

A model that learned nothing useful still gets a test Dice: predicting background everywhere
scores 1 on every image without an object and 0 elsewhere; predicting the object everywhere
scores 2|T| / (|T| + HW); and the per-pixel mean of the training masks (the object where
objects usually are) can score well on centred photos. These are computed on the same test
images and with the same per-image Dice as the model.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unet.data import Pair, load_mask
from unet.metrics import confusion, scores
from unet.transforms import resize_mask

GRID = (160, 160)   # where training masks are averaged: positions relative to the image size


def mean_mask(pairs: Sequence[Pair], limit: int = 500) -> np.ndarray:
    """(GRID) float32 share of training masks covering each relative position (up to `limit`
    masks, spread evenly over the pairs)."""
    step = max(1, len(pairs) // limit)
    chosen = list(pairs)[::step][:limit]
    total = np.zeros(GRID, np.float64)
    for pair in chosen:
        total += resize_mask(load_mask(pair.mask), GRID)
    return (total / max(1, len(chosen))).astype(np.float32)


def baseline_dice(test: Sequence[Pair], mean: np.ndarray, threshold: float = 0.5
                  ) -> dict[str, float]:
    """Per-image mean Dice on `test` of: all_background, all_foreground and mean_mask (the
    training mean above `threshold`, stretched to each image's size)."""
    per_image: dict[str, list[float]] = {"all_background": [], "all_foreground": [],
                                         "mean_mask": []}
    guess = (mean > threshold).astype(np.uint8)
    for pair in test:
        truth = torch.from_numpy(load_mask(pair.mask))[None]
        predictions = {"all_background": torch.zeros_like(truth),
                       "all_foreground": torch.ones_like(truth),
                       "mean_mask": torch.from_numpy(resize_mask(guess, truth.shape[1:]))[None]}
        for name, pred in predictions.items():
            per_image[name].append(scores(confusion(pred, truth))["dice"].item())
    return {name: float(np.mean(values)) for name, values in per_image.items()}
