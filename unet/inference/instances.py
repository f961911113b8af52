"""Probabilities -> a label image: objects that touch come back as separate objects.

A network trained for instances predicts three classes per pixel: background, an object's
interior, and its border (the rim of each object and the pixels where objects meet). Where
two objects touch, the border class separates their interiors; thresholding the foreground
alone would join them into one blob.

The label image is made by a seeded watershed (scikit-image's `segmentation.watershed`, a
priority flood: scipy's `ndimage.watershed_ift` is not one, and on a cost line 0 5 6 9 6 5 1
with seeds at both ends gives the whole line to one seed):
1. seeds: connected regions of interior probability above `seed` (each touching object
   leaves its own interior region, since the border between them is not interior);
   regions smaller than `min_area` pixels are dropped (noise, not objects);
2. the object area: pixels where interior + border probability is above `mask`;
3. each seed floods the object area, cheapest first, the cost of a pixel being its interior
   probability turned around (1 - p): a seed floods its own object and stops where the
   interior probability dips between two objects, and never leaves the object area (a piece
   of it that no seed reaches stays background);
4. objects smaller than `min_area` after growing are removed; labels are 1..N in order of
   their first pixel (row-major), 0 background.

The three settings are chosen on the validation split (`choose`) and travel with the model.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

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
        cost = 1.0 - np.clip(interior, 0, 1).astype(np.float32)
        grown = watershed(cost, seeds.astype(np.int32), connectivity=1, mask=area)
        return _numbered(_without_small(grown.astype(np.int32), int(grown.max()),
                                        self.min_area))


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


def foreground(probs: np.ndarray) -> np.ndarray:
    """(H, W, 3) probabilities of background, interior, border -> (H, W) float32 probability
    of an object (interior or border)."""
    return (1.0 - probs[..., BACKGROUND]).astype(np.float32)


OBJECT_COLUMNS = ("image", "label", "area", "centroid_y", "centroid_x", "top", "left",
                  "bottom", "right", "mean_probability", "rle")


def object_rows(image: str, labels: np.ndarray, probability: np.ndarray) -> list[tuple]:
    """(H, W) labels (0 background, objects 1..N) and (H, W) float object probabilities ->
    one row per object, in label order, as OBJECT_COLUMNS: its area in pixels, centroid
    (row, column), bounding box (top, left, bottom, right; bottom and right exclusive), mean
    probability, and its pixels run-length encoded as the DSB 2018 submissions want them
    (`dsb_rle`). Each object is measured inside its box: memory follows the largest object,
    not the image."""
    out = []
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = labels[box] == value
        rows, cols = np.nonzero(inside)
        out.append((image, value, len(rows), round(rows.mean() + box[0].start, 2),
                    round(cols.mean() + box[1].start, 2), box[0].start, box[1].start,
                    box[0].stop, box[1].stop,
                    round(float(probability[box][inside].astype(np.float64).mean()), 4),
                    dsb_rle(labels, value, box)))
    return out


def dsb_rle(labels: np.ndarray, value: int, box: tuple[slice, slice] | None = None) -> str:
    """One object's pixels as the Data Science Bowl 2018 encodes them: pixels numbered from 1
    top to bottom, then left to right (column-major), "start length" pairs of its runs."""
    box = box or (slice(None), slice(None))
    cols, rows = np.nonzero((labels[box] == value).T)       # column-major order
    positions = (cols + (box[1].start or 0)) * labels.shape[0] + rows + (box[0].start or 0) + 1
    if not len(positions):
        return ""
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = positions[np.concatenate([[0], breaks + 1])]
    ends = positions[np.concatenate([breaks, [len(positions) - 1]])]
    return " ".join(f"{s} {e - s + 1}" for s, e in zip(starts.tolist(), ends.tolist()))


def label_image(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> as a label file holds them: uint16 (0 background, 1..N), the type a
    16-bit PNG keeps; ValueError beyond 65535 objects (unet.inference.streaming then writes a
    32-bit TIFF)."""
    if int(labels.max(initial=0)) > 65535:
        raise ValueError(f"{int(labels.max())} objects: more than a 16-bit PNG holds")
    return labels.astype(np.uint16)
