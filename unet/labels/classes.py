"""The classes a mask holds: binary (background and one object, a sigmoid head, as the seed
tutorial) or K > 2 classes (a softmax head over K channels).

A mask of K classes holds class indices 0..K-1 (0 = background): the indices of a palette
PNG/GIF, or the values of a single-channel PNG whose values are all small. Anything else (0/255
masks, antialiased greys) is binary: foreground above half the top value
(unet.data.pairs.load_mask), except instance labels (every nonzero label is foreground) and void
pixels (unet.labels.masks).
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unet.data.pairs import grey_array, load_mask
from unet.errors import UserError
from unet.images.formats import open_pil
from unet.labels.masks import (
    MAX_INDEX_VALUE,
    VOID,
    labels_present,
    mask_says,
    palette_void,
)
from unet.sampling import spread


class BadLabel(ValueError):
    """A mask pixel whose value is not one of the declared classes."""


# A binary model's classes, and those of models and splits logged before classes were recorded.
BINARY_NAMES = ("background", "foreground")


@dataclasses.dataclass(frozen=True)
class Classes:
    names: tuple[str, ...]      # index -> name; names[0] is the background

    def __post_init__(self):
        if len(self.names) < 2:
            raise ValueError("at least two classes: the background and one object")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"class names repeat: {','.join(self.names)}")

    @classmethod
    def numbered(cls, count: int) -> "Classes":
        """Binary: (background, foreground); else background, class_1, ..., class_{count-1}."""
        if count == 2:
            return cls(BINARY_NAMES)
        return cls(("background",) + tuple(f"class_{i}" for i in range(1, count)))

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def binary(self) -> bool:
        return self.count == 2

    @property
    def out_channels(self) -> int:
        """The model's output channels: 1 logit (sigmoid) for binary, else one per class."""
        return 1 if self.binary else self.count

    @property
    def foreground(self) -> tuple[str, ...]:
        return self.names[1:]


def class_values(mask: Image.Image, ignore: int | None = None) -> tuple[np.ndarray, bool]:
    """A decoded mask -> ((H, W) values, whether they are class indices). A palette mask with
    colours holds indices (PASCAL VOC, this project's part masks); one whose palette is grey
    (Carvana's black/white GIFs) holds those greys, which are indices only when all are small
    (the void value `ignore` left aside), as are the values of a single-channel mask."""
    if mask.mode == "P":
        indices = np.asarray(mask)
        palette = np.asarray(mask.getpalette() or [], np.int64).reshape(-1, 3)
        used = palette[np.unique(indices)[np.unique(indices) < len(palette)]]
        if len(used) and not (used == used[:, :1]).all():
            return indices, True
    values = grey_array(mask)
    kept = values if ignore is None else values[values != ignore]
    return values, int(kept.max(initial=0)) <= MAX_INDEX_VALUE


@dataclasses.dataclass(frozen=True)
class Detected:
    """What a folder's masks hold: `count` classes, the void value (None: none) and whether
    they are instance labels (binary: every nonzero label is foreground); `declared`: by
    parameter mask_kind rather than found; `says`: how many of the masks looked at said
    what (unet.labels.masks.mask_says: "instances", "classes", "binary", "cannot tell")."""
    count: int
    ignore: int | None = None
    instances: bool = False
    declared: bool = False
    says: tuple[tuple[str, int], ...] = ()

    @property
    def kind(self) -> str:
        """The mask_kind these masks are read as: instances, classes or binary."""
        return "instances" if self.instances else "classes" if self.count > 2 else "binary"

    def describe(self) -> str:
        """How the kind was decided, e.g. "instances (mask_kind=auto, from 64 masks: 58
        instances; 6 cannot tell (...))"."""
        if self.declared:
            return f"{self.kind} (declared: mask_kind={self.kind})"
        says = dict(self.says)
        total = sum(says.values())
        told = ", ".join(f"{n} {what}" for what, n in self.says if what != "cannot tell" and n)
        unsure = says.get("cannot tell", 0)
        return (f"{self.kind} (mask_kind=auto, from {total} masks: {told or 'none could tell'}"
                + (f"; {unsure} cannot tell (empty, one value, or 2-3 values that are class "
                   f"indices or labels alike)" if unsure else "") + ")")


def detect(masks: Sequence[Path], ignore: str | int | None = "auto", limit: int = 64,
           kind: str = "auto") -> Detected:
    """The classes, void and instance labels of these masks (up to `limit` of them, spread
    evenly). `kind` (parameter mask_kind) "binary", "classes" or "instances" declares what the
    values are; "auto" lets the folder decide, never one mask:
    * void: `ignore` if declared (an int; None: no void); "auto": 255 when a palette mask uses
      it as void (unet.labels.masks.palette_void: VOC's void colour, or indices 0..K-1 plus 255);
    * instance labels: when at least half of the masks that can tell (unet.labels.masks.mask_says;
    not
      those of a colour palette) say instance labels. Masks that cannot tell (empty tiles, one
      object, two or three small values) have no say. This comes first, since label masks
      numbering few objects (values <= 31) look like class indices; a folder of class-index
      masks has several regions per class in most masks;
    * classes: when most masks hold class indices, the largest index found in at least two of
      them (or in the only one), + 1; else 2. A mask that disagrees (a stray value, another
      format) does not decide the data's classes: the checks then report it by name.
      Declared classes take every value as an index (UserError where they exceed 31)."""
    chosen = spread(masks, limit)
    if ignore == "auto":
        ignore = None
        for path in chosen:
            with open_pil(path) as mask:
                if palette_void(mask):
                    ignore = VOID
                    break
    seen: dict[int, int] = {}        # index -> masks holding it
    index_masks = 0
    says = dict.fromkeys(("instances", "classes", "binary", "cannot tell"), 0)
    for path in chosen:
        with open_pil(path) as mask:
            values, indices = class_values(mask, ignore)
            coloured = indices and mask.mode == "P"
        said = "classes" if coloured else mask_says(values, ignore) or "cannot tell"
        if said == "levels":         # several values, no compact objects: indices or greys
            said = "classes" if indices else "binary"
        says[said] += 1
        if indices or kind == "classes":
            index_masks += 1
            for value in labels_present(values, ignore).tolist():
                seen[value] = seen.get(value, 0) + 1
    said = tuple(says.items())
    if kind in ("binary", "instances"):
        return Detected(2, ignore, kind == "instances", True, said)
    told = says["instances"] + says["binary"] + says["classes"]     # the masks that can tell
    if kind == "auto" and says["instances"] and says["instances"] * 2 >= told:
        return Detected(2, ignore, True, False, said)
    if kind == "auto" and index_masks * 2 <= len(chosen):
        return Detected(2, ignore, False, False, said)
    classes = [v for v, n in seen.items() if n >= min(2, index_masks)]
    count = max(2, max(classes, default=1) + 1)
    if kind == "classes" and count > MAX_INDEX_VALUE + 1:
        raise UserError(f"parameter mask_kind=classes: the masks hold values up to "
                        f"{count - 1}, and class indices are 0..{MAX_INDEX_VALUE}; for object "
                        f"labels pass -P mask_kind=instances, for 0/255 masks mask_kind=binary")
    return Detected(count, ignore, False, kind == "classes", said)


def detect_count(masks: Sequence[Path], limit: int = 64) -> int:
    """The number of classes in these masks (detect, void by default)."""
    return detect(masks, limit=limit).count


def load_class_map(path: Path, classes: Classes, ignore: int | None = None) -> np.ndarray:
    """A mask of class indices -> (H, W) uint8, void pixels (value `ignore`) VOID. BadLabel
    naming the file and the value when a pixel is not one of `classes`."""
    with open_pil(path) as mask:
        values, _ = class_values(mask, ignore)
    void = values == ignore if ignore is not None else np.zeros(values.shape, bool)
    top = int(values[~void].max(initial=0))
    if top >= classes.count:
        raise BadLabel(f"{path}: value {top} is not a class (0..{classes.count - 1}: "
                       f"{', '.join(classes.names)}); fix the mask, declare the classes with "
                       f"-P classes=<name>,<name>,..., or for object labels -P "
                       f"mask_kind=instances")
    labels = values.astype(np.uint8)
    labels[void] = VOID
    return labels


def load_binary(path: Path, ignore: int | None = None, instances: bool = False) -> np.ndarray:
    """A binary mask -> (H, W) uint8 0/1, void pixels (value `ignore`) VOID. Instance labels
    and palette indices: every nonzero value is foreground; else (0/255, antialiased greys)
    above half the top value, as unet.data.pairs.load_mask, which reads it when there is no
    void."""
    if ignore is None and not instances:
        return load_mask(path)
    with open_pil(path) as mask:
        values, indices = class_values(mask, ignore)
    void = values == ignore if ignore is not None else np.zeros(values.shape, bool)
    if instances or (indices and mask.mode == "P"):
        foreground = values > 0
    else:
        foreground = values > int(values[~void].max(initial=0)) / 2
    labels = (foreground & ~void).astype(np.uint8)
    labels[void] = VOID
    return labels


def reader(classes: Classes, ignore: int | None = None, instances: bool = False
           ) -> Callable[[Path], np.ndarray]:
    """How the masks of a split are read: path -> (H, W) uint8, 0/1 (binary) or class indices,
    void pixels VOID."""
    if classes.binary:
        return functools.partial(load_binary, ignore=ignore, instances=instances)
    return functools.partial(load_class_map, classes=classes, ignore=ignore)


def parse(text: str, detected: int) -> Classes:
    """The classes from parameter `classes` ("auto": `detected` numbered classes; else comma
    names, background first). ValueError when the names are fewer than the data's classes."""
    if text.strip() in ("", "auto"):
        return Classes.numbered(detected)
    names = tuple(name.strip() for name in text.split(","))
    if any(not name for name in names):
        raise ValueError(f"classes={text}: an empty name; give comma-separated names, "
                         f"background first")
    if len(names) < detected:
        raise ValueError(f"classes={text}: {len(names)} names, but the masks hold "
                         f"{detected} classes (indices 0..{detected - 1})")
    return Classes(names)
