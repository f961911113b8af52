"""Pixel accuracy, Dice and IoU for binary masks, per image and pooled over a set.

For one image with TP, FP, FN, TN pixel counts (prediction vs. ground truth):
    accuracy = (TP + TN) / (TP + FP + FN + TN)
    dice     = 2 TP / (2 TP + FP + FN)
    iou      = TP / (TP + FP + FN)
Empty masks: when prediction and truth are both empty (TP + FP + FN == 0) the prediction is
perfect, so Dice and IoU are 1.0; when only one of them is empty they are 0.0.

"Per image" scores average the per-image values (every image weighs the same); "micro" scores
pool the counts of the whole set first (every pixel weighs the same).
"""
from __future__ import annotations

import torch

NAMES = ("accuracy", "dice", "iou")


def confusion(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0/1 masks (B, H, W) or (B, 1, H, W) -> (B, 4) int64 counts [TP, FP, FN, TN] per image."""
    pred = pred.reshape(pred.shape[0], -1).bool()
    target = target.reshape(target.shape[0], -1).bool()
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = pred.shape[1] - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).long()


def scores(counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., 4) counts [TP, FP, FN, TN] -> accuracy, dice, iou of shape (...) as float64."""
    tp, fp, fn, tn = counts.double().unbind(-1)
    errors = fp + fn
    both_empty = (tp + errors) == 0
    one = torch.ones_like(tp)
    return {
        "accuracy": (tp + tn) / (tp + errors + tn),
        "dice": torch.where(both_empty, one, 2 * tp / (2 * tp + errors).clamp_min(1)),
        "iou": torch.where(both_empty, one, tp / (tp + errors).clamp_min(1)),
    }


class SegmentationMetrics:
    """Accumulates per-image counts over batches; `compute()` gives per-image and micro scores."""

    def __init__(self):
        self.counts: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Adds a batch of 0/1 masks (B, H, W); returns its (B, 4) counts."""
        counts = confusion(pred, target).cpu()
        self.counts.append(counts)
        return counts

    def all_counts(self) -> torch.Tensor:
        """(N, 4) counts of every image seen so far (N may be 0)."""
        return torch.cat([torch.zeros(0, 4, dtype=torch.long), *self.counts])

    def per_image(self) -> dict[str, torch.Tensor]:
        """Scores of every image seen so far, each of shape (N,)."""
        return scores(self.all_counts())

    def compute(self) -> dict[str, float]:
        """{"accuracy", "dice", "iou"} averaged over images, plus "<name>_micro" pooled."""
        return summarize(self.all_counts())


def summarize(counts: torch.Tensor) -> dict[str, float]:
    """(N, 4) per-image counts -> {"accuracy", "dice", "iou"} averaged over the N images, plus
    "<name>_micro" of the pooled counts."""
    if len(counts) == 0:
        raise ValueError("no images were scored")
    result = {name: value.mean().item() for name, value in scores(counts).items()}
    result.update({f"{name}_micro": value.item() for name, value in scores(counts.sum(0)).items()})
    return result
