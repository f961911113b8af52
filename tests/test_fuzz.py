"""Hostile bytes: seeded mutations of small valid JPEG, PNG and TIFF files through the readers
that take files from anyone (predict, serving: unet.images.reading) and through the data check.
Only the project's own UnreadableImage (or a finding) may come out, whatever the bytes, and no
call may take long or grow the process's resident memory by MAX_GROWTH_MB."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet.images.formats import UnreadableImage
from unet.images.reading import read_for_model, read_image

MUTATIONS = 300          # per format, each through both readers
MAX_GROWTH_MB = 200


def resident_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, in MB."""
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> float:
    """Resets the peak resident memory to the current one (Linux: clear_refs 5) and returns it,
    so that VmHWM afterwards is the highest any call since reached."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return resident_mb("VmRSS")


def valid_file(kind: str) -> bytes:
    """A small valid file: a 48 x 64 colour gradient (TIFF: deflate strips, so that zlib sees
    the mutations too)."""
    y, x = np.mgrid[0:48, 0:64]
    image = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    if kind == "TIFF":
        tifffile.imwrite(out, image, compression="zlib", rowsperstrip=8)
    else:
        Image.fromarray(image).save(out, format=kind)
    return out.getvalue()


def mutated(data: bytes, rng: np.random.Generator) -> bytes:
    """1 to 8 random bytes overwritten (headers are short: most land in them or the first
    data), or the file cut short."""
    out = bytearray(data)
    if rng.random() < 0.1:
        return bytes(out[:rng.integers(8, len(out))])
    span = min(len(out), 256) if rng.random() < 0.7 else len(out)
    for at in rng.integers(0, span, rng.integers(1, 9)):
        out[at] = rng.integers(0, 256)
    return bytes(out)


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "TIFF"])
def test_mutated_files_fail_only_as_unreadable_images_and_quickly(kind):
    rng = np.random.default_rng({"JPEG": 1, "PNG": 2, "TIFF": 3}[kind])
    data = valid_file(kind)
    assert read_image(data).shape == (48, 64, 3)            # the file itself reads
    escaped: dict[str, str] = {}
    outcomes: dict[str, int] = {"read": 0, "refused": 0}
    slowest = 0.0

    def timed(reader, data: bytes) -> float:
        started = time.perf_counter()
        try:
            image = reader(data)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            outcomes["read"] += 1
        except UnreadableImage as e:
            assert "\n" not in str(e)                        # one line
            outcomes["refused"] += 1
        except Exception as e:  # what the test is for: nothing else may escape
            escaped.setdefault(f"{type(e).__name__}: {e}"[:120], f"mutation {n}")
        return time.perf_counter() - started

    before = reset_peak()
    for n in range(MUTATIONS):
        bad = mutated(data, rng)
        for reader in (read_image, lambda b: read_for_model(b, (24, 32))[0]):
            seconds = timed(reader, bad)
            if seconds >= 1.0:       # a bomb is slow every time; a pause of the machine is not
                seconds = timed(reader, bad)
            slowest = max(slowest, seconds)
    growth = resident_mb("VmHWM") - before
    print(f"\n{kind}: {outcomes}, slowest call {slowest * 1000:.0f} ms, peak memory "
          f"+{growth:.0f} MB")
    assert not escaped, escaped
    assert slowest < 1.0     # a bound against decoding bombs, not a speed measurement
    assert growth < MAX_GROWTH_MB


@pytest.mark.parametrize("kind", ["JPEG", "PNG", "TIFF"])
def test_the_data_check_reports_mutated_files_instead_of_failing(kind, tmp_path):
    """split_data's check decodes every image and mask of a folder: a damaged file is a finding
    (unreadable_image, unreadable_mask, ...), never an exception that stops the check."""
    from unet.data.check import check_image, check_mask
    rng = np.random.default_rng({"JPEG": 4, "PNG": 5, "TIFF": 6}[kind])
    data = valid_file(kind)
    escaped: dict[str, str] = {}
    path = tmp_path / f"x.{kind.lower()}"
    before = reset_peak()
    for n in range(MUTATIONS):
        path.write_bytes(mutated(data, rng))
        for check in (check_image, lambda p: check_mask(p, (64, 48), multiclass_ok=True)):
            try:
                check(path)
            except Exception as e:  # what the test is for
                escaped.setdefault(f"{type(e).__name__}: {e}"[:120], f"mutation {n}")
    assert not escaped, escaped
    assert resident_mb("VmHWM") - before < MAX_GROWTH_MB


def test_a_png_declaring_more_than_pil_decodes_is_a_finding_and_one_line(tmp_path):
    """24 KB declaring 14000 x 14000 (196 MP, over PIL's 179 MP): the data check reports the
    image and the mask instead of crashing with PIL's DecompressionBombError, and the training
    reader names the limit it hit (the data check's, 100 MP)."""
    from unet.data.check import check_image, check_mask
    from unet.images.reading import load_image
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 30_000
    size, findings = check_image(bomb)
    assert size is None and [f.kind for f in findings] == ["unreadable_image"]
    assert [f.kind for f in check_mask(bomb, (64, 48), multiclass_ok=True)] == ["unreadable_mask"]
    with pytest.raises(UnreadableImage, match=r"^over the limit of 100 megapixels per image$"):
        load_image(bomb)
