"""Run-length encoding of masks as Kaggle's Carvana submissions write them.

A mask (H, W) of 0/1 is read row-major (row 0 left to right, then row 1, ...); each run of 1s
is written as its 1-indexed start and its length, pairs separated by spaces:
"1 3 10 2" = pixels 1-3 and 10-11. An empty mask is "". numpy only, vectorised.

    rle = encode(mask)                       # "start length start length ..."
    mask = decode(rle, height, width)        # back to (H, W) uint8 0/1
"""
from __future__ import annotations

import numpy as np


def encode(mask: np.ndarray) -> str:
    """(H, W) mask (any dtype; nonzero = object) -> "start length ..." (1-indexed, row-major)."""
    flat = np.asarray(mask).reshape(-1) != 0
    # Pad with a 0 on each side: every run then begins at a 0->1 step and ends at a 1->0 step.
    padded = np.concatenate([[False], flat, [False]])
    steps = np.flatnonzero(padded[1:] != padded[:-1])   # 0-indexed edges: starts, ends, ...
    if steps.size == 0:
        return ""
    starts, ends = steps[0::2], steps[1::2]
    runs = np.empty(steps.size, np.int64)
    runs[0::2], runs[1::2] = starts + 1, ends - starts
    return " ".join(map(str, runs.tolist()))


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """"start length ..." (1-indexed, row-major) -> (height, width) uint8 0/1.

    ValueError if the text is not pairs of positive integers inside the image, in order."""
    numbers = np.array(rle.split(), dtype=np.int64) if rle.strip() else np.zeros(0, np.int64)
    if numbers.size % 2:
        raise ValueError(f"RLE has {numbers.size} numbers: expected start/length pairs")
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    ends = starts + lengths
    if numbers.size and (starts.min() < 0 or lengths.min() < 1 or ends.max() > height * width
                         or np.any(starts[1:] < ends[:-1])):
        raise ValueError(f"RLE runs must be positive, in order, not overlapping and inside "
                         f"{height}x{width}")
    # +1 at each start, -1 at each end; the running sum is 1 inside a run.
    edges = np.zeros(height * width + 1, np.int8)
    np.add.at(edges, starts, 1)
    np.add.at(edges, ends, -1)
    return np.cumsum(edges[:-1], dtype=np.int8).astype(np.uint8).reshape(height, width)
