"""Preprocessing presets (albumentations): resize once, then augment and normalize per read.

Train: Resize -> [RandomCrop] -> Rotate(limit) -> HorizontalFlip -> VerticalFlip -> appearance
       (ColorJitter, ChannelShuffle, ToGray) -> Normalize -> ToTensorV2.
Eval:  Resize -> Normalize -> ToTensorV2, with the same normalization as training (the seed
tutorial used mean 8.0 for validation, which shifted every validation input by -8).
Resize is deterministic, so the Dataset applies it once (`resize_pair`) and caches the result.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")   # its import would check the network

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

# What the colour augmentation varies besides brightness, contrast and saturation (`appearance`).
APPEARANCES = ("colour", "grey", "jitter")

# Images are scaled to [0, 1]: mean 0, std 1 after dividing by 255 (as in the seed tutorial).
NORMALIZE = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), max_pixel_value=255.0)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) uint8 -> (H, W, 3): area interpolation when shrinking (no aliasing on
    1918x1280 photos), bilinear when enlarging."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    shrink = image.shape[0] > height
    return cv2.resize(image, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) 0/1 mask -> (H, W), nearest neighbour so it stays 0/1."""
    height, width = size
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Image and mask to size=(H, W). They may arrive at different sizes when the JPEG was
    decoded in draft mode."""
    return resize_image(image, size), resize_mask(mask, size)


def appearance_transforms(strength: float, appearance: str = "colour") -> list:
    """How the look of an image varies in training: brightness, contrast (and saturation) by
    up to +-strength, and by `appearance`:
    - "colour" (colour images): any hue, channels swapped, sometimes greyscale. A folder of
      few groups (cars, slides) shows few object colours; a test car of a paint no training
      car had was missed entirely (Dice 0.03-0.19) until colour stopped being a cue;
    - "grey" (greyscale images): brightness and contrast only (hue means nothing there);
    - "jitter": hue by up to +-strength/4 (this project's setting before 2026-12).
    strength 0: none of it."""
    if strength <= 0:
        return []
    if appearance == "grey":
        return [A.ColorJitter(brightness=strength, contrast=strength, saturation=0, hue=0,
                              p=0.8)]
    hue = 0.5 if appearance == "colour" else min(0.5, strength / 4)
    jitter = A.ColorJitter(brightness=strength, contrast=strength, saturation=strength,
                           hue=hue, p=0.8)
    if appearance == "jitter":
        return [jitter]
    return [jitter, A.ChannelShuffle(p=0.3), A.ToGray(p=0.1)]


def train_transform(rotate_limit: float = 35, hflip: float = 0.5, vflip: float = 0.1,
                    color_jitter: float = 0.0, seed: int | None = None,
                    patch: tuple[int, int] | None = None,
                    appearance: str = "colour") -> A.Compose:
    """Augmentation on already-resized pairs; yields (3, H, W) float image, (H, W) mask, or
    with `patch` (h, w) a random crop of that size taken first. Colours vary by
    `color_jitter` and `appearance` (appearance_transforms)."""
    colour = appearance_transforms(color_jitter, appearance)
    crop = [A.RandomCrop(*patch)] if patch else []
    return A.Compose([
        *crop,
        A.Rotate(limit=rotate_limit, p=1.0),
        A.HorizontalFlip(p=hflip),
        A.VerticalFlip(p=vflip),
        *colour,
        A.Normalize(**NORMALIZE),
        ToTensorV2(),
    ], seed=seed)


def eval_transform() -> A.Compose:
    """Normalization only, identical to training's."""
    return A.Compose([A.Normalize(**NORMALIZE), ToTensorV2()])


def to_input(images: np.ndarray) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32 scaled as NORMALIZE does."""
    mean = np.asarray(NORMALIZE["mean"], np.float32) * NORMALIZE["max_pixel_value"]
    std = np.asarray(NORMALIZE["std"], np.float32) * NORMALIZE["max_pixel_value"]
    return ((images.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
