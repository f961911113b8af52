"""Decoding the image files the pipeline takes: JPEG and PNG through PIL, TIFF through tifffile
(microscopy, satellite and medical images: 8- or 16-bit, float, grey or RGB).

Every reader of images and masks (training, the data check, evaluate, predict, serving) goes
through here for TIFF, so that a TIFF is told apart by its first bytes (II*\\0 or MM\\0*, not
its name), its size is read from its header before any pixel is decoded (the pixel limit), and
its values come back as stored. What 16-bit and float values become for the network is
unet.images.intensity's business.
"""
from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
EXTS_TEXT = ".jpg, .jpeg, .png, .tif or .tiff"
TIFF_MAGIC = (b"II*\0", b"MM\0*")      # little- and big-endian TIFF headers
MAX_PIXELS = 100_000_000               # default limit per image: 100 megapixels (10000 x 10000)


class UnreadableImage(ValueError):
    """A file or byte string that is not a decodable image, or one over the pixel limit."""


class NotAnImage(UnreadableImage):
    """Bytes with no JPEG, PNG or TIFF header at all."""


def over_limit(height: int, width: int, max_pixels: int | None) -> UnreadableImage | None:
    """The refusal of an image of height x width pixels over max_pixels (None: no limit)."""
    if max_pixels is not None and height * width > max_pixels:
        return UnreadableImage(f"{width}x{height} pixels is over the limit of "
                               f"{max_pixels / 1e6:g} megapixels per image")
    return None


def is_tiff(source: bytes | Path) -> bool:
    """Whether these bytes, or the file's first bytes, are a TIFF header. A file that cannot
    be opened is not: the reader it then goes to names the error."""
    if isinstance(source, (bytes, bytearray)):
        head = bytes(source[:4])
    else:
        try:
            with open(source, "rb") as f:
                head = f.read(4)
        except OSError:
            return False
    return head in TIFF_MAGIC


def _stream(source: bytes | Path):
    return io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source


def tiff_size(source: bytes | Path) -> tuple[int, int]:
    """A TIFF's (height, width), from its header only."""
    try:
        with tifffile.TiffFile(_stream(source)) as tif:
            return _plane(tif)[0]
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
        raise UnreadableImage(f"unreadable TIFF ({e})") from None


def _plane(tif: tifffile.TiffFile) -> tuple[tuple[int, int], str]:
    """((height, width), axes) of the TIFF's first series; UnreadableImage for a stack or a
    volume, which is not one 2-D image."""
    series = tif.series[0]
    axes = series.axes
    extra = {a: n for a, n in zip(axes, series.shape) if a not in "YXS" and n > 1}
    if extra.keys() - {"C"} or extra.get("C", 1) > 4:
        raise UnreadableImage(f"a TIFF of shape {series.shape} (axes {axes}) is a stack or a "
                              f"volume, not one 2-D image: save each plane as its own file")
    shape = dict(zip(axes, series.shape))
    return (shape["Y"], shape["X"]), axes


def read_tiff(source: bytes | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """TIFF bytes or file -> its values as stored: (H, W) or (H, W, C) (C <= 4, channels
    last whatever the file's planar layout), dtype kept (uint8, uint16, int32, float32...).
    The size is checked against max_pixels (None: no limit) from the header, before decoding.
    UnreadableImage saying why not (a stack, a codec tifffile lacks, truncated, ...)."""
    try:
        with tifffile.TiffFile(_stream(source)) as tif:
            (height, width), axes = _plane(tif)
            refusal = over_limit(height, width, max_pixels)
            if refusal:
                raise refusal
            try:
                values = tif.series[0].asarray()
            except ValueError as e:
                if "imagecodecs" not in str(e):
                    raise
                values = _codec_fallback(source, e)
    except UnreadableImage:
        raise
    except Exception as e:  # any failure of the decoder on a damaged or hostile file: zlib's,
        # a zero in a header field, a tag of the wrong type, ... (tests/test_fuzz.py)
        raise UnreadableImage(f"unreadable TIFF ({type(e).__name__}: {e})".splitlines()[0]) from None
    kept = "".join(a for a, n in zip(axes, values.shape) if a in "YXSC")
    values = values.reshape([n for a, n in zip(axes, values.shape) if a in "YXSC"])
    if kept.index("Y") > 0:                  # planar (C, Y, X) -> (Y, X, C)
        values = np.moveaxis(values, 0, -1)
    if values.ndim == 3 and values.shape[2] == 1:
        values = values[..., 0]
    return values


def image_size(path: Path) -> tuple[int, int]:
    """An image file's (height, width), from its header only."""
    if is_tiff(path):
        return tiff_size(path)
    with Image.open(path) as image:
        return image.size[::-1]


def _codec_fallback(source: bytes | Path, error: ValueError) -> np.ndarray:
    """A TIFF compressed with a codec tifffile decodes only with the optional package
    imagecodecs (LZW, packbits: common in scanners and older microscopes), decoded by PIL's
    libtiff, which knows them for grey 8/16-bit, float and 8-bit RGB; the same values."""
    try:
        with Image.open(_stream(source), formats=["TIFF"]) as image:
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError):
        raise UnreadableImage(f"unreadable TIFF ({error}): pip install imagecodecs") from None


# PIL's modes, once: 16-bit greys (and 32-bit labels), values of more than 8 bits, greys of 8.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
DEEP_MODES = (*SIXTEEN_BIT_MODES, "F")
GREY_MODES = ("1", "L", "LA")


def read_deep(path: Path) -> np.ndarray | None:
    """The values of an image of more than 8 bits (16-bit, float), dtype kept; None for an
    8-bit one, told from a PNG/JPEG's header alone (no decoding)."""
    if is_tiff(path):
        values = read_tiff(path, None)
        return None if values.dtype == np.uint8 else values
    with Image.open(path) as image:
        return np.asarray(image) if image.mode in DEEP_MODES else None


def read_raw(path: Path) -> np.ndarray:
    """Any supported file -> its values as stored, dtype kept: a TIFF as read_tiff, a PIL
    image as np.asarray gives it ((H, W) for grey, 16-bit and palette images, whose palette
    indices are kept; (H, W, C) for colour). No pixel limit (training data)."""
    if is_tiff(path):
        return read_tiff(path, None)
    with Image.open(path) as image:
        return np.asarray(image)


@contextlib.contextmanager
def open_pil(path: Path) -> Iterator[Image.Image]:
    """The file as a PIL image, for the mask readers that look at PIL modes and palettes: a
    TIFF is decoded by tifffile and wrapped (uint8/uint16/int32 grey, uint8 RGB(A), float
    grey); ValueError naming what cannot be wrapped (e.g. a 16-bit RGB mask)."""
    if not is_tiff(path):
        with Image.open(path) as image:
            yield image
        return
    values = read_raw(path)
    if values.dtype == np.uint32 and values.max(initial=0) < 2**31:
        values = values.astype(np.int32)       # labels of a uint32 file, as PIL's mode "I"
    if values.dtype == np.float64:
        values = values.astype(np.float32)
    try:
        image = Image.fromarray(values)
    except (TypeError, ValueError, KeyError):
        raise ValueError(f"a TIFF of {values.dtype} {values.shape} cannot be a mask: save it "
                         f"as one channel of integers") from None
    with image:
        yield image
