"""What a mask's values mean beyond classes: instance labels and the void (ignore) value.

Instance labels: a label image (microscopy, cell tracking) numbers its objects 1..N, one value
per object, 0 background, in a single channel of 8 or 16 bits. Thresholding it at half its top
value (unet.data.load_mask, right for 0/255 and antialiased masks) would make every object
labelled below top/2 background. A mask holds instance labels (`instance_objects`) when it has
at least MIN_LABELS nonzero values and nearly every value (LABEL_SHARE of them) is one compact
object: a single 8-connected region, at least 2 pixels thick (its box's shorter side), filling at
least MIN_FILL of its bounding box. Antialiased edges fail this: their in-between levels lie in
many thin pieces along the outlines. Measured on generated masks (tests/test_masks.py): 40 of
40 label masks of 4..200 discs and ellipses pass (overlapping ones too, later over earlier;
39 of 40 where earlier objects cut later ones into pieces),
and 0 of 40 antialiased 0/255 masks of ellipses and boxes, 0 of 40 blurred ones, 0 of 40
built-in cars and part masks. A class-index mask fails it when a class fills several regions
(parts, several objects of a class). Objects one pixel thin (fibres) are no compact objects. The folder decides (unet.classes.detect): masks of instance labels whose
values are all small (<= 31) would otherwise pass as class indices.

Void: a value that is no class (PASCAL VOC's 255 on object borders) is left out of the loss, the
metrics and the baselines. Masks are read with void pixels set to VOID whatever the declared
value: 255 is no class index (classes stay below 32), survives nearest-neighbour resizing and
rotation (whose mask fill is 0, unet.transforms), and is torch's CrossEntropyLoss ignore_index.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from unet.errors import UserError

VOID = 255                       # void pixels of a read mask (binary 0/1/VOID, or indices/VOID)
VOC_VOID_COLOUR = (224, 224, 192)   # PASCAL VOC's palette entry 255: "void / difficult"
MAX_INDEX_VALUE = 31             # unet.classes: values all <= this are class indices
MIN_LABELS = 4                   # fewer nonzero values: a mask of classes, not of objects
LABEL_SHARE = 0.9                # share of values that must be compact objects
MIN_FILL = 0.2                   # an object's pixels / its bounding box (a disc: 0.79)


def levels(values: np.ndarray) -> np.ndarray:
    """The distinct values of an integer mask, ascending (by counting for 8 and 16 bits: 3x
    faster than np.unique on a Carvana mask)."""
    if values.dtype.itemsize <= 2 and values.dtype.kind == "u":
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def instance_objects(values: np.ndarray, ignore: int | None = None) -> int | None:
    """(H, W) integer values of a single-channel mask -> the number of objects if it holds
    instance labels (module docstring), else None. `ignore` (a void value) is no object."""
    present = levels(values)
    present = present[(present > 0) & (present != (-1 if ignore is None else ignore))]
    if len(present) < MIN_LABELS:
        return None
    labels = values.astype(np.int64)
    if ignore is not None:
        labels[labels == ignore] = 0
    eight = np.ones((3, 3), bool)
    compact = 0
    # find_objects gives each value's bounding box in one pass: the cost follows the objects'
    # area, not values x image size (a 16-bit label image may number thousands of nuclei).
    for value, box in zip(range(1, int(present[-1]) + 1), ndimage.find_objects(labels)):
        if box is None:
            continue
        region = labels[box] == value
        if min(region.shape) < 2 or region.mean() < MIN_FILL:
            continue
        if ndimage.label(region, structure=eight)[1] == 1:
            compact += 1
    return len(present) if compact >= LABEL_SHARE * len(present) else None


def palette_void(mask: Image.Image) -> bool:
    """Whether a palette mask uses index 255 as void: its palette entry 255 is VOC's void colour,
    or the indices it uses are a few classes 0..K-1 (K <= 32) plus 255."""
    if mask.mode != "P":
        return False
    indices = np.unique(np.asarray(mask))
    if indices[-1] != VOID:
        return False
    palette = np.asarray(mask.getpalette() or [], np.int64).reshape(-1, 3)
    if len(palette) > VOID and tuple(palette[VOID]) == VOC_VOID_COLOUR:
        return True
    return len(indices) == 1 or int(indices[-2]) <= MAX_INDEX_VALUE


def parse_ignore(text: str | int | None) -> str | int | None:
    """Parameter ignore_index -> "auto" (VOC's 255 where the palette says so), None ("none":
    no void) or the declared value 0..65535. UserError naming the parameter otherwise."""
    text = str(text).strip().lower() if text is not None else "none"
    if text in ("auto", ""):
        return "auto"
    if text == "none":
        return None
    if text.isdigit() and int(text) <= 65535:
        return int(text)
    raise UserError(f"parameter ignore_index={text}: give auto (VOC's void 255 where the "
                    f"palette marks it), none, or the mask value to leave out (0..65535)")
