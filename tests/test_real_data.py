"""Data as it comes: label images of any count and numbering (tiles cut from a field), masks
that cannot tell what they are, parameter mask_kind, and groups that are no `<car>_<view>`
(parameter group)."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import tifffile
from conftest import TINY, mlflow_run, only
from PIL import Image
from test_bad_input import error_lines, run_step

from tools import datasets
from unet.data.check import validate_folder
from unet.data.pairs import GroupRule, Pair, parse_group, split_pairs
from unet.errors import UserError
from unet.labels.classes import detect
from unet.labels.masks import mask_says


def tile(*objects: tuple[int, slice, slice], size: int = 32, dtype=np.uint16) -> np.ndarray:
    """A (size, size) label tile: each object (value, rows, cols) a filled box."""
    labels = np.zeros((size, size), dtype)
    for value, rows, cols in objects:
        labels[rows, cols] = value
    return labels


NUCLEUS_83 = (83, slice(4, 12), slice(4, 12))
NUCLEUS_154 = (154, slice(18, 28), slice(16, 26))
CUT_7 = (7, slice(0, 1), slice(10, 20))        # a label cut by the top edge: one pixel thin
NUCLEUS_50 = (50, slice(20, 30), slice(2, 9))


# ---- what one mask can tell ------------------------------------------------------------------

def test_one_two_and_three_labels_with_field_ids_say_instances():
    assert mask_says(tile(NUCLEUS_83)) is None                    # one object: cannot tell
    assert mask_says(tile(NUCLEUS_83, NUCLEUS_154)) == "instances"
    assert mask_says(tile(NUCLEUS_83, NUCLEUS_154, NUCLEUS_50)) == "instances"


def test_an_empty_tile_cannot_tell():
    assert mask_says(tile()) is None


def test_a_label_cut_by_the_border_is_still_an_object():
    # one pixel thin along the edge: no compact object in the middle of a mask, but at the
    # border it is a nucleus cut by the tile
    assert mask_says(tile(CUT_7, NUCLEUS_83)) == "instances"
    inside = (7, slice(10, 11), slice(10, 20))                    # the same sliver inside
    assert mask_says(tile(inside, NUCLEUS_83)) == "levels"


def test_two_small_compact_values_cannot_tell_labels_from_classes():
    assert mask_says(tile((1, slice(2, 9), slice(2, 9)), (2, slice(14, 24), slice(14, 24)))) \
        is None
    # nor grey levels 128/255 of one region each
    grey = tile((128, slice(2, 9), slice(2, 9)), (255, slice(14, 24), slice(14, 24)),
                dtype=np.uint8)
    assert mask_says(grey) is None


def class_mask(seed: int) -> np.ndarray:
    """Class indices 0..3, each class in two or more regions (as parts of objects are)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((32, 32), np.uint8)
    for value in (1, 2, 3):
        for _ in range(2):
            y, x = rng.integers(0, 28, 2)
            mask[y:y + 4, x:x + 4] = value
    return mask


def test_class_masks_0_to_3_stay_classes(tmp_path):
    for n in range(6):
        Image.fromarray(class_mask(n)).save(tmp_path / f"m{n}.png")
    found = detect(sorted(tmp_path.iterdir()))
    assert not found.instances and found.count == 4 and found.kind == "classes"


def save_tiles(folder, tiles: list[np.ndarray]) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, labels in enumerate(tiles):
        paths.append(folder / f"t{n:02d}_mask.tif")
        tifffile.imwrite(paths[-1], labels)
    return paths


def test_the_folder_decides_from_the_masks_that_can_tell(tmp_path):
    """A field cut into tiles: most tiles are empty or hold one nucleus (cannot tell); the two
    that hold several decide instances."""
    tiles = [tile()] * 5 + [tile(NUCLEUS_83)] * 4 + [tile(NUCLEUS_83, NUCLEUS_154),
                                                      tile(CUT_7, NUCLEUS_50, NUCLEUS_154)]
    found = detect(save_tiles(tmp_path, tiles))
    assert found.instances and found.kind == "instances"
    assert dict(found.says) == {"instances": 2, "classes": 0, "binary": 0, "cannot tell": 9}
    assert found.describe() == ("instances (mask_kind=auto, from 11 masks: 2 instances; 9 cannot "
                                "tell (empty, one value, or 2-3 values that are class indices "
                                "or labels alike))")


def test_mask_kind_declares_what_cannot_be_told(tmp_path):
    # Every tile holds 1 and 2, one region each: labels 1, 2 or classes 1, 2. Auto reads
    # classes (as before); mask_kind=instances reads labels.
    two = tile((1, slice(2, 9), slice(2, 9)), (2, slice(14, 24), slice(14, 24)), dtype=np.uint8)
    paths = save_tiles(tmp_path, [two] * 4)
    assert detect(paths).kind == "classes" and detect(paths).count == 3
    declared = detect(paths, kind="instances")
    assert declared.instances and declared.declared
    assert declared.describe() == "instances (declared: mask_kind=instances)"
    assert detect(paths, kind="binary").kind == "binary"


def test_mask_kind_classes_refuses_values_that_are_no_class_indices(tmp_path):
    paths = save_tiles(tmp_path, [tile(NUCLEUS_83, NUCLEUS_154)] * 3)
    with pytest.raises(UserError, match=r"mask_kind=classes: the masks hold values up to 154.*"
                                        r"mask_kind=instances"):
        detect(paths, kind="classes")


def labelled_folder(root, tiles: list[np.ndarray]):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for n, labels in enumerate(tiles):
        tifffile.imwrite(root / "images" / f"t{n:02d}.tif",
                         (labels > 0).astype(np.uint16) * 3000 + 200)
        tifffile.imwrite(root / "masks" / f"t{n:02d}_mask.tif", labels)
    return root


def test_a_binary_reading_of_labels_names_the_values_and_mask_kind(tmp_path):
    folder = labelled_folder(tmp_path, [tile(NUCLEUS_83, NUCLEUS_154, NUCLEUS_50)] * 3)
    report = validate_folder(folder / "images", folder / "masks", "_mask", ".tif",
                             mask_kind="binary")
    assert [f.kind for f in report.problems] == ["multiclass_mask"] * 3
    assert report.problems[0].detail.startswith("values 0, 50, 83, 154: ")
    assert "-P mask_kind=instances" in report.hint()
    auto = validate_folder(folder / "images", folder / "masks", "_mask", ".tif")
    assert auto.instances and not auto.problems
    assert auto.reading()[0].startswith("mask values read as instances (mask_kind=auto")


def test_the_generated_look_alike_of_the_dsb_tiles_reads_as_instances(tmp_path):
    folder = datasets.labelled_tiles_folder(tmp_path / "tiles", seed=7, fields=2)
    report = validate_folder(folder / "images", folder / "masks", "_mask", ".tif")
    assert report.instances and not report.problems and report.kind == "instances"
    masks = [tifffile.imread(p) for p in sorted((folder / "masks").iterdir())]
    # what the rule is up against: empty tiles, 1-3 labels, global ids
    counts = [len(np.unique(m[m > 0])) for m in masks]
    assert 0 in counts and 1 in counts and max(m.max() for m in masks) > 31


# ---- groups --------------------------------------------------------------------------------

def frames(name: str = "hela", count: int = 20) -> list[Pair]:
    return [Pair(f"{name}_t{t:02d}", None, None) for t in range(count)]


def test_the_auto_rule_finds_one_group_in_a_time_lapse_and_says_which_parameter():
    with pytest.raises(UserError, match=r"only 1 group\(s\) \('hela'\) under parameter "
                                        r"group=auto.*-P group=none"):
        split_pairs(frames(), 0.15, 0.15, seed=0)


def test_group_none_makes_every_image_its_own_group():
    split = split_pairs(frames(), 0.15, 0.15, seed=0, rule=parse_group("none"))
    assert [len(split[k]) for k in ("train", "val", "test")] == [14, 3, 3]


def test_a_regular_expression_groups_blocks_of_frames_a_split_by_time():
    rule = parse_group(r"^hela_t(\d)\d$")         # t00-t09 one block, t10-t19 the other
    assert rule.of("hela_t07") == "0" and rule.of("hela_t13") == "1"
    split = split_pairs(frames() + frames("gfp"), 0.25, 0.25, seed=0,
                        rule=parse_group(r"^(\w+_t\d)\d$"))     # 4 blocks of 10 frames
    blocks = {k: {p.stem[:-1] for p in v} for k, v in split.items()}
    assert sorted(len(v) for v in blocks.values()) == [1, 1, 2]      # whole blocks of frames
    assert sorted(len(v) for v in split.values()) == [10, 10, 20]


def test_group_rules_that_cannot_work_are_named():
    with pytest.raises(UserError, match=r"group=\(\[a-z\]: not a regular expression"):
        parse_group("([a-z]")
    with pytest.raises(UserError, match="has no group; put the part"):
        parse_group(r"_t\d+")
    with pytest.raises(UserError, match=r"image 'other' does not match"):
        split_pairs(frames() + [Pair("other", None, None)], 0.15, 0.15, 0,
                    GroupRule(r"^(.*)_t\d+$"))


@pytest.mark.slow
def test_a_time_lapse_is_refused_naming_group_then_splits_by_it_and_trains(tracking_uri,
                                                                            tmp_path):
    folder = datasets.timelapse_folder(tmp_path / "hela", frames=30, size=(64, 64))
    layout = {"data_dir": str(folder), **datasets.FLUORESCENCE_LAYOUT}
    refused = run_step("split_data", layout, tracking_uri)
    assert refused.returncode == 2
    (line,) = error_lines(refused)
    assert "only 1 group(s) ('hela') under parameter group=auto" in line and "-P group=" in line
    # blocks of ten frames (t00-t09, t10-t19, t20-t29): train, val and test one block each
    result = mlflow_run("main", {**layout, "group": r"^hela_t(\d)\d$", "val_fraction": "0.3",
                                 "test_fraction": "0.3", **only(TINY, "train"),
                                 "model_name": "hela"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri)
    (split_run,) = [r for r in client.search_runs(["0"])
                    if r.data.tags.get("mlflow.project.entryPoint") == "split_data"
                    and r.info.status == "FINISHED"]
    record = json.loads(open(client.download_artifacts(split_run.info.run_id, "split.json"))
                        .read())
    assert record["group"] == r"^hela_t(\d)\d$" and record["mask_kind"] == "instances"
    # a split by time: each subset is one block of ten consecutive frames
    tens = {name: {stem[6] for stem in record[name]} for name in ("train", "val", "test")}
    assert sorted(len(v) for v in tens.values()) == [1, 1, 1]
    assert set().union(*tens.values()) == {"0", "1", "2"}
    report = client.download_artifacts(split_run.info.run_id, "data_report.txt")
    text = open(report).read()
    assert "3 groups kept together by the split, by parameter group=the expression" in text


@pytest.mark.slow
def test_tiles_of_a_labelled_field_train_as_well_as_their_8bit_png_copy(tracking_uri, tmp_path):
    """The DSB tiles' generated look-alike as kept (16-bit TIFF, label TIFF cut from the field:
    global ids, 0-6 objects a tile, objects cut at the edges, empty tiles), only the layout
    given: no refusal, read as instance labels; a foreground model of them (`output=mask`)
    within 0.02 of the PNG copy's test Dice, and the model of objects they train by default
    not more than 0.01 below it (its foreground Dice)."""
    from test_imageio import dice_of
    tiles = datasets.labelled_tiles_folder(tmp_path / "tiles", seed=11, fields=3)
    png = datasets.png_copy(tiles, tmp_path / "png")
    deep, train, _ = dice_of(tiles, datasets.FLUORESCENCE_LAYOUT, tracking_uri, output="mask")
    split_id = train.data.tags["split_run_id"]
    record = mlflow.artifacts.load_dict(f"runs:/{split_id}/split.json")
    assert record["mask_kind"] == "instances" and record["instances"]
    objects, train, evaluate = dice_of(tiles, datasets.FLUORESCENCE_LAYOUT, tracking_uri)
    assert train.data.params["effective.output"] == "instances" and "test_map" in \
        evaluate.data.metrics
    flat, _, _ = dice_of(png, datasets.CELLS_LAYOUT, tracking_uri)
    print(f"\ntest Dice: 16-bit TIFF labels {deep:.4f} (objects: {objects:.4f}), 8-bit PNG 0/255 "
          f"{flat:.4f}")
    assert flat > 0.7 and abs(deep - flat) <= 0.02 and objects >= flat - 0.01
