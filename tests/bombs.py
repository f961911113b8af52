"""Small hostile files for the tests: each a few KB to a MB that would cost a reader seconds or
gigabytes if it believed more than the header vouches for (docs/trust.md)."""
from __future__ import annotations

import functools
import io
import zlib

import numpy as np
import tifffile
from PIL import Image


def tiff_with_stream(stream: bytes, shape: tuple[int, int], **layout) -> bytes:
    """A uint8 TIFF declaring `shape` whose one strip (or tile) is `stream`, as given
    (deflate-compressed), whatever it inflates to."""
    out = io.BytesIO()
    with tifffile.TiffWriter(out) as writer:
        writer.write(iter([stream]), shape=shape, dtype="uint8", compression="zlib", **layout)
    return out.getvalue()


@functools.lru_cache
def tiff_zip_bomb(inflated_mb: int = 1024) -> bytes:
    """About 1 MB of TIFF declaring 16 x 16 pixels whose strip inflates to `inflated_mb` MB."""
    zeros = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    stream = b"".join(zeros.compress(chunk) for _ in range(inflated_mb)) + zeros.flush()
    return tiff_with_stream(stream, (16, 16), rowsperstrip=16)


def tiff_tile_bomb() -> bytes:
    """A 16 x 16 TIFF declaring one 32768 x 32768 tile (1 GiB decoded) of a few KB."""
    stream = zlib.compress(bytes(1 << 20), 9)
    return tiff_with_stream(stream, (16, 16), tile=(32768, 32768))


def tiff_inflating_strip() -> bytes:
    """A 256 x 256 TIFF (64 KB of pixels) whose strip is no longer than its pixels (so its
    size looks honest) but inflates to 64 MB."""
    return tiff_with_stream(zlib.compress(bytes(64 << 20), 9), (256, 256), rowsperstrip=256)


def tiff_of(values: np.ndarray, **options) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, values, **options)
    return out.getvalue()


def jpeg_with_scans(scans: int, size: tuple[int, int] = (2000, 2000)) -> bytes:
    """A progressive JPEG of `size` (width, height) whose last scan is repeated until the file
    holds `scans` scans: small (a flat image's scans are a few bytes each), and each scan is
    decoded over the whole image."""
    out = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(out, format="JPEG", progressive=True)
    data = out.getvalue()
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    have = data.count(b"\xff\xda")
    return data[:end] + data[last:end] * max(0, scans - have) + data[end:]


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few KB declaring width x height 1-bit pixels (all zero: zlib squeezes them)."""
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def saved_as(fmt: str, size: tuple[int, int] = (16, 12)) -> bytes:
    """A small image in PIL's format `fmt` (GIF, BMP, WEBP, ICO, EPS ...)."""
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(out, format=fmt)
    return out.getvalue()
