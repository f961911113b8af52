"""The plan's sizes: the network input from the data's fingerprint and the machine's memory,
the crop that training takes of it (unet.planning.plan applies them; constants in params.yaml
`plan:`), and how the model meets images of other sizes (scale_rule)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from unet.planning.fingerprint import FRAME_EXTENT, Fingerprint, Machine

# scale_rule: fit when at least this share of the sampled masks holding an object frame it.
FRAMED_SHARE = 0.5


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


def scale_rule(fp: Fingerprint) -> tuple[str, str]:
    """(predict_scale, why): how the model meets images of other sizes
    (unet.inference.segmenter.Segmenter).

    The rule: "fit" (each image resized to the training input) when at least FRAMED_SHARE of
    the sampled masks that hold an object frame it (unet.planning.fingerprint.frames_object: no
    object cut by the image border, the largest spanning at least a quarter of the image's height
    or width), else "native" (every image at the training scale). Photos frame their object
    whatever their resolution, so a larger photo holds a larger object; fields, tiles and
    scans keep a pixel size, and their objects are small beside the image or cut by its edges.
    Measured on the generated folders (tests/test_fingerprint.py), masks framed: built-in cars
    31 of 32 (binary and part masks), Carvana-like cars 16 of 16 (binary and part masks),
    VOC-like scenes 29 of 32; fluorescence fields 2 of 32, 64x64 tiles of blob fields 1 of
    30, cell fields 0 of 16, large scans 0 of 4. Its assumption: a photo's object
    lies inside the frame. Photos whose objects are usually cut by the border (close-ups,
    crowds) or small beside the frame come out "native", and a field holding one large whole
    object "fit": pass -P predict_scale for those. Without any object in the sampled masks the
    data cannot tell: "fit", as every model did before scales (one input-sized pass an image).
    """
    if fp.object_masks == 0:
        return "fit", "no object in the sampled masks to tell photos from fields (-P " \
                      "predict_scale=native for fields)"
    photos = fp.framed_masks / fp.object_masks >= FRAMED_SHARE
    return ("fit" if photos else "native",
            ("photos" if photos else "fields, tiles or scans")
            + f": {fp.framed_masks} of {fp.object_masks} sampled masks frame their object (none "
            f"cut by the border, the largest at least {FRAME_EXTENT:.0%} of a side; fit from "
            f"{FRAMED_SHARE:.0%})")
