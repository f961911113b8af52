"""Predicting an image larger than the network's input by overlapping tiles (sliding window),
blended with Gaussian importance weights, as nnU-Net and MONAI's sliding_window_inference do.

A tile's prediction is least sure near its borders (the network sees zero padding there
instead of the neighbouring pixels), so each tile's probabilities are weighted by a Gaussian
centred on the tile (sigma = tile / 8 per side: 1 at the centre, exp(-8) ~ 3e-4 at the edge)
and every pixel gets the weighted mean of the tiles that cover it. The weight map is the outer
product of one Gaussian per side and the grid the product of one list of offsets per side,
so the sum of weights at each pixel is the outer product of two 1-D sums: only the (h, w)
float32 sum of weighted probabilities is image-sized, never a second map or the tiles.

Tile offsets are multiples of `step` (2**levels of the U-Net): each level max-pools by 2, so
a tile that starts there sees the same pooling grid as the whole image and its interior
equals the whole-image prediction (tests/test_tiling.py); the last tile of a row ends at the
image's edge, padded up to a multiple of `step` with edge pixels, as ONNX export pads.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

SIGMA_SCALE = 1 / 8          # sigma of the importance weights, a fraction of the tile side


def pad_size(side: int, step: int) -> int:
    """`side` rounded up to a multiple of `step`."""
    return -(-side // step) * step


def offsets(length: int, tile: int, stride: int) -> list[int]:
    """Where tiles start along one side of `length` pixels: 0, stride, 2 stride, ... and the
    last at length - tile, so that the tiles cover every pixel and overlap by at least
    tile - stride; [0] when one tile covers the side."""
    if length <= tile:
        return [0]
    return list(range(0, length - tile, stride)) + [length - tile]


def gaussian(tile: int, sigma_scale: float = SIGMA_SCALE) -> np.ndarray:
    """(tile,) float32 importance weights along one side: exp(-d**2 / (2 sigma**2)), d the
    distance of the pixel's centre from the tile's centre, sigma = tile * sigma_scale."""
    distance = np.arange(tile) - (tile - 1) / 2
    sigma = tile * sigma_scale
    return np.exp(-distance ** 2 / (2 * sigma ** 2)).astype(np.float32)


def weight_sums(length: int, tile: int, starts: list[int], weights: np.ndarray) -> np.ndarray:
    """(length,) float32: along one side, the sum of the weights of the tiles covering each
    pixel (tiles cut off at `length`, the image's own side, where they reach the padding)."""
    total = np.zeros(length + tile, np.float32)      # room for the last tile's padding
    for start in starts:
        total[start:start + tile] += weights
    return total[:length]


def tile_grid(size: tuple[int, int], tile: tuple[int, int], stride: tuple[int, int],
              step: int) -> tuple[tuple[int, int], list[int], list[int]]:
    """((tile height, tile width), row offsets, column offsets) for an image of `size` (h, w):
    each side padded to a multiple of `step`, tiles no larger than that padded side."""
    sides = [min(t, pad_size(s, step)) for s, t in zip(size, tile)]
    rows = offsets(pad_size(size[0], step), sides[0], stride[0])
    cols = offsets(pad_size(size[1], step), sides[1], stride[1])
    return (sides[0], sides[1]), rows, cols


def cut(image: np.ndarray, top: int, left: int, tile: tuple[int, int]) -> np.ndarray:
    """The (th, tw, C) window of `image` at (top, left); where it runs past the image's edge,
    the edge rows and columns are repeated (only that tile is padded, not the image)."""
    window = image[top:top + tile[0], left:left + tile[1]]
    short = (tile[0] - window.shape[0], tile[1] - window.shape[1])
    if short != (0, 0):
        window = np.pad(window, ((0, short[0]), (0, short[1]), (0, 0)), mode="edge")
    return window


def sliding_window(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
                   tile: tuple[int, int], stride: tuple[int, int], step: int,
                   batch: int = 4) -> np.ndarray:
    """(h, w, 3) uint8 image -> (h, w) float32 probabilities, or (h, w, K) if `predict` gives
    K channels: the Gaussian-weighted mean of overlapping tiles.

    `predict`: (B, th, tw, 3) uint8 -> (B, th, tw) or (B, th, tw, K) float32 (the
    Segmenter's network call with its test-time flips). Tiles of (th, tw) <= `tile`, offsets
    `stride` apart and multiples of `step` (tile_grid), predicted `batch` at a time.

    Memory: the image, the (h, w[, K]) float32 sum, and `batch` tiles with their network
    activations, whatever the image's size.
    """
    height, width = image.shape[:2]
    (th, tw), rows, cols = tile_grid((height, width), tile, stride, step)
    gy, gx = gaussian(th), gaussian(tw)
    weights = np.outer(gy, gx)
    total = None

    def add(placed: list[tuple[int, int]], tiles: list[np.ndarray]) -> None:
        nonlocal total
        probs = predict(np.stack(tiles))
        if total is None:
            total = np.zeros((height, width, *probs.shape[3:]), np.float32)
        for (top, left), p in zip(placed, probs):
            h, w = min(th, height - top), min(tw, width - left)
            w_map = weights[:h, :w] if p.ndim == 2 else weights[:h, :w, None]
            total[top:top + h, left:left + w] += p[:h, :w] * w_map

    for placed in chunks([(top, left) for top in rows for left in cols], batch):
        add(placed, [cut(image, top, left, (th, tw)) for top, left in placed])
    sum_y = weight_sums(height, th, rows, gy)
    sum_x = weight_sums(width, tw, cols, gx)
    for top in range(0, height, 256):        # the divisor a band of rows at a time
        band = np.outer(sum_y[top:top + 256], sum_x)
        total[top:top + 256] /= band if total.ndim == 2 else band[..., None]
    return total


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
