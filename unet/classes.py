"""The classes a mask holds: binary (background and one object, a sigmoid head, as the seed
tutorial) or K > 2 classes (a softmax head over K channels).

A mask of K classes holds class indices 0..K-1 (0 = background): the indices of a palette
PNG/GIF, or the values of a single-channel PNG whose values are all small. Anything else (0/255
masks, antialiased greys) is binary: foreground above half the top value (unet.data.load_mask).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from unet import imageio
from unet.data import grey_array

MAX_INDEX_VALUE = 31   # a single-channel mask whose values are all <= this holds class indices


class BadLabel(ValueError):
    """A mask pixel whose value is not one of the declared classes."""


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
            return cls(("background", "foreground"))
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


def class_values(mask: Image.Image) -> tuple[np.ndarray, bool]:
    """A decoded mask -> ((H, W) values, whether they are class indices). A palette mask with
    colours holds indices (PASCAL VOC, this project's part masks); one whose palette is grey
    (Carvana's black/white GIFs) holds those greys, which are indices only when all are small,
    as are the values of a single-channel mask."""
    if mask.mode == "P":
        indices = np.asarray(mask)
        palette = np.asarray(mask.getpalette() or [], np.int64).reshape(-1, 3)
        used = palette[np.unique(indices)[np.unique(indices) < len(palette)]]
        if len(used) and not (used == used[:, :1]).all():
            return indices, True
    values = grey_array(mask)
    return values, int(values.max(initial=0)) <= MAX_INDEX_VALUE


def detect_count(masks: Sequence[Path], limit: int = 64) -> int:
    """The number of classes in these masks (up to `limit` of them, spread evenly): when most
    hold class indices, the largest index found in at least two of them (or in the only one),
    + 1; else 2. A mask that disagrees (a stray value, another format) does not decide the
    data's classes: the checks then report it by name."""
    step = max(1, len(masks) // limit)
    chosen = list(masks)[::step][:limit]
    seen: dict[int, int] = {}        # index -> masks holding it
    index_masks = 0
    for path in chosen:
        with imageio.open_pil(path) as mask:
            values, indices = class_values(mask)
        if indices:
            index_masks += 1
            for value in np.unique(values).tolist():
                seen[value] = seen.get(value, 0) + 1
    if index_masks * 2 <= len(chosen):
        return 2
    classes = [v for v, n in seen.items() if n >= min(2, index_masks)]
    return max(2, max(classes, default=1) + 1)


def load_class_map(path: Path, classes: Classes) -> np.ndarray:
    """A mask of class indices -> (H, W) uint8. BadLabel naming the file and the value when a
    pixel is not one of `classes`."""
    with imageio.open_pil(path) as mask:
        values, _ = class_values(mask)
    top = int(values.max(initial=0))
    if top >= classes.count:
        raise BadLabel(f"{path}: value {top} is not a class (0..{classes.count - 1}: "
                       f"{', '.join(classes.names)}); fix the mask, or declare the classes with "
                       f"-P classes=<name>,<name>,...")
    return values.astype(np.uint8)


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
