"""Image/mask pairs on disk: discovery, decoding, the split by car, and the training Dataset."""
from __future__ import annotations

import dataclasses
import functools
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet.data.cache import ArrayCache
from unet.errors import UserError
from unet.images.formats import SIXTEEN_BIT_MODES, open_pil
from unet.images.intensity import Window
from unet.images.reading import load_image
from unet.images.transforms import resize_pair


@dataclasses.dataclass(frozen=True)
class Pair:
    stem: str          # e.g. "0cdf5b5d0ce1_01"
    image: Path
    mask: Path

    @property
    def group(self) -> str:
        """The group under the `auto` rule (GroupRule): "<car>_<view>" -> "<car>"."""
        return GroupRule().of(self.stem)


@dataclasses.dataclass(frozen=True)
class MaskNaming:
    """The pairing rule: image `X.<jpg|jpeg|png|tif|tiff>` pairs with mask `X{suffix}{ext}` in
    the mask folder, whatever the image's extension (X.tif with X_mask.png)."""
    suffix: str = "_mask"
    ext: str = ".gif"

    def mask_name(self, stem: str) -> str:
        return f"{stem}{self.suffix}{self.ext}"

    def stem_of(self, mask_name: str) -> str | None:
        """The image stem a mask file name pairs with; None for a name that is no mask's."""
        end = f"{self.suffix}{self.ext}"
        return mask_name[: -len(end)] if mask_name.endswith(end) else None

@dataclasses.dataclass(frozen=True)
class GroupRule:
    """What the split keeps on one side (parameter `group`): images of one group are never
    split between train, val and test, so that no car, slide, patient or sequence leaks.

    * "auto": Carvana's `<car>_<view>`: the stem before its last "_" (a stem without "_" is
      its own group). It assumes that the last "_" separates a view or frame number from the
      group's name; `tile_3`, `hela_t07` and `2024_06_01` break it (one group, or dates).
    * "none": every image is its own group (tiles of one field then land on both sides).
    * a regular expression, searched in the stem, whose first group is the group id:
      `^(.*)_t\\d+$` groups a time-lapse by sequence, `^(\\w+?)_` by the name's first word,
      `^hela_t(\\d)\\d$` by blocks of ten frames (a split by time).
    """
    text: str = "auto"

    def __post_init__(self):
        if self.text not in ("auto", "none"):
            self.pattern          # compiled once here: a bad expression is refused at once

    @functools.cached_property
    def pattern(self) -> re.Pattern | None:
        if self.text in ("auto", "none"):
            return None
        try:
            pattern = re.compile(self.text)
        except re.error as e:
            raise UserError(f"parameter group={self.text}: not a regular expression ({e}); "
                            f"give auto, none, or an expression whose first group is the "
                            f"group id, e.g. ^(.*)_t\\d+$") from None
        if pattern.groups < 1:
            raise UserError(f"parameter group={self.text}: the expression has no group; put "
                            f"the part of the name that is the group id in parentheses, e.g. "
                            f"^(.*)_t\\d+$")
        return pattern

    def of(self, stem: str) -> str:
        """The group of an image stem; UserError naming the stem where the expression does
        not match it or its first group is empty."""
        if self.text == "auto":
            return stem.rsplit("_", 1)[0]
        if self.text == "none":
            return stem
        found = self.pattern.search(stem)
        if found is None or not found.group(1):
            raise UserError(f"parameter group={self.text}: image {stem!r} does not match (or "
                            f"its first group is empty); write an expression that matches every "
                            f"image name, or use group=none")
        return found.group(1)

    def describe(self) -> str:
        return {"auto": "auto (the stem before its last \"_\": <group>_<view>)",
                "none": "none (every image its own group)"}.get(self.text,
                                                                 f"the expression {self.text}")


def parse_group(text: str) -> GroupRule:
    """Parameter `group` -> its rule (UserError naming the parameter if it is no rule)."""
    return GroupRule(str(text).strip() or "auto")


def split_pairs(pairs: Sequence[Pair], val_fraction: float, test_fraction: float,
                seed: int, rule: GroupRule = GroupRule()) -> dict[str, list[Pair]]:
    """Splits by group (all images of a group on one side; `rule`, default: by car)
    -> {"train", "val", "test"}.

    Groups are shuffled with `seed` and dealt to test, then val, until each holds its fraction
    of the images; the rest train. A fraction > 0 always gets at least one group.
    """
    groups: dict[str, list[Pair]] = {}
    for pair in sorted(pairs, key=lambda p: p.stem):
        groups.setdefault(rule.of(pair.stem), []).append(pair)
    names = sorted(groups)
    random.Random(seed).shuffle(names)
    wanted = [f for f in (test_fraction, val_fraction) if f > 0]
    if len(names) < len(wanted) + 1:
        example = f" ({names[0]!r})" if len(names) == 1 else ""
        raise UserError(f"only {len(names)} group(s){example} under parameter group="
                        f"{rule.text}: too few to split into train, val and test. Say what "
                        f"the groups are with -P group=none (every image its own) or -P "
                        f"group='<regex>' (its first group is the group id, e.g. "
                        f"'^(.*)_t\\d+$'), add images, or set val_fraction/test_fraction to 0")
    split: dict[str, list[Pair]] = {"train": [], "val": [], "test": []}
    total = len(pairs)
    for part, fraction in (("test", test_fraction), ("val", val_fraction)):
        while fraction > 0 and (not split[part] or len(split[part]) < fraction * total) \
                and len(names) > 1:
            split[part].extend(groups[names.pop()])
    for name in names:
        split["train"].extend(groups[name])
    return split


def grey_array(image: Image.Image) -> np.ndarray:
    """A decoded mask of any mode -> (H, W) integer levels: the luminance (palette looked up),
    or the raw values of a 16-bit mask."""
    if image.mode in SIXTEEN_BIT_MODES:
        return np.asarray(image)
    return np.asarray(image.convert("L"))


def load_mask(path: Path) -> np.ndarray:
    """Mask -> (H, W) uint8 in {0, 1}.

    Palette GIFs (Carvana) hold indices 0/1 whose palette maps to black/white, grey masks hold
    0/255 (or 0/65535 in 16 bits), antialiased masks hold values in between, and some masks hold
    0/1 directly: taking the luminance and thresholding at half its maximum handles all of them.
    """
    with open_pil(path) as mask:
        grey = grey_array(mask)
    top = int(grey.max())
    return (grey > top / 2).astype(np.uint8) if top > 0 else np.zeros_like(grey)


class SegmentationDataset(torch.utils.data.Dataset):
    """(image, mask) pairs, resized once to size=(H, W) and kept in memory.

    Resizing is the deterministic first step of every preset, so it runs once per pair;
    `transform` (augmentation, normalization, ToTensorV2) runs on every read. Items are
    (float image (3, H, W), float 0/1 mask (H, W)), or with masks of K > 2 classes (int64
    class indices (H, W)). With `cache`, the resized arrays are also
    kept on disk across runs (see unet.data.cache). 16-bit and float images reach uint8 through
    the intensity `window` measured on the training images (unet.images.intensity).
    """

    def __init__(self, pairs: Sequence[Pair], size: tuple[int, int], transform: Callable,
                 cache: ArrayCache | None = None, read_mask: Callable[[Path], np.ndarray] = None,
                 labels: str = "binary", window: Window | None = None):
        self.pairs = list(pairs)
        self.size, self.transform, self.disk_cache = size, transform, cache
        # Masks of K > 2 classes: read_mask gives class indices, and `labels` (e.g. "4
        # classes") keeps their cache entries apart from the binary ones of the same files.
        self.read_mask, self.labels = read_mask or load_mask, labels
        self.window = window           # 16-bit and float images -> uint8 (unet.images.intensity)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def with_transform(self, transform: Callable) -> "SegmentationDataset":
        """The same pairs and resized arrays (shared, not copied) under another transform."""
        view = SegmentationDataset(self.pairs, self.size, transform, self.disk_cache,
                                   self.read_mask, self.labels, self.window)
        view._cache = self._cache
        return view

    def resized(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The index-th pair at the training size: ((H, W, 3) uint8, (H, W) uint8 0/1)."""
        if index not in self._cache:
            self._cache[index] = self._load(index)
        return self._cache[index]

    def preload(self, threads: int = 2) -> "SegmentationDataset":
        """Decodes and resizes every pair now (PIL and OpenCV release the GIL), so that loader
        workers forked afterwards share the arrays instead of each decoding its own copy."""
        with ThreadPoolExecutor(max(1, threads)) as pool:
            for index, arrays in zip(range(len(self)), pool.map(self._load, range(len(self)))):
                self._cache[index] = arrays
        return self

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        pair = self.pairs[index]

        def decode():
            return resize_pair(load_image(pair.image, self.size, self.window),
                               self.read_mask(pair.mask), self.size)

        if self.disk_cache is None:
            return decode()
        # Another window makes other arrays of the same files: another cache entry.
        variant = self.labels if self.window is None else (
            f"{self.labels} window {self.window[0]:.6g},{self.window[1]:.6g}")
        return self.disk_cache.get_or_compute(pair.image, pair.mask, self.size, decode,
                                              variant)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.resized(index)
        out = self.transform(image=image, mask=mask)
        # Binary masks (0/1, void VOID) are float for the BCE; class indices are long.
        return out["image"], (out["mask"].float() if self.labels.startswith("binary")
                              else out["mask"].long())
