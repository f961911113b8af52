"""Scores per object: how well a predicted label image finds the objects of a true one.

A label image is (H, W) integers, 0 background, each object its own value (any numbering:
values are renumbered first, so a top value costs nothing). Objects are matched by IoU
(intersection over union of their pixels): at a threshold t >= 0.5 a true object matches at
most one predicted object (two predictions cannot both cover more than half of it), so
matching needs no assignment step.

Per image, at threshold t: TP = matched pairs, FP = predicted objects unmatched, FN = true
objects unmatched, and
    precision(t) = TP / (TP + FP + FN)     (the Kaggle Data Science Bowl 2018's "AP" at t)
    F1(t)        = 2 TP / (2 TP + FP + FN)
The DSB score of an image is the mean of precision(t) over t = 0.5, 0.55, ..., 0.95; a set's
mAP is the mean over its images. An image with no object in truth or prediction scores 1; with
objects in only one of them, 0.

Splits and merges, by majority: a true object whose pixels lie for more than half in one
predicted object is "held" by it; a predicted object holding two or more true objects merged
them (each true object beyond the first counts one merge). Symmetrically, a predicted object
lying for more than half in one true object belongs to it; a true object to which two or more
predicted objects belong was split (each beyond the first counts one split).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))   # the DSB's 0.5:0.05:0.95


def renumbered(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """(H, W) labels, any values -> (labels 0..n as int64, n): background stays 0."""
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if values[0] != 0:                       # no background pixel at all
        return inverse + 1, len(values)
    return inverse, len(values) - 1


def overlaps(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) true and predicted labels -> (intersections (n+1, m+1) pixel counts, row 0 and
    column 0 the background; true areas (n,); predicted areas (m,))."""
    t, n = renumbered(truth)
    p, m = renumbered(pred)
    inter = np.bincount((t * (m + 1) + p).ravel(), minlength=(n + 1) * (m + 1))
    inter = inter.reshape(n + 1, m + 1)
    return inter, inter[1:].sum(1), inter[:, 1:].sum(0)


@dataclasses.dataclass(frozen=True)
class ImageObjects:
    """One image's object counts and matches."""
    true_objects: int
    predicted_objects: int
    matches: tuple[int, ...]        # TP at each of THRESHOLDS
    splits: int
    merges: int

    def precision(self, at: float) -> float:
        tp = self.matches[THRESHOLDS.index(at)]
        fp, fn = self.predicted_objects - tp, self.true_objects - tp
        return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)

    def f1(self, at: float = 0.5) -> float:
        tp = self.matches[THRESHOLDS.index(at)]
        fp, fn = self.predicted_objects - tp, self.true_objects - tp
        return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)

    @property
    def dsb(self) -> float:
        """The mean precision over THRESHOLDS (the DSB 2018 score of one image)."""
        return float(np.mean([self.precision(t) for t in THRESHOLDS]))

    @property
    def count_error(self) -> int:
        return abs(self.predicted_objects - self.true_objects)


def match(truth: np.ndarray, pred: np.ndarray) -> ImageObjects:
    """(H, W) true and predicted label images -> their object matches (module docstring).
    Void pixels (negative truth, unet.labels.borders.VOID_LABEL) count in neither image."""
    if truth.min(initial=0) < 0:
        void = truth < 0
        truth, pred = np.where(void, 0, truth), np.where(void, 0, pred)
    inter, true_area, pred_area = overlaps(truth, pred)
    inter = inter[1:, 1:]
    union = true_area[:, None] + pred_area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape), where=union > 0)
    matches = tuple(int((iou > t).sum()) for t in THRESHOLDS)
    held_by = _majority(inter, true_area, axis=1)      # true object -> predicted holding it
    belongs = _majority(inter.T, pred_area, axis=1)    # predicted object -> its true object
    merges = sum(max(0, c - 1) for c in np.bincount(held_by[held_by >= 0]))
    splits = sum(max(0, c - 1) for c in np.bincount(belongs[belongs >= 0]))
    return ImageObjects(len(true_area), len(pred_area), matches, int(splits), int(merges))


def _majority(inter: np.ndarray, area: np.ndarray, axis: int) -> np.ndarray:
    """For each row object, the column object holding more than half of its pixels; -1 if
    none."""
    if inter.shape[1] == 0:
        return np.full(inter.shape[0], -1)
    best = inter.argmax(axis=axis)
    held = inter[np.arange(inter.shape[0]), best] * 2 > area
    return np.where(held, best, -1)


def summarize(images: Iterable[ImageObjects]) -> dict[str, float]:
    """Per-image object scores -> the set's means: "map" (the DSB score), "ap50", "ap75"
    (precision at IoU 0.5, 0.75), "f1_50", "count_error" (mean absolute), "splits" and
    "merges" (totals), "true_objects", "predicted_objects" (totals)."""
    images = list(images)
    if not images:
        return {}
    return {"map": float(np.mean([i.dsb for i in images])),
            "ap50": float(np.mean([i.precision(0.5) for i in images])),
            "ap75": float(np.mean([i.precision(0.75) for i in images])),
            "f1_50": float(np.mean([i.f1(0.5) for i in images])),
            "count_error": float(np.mean([i.count_error for i in images])),
            "splits": float(sum(i.splits for i in images)),
            "merges": float(sum(i.merges for i in images)),
            "true_objects": float(sum(i.true_objects for i in images)),
            "predicted_objects": float(sum(i.predicted_objects for i in images))}


def nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) labels -> (H, W) by nearest neighbour (any integer type, any count of labels)."""
    if labels.shape == tuple(size):
        return labels
    rows = (np.arange(size[0]) * labels.shape[0] // size[0])
    cols = (np.arange(size[1]) * labels.shape[1] // size[1])
    return labels[rows[:, None], cols[None, :]]
