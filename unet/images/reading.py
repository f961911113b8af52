"""Reading an image for a model: a file or the bytes of a request -> (H, W, 3) uint8 RGB,
upright as EXIF says, 16-bit and float values through the model's intensity window
(unet.images.intensity), the pixel limit checked from the header before anything is decoded; and
the PNG a mask is written as. Shared by predict, serving, evaluate and the Spark engine."""
from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from unet.images.formats import (
    DEEP_MODES,
    IMAGE_FORMATS,
    MAX_PIXELS,
    UnreadableImage,
    UnwantedDtype,
    is_tiff,
    open_image,
    read_tiff,
)
from unet.images.intensity import NoWindow, Window, to_rgb8

# What a model without an intensity window reads of a TIFF (unet.images.intensity.to_rgb8):
# integers (16 bits through their top byte); a float image needs a window.
INTEGER_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32")


def read_tiff_rgb(source: bytes | Path, max_pixels: int | None, window: Window | None
                  ) -> np.ndarray:
    """TIFF bytes or file -> (H, W, 3) uint8 through `window` (unet.images.intensity.to_rgb8);
    UnreadableImage saying why not."""
    try:
        return to_rgb8(read_tiff(source, max_pixels, None if window else INTEGER_DTYPES), window)
    except UnwantedDtype as e:                # told by the header: nothing was decoded
        raise UnreadableImage(str(NoWindow(e.dtype))) from None
    except ValueError as e:                   # NoWindow: a float image, a model of 8 bits
        if isinstance(e, UnreadableImage):
            raise
        raise UnreadableImage(str(e)) from None


def decode(source: bytes | Path,
           size: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
           max_pixels: int | None = MAX_PIXELS, window: Window | None = None,
           upright: bool = True, formats: tuple[str, ...] = IMAGE_FORMATS
           ) -> tuple[np.ndarray, tuple[int, int]]:
    """The one reader of images: JPEG/PNG/TIFF bytes or file -> ((h, w, 3) uint8 RGB, (H, W)
    its full size). Every other reader of images is this one with its settings named.

    `size`: the size wanted (h, w), or a function of the full (H, W) that gives it
    (Segmenter.input_size: the image at the model's scale); a JPEG larger than that is decoded
    at 1/2, 1/4 or 1/8 of its size (PIL draft mode: the DCT scales, several times faster),
    never smaller than it; other images at full size; None: full size. `upright`: turned as
    its EXIF orientation says (phone photos as people see them: predict, serving); training
    and the data check read the pixels as stored (upright=False), the grid their masks were
    drawn on. 16-bit and float values go through the intensity `window`
    (unet.images.intensity). `max_pixels` (None: no limit of ours) and `formats` (PIL's
    format names besides TIFF) are checked from the header. Raises UnreadableImage saying why
    (not a JPEG/PNG/TIFF, truncated, over max_pixels, a bomb, ...).
    """
    if is_tiff(source):
        image = read_tiff_rgb(source, max_pixels, window)
        return image, image.shape[:2]
    with open_image(source, max_pixels, formats) as image:
        width, height = image.size
        transposed = upright and image.getexif().get(EXIF_ORIENTATION, 1) in TRANSPOSED
        if transposed:
            width, height = height, width
        target = size(height, width) if callable(size) else size
        if target is not None and image.format == "JPEG":
            stored = target[::-1] if transposed else target     # draft sees the file's sides
            image.draft("RGB", (stored[1], stored[0]))
        return (rgb_array(ImageOps.exif_transpose(image) if upright else image, window),
                (height, width))


def read_image(source: bytes | Path, max_pixels: int | None = MAX_PIXELS,
               window: Window | None = None) -> np.ndarray:
    """What predict and serving read: the (H, W, 3) uint8 image at full size, upright
    (decode)."""
    return decode(source, None, max_pixels, window)[0]


def read_for_model(source: bytes | Path,
                   size: tuple[int, int] | Callable[[int, int], tuple[int, int]],
                   max_pixels: int | None = MAX_PIXELS, window: Window | None = None
                   ) -> tuple[np.ndarray, tuple[int, int]]:
    """What predict and serving read for a model: ((h, w, 3) uint8 at about `size`, (H, W) its
    full upright size, where the mask belongs) (decode)."""
    return decode(source, size, max_pixels, window)


def load_image(path: Path, size: tuple[int, int] | None = None,
               window: Window | None = None) -> np.ndarray:
    """What training, evaluate and the plan read: an image of a training folder, (H, W, 3)
    uint8, as stored (not turned by EXIF: its mask was drawn on those pixels), decoded at
    about `size` (decode), within the limits the data check applied to every file."""
    return decode(path, size, MAX_PIXELS, window, upright=False)[0]


def rgb_array(image: Image.Image, window: Window | None = None) -> np.ndarray:
    """A decoded image of any mode -> (H, W, 3) uint8: grey and palette images are expanded,
    an alpha channel is dropped, 16-bit and float values go through the intensity `window`
    (unet.images.intensity.to_rgb8; PIL's convert("RGB") would clip them at 255, turning most
    of a 16-bit photo white)."""
    if image.mode in DEEP_MODES:
        return to_rgb8(np.asarray(image), window)
    return np.asarray(image.convert("RGB"))


EXIF_ORIENTATION, TRANSPOSED = 0x0112, (5, 6, 7, 8)   # orientations that swap width and height


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8, or (H, W) uint16 (a 16-bit PNG: label images) -> PNG bytes
    (lossless, small for masks)."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()
