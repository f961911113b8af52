"""Decoding the image files the pipeline takes: JPEG and PNG through PIL, TIFF through tifffile
(microscopy, satellite and medical images: 8- or 16-bit, float, grey or RGB).

Every reader of images and masks (training, the data check, evaluate, predict, serving) goes
through here for TIFF, so that a TIFF is told apart by its first bytes (II*\\0 or MM\\0*, not
its name), its values come back as stored, and nothing is decoded that its header does not
vouch for (`decode_budget`): the pixel limit, at most 4 samples a pixel, a dtype the caller
takes, a decoded size within DECODED_BYTES_PER_PIXEL bytes a pixel of the limit, strips and tiles
no larger than the image, no strip holding more bytes than its pixels, and a deflate or LZMA
strip that inflates past its pixels refused before tifffile inflates it. What 16-bit and float
values become for the network is unet.images.intensity's business.

One allow-list for every path: images are JPEG, PNG or TIFF; masks also GIF (Carvana's masks
are GIFs). Anything else (BMP, WebP, ICO, EPS, ... even when named .png) is refused by its first
bytes with a line that names what it is (`sniff`).
"""
from __future__ import annotations

import contextlib
import io
import lzma
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
EXTS_TEXT = ".jpg, .jpeg, .png, .tif or .tiff"
TIFF_MAGIC = (b"II*\0", b"MM\0*")      # little- and big-endian TIFF headers
MAX_PIXELS = 100_000_000               # default limit per image: 100 megapixels (10000 x 10000)
IMAGE_FORMATS = ("JPEG", "PNG")        # PIL's names; TIFF is read by tifffile
MASK_FORMATS = ("PNG", "GIF", "JPEG")  # GIF: Carvana's masks; JPEG: lossy, but users keep them
MAX_SAMPLES = 4                        # grey, grey + alpha, RGB, RGBA
# Bytes a pixel of the limit may decode to: RGBA at 16 bits, or one float64 channel.
DECODED_BYTES_PER_PIXEL = 8
# A strip or tile's stream may be this much larger than its pixels (an incompressible strip
# stored deflated grows by 0.03% and a few bytes), never more: a 1 MB strip for 16 x 16 pixels
# is a bomb or garbage.
STREAM_SLACK = 1.1, 4096
# Streams tifffile inflates itself (without imagecodecs), each checked first by a decompressor
# told to stop one byte past the strip's pixels: deflate and Adobe deflate, LZMA.
BOUNDED_STREAMS = {8: lambda: zlib.decompressobj(), 32946: lambda: zlib.decompressobj(),
                   34925: lambda: lzma.LZMADecompressor()}


class UnreadableImage(ValueError):
    """A file or byte string that is not a decodable image, or one over the pixel limit."""


class NotAnImage(UnreadableImage):
    """Bytes with no JPEG, PNG or TIFF header at all."""


class UnwantedDtype(UnreadableImage):
    """A TIFF whose samples are of a type the caller does not take (read before decoding)."""

    def __init__(self, dtype: np.dtype, wanted: tuple[str, ...]):
        super().__init__(f"a TIFF of {dtype} samples: {' or '.join(wanted)} wanted")
        self.dtype = dtype


def over_limit(height: int, width: int, max_pixels: int | None) -> UnreadableImage | None:
    """The refusal of an image of height x width pixels over max_pixels (None: no limit)."""
    if max_pixels is not None and height * width > max_pixels:
        return UnreadableImage(f"{width}x{height} pixels is over the limit of "
                               f"{max_pixels / 1e6:g} megapixels per image")
    return None


# The first bytes of formats the pipeline refuses, so that the refusal says what the file is.
SIGNATURES = ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"RIFF", "WebP or another RIFF file"),
              (b"\0\0\1\0", "ICO"), (b"%!PS", "PostScript (EPS)"), (b"\xc5\xd0\xd3\xc6", "EPS"),
              (b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"8BPS", "Photoshop (PSD)"),
              (b"\0\0\0\x0cjP", "JPEG 2000"), (b"%PDF", "PDF"))


def sniff(head: bytes) -> str | None:
    """The format these first bytes say, among those SIGNATURES name (None: none of them)."""
    return next((name for magic, name in SIGNATURES if head.startswith(magic)), None)


def not_allowed(head: bytes, formats: tuple[str, ...]) -> UnreadableImage:
    """The refusal of a file whose first bytes are no TIFF and no PIL format in `formats`."""
    allowed = f"{', '.join(formats)} or TIFF"
    found = sniff(head)
    if found in formats:                 # its header, then garbage
        return NotAnImage(f"not an image (a {found} header, then nothing {found} can read)")
    if found:
        return NotAnImage(f"a {found} file: only {allowed} files are read (convert it)")
    return NotAnImage(f"not an image (no {allowed} header)")


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


def _head(source: bytes | Path) -> bytes:
    """The first 16 bytes (those `sniff` looks at)."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:16])
    with open(source, "rb") as f:
        return f.read(16)


# A progressive JPEG is decoded once per scan: libjpeg writes 10 scans, mozjpeg about 20; a
# file of 2,000 repeated scans costs seconds of CPU for one image (about 2 ms a scan at 4 MP).
MAX_SCANS = 64
SOS = b"\xff\xda"      # a scan's start; entropy-coded data never holds it (0xFF is stuffed)


@contextlib.contextmanager
def open_image(source: bytes | Path, max_pixels: int | None = MAX_PIXELS,
               formats: tuple[str, ...] = IMAGE_FORMATS, decoding: bool = True
               ) -> Iterator[Image.Image]:
    """The PIL image of JPEG/PNG bytes or file (TIFF: see read_image), its header checked
    before any pixel is decoded: another format (unet.images.formats.not_allowed names it),
    more than max_pixels pixels (None: no limit of ours), or a JPEG of more than MAX_SCANS
    scans (counted only when `decoding`: reading a header alone costs no scan) raises
    UnreadableImage. A small file may declare a huge image (a few KB of PNG can say
    12000 x 12000): decoding it would take seconds and gigabytes, reading the header takes
    microseconds."""
    try:
        with warnings.catch_warnings():   # PIL's own warning at 89 MP: our limit decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(_stream(source), formats=formats)
        with image:
            width, height = image.size
            refusal = over_limit(height, width, max_pixels)
            if refusal:
                raise refusal
            if decoding and image.format == "JPEG":   # a header alone costs no scan
                data = bytes(source) if isinstance(source, (bytes, bytearray)) else \
                    Path(source).read_bytes()
                scans = data.count(SOS)
                if scans > MAX_SCANS:
                    raise UnreadableImage(f"a JPEG of {scans} scans (at most {MAX_SCANS}): "
                                          f"save it again as a plain JPEG")
            yield image
    except UnidentifiedImageError:
        raise not_allowed(_head(source), formats) from None
    except Image.DecompressionBombError:    # PIL refuses at open above twice its warning size
        limit = max_pixels or 2 * Image.MAX_IMAGE_PIXELS
        raise UnreadableImage(f"over the limit of {limit / 1e6:g} megapixels per image") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, UnreadableImage):
            raise
        raise UnreadableImage(f"unreadable image ({e})") from None


def tiff_size(source: bytes | Path) -> tuple[int, int]:
    """A TIFF's (height, width), from its header only."""
    try:
        with tifffile.TiffFile(_stream(source)) as tif:
            return _plane(tif)[0]
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as e:
        raise UnreadableImage(f"unreadable TIFF ({e})") from None


def _plane(tif: tifffile.TiffFile) -> tuple[tuple[int, int], str]:
    """((height, width), axes) of the TIFF's first series; UnreadableImage for a stack or a
    volume, which is not one 2-D image (planes C and samples S together, e.g. ImageJ's CYXS,
    are one too), and for more than MAX_SAMPLES channels."""
    series = tif.series[0]
    axes = series.axes
    extra = {a: n for a, n in zip(axes, series.shape) if a not in "YX" and n > 1}
    if extra.keys() - {"C", "S"} or len(extra) > 1:
        raise UnreadableImage(f"a TIFF of shape {series.shape} (axes {axes}) is a stack or a "
                              f"volume, not one 2-D image: save each plane as its own file")
    if max(extra.values(), default=1) > MAX_SAMPLES:
        raise UnreadableImage(f"a TIFF of {max(extra.values())} channels (axes {axes}): at "
                              f"most {MAX_SAMPLES} (grey, RGB, RGBA); save the channels the "
                              f"model needs")
    shape = dict(zip(axes, series.shape))
    return (shape["Y"], shape["X"]), axes


def decode_budget(tif: tifffile.TiffFile, max_pixels: int | None,
                  dtypes: tuple[str, ...] | None = None) -> None:
    """Checks, before tifffile decodes anything, that the TIFF's first series decodes to what
    its header says and no more (module docstring); UnreadableImage saying what does not hold.
    `dtypes`: the sample types the caller takes (numpy names; None: any)."""
    (height, width), _ = _plane(tif)
    refusal = over_limit(height, width, max_pixels)
    if refusal:
        raise refusal
    series = tif.series[0]
    if dtypes is not None and series.dtype.name not in dtypes:
        raise UnwantedDtype(series.dtype, dtypes)
    budget = (max_pixels or MAX_PIXELS) * DECODED_BYTES_PER_PIXEL
    if series.size * series.dtype.itemsize > budget:
        raise UnreadableImage(f"a TIFF of {series.dtype} {series.shape} decodes to more than "
                              f"{budget / 1e6:g} MB")
    image_bytes = series.size * series.dtype.itemsize // max(1, len(series.pages))
    for page in series.pages:
        key = page.keyframe              # a TiffFrame's tags are its keyframe's
        chunk = int(np.prod(key.chunks)) * key.dtype.itemsize     # one strip or tile
        if chunk > image_bytes + (1 << 20):
            raise UnreadableImage(f"a TIFF whose {'tiles' if key.is_tiled else 'strips'} of "
                                  f"{key.chunks} are larger than its {width}x{height} image")
        with_stream = BOUNDED_STREAMS.get(int(key.compression))
        fh = tif.filehandle
        for offset, count in zip(page.dataoffsets, page.databytecounts):
            if count > chunk * STREAM_SLACK[0] + STREAM_SLACK[1]:
                raise UnreadableImage(f"a TIFF strip of {count} bytes for {chunk} bytes of "
                                      f"pixels: damaged or hostile")
            if with_stream and count:
                fh.seek(offset)
                inflater = with_stream()
                try:
                    out = inflater.decompress(fh.read(count), chunk + 1)
                except (zlib.error, lzma.LZMAError):
                    continue        # tifffile's own error names it
                if len(out) > chunk:
                    raise UnreadableImage(f"a TIFF strip inflates past its {chunk} bytes of "
                                          f"pixels: a decompression bomb")


def read_tiff(source: bytes | Path, max_pixels: int | None = MAX_PIXELS,
              dtypes: tuple[str, ...] | None = None) -> np.ndarray:
    """TIFF bytes or file -> its values as stored: (H, W) or (H, W, C) (C <= 4, channels
    last whatever the file's planar layout), dtype kept (uint8, uint16, int32, float32...).
    Its header is checked against max_pixels (None: no limit of pixels; the byte budget then
    counts MAX_PIXELS) and `dtypes` before decoding (decode_budget). UnreadableImage saying
    why not (a stack, a codec tifffile lacks, a bomb, truncated, ...)."""
    try:
        with tifffile.TiffFile(_stream(source)) as tif:
            _, axes = _plane(tif)
            decode_budget(tif, max_pixels, dtypes)
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


def image_size(source: bytes | Path) -> tuple[int, int]:
    """An image file's or bytes' (height, width), from its header only."""
    if is_tiff(source):
        return tiff_size(source)
    with open_image(source, None, decoding=False) as image:
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
        values = read_tiff(path, MAX_PIXELS)
        return None if values.dtype == np.uint8 else values
    with open_image(path) as image:
        return np.asarray(image) if image.mode in DEEP_MODES else None


def read_raw(path: Path, formats: tuple[str, ...] = MASK_FORMATS) -> np.ndarray:
    """A TIFF or a file of `formats` -> its values as stored, dtype kept: a TIFF as read_tiff,
    a PIL image as np.asarray gives it ((H, W) for grey, 16-bit and palette images, whose
    palette indices are kept; (H, W, C) for colour)."""
    if is_tiff(path):
        return read_tiff(path)
    with open_image(path, MAX_PIXELS, formats) as image:
        return np.asarray(image)


@contextlib.contextmanager
def open_pil(path: Path) -> Iterator[Image.Image]:
    """The file as a PIL image, for the mask readers that look at PIL modes and palettes: a
    TIFF is decoded by tifffile and wrapped (uint8/uint16/int32 grey, uint8 RGB(A), float
    grey); ValueError naming what cannot be wrapped (e.g. a 16-bit RGB mask)."""
    if not is_tiff(path):
        with open_image(path, MAX_PIXELS, MASK_FORMATS) as image:
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
