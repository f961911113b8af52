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

from unet.data import SIXTEEN_BIT_MODES, grey_array

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


def raw_levels(path: Path) -> tuple[np.ndarray, bool]:
    """The distinct raw values of a mask and whether they are class indices: a palette image's
    indices always are; a single-channel image's values are when all are <= MAX_INDEX_VALUE."""
    with Image.open(path) as mask:
        if mask.mode == "P":
            return np.unique(np.asarray(mask)), True
        if mask.mode in ("L", "I", "1") or mask.mode in SIXTEEN_BIT_MODES:
            levels = np.unique(np.asarray(mask.convert("L") if mask.mode == "1" else mask))
            return levels, int(levels.max()) <= MAX_INDEX_VALUE
        return np.unique(grey_array(mask)), False


def detect_count(masks: Sequence[Path], limit: int = 64) -> int:
    """The number of classes in these masks (up to `limit` of them, spread evenly): the largest
    class index + 1 when they hold indices with some index above 1, else 2 (binary)."""
    step = max(1, len(masks) // limit)
    top = 1
    for path in list(masks)[::step][:limit]:
        levels, indices = raw_levels(path)
        if not indices:
            return 2
        top = max(top, int(levels.max()))
    return top + 1


def load_class_map(path: Path, classes: Classes) -> np.ndarray:
    """A mask of class indices -> (H, W) uint8. BadLabel naming the file and the value when a
    pixel is not one of `classes`."""
    with Image.open(path) as mask:
        values = np.asarray(mask) if mask.mode == "P" else grey_array(mask)
    top = int(values.max()) if values.size else 0
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
