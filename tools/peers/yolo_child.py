"""Ultralytics YOLO's semantic task trained and run for tools/peers, in the peers' environment
(it imports ultralytics, numpy and Pillow only; run from the repository's root):

    python -m tools.peers.yolo_child train DATA_YAML RUN_DIR --minutes M --seed S --imgsz N
    python -m tools.peers.yolo_child predict WEIGHTS LIST_FILE OUT_DIR --imgsz N
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "yolo26n-sem.yaml"      # the smallest semantic model, built from its yaml


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
    parser = argparse.ArgumentParser(prog="tools.peers.yolo_child",
                                     description=__doc__.split("\n")[0])
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
