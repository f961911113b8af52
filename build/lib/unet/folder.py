"""Segmenting a folder of photos: one `<stem>_mask.png` (and overlay) per image, at its size."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from unet import visualize
from unet.data import IMAGE_EXTS
from unet.errors import UserError
from unet.predict import Segmenter, UnreadableImage, read_image

MASK_SUFFIX, OVERLAY_SUFFIX = "_mask.png", "_overlay.jpg"


@dataclasses.dataclass
class FolderResult:
    written: list[Path]                   # the masks
    skipped: list[tuple[Path, str]]       # (image, why) for each one that could not be read


def plan(input_dir: Path, output_dir: Path, overlay: bool) -> tuple[list[Path], int]:
    """The images of input_dir (sorted; not sub-folders, not hidden files) and how many other
    files there are. UserError if a write would land on an input or two images share a stem."""
    input_dir, output_dir = Path(input_dir).expanduser(), Path(output_dir).expanduser()
    if not input_dir.is_dir():
        raise UserError(f"parameter input_dir={input_dir}: not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(f"parameter output_dir={output_dir}: is input_dir; give another folder "
                        f"so that no input can be overwritten")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    if not images:
        raise UserError(f"parameter input_dir={input_dir}: no .jpg/.jpeg/.png images in it")
    inputs = {p.resolve() for p in files}
    writers: dict[Path, Path] = {}
    for image in images:
        for out in outputs(image, output_dir, overlay):
            if out.resolve() in inputs:
                raise UserError(f"writing {out} would overwrite an input; choose another "
                                f"output_dir")
            if out in writers:
                raise UserError(f"{writers[out].name} and {image.name} would both write "
                                f"{out.name}; rename one of them")
            writers[out] = image
    return images, len(files) - len(images)


def outputs(image: Path, output_dir: Path, overlay: bool) -> list[Path]:
    """Where the mask (and overlay) of `image` go."""
    names = [image.stem + MASK_SUFFIX] + ([image.stem + OVERLAY_SUFFIX] if overlay else [])
    return [output_dir / name for name in names]


def predict_folder(segmenter: Segmenter, images: list[Path], output_dir: Path,
                   threshold: float = 0.5, overlay: bool = False,
                   batch_size: int = 8) -> FolderResult:
    """Writes `<stem>_mask.png` (0/255, the image's size) per image (from `plan`) into
    output_dir, and `<stem>_overlay.jpg` with overlay. Unreadable images are skipped and
    reported."""
    output_dir = Path(output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    result = FolderResult([], [])
    with tqdm(total=len(images), desc="predict", unit="img", dynamic_ncols=True,
              disable=None) as bar:
        for start in range(0, len(images), batch_size):
            readable = []
            for path in images[start:start + batch_size]:
                try:
                    readable.append((path, read_image(path)))
                except UnreadableImage as e:
                    result.skipped.append((path, str(e)))
                    bar.write(f"skipped {path}: {e}")
            arrays = [array for _, array in readable]
            for (path, array), mask in zip(readable, segmenter.masks(arrays, threshold, batch_size)):
                mask_path, *overlay_path = outputs(path, output_dir, overlay)
                Image.fromarray(mask * 255).save(mask_path)
                if overlay_path:
                    Image.fromarray(visualize.overlay(array, mask)).save(overlay_path[0], quality=90)
                result.written.append(mask_path)
            bar.update(min(batch_size, len(images) - start))
    return result
