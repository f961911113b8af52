"""Ultralytics YOLO's semantic-segmentation task as a peer: the project's split as its dataset
(images/ and masks/ per subset, a yaml), and what its run chose. The child that trains and
predicts runs in the peers' environment: tools/peers/yolo_child.py.

Ultralytics reads images with OpenCV, which makes a 16-bit PNG 8-bit by dividing by 256: so
images are written as the 8-bit RGB the project's own network is given (16-bit and float
values through the intensity window measured on the training images, unet.images.intensity).
"""
from __future__ import annotations

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


def environment(out: Path) -> dict[str, str]:
    """The child's environment: no online checks (nothing may download), and Ultralytics'
    settings file under OUT, not in the user's home."""
    return {"YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(out / "config")}


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
