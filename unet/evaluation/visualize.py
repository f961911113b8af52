"""Panels a person can look at: image | ground truth | prediction | overlay."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from unet.labels.masks import VOC_VOID_COLOUR, VOID

OVERLAY_COLOUR = np.array([255, 0, 255], np.float32)   # magenta: rare in photos of cars
# Colours of classes 1, 2, ... in masks of K > 2 classes (background stays black / untinted).
CLASS_COLOURS = np.array([(255, 0, 255), (0, 170, 255), (255, 200, 0), (0, 220, 90),
                          (255, 60, 60), (150, 90, 255), (255, 140, 0), (0, 255, 230)], np.uint8)


def class_colours(count: int) -> np.ndarray:
    """(count, 3) uint8: black for the background, then CLASS_COLOURS (repeating)."""
    return np.concatenate([np.zeros((1, 3), np.uint8),
                           CLASS_COLOURS[np.arange(count - 1) % len(CLASS_COLOURS)]])


def colour_mask(mask: np.ndarray, classes: int = 2) -> np.ndarray:
    """(H, W) mask -> (H, W, 3) uint8: 0/1 as black/white, class indices in their colours,
    void pixels (VOID) in VOC's void colour."""
    void = mask == VOID
    labels = np.where(void, 0, mask)
    if classes == 2:
        out = np.repeat(labels[..., None].astype(np.uint8) * 255, 3, axis=2)
    else:
        out = class_colours(classes)[labels]
    out[void] = VOC_VOID_COLOUR
    return out


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5, classes: int = 2
            ) -> np.ndarray:
    """(H, W, 3) uint8 image, (H, W) mask (0/1, or class indices) -> the image with the
    objects tinted in (magenta, or each class's colour)."""
    out = image.astype(np.float32)
    m = mask.astype(bool)
    tint = OVERLAY_COLOUR if classes == 2 else class_colours(classes)[mask][m]
    out[m] = (1 - alpha) * out[m] + alpha * tint
    return out.astype(np.uint8)


def panel(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, classes: int = 2
          ) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) masks -> (H, k*W, 3) uint8: image | truth | pred | overlay
    (truth left out when None)."""
    parts = [image] + ([colour_mask(truth, classes)] if truth is not None else []) + \
        [colour_mask(pred, classes), overlay(image, pred, classes=classes)]
    return np.concatenate(parts, axis=1)


def legend(names: tuple[str, ...], width: int, row: int = 14) -> np.ndarray:
    """(rows, width, 3) uint8: a swatch and the name of each foreground class."""
    colours = class_colours(len(names))
    strip = Image.new("RGB", (width, row * (len(names) - 1) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for c, name in enumerate(names[1:], start=1):
        y = 2 + row * (c - 1)
        draw.rectangle([4, y, 4 + row - 4, y + row - 4], fill=tuple(int(v) for v in colours[c]))
        draw.text((4 + row + 2, y), f"{c} {name}", fill=(0, 0, 0))
    return np.asarray(strip)


def grid(panels: list[np.ndarray], names: tuple[str, ...] | None = None) -> np.ndarray:
    """Stacks equally wide panels vertically (with the classes' legend below, when named)."""
    rows = panels + ([legend(names, panels[0].shape[1])] if names else [])
    return np.concatenate(rows, axis=0)


def sample_grid(segmenter, dataset, count: int = 4) -> np.ndarray:
    """Panels for the first `count` items of a SegmentationDataset, at the training size (an
    instance model's as its classes background, interior, border, as its targets are)."""
    pairs = [dataset.resized(i) for i in range(min(count, len(dataset)))]
    images = np.stack([image for image, _ in pairs])
    preds = ([probs.argmax(-1).astype(np.uint8) for probs in segmenter.probabilities(images)]
             if getattr(segmenter, "instances", False) else segmenter.masks(images))
    names = getattr(segmenter, "classes", None)
    classes = len(names) if names else 2
    return grid([panel(image, truth, pred, classes) for (image, truth), pred in zip(pairs, preds)],
                names)


def confusion_image(matrix: np.ndarray, names: tuple[str, ...], cell: int = 48) -> np.ndarray:
    """A (K, K) confusion matrix (rows truth, columns prediction) as a picture: each cell's
    share of its row in grey (white = all) with the percentage, class names along the edges."""
    shares = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    margin = 8 + 6 * max(len(n) for n in names)
    k = len(names)
    picture = Image.new("RGB", (margin + k * cell, margin + k * cell), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for c, name in enumerate(names):
        draw.text((4, margin + c * cell + cell // 2 - 5), name, fill=(0, 0, 0))
        draw.text((margin + c * cell + 2, margin - 14), name[: cell // 6], fill=(0, 0, 0))
        for p in range(k):
            level = int(255 * (1 - shares[c, p]))
            box = [margin + p * cell, margin + c * cell, margin + (p + 1) * cell - 1,
                   margin + (c + 1) * cell - 1]
            draw.rectangle(box, fill=(level, level, level), outline=(200, 200, 200))
            draw.text((box[0] + 6, box[1] + cell // 2 - 5), f"{100 * shares[c, p]:.0f}%",
                      fill=(255, 0, 0) if level < 128 else (0, 0, 0))
    draw.text((margin, 2), "truth (rows) vs prediction (columns)", fill=(0, 0, 0))
    return np.asarray(picture)


def heat_image(heat: np.ndarray) -> np.ndarray:
    """(H, W) float in [0, 1] -> (H, W, 3) uint8: black (agreement or doubt) through red to
    yellow (the model is sure the mask is wrong there)."""
    h = np.clip(heat, 0, 1)
    return (np.stack([np.minimum(1, 2 * h), np.clip(2 * h - 1, 0, 1), np.zeros_like(h)], -1)
            * 255).astype(np.uint8)


def label_panel(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, heat: np.ndarray,
                classes: int = 2, caption: str = "") -> np.ndarray:
    """(H, W, 3) uint8, (H, W) mask and prediction, (H, W) disagreement in [0, 1] ->
    (H + 14, 4W, 3) uint8: image | mask | prediction | disagreement, a caption above."""
    row = np.concatenate([image, colour_mask(mask, classes), colour_mask(pred, classes),
                          heat_image(heat)], axis=1)
    strip = Image.new("RGB", (row.shape[1], 14), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 1), caption, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), row], axis=0)
