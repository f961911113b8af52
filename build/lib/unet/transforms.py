"""Preprocessing presets (albumentations): resize once, then augment and normalize per read.

Train: Resize -> [RandomCrop] -> Rotate(limit) -> HorizontalFlip -> VerticalFlip -> ColorJitter -> Normalize
       -> ToTensorV2.
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


def train_transform(rotate_limit: float = 35, hflip: float = 0.5, vflip: float = 0.1,
                    color_jitter: float = 0.0, seed: int | None = None,
                    patch: tuple[int, int] | None = None) -> A.Compose:
    """Augmentation on already-resized pairs; yields (3, H, W) float image, (H, W) mask, or
    with `patch` (h, w) a random crop of that size taken first.

    color_jitter s > 0 varies brightness, contrast and saturation by up to +-s and hue by up
    to +-s/4 of the colour circle (real photos differ in light and paint); 0 leaves colours.
    """
    colour = ([A.ColorJitter(brightness=color_jitter, contrast=color_jitter,
                             saturation=color_jitter, hue=min(0.5, color_jitter / 4), p=0.8)]
              if color_jitter > 0 else [])
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
