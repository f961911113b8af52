"""The plan's sizes: the network input from the data's fingerprint and the machine's memory,
and the crop that training takes of it (unet.planning applies them; constants in params.yaml
`plan:`)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from unet.fingerprint import Fingerprint, Machine


def round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def plan_size(fp: Fingerprint, levels: int, rules: dict) -> tuple[tuple[int, int], str]:
    """Input size: the median image scaled to the device's pixel budget, keeping its aspect,
    but never so small that the small objects shrink below min_object_px, and never enlarged;
    sides rounded to multiples of 2**levels (each level halves them). make_plan then caps it
    by memory (memory_pixels): large images with small objects (8000 x 6000 scans) would
    otherwise be kept at full size."""
    height, width = fp.median_height, fp.median_width
    scale = math.sqrt(rules["pixels"] / (height * width))
    why = f"median image scaled to ~{rules['pixels']} pixels"
    if fp.small_object_px and fp.small_object_px * scale < rules["min_object_px"]:
        scale = rules["min_object_px"] / fp.small_object_px
        why = (f"scaled so that small objects ({fp.small_object_px:.0f} px) keep "
               f">= {rules['min_object_px']} px")
    scale = min(1.0, scale)
    multiple = 2 ** levels
    return (round_to(height * scale, multiple), round_to(width * scale, multiple)), why


def memory_pixels(fp: Fingerprint, machine: Machine, features: Sequence[int], batch: int,
                  rules: dict) -> tuple[int, str] | None:
    """(the most input pixels memory allows, why), or None where the machine's memory is
    unknown. A forward pass of `batch` whole inputs (each validation round's, and the speed
    probe's) holds about forward_bytes x features[0] bytes per pixel of each input in the
    device's memory (the GPU's, else the RAM), and the train and val images are kept resized
    in RAM (4 bytes a pixel: image and mask); each may take memory_fraction of its memory."""
    fraction, limits = rules["memory_fraction"], []
    device_gb = machine.gpu_memory_gb if machine.device == "cuda" else machine.memory_gb
    if device_gb:
        per_pixel = batch * rules["forward_bytes"] * features[0]
        limits.append((int(fraction * device_gb * 2**30 / per_pixel),
                       f"capped by memory: a batch of {batch} whole inputs at "
                       f"{per_pixel // batch} bytes a pixel in {fraction:.0%} of {device_gb:g} GB"))
    images = fp.train_images + fp.val_images
    if machine.memory_gb and images:
        limits.append((int(fraction * machine.memory_gb * 2**30 / (4 * images)),
                       f"capped by memory: {images} images kept resized in {fraction:.0%} of "
                       f"{machine.memory_gb:g} GB of RAM"))
    return min(limits) if limits else None


def cap_size(size: tuple[int, int], pixels: int, multiple: int) -> tuple[int, int]:
    """`size` scaled down, keeping its aspect, to at most `pixels` (sides rounded down to
    multiples of `multiple`, at least one)."""
    factor = math.sqrt(pixels / (size[0] * size[1]))
    return tuple(max(multiple, int(side * factor) // multiple * multiple) for side in size)


def plan_patch(size: tuple[int, int], pixels: int, multiple: int) -> tuple[int, int]:
    """The input itself if it holds at most `pixels`, else the largest crop of about `pixels`
    with its aspect, sides multiples of `multiple` and no larger than the input's."""
    height, width = size
    if height * width <= pixels:
        return size
    aspect = width / height
    crop_height = round_to(math.sqrt(pixels / aspect), multiple)
    return min(height, crop_height), min(width, round_to(crop_height * aspect, multiple))
