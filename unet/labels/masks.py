"""What a mask's values mean beyond classes: instance labels and the void (ignore) value.

Instance labels: a label image (microscopy, cell tracking) numbers its objects, one value per
object, 0 background, in a single channel of 8 or 16 bits: 1..N, or ids cut from a larger label
image (a tile of a field holds e.g. 7, 50, 83), objects cut by the image border. Thresholding
it at half its top value (unet.data.pairs.load_mask, right for 0/255 and antialiased masks) would
make every object labelled below top/2 background.

What one mask can tell (`mask_says`): a mask of one nonzero value (one object, one class, a
0/255 mask) or none (an empty tile) cannot tell labels from binary or classes: every reading
gives it the same foreground. A mask of several values says "instances" when nearly every value
(LABEL_SHARE of them) is one compact object (`compact_labels`): a single 8-connected region
filling at least MIN_FILL of its bounding box and at least 2 pixels thick, unless it touches
the image border (a nucleus cut by the tile edge may be a sliver). Antialiased edges fail this:
their in-between levels lie in thin pieces along the outlines; so do class-index masks where a
class fills several regions (parts, several objects of a class). Two or three compact values
that could also be class indices (all <= MAX_INDEX_VALUE) or grey levels (one of them the
type's top, 255 or 65535) cannot tell either. Measured on generated masks (tests/test_masks.py):
40 of 40 label masks of 4..200 discs and ellipses pass (overlapping ones too, later over earlier;
39 of 40 where earlier objects cut later ones into pieces), and 0 of 40 antialiased 0/255 masks
of ellipses and boxes, 0 of 40 blurred ones, 0 of 40 built-in cars and part masks. Objects one
pixel thin (fibres) away from the border are no compact objects. The folder decides
(unet.labels.classes.detect), from the masks that can tell only.

Void: a value that is no class (PASCAL VOC's 255 on object borders) is left out of the loss, the
metrics and the baselines. Masks are read with void pixels set to VOID whatever the declared
value: 255 is no class index (classes stay below 32), survives nearest-neighbour resizing and
rotation (whose mask fill is 0, unet.images.transforms), and is torch's CrossEntropyLoss
ignore_index.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from unet.errors import UserError

VOID = 255                       # void pixels of a read mask (binary 0/1/VOID, or indices/VOID)
VOC_VOID_COLOUR = (224, 224, 192)   # PASCAL VOC's palette entry 255: "void / difficult"
MAX_INDEX_VALUE = 31             # unet.labels.classes: values all <= this are class indices
MIN_LABELS = 4                   # this many compact values tell labels whatever the values
LABEL_SHARE = 0.9                # share of values that must be compact objects
MIN_FILL = 0.2                   # an object's pixels / its bounding box (a disc: 0.79)


def levels(values: np.ndarray) -> np.ndarray:
    """The distinct values of an integer mask, ascending (by counting for 8 and 16 bits: 3x
    faster than np.unique on a Carvana mask)."""
    if values.dtype.itemsize <= 2 and values.dtype.kind == "u":
        return np.flatnonzero(np.bincount(values.ravel()))
    return np.unique(values)


def labels_present(values: np.ndarray, ignore: int | None = None) -> np.ndarray:
    """The nonzero values of a mask but the void value `ignore`, ascending."""
    present = levels(values)
    return present[(present > 0) & (present != (-1 if ignore is None else ignore))]


def compact_labels(values: np.ndarray, ignore: int | None = None,
                   present: np.ndarray | None = None) -> int:
    """(H, W) integer values -> how many of its nonzero values (but `ignore`; `present`: them,
    if already found) are each one compact object (module docstring; the border exempts an
    object from the thickness)."""
    present = labels_present(values, ignore) if present is None else present
    if not len(present):
        return 0
    # Renumbered 1..n first: find_objects' cost follows the objects' area and their count, not
    # the top label (ids cut from a large field, or a hostile 50,000,000).
    top = int(values.max())
    if top < 1 << 20:
        lookup = np.zeros(top + 1, np.int32)
        lookup[present] = np.arange(1, len(present) + 1)
        labels = lookup[values]
    else:
        labels = np.where(np.isin(values, present), np.searchsorted(present, values) + 1, 0)
    height, width = labels.shape
    eight = np.ones((3, 3), bool)
    compact = 0
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == value
        edge = (box[0].start == 0 or box[1].start == 0 or box[0].stop == height
                or box[1].stop == width)
        if (min(region.shape) < 2 and not edge) or region.mean() < MIN_FILL:
            continue
        if ndimage.label(region, structure=eight)[1] == 1:
            compact += 1
    return compact


def mask_says(values: np.ndarray, ignore: int | None = None) -> str | None:
    """What a single-channel mask's values say they are: "instances" (labels, module
    docstring), "levels" (several values that are no compact objects each: class indices or
    antialiased greys, which unet.labels.classes tells apart), or None where the mask cannot tell
    (no or one nonzero value; two or three compact values that could be classes or grey levels)."""
    present = labels_present(values, ignore)
    if len(present) < 2:
        return None
    if compact_labels(values, ignore, present) < LABEL_SHARE * len(present):
        return "levels"
    if len(present) >= MIN_LABELS:
        return "instances"
    top = np.iinfo(values.dtype).max if values.dtype.kind in "ui" else None
    if present[-1] <= MAX_INDEX_VALUE or present[-1] == top:
        return None
    return "instances"


def instance_objects(values: np.ndarray, ignore: int | None = None) -> int | None:
    """(H, W) integer values of a single-channel mask -> the number of objects if the mask says
    it holds instance labels (`mask_says`), else None."""
    if mask_says(values, ignore) != "instances":
        return None
    return len(labels_present(values, ignore))


def palette_void(mask: Image.Image) -> bool:
    """Whether a palette mask uses index 255 as void: its palette entry 255 is VOC's void colour,
    or the indices it uses are classes 0..K-1 (1 < K <= 32, at least one foreground class)
    plus 255. A black-and-white palette mask of indices 0 and 255 alone is a binary mask: its
    255 is the object, not void."""
    if mask.mode != "P":
        return False
    indices = np.unique(np.asarray(mask))
    if indices[-1] != VOID:
        return False
    palette = np.asarray(mask.getpalette() or [], np.int64).reshape(-1, 3)
    if len(palette) > VOID and tuple(palette[VOID]) == VOC_VOID_COLOUR:
        return True
    return len(indices) > 1 and 0 < int(indices[-2]) <= MAX_INDEX_VALUE


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
