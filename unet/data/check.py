"""The data check split_data runs before anything trains: every file of an image/mask folder is
listed, paired and decoded, and every problem goes into one report.

Two kinds of findings:
* problems: the file can't be used (no partner, unreadable, sizes differ, a mask of several
  classes, two images with one stem). Policy `on_bad_data` decides: fail, or drop those pairs.
* notes: the file is used after a conversion or is ignored (grey, RGBA, 16-bit and float images,
  antialiased or empty masks, instance labels, hidden and non-image files). Counted, never
  fatal.

How the masks are read is decided for the whole folder (unet.labels.classes.detect) and said in the
report's READING lines: instance labels (every nonzero label foreground) and the void value
(its share of the pixels, left out of loss and metrics).
"""
from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unet.data.pairs import MaskNaming, Pair, grey_array
from unet.data.report import NOTES, PROBLEMS, DataReport, Finding
from unet.errors import UserError
from unet.images.formats import (
    DEEP_MODES,
    EXTS_TEXT,
    GREY_MODES,
    IMAGE_EXTS,
    MAX_PIXELS,
    is_tiff,
    open_image,
    open_pil,
    read_tiff,
)
from unet.labels import classes as labels
from unet.labels.classes import BadLabel, Classes
from unet.labels.masks import VOID, labels_present
from unet.sampling import spread

# A level between background and foreground that fills regions of at least this share of a
# mask is a class of its own; levels found only along edges are antialiasing.
MIN_CLASS_SHARE = 0.01
# A file declaring more pixels than PIL decodes (> 179 MP) is refused by PIL at open.
DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError,
                 Image.DecompressionBombError)

def _list(folder: Path, keep, notes: list[Finding]) -> list[Path]:
    """Plain files of folder for which keep(path) holds; hidden and other files become notes."""
    kept = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        if path.name.startswith("."):
            notes.append(Finding(path, "hidden_file"))
        elif keep(path):
            kept.append(path)
        else:
            notes.append(Finding(path, "non_image_file"))
    return kept


def check_image(path: Path) -> tuple[tuple[int, int] | None, list[Finding]]:
    """Decodes the image fully, within the readers' limits (unet.images.formats: JPEG, PNG or
    TIFF, at most MAX_PIXELS, the decode budget), as training will; returns its (width,
    height) (None if unreadable) and findings."""
    try:
        if is_tiff(path):            # tifffile: its dtype and channels say the same
            values = read_tiff(path, MAX_PIXELS)
            bands = 1 if values.ndim == 2 else values.shape[2]
            size, mode = values.shape[1::-1], f"TIFF {values.dtype}, {bands} channel(s)"
            alpha, grey, deep = bands in (2, 4), bands < 3, values.dtype != np.uint8
        else:
            with open_image(path, MAX_PIXELS) as image:
                size, mode = image.size, image.mode
                if image.format == "JPEG":   # 1/8 scale: still reads every byte, 3x faster
                    image.draft(image.mode, (size[0] // 8, size[1] // 8))
                image.load()
                alpha = "A" in image.getbands() or "transparency" in image.info
            grey, deep = mode in GREY_MODES, mode in DEEP_MODES
    except DECODE_ERRORS as e:
        return None, [Finding(path, "unreadable_image", str(e))]
    if deep:
        return size, [Finding(path, "16bit_image", mode)]
    findings = [Finding(path, "rgba_image", mode)] if alpha else []
    if grey:
        findings.append(Finding(path, "grayscale_image", mode))
    return size, findings


def check_mask(path: Path, image_size: tuple[int, int], multiclass_ok: bool,
               ignore: int | None = None, instances: bool = False) -> list[Finding]:
    """Decodes the mask fully and looks at its levels: size, classes, edges, emptiness; the
    void value `ignore` is no level. In a folder of instance labels, counts the objects."""
    try:
        with open_pil(path) as mask:
            mask.load()
            size = mask.size
            if ignore is None and not instances:
                grey = grey_array(mask)
            else:    # the raw values the void value names (palette indices) and labels are
                values, _ = labels.class_values(mask, ignore)
                grey = values if ignore is None else np.where(values == ignore, 0, values)
    except DECODE_ERRORS as e:
        return [Finding(path, "unreadable_mask", str(e))]
    if size != image_size:
        return [Finding(path, "size_mismatch", f"mask {size[0]}x{size[1]}, image "
                                               f"{image_size[0]}x{image_size[1]}")]
    if instances:
        objects = len(labels_present(grey))
        return [Finding(path, "instance_labels", f"{objects} objects")] if objects else \
            [Finding(path, "empty_mask")]
    levels, counts = np.unique(grey, return_counts=True)
    if len(levels) > 2:
        classes = 2 + _inner_levels(grey, int(levels[0]), int(levels[-1]))
        if classes > 2:
            if not multiclass_ok:
                return [Finding(path, "multiclass_mask", f"values {_values_text(levels)}: "
                                                         f"{classes} levels fill regions of "
                                                         f">= {MIN_CLASS_SHARE:.0%} of the mask")]
            return [Finding(path, "multiclass_mask_thresholded", f"{classes} classes")]
    if int(levels[-1]) == 0:
        return [Finding(path, "empty_mask")]
    if len(levels) > 2:
        edge = 1 - np.sort(counts)[-2:].sum() / grey.size
        return [Finding(path, "antialiased_mask",
                        f"{len(levels)} levels, {edge:.1%} of pixels between")]
    return []


def _values_text(values: np.ndarray, shown: int = 6) -> str:
    """A mask's distinct values for a message: "0, 7, 50, 83" or "0, 1, 2, ... (40 values)"."""
    text = ", ".join(str(v) for v in values[:shown].tolist())
    return text + (f", ... ({len(values)} values)" if len(values) > shown else "")


def _inner_levels(grey: np.ndarray, low: int, high: int) -> int:
    """How many levels strictly between low and high fill regions (pixels whose 4 neighbours
    share their level) of at least MIN_CLASS_SHARE of the mask. Antialiased edges are 1-2
    pixels wide, so their levels fill none; a class of its own does."""
    centre = grey[1:-1, 1:-1]
    inner = ((centre == grey[:-2, 1:-1]) & (centre == grey[2:, 1:-1])
             & (centre == grey[1:-1, :-2]) & (centre == grey[1:-1, 2:]))
    values = centre[inner]
    values = values[(values != low) & (values != high)]
    _, counts = np.unique(values, return_counts=True)
    return int((counts >= MIN_CLASS_SHARE * grey.size).sum())


def check_class_mask(path: Path, image_size: tuple[int, int], classes: Classes,
                     ignore: int | None = None) -> list[Finding]:
    """A mask of class indices: decodable, of the image's size, every value a class (or the
    void value `ignore`)."""
    try:
        with open_pil(path) as mask:
            size = mask.size
        class_map = labels.load_class_map(path, classes, ignore)
    except BadLabel as e:
        return [Finding(path, "bad_label", str(e).split(": ", 1)[1])]
    except DECODE_ERRORS as e:
        return [Finding(path, "unreadable_mask", str(e))]
    if size != image_size:
        return [Finding(path, "size_mismatch", f"mask {size[0]}x{size[1]}, image "
                                               f"{image_size[0]}x{image_size[1]}")]
    return [] if ((class_map > 0) & (class_map != VOID)).any() else [Finding(path, "empty_mask")]


def check_pair(pair: Pair, multiclass_ok: bool, classes: Classes | None = None,
               found: labels.Detected = labels.Detected(2)) -> list[Finding]:
    size, findings = check_image(pair.image)
    if size is None:
        return findings
    if classes is not None and not classes.binary:
        return findings + check_class_mask(pair.mask, size, classes, found.ignore)
    return findings + check_mask(pair.mask, size, multiclass_ok, found.ignore, found.instances)


def void_pixels(path: Path, ignore: int) -> tuple[int, int]:
    """(pixels of value `ignore`, all pixels) of a mask (its raw values: palette indices, or
    the grey levels of a single-channel mask)."""
    with open_pil(path) as mask:
        values, _ = labels.class_values(mask, ignore)
    return int((values == ignore).sum()), values.size


def detect_classes(masks: list[Path], declared: str, ignore: str | int | None = "auto",
                   mask_kind: str = "auto") -> tuple[Classes, labels.Detected]:
    """The classes, void and instance labels of these masks (unet.labels.classes.detect,
    `mask_kind` declaring what the values are; unreadable masks are left to the checks), the
    classes under the names of parameter `classes` ("auto": numbered)."""
    readable = []
    for path in masks:
        try:
            with open_pil(path) as mask:
                mask.load()
            readable.append(path)
        except DECODE_ERRORS:
            pass
    found = (labels.detect(readable, ignore, kind=mask_kind) if readable
             else labels.Detected(2, None if ignore == "auto" else ignore,
                                  mask_kind == "instances", mask_kind != "auto"))
    try:
        return labels.parse(declared, found.count), found
    except ValueError as e:
        raise UserError(f"parameter {e}") from None


def validate_folder(image_dir: Path, mask_dir: Path, mask_suffix: str = "_mask",
                    mask_ext: str = ".gif", multiclass_ok: bool = False,
                    threads: int | None = None, classes: str = "auto",
                    ignore_index: str | int | None = "auto", mask_kind: str = "auto"
                    ) -> DataReport:
    """Lists, pairs and decodes every file of image_dir and mask_dir (decoding in threads: PIL
    releases the GIL). Image `X.<jpg|jpeg|png|tif|tiff>` pairs with mask
    `X{mask_suffix}{mask_ext}`, whatever the image's extension (X.tif with X_mask.png).
    The classes are detected from the masks (or declared by `classes`, comma names); with
    K > 2 every mask value must be a class index. The void value is `ignore_index` ("auto":
    VOC's 255 where palette masks use it; None: none), instance labels are detected, unless
    `mask_kind` (binary, classes, instances) declares what the values are.

    Raises UserError only when there is nothing to check (a folder missing, no images).
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder in (image_dir, mask_dir):
        if not folder.is_dir():
            raise UserError(f"folder not found: {folder} (check data_dir, image_dir and mask_dir)")
    notes: list[Finding] = []
    candidates, problems = pair_files(image_dir, mask_dir, MaskNaming(mask_suffix, mask_ext),
                                      notes)
    found_classes, detected = detect_classes([pair.mask for pair in spread(candidates, 64)],
                                             classes, ignore_index, mask_kind)
    threads = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda pair: check_pair(pair, multiclass_ok, found_classes,
                                                      detected), candidates))
    pairs = []
    for pair, findings in zip(candidates, found):
        bad = [f for f in findings if f.kind in PROBLEMS]
        problems += bad
        notes += [f for f in findings if f.kind in NOTES]
        if not bad:
            pairs.append(pair)
    problems.sort(key=lambda f: str(f.path))
    share = 0.0
    if detected.ignore is not None and pairs:
        with ThreadPoolExecutor(threads) as pool:
            void, total = np.sum(list(pool.map(
                lambda pair: void_pixels(pair.mask, detected.ignore), pairs)), axis=0)
        share = float(void / total)
    return DataReport(pairs, problems, notes, found_classes, detected.ignore, share,
                      detected.instances, detected.describe())


def pair_files(image_dir: Path, mask_dir: Path, naming: MaskNaming, notes: list[Finding]
               ) -> tuple[list[Pair], list[Finding]]:
    """(pairs, problems) of two folders by `naming`: an image without a mask, a mask without an
    image and images of one stem in two formats are problems; files that are neither go to
    `notes`. UserError where the image folder holds no image."""
    images = _list(image_dir, lambda p: p.suffix.lower() in IMAGE_EXTS, notes)
    if not images:
        raise UserError(f"no images ({EXTS_TEXT}) in {image_dir}")
    masks = {naming.stem_of(p.name): p
             for p in _list(mask_dir, lambda p: naming.stem_of(p.name) is not None, notes)}
    by_stem: dict[str, list[Path]] = {}
    for path in images:
        by_stem.setdefault(path.stem, []).append(path)
    pairs, problems = [], []
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            problems += [Finding(p, "duplicate_stem", "also " + ", ".join(
                q.name for q in paths if q != p)) for p in paths]
        elif stem not in masks:
            problems.append(Finding(paths[0], "no_mask",
                                    f"expected {mask_dir / naming.mask_name(stem)}"))
        else:
            pairs.append(Pair(stem, paths[0], masks[stem]))
    problems += [Finding(path, "no_image", f"expected {image_dir / stem}{EXTS_TEXT}")
                 for stem, path in masks.items() if stem not in by_stem]
    return pairs, problems

def exclude(report: DataReport, stems: list[str], source: str) -> DataReport:
    """The report without the pairs of `stems` (parameter exclude, read from file `source`);
    each left-out image becomes a note naming the file. UserError naming a stem that is no
    image of the folder."""
    known = {p.stem for p in report.pairs} | {f.path.stem for f in report.problems}
    unknown = [stem for stem in stems if stem not in known]
    if unknown:
        raise UserError(f"parameter exclude={source}: {len(unknown)} stem(s) are no image of the "
                        f"folder, e.g. {unknown[0]!r}: write one image name without extension a "
                        f"line")
    left_out = set(stems)
    notes = report.notes + [Finding(p.image, "excluded", source) for p in report.pairs
                            if p.stem in left_out]
    return dataclasses.replace(report, pairs=[p for p in report.pairs if p.stem not in left_out],
                               notes=notes)
