"""Probabilities -> a label image: objects that touch come back as separate objects.

A network trained for instances predicts three classes per pixel: background, an object's
interior, and its border (the rim of each object and the pixels where objects meet). Where
two objects touch, the border class separates their interiors; thresholding the foreground
alone would join them into one blob.

The label image is made by a seeded watershed (scipy.ndimage.watershed_ift, the image
foresting transform):
1. seeds: connected regions of interior probability above `seed` (each touching object
   leaves its own interior region, since the border between them is not interior);
   regions smaller than `min_area` pixels are dropped (noise, not objects);
2. the object area: pixels where interior + border probability is above `mask`;
3. each seed grows, cheapest first, the cost of a pixel being its interior probability turned
   around (1 - p, in 254 steps; the background costs most): a seed floods its own object and
   stops where the interior probability dips between two objects; what lies outside the
   object area is then background again;
4. each object keeps only the connected part that holds its seed; objects smaller than
   `min_area` after growing are removed; labels are 1..N in order of their first pixel
   (row-major), 0 background.

The three settings are chosen on the validation split (`choose`) and travel with the model.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage

BACKGROUND, INTERIOR, BORDER = 0, 1, 2
FOUR = ndimage.generate_binary_structure(2, 1)


@dataclasses.dataclass(frozen=True)
class Watershed:
    """The post-processing's settings: probability thresholds of the seeds (interior) and of
    the object area (interior + border), and the smallest object kept, in pixels."""
    seed: float = 0.5
    mask: float = 0.5
    min_area: int = 8

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """(H, W, 3) probabilities of background, interior, border -> (H, W) int32 labels,
        0 background, objects 1..N."""
        interior = probs[..., INTERIOR]
        area = interior + probs[..., BORDER] > self.mask
        seeds, count = ndimage.label((interior > self.seed) & area, structure=FOUR)
        seeds = _without_small(seeds, count, self.min_area)
        if not seeds.any():
            return np.zeros(interior.shape, np.int32)
        cost = np.round((1.0 - np.clip(interior, 0, 1)) * 254).astype(np.uint8)
        cost[~area] = 255                    # the background is crossed last, if ever
        grown = ndimage.watershed_ift(cost, seeds.astype(np.int32), structure=FOUR)
        grown[~area] = 0
        grown = _seeded_parts(grown, seeds)
        return _numbered(_without_small(grown, int(grown.max()), self.min_area))


def _seeded_parts(grown: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Each object cut down to the connected part holding its seed: a seed that flooded
    across the background into an unseeded piece of object area (a seed too small to keep)
    does not keep that piece."""
    out = np.zeros_like(grown)
    for value, box in enumerate(ndimage.find_objects(grown), start=1):
        if box is None:
            continue
        parts, _ = ndimage.label(grown[box] == value, structure=FOUR)
        seeded = np.unique(parts[(seeds[box] == value) & (parts > 0)])
        out[box][np.isin(parts, seeded)] = value
    return out


def _without_small(labels: np.ndarray, count: int, min_area: int) -> np.ndarray:
    """Labels with the objects of fewer than min_area pixels set to 0."""
    if count == 0:
        return labels
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    small = sizes < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def _numbered(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..N in order of each object's first pixel (row-major)."""
    flat = labels.ravel()
    present = flat[flat > 0]
    if not len(present):
        return labels.astype(np.int32)
    _, first = np.unique(present, return_index=True)
    order = np.unique(present)[np.argsort(first)]
    lookup = np.zeros(int(labels.max()) + 1, np.int32)
    lookup[order] = np.arange(1, len(order) + 1)
    return lookup[labels]


GRID = {"seed": (0.3, 0.5, 0.7, 0.9), "mask": (0.3, 0.5, 0.7), "min_area": (4, 16, 64)}


def choose(probabilities: Sequence[np.ndarray], truths: Sequence[np.ndarray],
           score: Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], float],
           grid: dict[str, tuple] = GRID) -> tuple[Watershed, float]:
    """The settings of GRID whose label images score best against the true label images of
    the validation split (score(predicted, true), higher is better: the DSB mAP); ties keep
    the earlier settings of the grid. Returns (settings, their score)."""
    best, best_score = Watershed(), -1.0
    for seed, mask, min_area in itertools.product(grid["seed"], grid["mask"],
                                                  grid["min_area"]):
        settings = Watershed(seed, mask, min_area)
        value = score([settings.labels(p) for p in probabilities], truths)
        if value > best_score:
            best, best_score = settings, value
    return best, best_score
