"""Panels a person can look at: image | ground truth | prediction | overlay."""
from __future__ import annotations

import numpy as np

OVERLAY_COLOUR = np.array([255, 0, 255], np.float32)   # magenta: rare in photos of cars


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) 0/1 mask -> the image with the mask tinted in."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    out[m] = (1 - alpha) * out[m] + alpha * OVERLAY_COLOUR
    return out.astype(np.uint8)


def panel(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) 0/1 masks -> (H, k*W, 3) uint8: image | truth | pred | overlay
    (truth left out when None)."""
    to_rgb = lambda m: np.repeat(m[..., None].astype(np.uint8) * 255, 3, axis=2)  # noqa: E731
    parts = [image] + ([to_rgb(truth)] if truth is not None else []) + \
        [to_rgb(pred), overlay(image, pred)]
    return np.concatenate(parts, axis=1)


def grid(panels: list[np.ndarray]) -> np.ndarray:
    """Stacks equally wide panels vertically."""
    return np.concatenate(panels, axis=0)


def sample_grid(segmenter, dataset, count: int = 4) -> np.ndarray:
    """Panels for the first `count` items of a SegmentationDataset, at the training size."""
    pairs = [dataset.resized(i) for i in range(min(count, len(dataset)))]
    preds = segmenter.masks(np.stack([image for image, _ in pairs]))
    return grid([panel(image, truth, pred) for (image, truth), pred in zip(pairs, preds)])
