"""The data check: a generated folder with every kind of defect, checked in-process and through
the real split_data (fail names every bad file; skip trains on the rest and logs the counts)."""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
from conftest import TINY, mlflow_run, only
from mlflow.tracking import MlflowClient
from PIL import Image, ImageFilter
from test_bad_input import error_lines, run_step

from unet.config import pipeline as config
from unet.data.check import validate_folder
from unet.data.pairs import load_mask
from unet.data.report import PROBLEMS
from unet.data.synthetic import generate, save_mask_gif
from unet.errors import UserError
from unet.images.reading import load_image

H, W = 48, 72


def make_defects(root) -> dict:
    """16 generated pairs (4 cars x 4 views), then one defect per kind.

    Returns {file name: expected kind} for every finding, and the stems expected to be used.
    """
    stems = generate(root, 16, H, W, seed=3)
    images, masks = root / "train", root / "train_masks"
    mask_of = {s: masks / f"{s}_mask.gif" for s in stems}
    expected = {}

    (images / f"{stems[0]}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    expected[f"{stems[0]}.jpg"] = "unreadable_image"
    jpeg = (images / f"{stems[1]}.jpg").read_bytes()
    (images / f"{stems[1]}.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    expected[f"{stems[1]}.jpg"] = "unreadable_image"
    gif = mask_of[stems[2]].read_bytes()
    mask_of[stems[2]].write_bytes(gif[: len(gif) // 2])
    expected[mask_of[stems[2]].name] = "unreadable_mask"
    save_mask_gif(Image.new("L", (W - 8, H), 0), mask_of[stems[3]])
    expected[mask_of[stems[3]].name] = "size_mismatch"
    classes = np.zeros((H, W), np.uint8)
    classes[:, W // 3:], classes[:, 2 * W // 3:] = 128, 255       # three classes, a third each
    Image.fromarray(classes).save(mask_of[stems[4]])
    expected[mask_of[stems[4]].name] = "multiclass_mask"
    (images / f"{stems[10]}.png").write_bytes((images / f"{stems[10]}.jpg").read_bytes())
    expected[f"{stems[10]}.jpg"] = expected[f"{stems[10]}.png"] = "duplicate_stem"
    mask_of[stems[11]].unlink()
    expected[f"{stems[11]}.jpg"] = "no_mask"
    save_mask_gif(Image.new("L", (W, H), 1), masks / "ghost_01_mask.gif")
    expected["ghost_01_mask.gif"] = "no_image"

    # usable after conversion, counted
    soft = Image.open(mask_of[stems[5]]).convert("L").point(lambda v: 255 * (v > 0))
    soft.filter(ImageFilter.GaussianBlur(1)).save(mask_of[stems[5]])
    expected[mask_of[stems[5]].name] = "antialiased_mask"
    save_mask_gif(Image.new("L", (W, H), 0), mask_of[stems[6]])
    expected[mask_of[stems[6]].name] = "empty_mask"
    photo = Image.open(images / f"{stems[7]}.jpg")
    (images / f"{stems[7]}.jpg").unlink()
    photo.convert("RGBA").save(images / f"{stems[7]}.png")
    expected[f"{stems[7]}.png"] = "rgba_image"
    photo = Image.open(images / f"{stems[8]}.jpg")
    photo.convert("L").save(images / f"{stems[8]}.jpg")
    expected[f"{stems[8]}.jpg"] = "grayscale_image"
    photo = np.asarray(Image.open(images / f"{stems[9]}.jpg").convert("L")).astype(np.uint16)
    (images / f"{stems[9]}.jpg").unlink()
    Image.fromarray(photo * 257).save(images / f"{stems[9]}.png")    # 16-bit grey PNG
    expected[f"{stems[9]}.png"] = "16bit_image"
    (images / ".DS_Store").write_bytes(b"\0junk")
    expected[".DS_Store"] = "hidden_file"
    (images / "notes.txt").write_text("labelling notes")
    expected["notes.txt"] = "non_image_file"
    (masks / "README.md").write_text("masks")
    expected["README.md"] = "non_image_file"
    return {"expected": expected, "used": sorted(stems[5:10] + stems[12:])}


def test_every_defect_is_found_and_only_good_pairs_are_kept(tmp_path):
    defects = make_defects(tmp_path)
    report = validate_folder(tmp_path / "train", tmp_path / "train_masks")
    found = {f.path.name: f.kind for f in report.problems + report.notes}
    assert found == defects["expected"]
    assert sorted(p.stem for p in report.pairs) == defects["used"]
    assert report.counts["bad_files"] == 9 and report.counts["pairs_ok"] == 9
    text = report.to_text()
    for name in defects["expected"]:
        assert name in text
    # every usable pair loads as RGB uint8 + 0/1 mask, whatever its encoding
    for pair in report.pairs:
        image, mask = load_image(pair.image), load_mask(pair.mask)
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert mask.shape == (H, W) and set(np.unique(mask)) <= {0, 1}


def test_multiclass_masks_can_be_allowed(tmp_path):
    defects = make_defects(tmp_path)
    report = validate_folder(tmp_path / "train", tmp_path / "train_masks", multiclass_ok=True)
    multiclass = [f for f in report.notes if f.kind == "multiclass_mask_thresholded"]
    assert [f.path.name for f in multiclass] == [n for n, k in defects["expected"].items()
                                                 if k == "multiclass_mask"]
    assert report.counts["pairs_ok"] == 10


def test_grey_rgba_and_16bit_images_convert_to_rgb(tmp_path):
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    for name in ("grey.png", "deep.png", "rgba.png"):
        image = load_image(tmp_path / name)
        assert image.shape == (4, 6, 3) and image.dtype == np.uint8, name
        assert np.abs(image.astype(int) - grey[..., None]).max() <= 1, name
    mask = np.zeros((4, 6), np.uint16)
    mask[1:3, 2:5] = 65535
    Image.fromarray(mask).save(tmp_path / "mask16.png")
    assert load_mask(tmp_path / "mask16.png").sum() == 6


def test_fail_names_every_bad_file_and_the_report(tracking_uri, tmp_path):
    defects = make_defects(tmp_path)
    result = run_step("split_data", {"data_dir": str(tmp_path)}, tracking_uri)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith("error: 9 bad file(s)") and "on_bad_data=skip" in line
    for name, kind in defects["expected"].items():   # notes are counted, not errors
        assert (name in line) == (kind in PROBLEMS), name
    (run,) = MlflowClient().search_runs([e.experiment_id for e in
                                         MlflowClient().search_experiments()])
    assert run.info.status == "FAILED" and "data_report.txt" in line
    report = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/data_report.json")
    assert {p["file"].rsplit("/", 1)[1] for p in report["problems"]} == \
        {n for n, k in defects["expected"].items() if k in PROBLEMS}


def test_skip_trains_on_the_rest_and_logs_the_counts(tracking_uri, tmp_path):
    make_defects(tmp_path)
    result = mlflow_run("split_data", {"data_dir": str(tmp_path), "on_bad_data": "skip"},
                        tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped 9 bad file(s)" in result.stdout
    (split,) = MlflowClient().search_runs([e.experiment_id for e in
                                           MlflowClient().search_experiments()])
    metrics = split.data.metrics
    assert metrics["data_bad_files"] == 9 and metrics["data_pairs_ok"] == 9
    assert metrics["data_rgba_image"] == metrics["data_16bit_image"] == 1
    assert metrics["data_hidden_file"] == 1 and metrics["data_empty_mask"] == 1
    record = mlflow.artifacts.load_dict(f"runs:/{split.info.run_id}/split.json")
    assert sum(len(record[k]) for k in ("train", "val", "test")) == 9
    train = mlflow_run("train", {**only(TINY, "train"), "epochs": "1",
                                 "split_run_id": split.info.run_id}, tracking_uri)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "epoch 1/1" in train.stdout


@pytest.mark.parametrize("name,value", [("on_bad_data", "ignore"), ("multiclass_masks", "yes")])
def test_policy_parameters_are_checked(name, value):
    with pytest.raises(UserError, match=f"parameter {name}={value}: use "):
        config.load("split_data", {name: value})
