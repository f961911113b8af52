"""What a 16-bit or float image becomes for the network, whose input is (H, W, 3) uint8.

An intensity window (low, high), the 0.5th and 99.5th percentiles of the training images'
values (as microscopy tools set display ranges: a few saturated or dead pixels do not decide
it), is mapped linearly onto 0..255, values outside it clipped. It is measured once on the
training images, not per image (an image of background only would be stretched into noise),
and travels with the model (unet.inference.segmenter.Segmenter state, the logged model's metadata),
so that evaluate, predict and serving map every image as training did. 8-bit images never go
through a window: they reach the network as they are, as before windows existed.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from unet.sampling import spread

Window = tuple[float, float]      # (low, high): the values that become 0 and 255
PERCENTILES = (0.5, 99.5)


class NoWindow(ValueError):
    """A floating-point image given to a model that has no intensity window."""

    def __init__(self, dtype):
        super().__init__(f"a {dtype} image, and this model has no intensity window (it was "
                         f"trained on 8-bit images): convert the image to 8 or 16 bits, or use "
                         f"a model trained on such images")


def as_rgb(values: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1..4) values -> (H, W, 3) of the same dtype: grey repeated, an alpha
    channel (grey+alpha, RGBA) dropped."""
    if values.ndim == 2:
        values = values[..., None]
    if values.shape[2] in (1, 2):             # grey, grey + alpha
        return np.repeat(values[..., :1], 3, axis=2)
    return values[..., :3]


def to_rgb8(values: np.ndarray, window: Window | None) -> np.ndarray:
    """Decoded values (H, W[, C]) -> (H, W, 3) uint8 for the network.

    uint8: as they are. Others through `window`: low -> 0, high -> 255, linear, rounded,
    clipped (NaN -> 0). Without a window (a model trained on 8-bit images) integers keep the
    rule of before windows (16 bits scaled to 8: the top byte); a float image raises NoWindow,
    since nothing says which of its values are dark."""
    rgb = as_rgb(values)
    if rgb.dtype == np.uint8:
        return rgb
    if window is None:
        if np.issubdtype(rgb.dtype, np.integer):
            return (rgb.astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        raise NoWindow(rgb.dtype)
    low, high = window
    scaled = (rgb.astype(np.float32) - np.float32(low)) * np.float32(255 / (high - low))
    return np.rint(np.nan_to_num(scaled, nan=0.0)).clip(0, 255).astype(np.uint8)


def measure(images: Sequence[Path], read, sample: int = 32, values_per_image: int = 2**18
            ) -> Window | None:
    """The window of a training set: PERCENTILES of the values of up to `sample` images,
    spread evenly over `images`, of those that are not 8-bit (None if none is: the 8-bit path
    needs no window). `read(path)` decodes an image to its values, or None for an 8-bit one
    (unet.images.formats.read_deep); at most `values_per_image` values of each are taken, on a
    regular grid. All channels share one window, so colours keep their ratios."""
    pooled = []
    for path in spread(images, sample):
        values = read(path)
        if values is None or np.asarray(values).dtype == np.uint8:
            continue
        rgb = as_rgb(np.asarray(values))
        flat = rgb.reshape(-1)
        pooled.append(flat[::max(1, flat.size // values_per_image)].astype(np.float64))
    if not pooled:
        return None
    values = np.concatenate(pooled)
    values = values[np.isfinite(values)]
    if not values.size:
        return None
    low, high = (float(v) for v in np.percentile(values, PERCENTILES))
    return (low, high if high > low else low + 1.0)     # a flat image: no division by zero


def describe(window: Window | None) -> str:
    return "none (8-bit images)" if window is None else f"{window[0]:g}..{window[1]:g}"
