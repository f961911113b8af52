"""Ultralytics YOLO's semantic-segmentation task as a peer: the project's split as its dataset
(images/ and masks/ per subset, a yaml), and the child process that trains it from its yaml
(no pretrained weights: nothing is downloaded) within the time budget and predicts the test
images. ultralytics is imported only inside that child's functions.

    python -m tools.peers.yolo train DATA_YAML RUN_DIR --minutes M --seed S --imgsz N
    python -m tools.peers.yolo predict WEIGHTS LIST_FILE OUT_DIR --imgsz N

Ultralytics reads images with OpenCV, which makes a 16-bit PNG 8-bit by dividing by 256: so
images are written as the 8-bit RGB the project's own network is given (16-bit and float
values through the intensity window measured on the training images, unet.images.intensity).
"""
from __future__ import annotations

import argparse
import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from unet.data.pairs import Pair
from unet.images.formats import image_size, read_deep
from unet.images.intensity import Window, measure
from unet.images.reading import load_image
from unet.labels.classes import Classes

MODEL = "yolo26n-sem.yaml"      # the smallest semantic model, built from its yaml
MAX_IMGSZ = 640                 # Ultralytics' default size; smaller images keep their own


def training_window(subsets: dict[str, list[Pair]]) -> Window | None:
    """The intensity window of the training images (None: all 8-bit), as training measures
    it."""
    return measure([p.image for p in subsets["train"]], read_deep)


def write_dataset(root: Path, subsets: dict[str, list[Pair]], classes: Classes,
                  read_mask: Callable[[Path], np.ndarray], window: Window | None) -> Path:
    """images/<subset>/<stem>.png (8-bit RGB) and masks/<subset>/<stem>.png (class indices,
    void 255) of train, val and test under `root`, and root/data.yaml; returns the yaml."""
    for name, pairs in subsets.items():
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
        for pair in pairs:
            Image.fromarray(load_image(pair.image, window=window)).save(
                root / "images" / name / f"{pair.stem}.png")
            # Read masks hold void as VOID, 255: Ultralytics' ignore value too.
            Image.fromarray(read_mask(pair.mask)).save(root / "masks" / name / f"{pair.stem}.png")
    data = {"path": str(root.resolve()), "train": "images/train", "val": "images/val",
            "test": "images/test", "masks_dir": "masks", "names": dict(enumerate(classes.names))}
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return root / "data.yaml"


def auto_imgsz(paths: Sequence[Path]) -> int:
    """The training size: the longest side of the training images rounded up to YOLO's stride
    32, at most MAX_IMGSZ (YOLO would scale 160x240 images up to 640: 7 times the pixels the
    other systems see)."""
    longest = max(max(image_size(path)) for path in paths)
    return min(MAX_IMGSZ, -(-longest // 32) * 32)


def weights(run_dir: Path) -> Path:
    """The weights YOLO kept: best.pt (best validation fitness), else last.pt."""
    best = run_dir / "weights" / "best.pt"
    return best if best.is_file() else run_dir / "weights" / "last.pt"


def chosen(run_dir: Path) -> dict:
    """What YOLO ran with and did: epochs completed (rows of results.csv), imgsz, batch."""
    args = yaml.safe_load((run_dir / "args.yaml").read_text())
    results = run_dir / "results.csv"
    epochs = len(list(csv.DictReader(results.open()))) if results.is_file() else 0
    return {"epochs": epochs, "imgsz": args.get("imgsz"), "batch": args.get("batch")}


def read_predictions(folder: Path) -> dict[str, np.ndarray]:
    """The predict child's <stem>.png class maps -> {stem: (H, W) uint8}."""
    return {path.stem: np.asarray(Image.open(path)) for path in folder.glob("*.png")}


def train(data: Path, run_dir: Path, minutes: float, seed: int, imgsz: int) -> None:
    """YOLO's training as it ships, from scratch, stopped by its own `time` (hours)."""
    from ultralytics import YOLO
    YOLO(MODEL).train(data=str(data), time=minutes / 60, epochs=1000, imgsz=imgsz,
                      device="cpu", pretrained=False, plots=False, seed=seed, amp=False,
                      project=str(run_dir.parent), name=run_dir.name, exist_ok=True)


def predict(weights_file: Path, images: Sequence[Path], out: Path, imgsz: int) -> None:
    """Class maps of `images` at their original size, written as out/<stem>.png."""
    from ultralytics import YOLO
    model = YOLO(str(weights_file))
    out.mkdir(parents=True, exist_ok=True)
    for path in images:     # one at a time: a list of thousands would be held in memory
        (result,) = model.predict(source=[str(path)], device="cpu", imgsz=imgsz, verbose=False)
        labels = result.semantic_mask.data.cpu().numpy().astype(np.uint8)
        Image.fromarray(labels).save(out / f"{path.stem}.png")


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.peers.yolo", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("train")
    fit.add_argument("data", type=Path)
    fit.add_argument("run_dir", type=Path)
    fit.add_argument("--minutes", type=float, required=True)
    fit.add_argument("--seed", type=int, required=True)
    fit.add_argument("--imgsz", type=int, required=True)
    guess = commands.add_parser("predict")
    guess.add_argument("weights", type=Path)
    guess.add_argument("list_file", type=Path, help="one image path a line")
    guess.add_argument("out", type=Path)
    guess.add_argument("--imgsz", type=int, required=True)
    args = parser.parse_args()
    if args.command == "train":
        train(args.data, args.run_dir, args.minutes, args.seed, args.imgsz)
    else:
        predict(args.weights, [Path(line) for line in args.list_file.read_text().split("\n")
                               if line], args.out, args.imgsz)


if __name__ == "__main__":
    main()
