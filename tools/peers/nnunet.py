"""nnU-Net v2 as a peer: the project's split in nnU-Net's raw format (NaturalImage2DIO), its
fold 0 set to the project's train/val subsets, the commands that plan, train and predict, and
what it chose. nnunetv2 itself runs in child processes (its console scripts), never imported
here.

Images keep their stored values (8-bit RGB or grey, 16-bit grey as 16-bit PNG; float or other
depths as TIFF): nnU-Net normalises them itself. Labels are the project's read masks, class
indices 0..K-1, void pixels the "ignore" label K.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from unet.data.pairs import Pair
from unet.images.formats import MASK_FORMATS, read_deep, read_raw
from unet.images.intensity import as_rgb
from unet.images.reading import load_image
from unet.labels.classes import Classes
from unet.labels.masks import VOID

TRAINER_FOLDER = Path(__file__).resolve().parent / "nnunet_trainer"   # nnUNet_extTrainer
CASES_FILE = "cases.json"        # beside dataset.json: nnU-Net case id -> the project's stem
PNG_DTYPES = ("uint8", "uint16")   # PNG holds these as grey; 8-bit RGB too


def case_ids(stems: Sequence[str]) -> dict[str, str]:
    """{case id: stem}: each stem with the characters nnU-Net's case ids may not hold (other
    than letters, digits, '_', '-', '.') replaced by '_', made unique by a '-<n>' suffix."""
    cases: dict[str, str] = {}
    for stem in stems:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", stem)
        case, n = base, 1
        while case in cases:
            n += 1
            case = f"{base}-{n}"
        cases[case] = stem
    return cases


def stored_values(path: Path) -> np.ndarray:
    """An image's values as stored: 16-bit or float ones as read (dtype kept), 8-bit ones as
    the project reads them ((H, W, 3) RGB, palette and alpha resolved) or (H, W) where the
    three channels are equal (a grey image)."""
    deep = read_deep(path)
    if deep is not None:
        return deep if deep.ndim == 2 or deep.shape[2] >= 3 else deep[..., 0]
    rgb = load_image(path)
    grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return rgb[..., 0] if grey else rgb


def layout_of(paths: Sequence[Path]) -> tuple[bool, str]:
    """(RGB, file ending) of the dataset, from a first pass over its images (one at a time:
    a folder of photos does not fit in memory): RGB if any image is colour (grey ones are then
    repeated into three channels), .png where every image fits a PNG, else .tif."""
    kinds = set()
    for path in paths:
        values = stored_values(path)
        kinds.add((values.ndim == 3, values.dtype.name))
    rgb = any(colour for colour, _ in kinds)
    fits = all(dtype == "uint8" or (dtype in PNG_DTYPES and not rgb) for _, dtype in kinds)
    return rgb, ".png" if fits else ".tif"


def write_array(path: Path, values: np.ndarray) -> None:
    """A (H, W) or (H, W, 3) array to PNG (8-bit, or 16-bit grey) or TIFF, values kept."""
    if path.suffix == ".png":
        Image.fromarray(values).save(path)
    else:
        tifffile.imwrite(path, values, photometric="rgb" if values.ndim == 3 else None)


def dataset_json(classes: Classes, rgb: bool, void: bool, training: int, ending: str) -> dict:
    """nnU-Net's dataset.json: channels, labels (background 0, the classes, "ignore" K only
    where the training masks hold void), numTraining, file_ending."""
    labels = {"background": 0, **{name: index for index, name in
                                  enumerate(classes.names[1:], 1)}}
    if void:
        labels["ignore"] = classes.count
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "grey"}
    return {"channel_names": channels, "labels": labels, "numTraining": training,
            "file_ending": ending}


def write_dataset(folder: Path, subsets: dict[str, list[Pair]], classes: Classes,
                  read_mask: Callable[[Path], np.ndarray]) -> dict[str, str]:
    """The split as nnU-Net raw dataset `folder` (Dataset<ID>_<Name>): imagesTr/<case>_0000
    and labelsTr/<case> of train and val, imagesTs/<case>_0000 of test, dataset.json and
    cases.json. Returns {case id: stem}."""
    pairs = [*subsets["train"], *subsets["val"], *subsets["test"]]
    cases = case_ids([p.stem for p in pairs])
    case_of = {stem: case for case, stem in cases.items()}
    rgb, ending = layout_of([p.image for p in pairs])
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    training = len(subsets["train"]) + len(subsets["val"])
    void = False
    for index, pair in enumerate(pairs):
        case, values = case_of[pair.stem], stored_values(pair.image)
        values = as_rgb(values) if rgb else values
        write_array(folder / ("imagesTr" if index < training else "imagesTs")
                    / f"{case}_0000{ending}", values)
        if index < training:
            labels = read_mask(pair.mask)
            void |= bool((labels == VOID).any())
            labels[labels == VOID] = classes.count
            write_array(folder / "labelsTr" / f"{case}{ending}", labels)
    (folder / "dataset.json").write_text(json.dumps(
        dataset_json(classes, rgb, void, training, ending), indent=1))
    (folder / CASES_FILE).write_text(json.dumps(cases, indent=1))
    return cases


def write_fold(preprocessed: Path, subsets: dict[str, list[Pair]], cases: dict[str, str]
               ) -> None:
    """splits_final.json in the dataset's preprocessed folder: fold 0 is the project's train
    and val subsets (written after planning, before training: nnU-Net would make 5 folds)."""
    case_of = {stem: case for case, stem in cases.items()}
    fold = {name: [case_of[p.stem] for p in subsets[name]] for name in ("train", "val")}
    preprocessed.mkdir(parents=True, exist_ok=True)
    (preprocessed / "splits_final.json").write_text(json.dumps([fold], indent=1))


def environment(out: Path, results: Path) -> dict[str, str]:
    """nnU-Net's three folders, all under OUT (`results` differs per budget and seed, so that
    a run never continues or overwrites another), and where it finds nnUNetTrainerBudget."""
    return {"nnUNet_raw": str(out / "raw"), "nnUNet_preprocessed": str(out / "preprocessed"),
            "nnUNet_results": str(results), "nnUNet_extTrainer": str(TRAINER_FOLDER)}


def budget(seconds: float) -> dict[str, str]:
    """nnUNetTrainerBudget's budget (an environment variable: nnUNetv2_train passes a trainer
    no arguments of its own)."""
    return {"PEERS_BUDGET_S": f"{seconds:g}"}


def plan_command(dataset_id: int) -> list[str]:
    return ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np", "2"]


def train_command(dataset_id: int, trainer: str) -> list[str]:
    return ["nnUNetv2_train", str(dataset_id), "2d", "0", "-tr", trainer, "-device", "cpu"]


def predict_command(dataset_id: int, trainer: str, images: Path, out: Path,
                    mirroring: bool = True) -> list[str]:
    """nnU-Net's own prediction: its sliding window and, as it ships, mirroring (4 passes a
    window in 2d; without it, one)."""
    return ["nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", str(dataset_id),
            "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
            *([] if mirroring else ["--disable_tta"])]


def chosen(preprocessed: Path) -> dict:
    """What nnU-Net's planner chose for 2d: patch size and batch size (nnUNetPlans.json)."""
    plan = json.loads((preprocessed / "nnUNetPlans.json").read_text())["configurations"]["2d"]
    return {"patch_size": "x".join(str(n) for n in plan["patch_size"]),
            "batch_size": plan["batch_size"]}


def epochs_done(log_text: str) -> int:
    """Epochs nnU-Net finished, counted from its output ("Epoch time: ... s" each)."""
    return len(re.findall(r"Epoch time: [\d.]+ s", log_text))


def read_predictions(folder: Path, cases: dict[str, str], ending: str) -> dict[str, np.ndarray]:
    """nnUNetv2_predict's <case><ending> files -> {stem: (H, W) class map}."""
    return {stem: read_raw(folder / f"{case}{ending}", MASK_FORMATS)
            for case, stem in cases.items() if (folder / f"{case}{ending}").is_file()}
