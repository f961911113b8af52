"""Predicting many images: read ahead in threads, predict in batches, write as you go, resume.

Readers (a thread pool; PIL and OpenCV release the GIL) decode images a bounded number
ahead of the model, the model runs in the calling thread, and one writer thread writes each
batch's output while the next batch is predicted. At most `ahead` images (and about
AHEAD_PIXELS pixels) and two batches of masks are held at once, so memory does not grow with
the number of images.

Outputs (`Sink`s) say which images are already done, so the same command after a crash (even
`kill -9`) skips them:
* `CsvSink`: one Kaggle Carvana submission (`img,rle_mask`), rows appended a batch at a time
  and fsync'ed; a torn last line (a kill in the middle of a write) is cut off on start.
* `PngSink`: `<stem>_mask.png` (0/255) per image, written to a temporary file and renamed, so a
  mask that exists is complete; an overlay is written before its mask. For a model trained for
  instances also `<stem>_labels.png` (16-bit: 0 background, objects 1..N; a 32-bit TIFF
  `<stem>_labels.tif` beyond 65535 objects) and its objects' rows in `objects.csv`
  (unet.inference.instances.OBJECT_COLUMNS), both before the mask; on start, rows of images
  without a mask (a run killed between the two) are dropped, so none is written twice.
Images are taken in a fixed (sorted) order, so a resumed CSV is byte for byte the one an
uninterrupted run writes.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from unet.atomic import write_atomically
from unet.errors import UserError
from unet.evaluation import visualize
from unet.images.formats import MAX_PIXELS, UnreadableImage, image_size
from unet.images.reading import read_for_model, read_image
from unet.inference import instances, rle
from unet.inference.segmenter import Segmenter, as_written

SUBMISSION = "submission.csv"
# Decoded images held ahead of the model and in a batch: at most about this many pixels
# (~380 MB as RGB), so that large scans do not multiply the per-image bound (Segmenter).
AHEAD_PIXELS = 128_000_000
HEADER = "img,rle_mask\n"
MASK_SUFFIX, OVERLAY_SUFFIX, LABELS_SUFFIX = "_mask.png", "_overlay.jpg", "_labels"
OBJECTS = "objects.csv"


@dataclasses.dataclass
class Outcome:
    predicted: int = 0
    skipped: int = 0                                       # done by an earlier run
    failed: list[tuple[Path, str]] = dataclasses.field(default_factory=list)   # (image, why)

    def line(self) -> str:
        return (f"predicted {self.predicted}, skipped {self.skipped} (already done), "
                f"failed {len(self.failed)}")


class CsvSink:
    """The submission CSV `path`: header `img,rle_mask`, one row per image (its file name, the
    RLE of its mask at full size; unet.inference.rle)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def done_names(self) -> set[str]:
        """Repairs the file (a torn last line is cut off; a header is written into an empty
        or new file) and returns the names of the rows in it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = self.path.read_bytes() if self.path.exists() else b""
        keep = data[:data.rfind(b"\n") + 1]                # whole lines only
        header = HEADER.encode()
        if keep and not keep.startswith(header):
            raise UserError(f"{self.path} exists and is not a submission (its first line is not "
                            f"{HEADER.strip()}); move it away or choose another output_dir")
        if not keep:
            with open(self.path, "wb") as f:              # new, empty or a torn header
                f.write(header)
                f.flush()
                os.fsync(f.fileno())
            return set()
        if keep != data:
            os.truncate(self.path, len(keep))
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
        return {line.split(",", 1)[0] for line in keep.decode().splitlines()[1:]}

    def todo(self, images: list[Path]) -> list[Path]:
        done = self.done_names()
        return [p for p in images if p.name not in done]

    def write(self, items: list[tuple[Path, np.ndarray]]) -> None:
        rows = "".join(f"{path.name},{rle.encode(mask)}\n" for path, mask in items)
        self.append_rows(rows)

    def append_rows(self, rows: str) -> None:
        """Appends whole rows and makes them durable before returning."""
        with open(self.path, "a", newline="") as f:
            f.write(rows)
            f.flush()
            os.fsync(f.fileno())

    def describe(self) -> str:
        return str(self.path.resolve())


class PngSink:
    """`<stem>_mask.png` (0/255, full size; with K > 2 `classes`, the class indices 0..K-1)
    per image in output_dir; with overlay also `<stem>_overlay.jpg` (the mask tinted onto the
    photo, each class in its colour, decoded again at full size). With `objects` (a model
    for instances: items are (mask, labels, object probability)) also the label image and
    the objects' rows of `objects.csv` (module docstring)."""

    def __init__(self, output_dir: Path, overlay: bool = False, classes: int = 2,
                 objects: bool = False):
        self.output_dir, self.overlay, self.classes = Path(output_dir), overlay, classes
        self.objects = objects
        self.window = None         # the model's intensity window, for the overlays' photos

    def outputs(self, image: Path) -> list[Path]:
        names = [image.stem + MASK_SUFFIX] + ([image.stem + OVERLAY_SUFFIX] if self.overlay else [])
        return [self.output_dir / name for name in names]

    def todo(self, images: list[Path]) -> list[Path]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        todo = [p for p in images if not self.outputs(p)[0].exists()]
        if self.objects:
            self._drop_rows({p.name for p in todo})
        return todo

    def _drop_rows(self, redo: set[str]) -> None:
        """objects.csv without the rows of the images in `redo` (and a torn last line), or a
        new one with its header."""
        path = self.output_dir / OBJECTS
        data = path.read_text() if path.exists() else ""
        whole = data[:data.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(whole)))
        header = list(instances.OBJECT_COLUMNS)
        if rows and rows[0] != header:
            raise UserError(f"{path} exists and is not an objects table (its first line is not "
                            f"{','.join(header)}); move it away or choose another output_dir")
        kept = [header] + [row for row in rows[1:] if row and row[0] not in redo]
        if kept != rows or whole != data:
            write_atomically(path, lambda f: f.write(_csv_text(kept).encode()))

    def write(self, items: list[tuple[Path, np.ndarray]]) -> None:
        for path, output in items:
            mask, labels, probability = output if self.objects else (output, None, None)
            mask_path, *overlay_path = self.outputs(path)
            if overlay_path:
                art = visualize.overlay(read_image(path, None, self.window), mask,  # checked
                                        classes=self.classes)
                atomic_save(Image.fromarray(art), overlay_path[0], format="JPEG", quality=90)
            if self.objects:
                self._write_objects(path, labels, probability)
            atomic_save(Image.fromarray(as_written(mask, self.classes == 2)), mask_path,
                        format="PNG")

    def _write_objects(self, path: Path, labels: np.ndarray, probability: np.ndarray) -> None:
        """The label image, then the objects' rows appended (durable before the mask)."""
        name = self.output_dir / f"{path.stem}{LABELS_SUFFIX}"
        try:
            atomic_save(Image.fromarray(instances.label_image(labels)), Path(f"{name}.png"),
                        format="PNG")
        except ValueError:                  # beyond 65535 objects
            import tifffile
            write_atomically(Path(f"{name}.tif"),
                             lambda f: tifffile.imwrite(f, labels.astype(np.uint32)))
        rows = instances.object_rows(path.name, labels, probability)
        if rows:
            with open(self.output_dir / OBJECTS, "a", newline="") as f:
                f.write(_csv_text(rows))
                f.flush()
                os.fsync(f.fileno())

    def describe(self) -> str:
        return str(self.output_dir.resolve())


def _csv_text(rows: list) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def atomic_save(image: Image.Image, path: Path, **options) -> None:
    """Saves `image` (options: PIL's, `format` among them) whole or not at all (unet.atomic)."""
    write_atomically(path, lambda f: image.save(f, **options))


def read_ahead(paths: list[Path], size: tuple[int, int] | Callable[[int, int], tuple[int, int]],
               workers: int, ahead: int,
               max_pixels: int = MAX_PIXELS, ahead_pixels: int = AHEAD_PIXELS, intensity=None
               ) -> Iterator[tuple[Path, tuple[np.ndarray, tuple[int, int]] | UnreadableImage]]:
    """Yields (path, (array, full size)) or (path, UnreadableImage) in the order of `paths`,
    decoding up to `ahead` images ahead in `workers` threads, but no more than about
    `ahead_pixels` pixels (as their headers declare; one image at least): a folder of
    8000 x 8000 scans holds one or two ahead, not `ahead`. JPEGs are decoded no larger than
    `size` (the model input, or a function of an image's (H, W): read_for_model); one
    declaring more than max_pixels pixels is UnreadableImage, found from its header. 16-bit
    and float images go through the model's `intensity` window (unet.images.intensity)."""
    def read(path: Path):
        try:
            return read_for_model(path, size, max_pixels, intensity)
        except UnreadableImage as e:
            return e

    pending: deque[tuple[Path, Future, int]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="read") as pool:
        try:
            for path in paths:
                pending.append((path, pool.submit(read, path), declared_pixels(path)))
                while len(pending) >= ahead or (
                        len(pending) > 1 and sum(p for _, _, p in pending) > ahead_pixels):
                    path, future, _ = pending.popleft()
                    yield path, future.result()
            while pending:
                path, future, _ = pending.popleft()
                yield path, future.result()
        finally:
            for _, future, _ in pending:
                future.cancel()


def declared_pixels(path: Path) -> int:
    """The pixels an image file's header declares (microseconds: nothing is decoded); 0 for a
    file that cannot be opened, which its reader then names."""
    try:
        height, width = image_size(path)
    except (UnreadableImage, OSError):
        return 0
    return height * width


def predict_stream(segmenter: Segmenter, images: list[Path], sink, threshold: float = 0.5,
                   batch_size: int = 8, workers: int | None = None, log=None,
                   max_pixels: int = MAX_PIXELS) -> Outcome:
    """Predicts the images `sink` has not done yet, in batches, and writes them with `sink`.
    `workers` reader threads (default: the cores, at most 8). Unreadable images are named (via
    `log`; default: a line above the progress bar), counted as failed and skipped."""
    workers = workers or min(8, os.cpu_count() or 2)
    if isinstance(sink, PngSink):
        sink.window = segmenter.window     # overlays show the photo as the model saw it
    todo = sink.todo(images)
    outcome = Outcome(skipped=len(images) - len(todo))
    writes: deque[Future] = deque()
    batch: list[tuple[Path, np.ndarray, tuple[int, int]]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="write") as writer, \
            tqdm(total=len(todo), desc="predict", unit="img", dynamic_ncols=True,
                 disable=None) as bar:
        def flush():
            # A sink of objects takes (mask, labels, object probability) per image.
            outputs = segmenter.objects if getattr(sink, "objects", False) else segmenter.masks
            masks = list(outputs([a for _, a, _ in batch], threshold,
                                 sizes=[s for _, _, s in batch]))
            writes.append(writer.submit(sink.write, [(p, m) for (p, _, _), m in zip(batch, masks)]))
            while len(writes) > 1:                       # at most two batches of masks held
                writes.popleft().result()
            outcome.predicted += len(batch)
            bar.update(len(batch))
            batch.clear()

        for path, read in read_ahead(todo, segmenter.input_size, workers,
                                     2 * batch_size + workers, max_pixels,
                                     intensity=segmenter.window):
            if isinstance(read, UnreadableImage):
                outcome.failed.append((path, str(read)))
                (log or bar.write)(f"failed {path}: {read}")
                bar.update(1)
                continue
            batch.append((path, *read))
            if len(batch) == batch_size or sum(a.size // 3 for _, a, _ in batch) >= AHEAD_PIXELS:
                flush()
        if batch:
            flush()
        while writes:
            writes.popleft().result()
    return outcome
