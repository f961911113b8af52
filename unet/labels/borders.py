"""The training target of a label image for instances: background, interior, border.

Where two objects of a label image touch, a binary foreground target joins them; the border
class marks each object's rim, `width` pixels deep, and so the line where two objects meet:
the network learns to see it, and the post-processing (unet.inference.instances) grows one
object from each interior. A pixel is border when its (2 width + 1)-square neighbourhood holds
another label (another object, or the background); every other object pixel is interior.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, INTERIOR, BORDER = 0, 1, 2
CLASSES = ("background", "interior", "border")


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
