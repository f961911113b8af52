"""One scorer for the project and its peers: their test predictions (class maps) against the
split's masks, read as the project's evaluate reads them, with the project's metrics
(unet.evaluation.metrics), so that a difference in the table is a difference of the systems,
not of the scoring."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from unet.data.pairs import Pair
from unet.evaluation.metrics import class_confusion, confusion, summarize
from unet.labels.classes import Classes


class BadPrediction(ValueError):
    """A test image without a prediction, or with one of another size than its mask."""


def image_counts(prediction: np.ndarray, truth: np.ndarray, classes: Classes) -> torch.Tensor:
    """One image's counts as evaluate counts them: (1, 4) for binary (nonzero predicted is the
    object), (1, K, 4) for K classes; void truth pixels count in none."""
    pred, target = torch.from_numpy(np.asarray(prediction))[None], torch.from_numpy(truth)[None]
    if classes.binary:
        return confusion(pred, target)
    return class_confusion(pred, target, classes.count)


def score(predictions: dict[str, np.ndarray], pairs: Sequence[Pair],
          read_mask: Callable[[Path], np.ndarray], classes: Classes) -> dict[str, float]:
    """{stem: (H, W) predicted class map} of every test pair -> "dice" (per-image mean, the
    project's test_dice; with K classes the mean over the foreground classes), "dice_pooled"
    (the counts of all images pooled), "iou", "iou_pooled", "accuracy", and with K classes
    "dice_<class>" of each. BadPrediction naming the stem of a missing or wrongly-sized map."""
    counts = []
    for pair in pairs:
        if pair.stem not in predictions:
            raise BadPrediction(f"no prediction for test image {pair.stem}")
        truth = read_mask(pair.mask)
        prediction = np.asarray(predictions[pair.stem])
        if prediction.shape != truth.shape:
            raise BadPrediction(f"the prediction for test image {pair.stem} is "
                                f"{prediction.shape}, its mask {truth.shape}")
        counts.append(image_counts(prediction, truth, classes))
    summary = summarize(torch.cat(counts), None if classes.binary else classes.names)
    return {(name.removesuffix("_micro") + "_pooled" if name.endswith("_micro") else name): value
            for name, value in summary.items()}
