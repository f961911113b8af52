"""What the training plan measures: the data (a fingerprint of the training split) and the
machine (its device and the speed of a few training steps)."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from unet.data.pairs import Pair, load_mask
from unet.images.formats import (
    DEEP_MODES,
    GREY_MODES,
    image_size,
    is_tiff,
    open_image,
    read_tiff,
)
from unet.labels.masks import VOID
from unet.network.model import UNet
from unet.network.precision import Precision, prepare
from unet.sampling import spread
from unet.training.losses import make_loss

# A mask frames its object (a photo) when its largest object spans at least this share of the
# image's height or width and no object touches the image border (unet.planning.sizing.scale_rule).
FRAME_EXTENT = 0.25


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What the plan needs to know of the data (measured on the training split)."""
    train_images: int
    val_images: int
    median_height: int
    median_width: int
    foreground_fraction: float     # mean share of object pixels per mask
    small_object_px: float | None  # 10th percentile of the objects' equivalent diameters
    classes: int = 2
    colour: bool = True            # the images have colour (not grey stored as RGB)
    object_masks: int = 0          # sampled masks holding an object (of up to `sample`)
    framed_masks: int = 0          # of those, the masks that frame it (`frames_object`)


def fingerprint(train: Sequence[Pair], val: Sequence[Pair], sample: int = 32,
                read_mask=None) -> Fingerprint:
    """Reads the sizes of up to 256 training images (headers only) and decodes up to `sample`
    masks, spread evenly over the training split, for object sizes and whether the masks frame
    their object (`frames_object`: unet.planning.sizing.scale_rule). `read_mask` reads a mask
    as the split does (default unet.data.pairs.load_mask); its objects are its nonzero values but
    the void pixels (unet.labels.masks.VOID)."""
    sizes = []
    for pair in spread(train, 256):
        sizes.append(image_size(pair.image))
    diameters, fractions, framed = [], [], []
    for pair in spread(train, sample):
        mask = load_mask(pair.mask) if read_mask is None else read_mask(pair.mask)
        mask = ((mask > 0) & (mask != VOID)).astype(np.uint8)
        fractions.append(float(mask.mean()))
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        # Specks of a few pixels are label noise, not objects to resolve.
        objects = stats[1:][stats[1:, cv2.CC_STAT_AREA] >= 4]
        diameters += [2 * math.sqrt(a / math.pi) for a in objects[:, cv2.CC_STAT_AREA]]
        if len(objects):
            framed.append(frames_object(objects, mask.shape))
    heights, widths = zip(*sizes)
    return Fingerprint(len(train), len(val), int(np.median(heights)), int(np.median(widths)),
                       float(np.mean(fractions)),
                       float(np.percentile(diameters, 10)) if diameters else None,
                       colour=any(has_colour(pair.image) for pair in spread(train, 8)),
                       object_masks=len(framed), framed_masks=sum(framed))


def frames_object(objects: np.ndarray, size: tuple[int, int]) -> bool:
    """Whether a mask of `size` (H, W) frames its object as a photo does: no object touches
    the image border and the largest (by area) spans at least FRAME_EXTENT of H or of W.
    `objects`: (N >= 1, 5) cv2.connectedComponentsWithStats rows (x, y, w, h, area). A field
    or a tile has objects placed regardless of its edges: they are small beside the image or
    cut by its border."""
    height, width = size
    x, y, w, h, area = objects.T
    cut = (x == 0) | (y == 0) | (x + w == width) | (y + h == height)
    largest = objects[np.argmax(area)]
    extent = max(largest[cv2.CC_STAT_HEIGHT] / height, largest[cv2.CC_STAT_WIDTH] / width)
    return bool(not cut.any() and extent >= FRAME_EXTENT)


def has_colour(path, tolerance: float = 3.0) -> bool:
    """Whether an image holds colour: its channels differ by more than `tolerance` grey
    levels on average (JPEG's chroma noise stays below that on a grey image saved as RGB).
    Decoded at about 1/8 scale (JPEG draft mode) since only the mean matters. A TIFF: its
    channels differ by more than `tolerance` / 255 of its value range."""
    if is_tiff(path):
        values = read_tiff(path)
        if values.ndim == 2 or values.shape[2] < 3:
            return False
        rgb = values[..., :3].astype(np.float32)
        span = float(rgb.max() - rgb.min()) or 1.0
        return float(np.abs(np.diff(rgb, axis=2)).mean()) > tolerance * span / 255
    with open_image(path) as image:
        if image.mode in GREY_MODES + DEEP_MODES:
            return False
        image.draft("RGB", (image.width // 8, image.height // 8))
        rgb = np.asarray(image.convert("RGB"), np.float32)
    return float(np.abs(np.diff(rgb, axis=2)).mean()) > tolerance


@dataclasses.dataclass(frozen=True)
class Machine:
    device: str          # cpu | cuda
    bf16: bool
    cores: int
    gpu_memory_gb: float = 0.0
    memory_gb: float = 0.0        # the machine's RAM (0: unknown, no memory cap)

    @classmethod
    def of(cls, precision: Precision) -> "Machine":
        memory = 0.0
        if precision.device.type == "cuda":
            memory = torch.cuda.get_device_properties(precision.device).total_memory / 2**30
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        return cls(precision.device.type, precision.autocast is torch.bfloat16,
                   len(os.sched_getaffinity(0)), round(memory, 1), round(ram, 1))


@dataclasses.dataclass(frozen=True)
class Speed:
    seconds_per_step: float       # one optimizer step at the planned batch and size
    eval_images_per_second: float
    channels_last: bool = True    # the faster memory format for training steps here


def measure_speed(features: Sequence[int], patch: tuple[int, int], size: tuple[int, int],
                  batch_size: int, precision: Precision, steps: int = 2,
                  formats: Sequence[bool] = (True, False)) -> Speed:
    """Times a few training steps on `patch`-sized crops in each memory format of `formats`
    (channels_last or not: which is faster depends on the CPU and the number format, so it
    is measured, not assumed), and forward passes on whole `size` inputs in the faster one,
    of a fresh UNet on random images, after a warm-up (the first call of each shape pays for
    kernel selection and allocation)."""
    timings = {channels_last: _measure(features, patch, size, batch_size,
                                       dataclasses.replace(precision, channels_last=channels_last),
                                       steps, forward=False)[0]
               for channels_last in formats}
    channels_last = min(timings, key=timings.get)
    _, eval_speed = _measure(features, patch, size, batch_size,
                             dataclasses.replace(precision, channels_last=channels_last), steps,
                             forward=True)
    return Speed(timings[channels_last], eval_speed, channels_last)


def _measure(features, patch, size, batch_size, precision: Precision, steps: int,
             forward: bool) -> tuple[float, float]:
    """(seconds per training step, or the forward passes' images per second)."""
    model = prepare(UNet(features=features), precision)   # as the Trainer places it
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = make_loss("bce_dice")
    images = precision.to_device(torch.rand(batch_size, 3, *patch))
    masks = (torch.rand(batch_size, 1, *patch, device=precision.device) > 0.5).float()
    whole = precision.to_device(torch.rand(batch_size, 3, *size))

    def sync():
        if precision.device.type == "cuda":
            torch.cuda.synchronize(precision.device)

    def train_step():
        with precision.context():
            logits = model(images)
        loss = loss_fn(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed(fn, n):
        """Seconds per call: the best of 3 repetitions of n calls, after a warm-up (a
        neighbour's burst of load slows one repetition, not all three)."""
        fn()
        sync()
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            sync()
            best = min(best, (time.perf_counter() - start) / n)
        return best

    if not forward:
        model.train()
        return timed(train_step, steps), 0.0
    model.eval()
    with torch.no_grad():
        return 0.0, batch_size / timed(lambda: model(whole), steps)
