"""The training target of a label image for instances: background, interior, border.

Where two objects of a label image touch, a binary foreground target joins them; the border
class marks each object's rim, `width` pixels deep, and so the line where two objects meet:
the network learns to see it, and the post-processing (unet.inference.instances) grows one
object from each interior. A pixel is border when its (2 width + 1)-square neighbourhood holds
another label (another object, or the background); every other object pixel is interior.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from unet.images.formats import open_pil
from unet.labels.classes import class_values, load_binary
from unet.labels.masks import VOID

BACKGROUND, INTERIOR, BORDER = 0, 1, 2
CLASSES = ("background", "interior", "border")
VOID_LABEL = -1                 # void pixels of a label image (load_labels)


def interior_border(labels: np.ndarray, width: int = 1) -> np.ndarray:
    """(H, W) integer labels (0 background, objects any nonzero values) -> (H, W) uint8 of
    BACKGROUND, INTERIOR, BORDER."""
    size = 2 * width + 1
    # Other labels in the square around a pixel: its neighbourhood's largest and smallest
    # labels differ (the edge of the image counts as nothing: 'nearest' repeats the pixel).
    mixed = ndimage.maximum_filter(labels, size, mode="nearest") != \
        ndimage.minimum_filter(labels, size, mode="nearest")
    target = np.where(labels > 0, INTERIOR, BACKGROUND).astype(np.uint8)
    target[(labels > 0) & mixed] = BORDER
    return target


def load_labels(path: Path, ignore: int | None = None, labelled: bool = True) -> np.ndarray:
    """A mask -> (H, W) int32 object labels (0 background; void pixels, value `ignore`, are
    VOID_LABEL). `labelled`: the mask holds instance labels, each value an object (palette
    indices, 8- or 16-bit values, any numbering); else it is a binary mask
    (unet.labels.classes.load_binary) whose 8-connected regions are the objects (objects that
    touch are then one)."""
    if labelled:
        with open_pil(path) as mask:
            values, _ = class_values(mask, ignore)
        void = values == ignore if ignore is not None else None
        labels = values.astype(np.int32)
    else:
        binary = load_binary(path, ignore)
        void = binary == VOID
        labels, _ = ndimage.label(binary == 1, structure=np.ones((3, 3), bool))
        labels = labels.astype(np.int32)
    if void is not None:
        labels[void] = VOID_LABEL
    return labels


def load_target(path: Path, ignore: int | None = None, labelled: bool = True,
                width: int = 1) -> np.ndarray:
    """A mask -> the training target (H, W) uint8: BACKGROUND, INTERIOR, BORDER (`load_labels`,
    then `interior_border` at the mask's own resolution), void pixels VOID."""
    labels = load_labels(path, ignore, labelled)
    void = labels == VOID_LABEL
    target = interior_border(np.where(void, 0, labels), width)
    target[void] = VOID
    return target
