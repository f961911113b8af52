"""Pixel accuracy, Dice and IoU for binary masks, per image and pooled over a set.

For one image with TP, FP, FN, TN pixel counts (prediction vs. ground truth):
    accuracy = (TP + TN) / (TP + FP + FN + TN)
    dice     = 2 TP / (2 TP + FP + FN)
    iou      = TP / (TP + FP + FN)
Empty masks: when prediction and truth are both empty (TP + FP + FN == 0) the prediction is
perfect, so Dice and IoU are 1.0; when only one of them is empty they are 0.0.

"Per image" scores average the per-image values (every image weighs the same); "micro" scores
pool the counts of the whole set first (every pixel weighs the same).

K > 2 classes (class-index masks): every class c gets the counts of (pred == c) vs (truth == c);
Dice and IoU are scored per foreground class, and `dice`/`iou` are their mean over the
foreground classes; `accuracy` is the share of pixels whose class is right. An image where a
class is absent from both truth and prediction says nothing about that class: it is left out
of that class's per-image mean (nnU-Net does the same), and a class absent from every image
has no score (NaN) and is left out of the mean.

Void pixels (truth VOID, unet.labels.masks) count in none of TP, FP, FN, TN: whatever is predicted
there is neither right nor wrong.
"""
from __future__ import annotations

import torch

from unet.labels.masks import VOID

NAMES = ("accuracy", "dice", "iou")


def confusion(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
              ) -> torch.Tensor:
    """0/1 masks (B, H, W) or (B, 1, H, W), truth possibly VOID -> (B, 4) int64 counts
    [TP, FP, FN, TN] per image over the non-void pixels (`valid`, default truth != VOID)."""
    flat = target.reshape(target.shape[0], -1)
    valid = (flat != VOID) if valid is None else valid.reshape(flat.shape)
    pred = pred.reshape(pred.shape[0], -1).bool() & valid
    target = flat.bool() & valid
    tp = (pred & target).sum(1)
    fp = (pred & ~target).sum(1)
    fn = (~pred & target).sum(1)
    tn = valid.sum(1) - tp - fp - fn
    return torch.stack([tp, fp, fn, tn], dim=1).long()


def class_confusion(pred: torch.Tensor, target: torch.Tensor, count: int) -> torch.Tensor:
    """Class-index maps (B, H, W) -> (B, count, 4) int64 counts [TP, FP, FN, TN] of each class
    (background included) per image, over the pixels whose truth is not VOID."""
    valid = target != VOID
    return torch.stack([confusion(pred == c, target == c, valid) for c in range(count)], dim=1)


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
    """Accumulates per-image counts over batches; `compute()` gives per-image and micro scores.
    classes=2: 0/1 masks, counts (B, 4); classes=K > 2: class-index maps, counts (B, K, 4)."""

    def __init__(self, classes: int = 2):
        self.classes = classes
        self.counts: list[torch.Tensor] = []
        self._matrix = torch.zeros(classes, classes, dtype=torch.long)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Adds a batch of masks (B, H, W); returns its counts."""
        counts = (confusion(pred, target) if self.classes == 2
                  else class_confusion(pred, target, self.classes)).cpu()
        if self.classes > 2:
            valid = target.reshape(-1) != VOID
            pairs = (target.reshape(-1)[valid].long() * self.classes
                     + pred.reshape(-1)[valid].long()).cpu()
            self._matrix += torch.bincount(pairs, minlength=self.classes ** 2).reshape(
                self.classes, self.classes)
        self.counts.append(counts)
        return counts

    def all_counts(self) -> torch.Tensor:
        """(N, 4) or (N, K, 4) counts of every image seen so far (N may be 0)."""
        shape = (0, 4) if self.classes == 2 else (0, self.classes, 4)
        return torch.cat([torch.zeros(shape, dtype=torch.long), *self.counts])

    def per_image(self) -> dict[str, torch.Tensor]:
        """Scores of every image seen so far, each of shape (N,)."""
        return scores(self.all_counts())

    def compute(self) -> dict[str, float]:
        """{"accuracy", "dice", "iou"} averaged over images, plus "<name>_micro" pooled (and
        per class, for K > 2, under numbered class names)."""
        return summarize(self.all_counts())

    def confusion_matrix(self):
        """(K, K) int64 pixel counts of K > 2 classes, rows truth and columns prediction.
        Needs the maps themselves, so update() keeps a running matrix (see _matrix)."""
        return self._matrix.numpy()

    def compute_named(self, names: tuple[str, ...]) -> dict[str, float]:
        """compute() with the per-class scores under `names` (index -> name)."""
        return summarize(self.all_counts(), names)


def summarize(counts: torch.Tensor, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """(N, 4) per-image counts -> {"accuracy", "dice", "iou"} averaged over the N images, plus
    "<name>_micro" of the pooled counts. (N, K, 4) counts of K classes: see summarize_classes."""
    if len(counts) == 0:
        raise ValueError("no images were scored")
    if counts.ndim == 3:
        return summarize_classes(counts, names)
    result = {name: value.mean().item() for name, value in scores(counts).items()}
    result.update({f"{name}_micro": value.item() for name, value in scores(counts.sum(0)).items()})
    return result


def summarize_classes(counts: torch.Tensor, names: tuple[str, ...] | None = None
                      ) -> dict[str, float]:
    """(N, K, 4) per-image counts of K classes -> "dice_<name>", "iou_<name>" of each
    foreground class (names[1:]; default class_1 ...), their means "dice" and "iou", the
    pixel "accuracy", and the same pooled over the images as "<metric>_micro"."""
    names = names or ("background",) + tuple(f"class_{c}" for c in range(1, counts.shape[1]))
    per_image = scores(counts[:, 1:])                      # (N, K - 1) each
    present = counts[:, 1:, :3].sum(-1) > 0                # in truth or prediction
    pooled = scores(counts[:, 1:].sum(0))                  # (K - 1,)
    result = {}
    for metric in ("dice", "iou"):
        values = torch.where(present, per_image[metric], torch.nan).nanmean(0)   # (K - 1,)
        micro = torch.where(present.any(0), pooled[metric], torch.nan)
        for name, value, value_micro in zip(names[1:], values.tolist(), micro.tolist()):
            result[f"{metric}_{name}"], result[f"{metric}_{name}_micro"] = value, value_micro
        result[metric] = values.nanmean().item()
        result[f"{metric}_micro"] = micro.nanmean().item()
    right = counts[:, :, 0].sum(1).double()                 # TP summed over classes
    result["accuracy"] = (right / counts[:, 0].sum(1)).mean().item()
    result["accuracy_micro"] = (right.sum() / counts[:, 0].sum()).item()
    return result
