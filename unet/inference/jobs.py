"""What predict reads and writes: the images of a folder or of a list file, and the output
(masks per image, or one submission CSV), checked before anything is written."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from unet.atomic import write_atomically
from unet.errors import UserError
from unet.images.formats import EXTS_TEXT, IMAGE_EXTS
from unet.inference.streaming import SUBMISSION, CsvSink, PngSink

FORMATS = ("png", "rle")
RECORD = ".predict.json"        # in output_dir: the settings its outputs were made with
CSV_UNSAFE = set(',"\n\r')      # a name with these would need CSV quoting: refused


@dataclasses.dataclass
class Job:
    images: list[Path]          # sorted: the order rows are written in
    ignored: int                # files of input_dir that are not images
    sink: CsvSink | PngSink


def plan_job(input_dir: str, input_list: str, output_dir: str, fmt: str = "png",
             overlay: bool = False, engine: str = "local") -> Job:
    """The images of input_dir or input_list (exactly one given) and where their output goes
    (format png: masks; rle: output_dir/submission.csv). UserError on any conflict."""
    if bool(input_dir.strip()) == bool(input_list.strip()):
        raise UserError("give exactly one of the parameters input_dir (a folder of images) and "
                        "input_list (a text file, one image path per line)")
    if fmt not in FORMATS:
        raise UserError(f"parameter format={fmt}: use png or rle")
    if overlay and fmt != "png":
        raise UserError("parameter overlay=true needs format=png")
    if engine == "spark" and fmt != "rle":
        raise UserError("parameter engine=spark writes format=rle only (a Spark UDF returns "
                        "strings, not images): add -P format=rle")
    output = Path(output_dir).expanduser()
    if input_dir.strip():
        images, files = folder_images(Path(input_dir).expanduser(), output)
    else:
        images = files = list_images(Path(input_list).expanduser())
    sink = PngSink(output, overlay) if fmt == "png" else CsvSink(output / SUBMISSION)
    check_outputs(images, files, sink)
    return Job(images, len(files) - len(images), sink)


def folder_images(input_dir: Path, output_dir: Path) -> tuple[list[Path], list[Path]]:
    """(images, all files) of input_dir, sorted."""
    if not input_dir.is_dir():
        raise UserError(f"parameter input_dir={input_dir}: not a folder")
    if output_dir.resolve() == input_dir.resolve():
        raise UserError(f"parameter output_dir={output_dir}: is input_dir; give another folder "
                        f"so that no input can be overwritten")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    if not images:
        raise UserError(f"parameter input_dir={input_dir}: no {EXTS_TEXT} images in it")
    return images, files


def list_images(input_list: Path) -> list[Path]:
    """The paths in a text file, one per line (blank lines and `#` comments skipped; relative
    paths are relative to the file's folder), sorted, each once. Missing files stay in: they
    fail one by one, named, like unreadable ones."""
    if not input_list.is_file():
        raise UserError(f"parameter input_list={input_list}: not a file")
    lines = [line.strip() for line in input_list.read_text().splitlines()]
    paths = {(input_list.parent / Path(line).expanduser()) for line in lines
             if line and not line.startswith("#")}
    if not paths:
        raise UserError(f"parameter input_list={input_list}: lists no image")
    return sorted(paths)


def check_outputs(images: list[Path], files: list[Path], sink: CsvSink | PngSink) -> None:
    """UserError if an output would overwrite an input, or two images would write one output
    (masks of one stem; rows of one file name)."""
    inputs = {p.resolve() for p in files}
    if isinstance(sink, CsvSink):
        if sink.path.resolve() in inputs:
            raise UserError(f"writing {sink.path} would overwrite an input; choose another "
                            f"output_dir")
        names: dict[str, Path] = {}
        for image in images:
            if CSV_UNSAFE & set(image.name):
                raise UserError(f"{image}: a comma, quote or line break in the file name; "
                                f"rename it (a submission row starts with the bare name)")
            if image.name in names:
                raise UserError(f"{names[image.name]} and {image} have one file name, which "
                                f"a submission row cannot tell apart; rename one of them")
            names[image.name] = image
        return
    writers: dict[Path, Path] = {}
    for image in images:
        for out in sink.outputs(image):
            if out.resolve() in inputs:
                raise UserError(f"writing {out} would overwrite an input; choose another "
                                f"output_dir")
            if out in writers:
                raise UserError(f"{writers[out].name} and {image.name} would both write "
                                f"{out.name}; rename one of them")
            writers[out] = image


def claim(output_dir: str, settings: dict[str, str], before: dict[str, str] | None = None
          ) -> None:
    """Writes `settings` (model resolved to a version or run, threshold, tta, format,
    predict_scale) into output_dir's record, or checks them against the record an earlier
    predict left there, so that a resumed job never mixes outputs of two models or settings.
    `before`: the value a setting had before records held it (a record without it was made
    so). UserError naming what differs."""
    folder = Path(output_dir).expanduser()
    path = folder / RECORD
    if path.exists():
        made = {**(before or {}), **json.loads(path.read_text())}
        differ = [k for k in settings if str(made.get(k)) != settings[k]]
        if differ:
            raise UserError(
                f"output_dir={output_dir} holds predictions made with "
                + ", ".join(f"{k}={made.get(k)}" for k in differ) + "; this run has "
                + ", ".join(f"{k}={settings[k]}" for k in differ) + f": give another "
                f"output_dir, or delete {folder} (or its {RECORD} and outputs) to start afresh")
        return
    # whole or absent: a crash leaves no half record
    write_atomically(path, lambda f: f.write((json.dumps(settings, indent=1) + "\n").encode()))
