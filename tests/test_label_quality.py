"""unet/evaluation/label_quality.py: the score on hand-made masks and probabilities; split_data's
parameter exclude (in-process and through the real `mlflow run`)."""
import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import mlflow_run
from test_bad_input import error_lines, run_step

from unet.data.check import exclude, validate_folder
from unet.data.synthetic import generate
from unet.evaluation import label_quality as lq


def square(h=20, w=20, top=5, left=5, size=10) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[top:top + size, left:left + size] = 1
    return mask


def sure_of(mask: np.ndarray, p: float = 0.95) -> np.ndarray:
    """Probabilities p on the mask's object, 1 - p elsewhere: a model certain of `mask`."""
    return np.where(mask == 1, p, 1 - p).astype(np.float32)


def test_a_wrong_mask_scores_worse_than_the_right_one():
    truth = square()
    probs = sure_of(truth)
    right = lq.image_score(probs, truth)
    shifted = lq.image_score(probs, square(left=8))          # moved by 3 of 10 pixels
    empty = lq.image_score(probs, np.zeros_like(truth))
    assert right == 0.0
    # Shifted: 30 + 30 pixels disagree, each with weight 2*0.95-1 = 0.9, over a union of 130.
    assert shifted == pytest.approx(60 * 0.9 / 130, abs=1e-5)
    # Emptied: all 100 object pixels disagree, over the prediction's 100.
    assert empty == pytest.approx(0.9, abs=1e-5)
    assert right < shifted < empty


def test_confident_disagreement_scores_worse_than_unsure():
    truth, wrong = square(), square(left=8)
    confident = lq.image_score(sure_of(truth, 0.99), wrong)
    unsure = lq.image_score(sure_of(truth, 0.6), wrong)
    assert unsure == pytest.approx(60 * 0.2 / 130, abs=1e-5)   # weight 2*0.6-1
    assert confident == pytest.approx(60 * 0.98 / 130, abs=1e-5)
    assert confident > 4 * unsure
    # Exactly unsure (0.5 everywhere) says nothing against any mask.
    assert lq.image_score(np.full((20, 20), 0.5, np.float32), wrong) == 0.0


def test_tiny_objects_are_scored_against_a_minimum_area():
    mask = np.zeros((100, 100), np.uint8)
    mask[0, 0] = 1                                  # one pixel the model is sure is background
    probs = np.full((100, 100), 0.0, np.float32)
    # 1 pixel of weight 1 over max(1, 1% of 10,000) = 100 pixels, not 1/1.
    assert lq.image_score(probs, mask) == pytest.approx(0.01)


def test_several_classes_are_scored_each_and_the_image_by_the_worst():
    mask = np.zeros((10, 10), np.uint8)
    mask[:5, :5] = 1                                # class 1 right
    mask[5:, 5:] = 2                                # class 2 painted where the model sees 3
    probs = np.zeros((10, 10, 4), np.float32)
    probs[..., 0] = 1
    probs[:5, :5] = [0, 1, 0, 0]
    probs[5:, 5:] = [0, 0.1, 0, 0.9]                # class 3, confident
    scores = lq.class_scores(probs, mask)
    assert scores.tolist() == pytest.approx([0.0, 1.0, 0.8])   # class 2: weight 1; 3: 2*.9-1
    assert lq.image_score(probs, mask) == pytest.approx(1.0)
    dice, wrong = lq.prediction_dice(probs, mask)
    assert wrong == 25
    assert dice == pytest.approx((1 + 0 + 0) / 3)


def test_disagreement_map_marks_the_pixels_in_question():
    truth = square()
    heat = lq.disagreement(sure_of(truth), square(left=8))
    assert heat.shape == (1, 20, 20)
    assert torch.count_nonzero(heat).item() == 60
    assert heat.max().item() == pytest.approx(0.9)


def test_ranking_file_round_trips_to_the_flagged_stems(tmp_path):
    rows = [lq.Row("a", "train", 0.9, 0.1, 500, [0.9], True),
            lq.Row("b", "val", 0.01, 0.98, 3, [0.01], False)]
    lq.write_ranking(tmp_path / "ranking.csv", rows, ("background", "car"))
    lines = (tmp_path / "ranking.csv").read_text().splitlines()
    assert lines[0] == "rank,stem,subset,score,dice,disagree_px,flagged,image_score,group_median"
    assert lines[1] == "1,a,train,0.9000,0.1000,500,true,0.9000,0.0000"
    assert lq.read_stems(tmp_path / "ranking.csv") == ["a"]
    (tmp_path / "stems.txt").write_text("# masks to drop\nx_01\n\n  y_02  # swapped\n")
    assert lq.read_stems(tmp_path / "stems.txt") == ["x_01", "y_02"]


def test_exclude_drops_exactly_the_listed_images_and_the_report_names_them(tracking_uri,
                                                                             tmp_path):
    stems = generate(tmp_path / "data", 12, 32, 48, seed=5)
    dropped = [stems[1], stems[6], stems[7]]
    listing = tmp_path / "flagged.txt"
    listing.write_text("# masks that look wrong\n" + "\n".join(dropped) + "\n")
    result = mlflow_run("split_data", {"data_dir": str(tmp_path / "data"),
                                       "exclude": str(listing)}, tracking_uri)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    split = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/split.json")
    kept = [Path(name).stem for name in split["train"] + split["val"] + split["test"]]
    assert sorted(kept) == sorted(set(stems) - set(dropped))
    assert run.data.metrics["data_excluded"] == 3 and run.data.metrics["data_pairs_ok"] == 9
    text = mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/data_report.txt")
    for stem in dropped:
        assert f"{stem}.jpg: left out by parameter exclude ({listing})" in text
    assert "excluded: 3" in text


def test_exclude_reads_the_flagged_rows_of_a_ranking(tmp_path):
    stems = generate(tmp_path, 8, 32, 48, seed=1)
    report = validate_folder(tmp_path / "train", tmp_path / "train_masks")
    rows = [lq.Row(stems[2], "train", 0.8, 0.2, 900, [0.8], True),
            lq.Row(stems[0], "test", 0.02, 0.97, 4, [0.02], False)]
    lq.write_ranking(tmp_path / "ranking.csv", rows, ("background", "car"))
    out = exclude(report, lq.read_stems(tmp_path / "ranking.csv"), "ranking.csv")
    assert [p.stem for p in out.pairs] == [s for s in sorted(stems) if s != stems[2]]
    assert out.counts["excluded"] == 1


def test_a_missing_exclude_file_or_an_unknown_stem_is_one_line(tracking_uri, tmp_path):
    stems = generate(tmp_path / "data", 8, 32, 48, seed=2)
    missing = run_step("split_data", {"data_dir": str(tmp_path / "data"),
                                      "exclude": str(tmp_path / "nope.txt")}, tracking_uri)
    (line,) = error_lines(missing)
    assert f"exclude={tmp_path / 'nope.txt'}: no such file" in line
    (tmp_path / "stems.txt").write_text(f"{stems[0]}\nno_such_car_01\n")
    unknown = run_step("split_data", {"data_dir": str(tmp_path / "data"),
                                      "exclude": str(tmp_path / "stems.txt")}, tracking_uri)
    (line,) = error_lines(unknown)
    assert "1 stem(s) are no image of the folder, e.g. 'no_such_car_01'" in line


class Oracle:
    """A stand-in Segmenter (binary, input 32x48) sure of the given masks, in the order the
    images come: what a model that learned the clean masks would say."""
    binary, image_size, window = True, (32, 48), None      # None: 8-bit images as they are

    def __init__(self, masks: list[np.ndarray]):
        self.queue = [sure_of(m) for m in masks]

    def probabilities_resized(self, images: np.ndarray) -> np.ndarray:
        assert images.shape[1:] == (32, 48, 3) and images.dtype == np.uint8
        out, self.queue = self.queue[:len(images)], self.queue[len(images):]
        return np.stack(out)


def test_a_corrupted_mask_ranks_first_and_the_run_shows_it(tracking_uri, tmp_path):
    from PIL import Image

    from steps.main import label_line
    from tools.datasets import corrupt
    from unet.data.pairs import Pair, load_mask
    from unet.data.synthetic import save_mask_gif
    from unet.images.transforms import resize_mask
    from unet.tracking import reports

    data = tmp_path / "data"
    stems = generate(data, 8, 32, 48, seed=4)
    pairs = [Pair(s, data / "train" / f"{s}.jpg", data / "train_masks" / f"{s}_mask.gif")
             for s in stems]
    clean = [resize_mask(load_mask(p.mask), (32, 48)) for p in pairs]
    save_mask_gif(Image.fromarray(corrupt(load_mask(pairs[5].mask), "emptied"), "L"),
                  pairs[5].mask)
    subsets = {"train": pairs[:4], "val": pairs[4:6], "test": pairs[6:]}
    rows, worst = lq.score_pairs(Oracle(clean), subsets, load_mask, threshold=0.3,
                                 batch_size=3, keep=2)
    assert [r.stem for r in rows][0] == stems[5] and rows[0].subset == "val"
    assert rows[0].score == pytest.approx(0.9) and rows[0].dice == 0.0
    assert [r.flagged for r in rows] == [True] + [False] * 7
    assert sorted(worst) == sorted(r.stem for r in rows[:2])
    with mlflow.start_run() as run:
        line = reports.log_label_quality(rows, worst, 0.3, ("background", "car"), 1.5,
                                         tmp_path / "out")
    assert line.startswith("**Labels**: 1 of 8 masks look wrong (label-quality score above 0.3")
    local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                     artifact_path="label_quality"))
    table = (local / "ranking.csv").read_text().splitlines()
    assert len(table) == 9 and table[1].startswith(f"1,{stems[5]},val,0.9000,0.0000,")
    assert sorted(p.name for p in (local / "panels").iterdir())[0] == f"01_{stems[5]}.jpg"
    with Image.open(local / "panels" / f"01_{stems[5]}.jpg") as panel:
        assert panel.size == (4 * 48, 32 + 14)          # image | mask | prediction | heat
    finished = mlflow.get_run(run.info.run_id).data
    assert finished.tags["label_suspects"] == "1" and finished.metrics["label_suspects"] == 1
    assert label_line(finished.tags, finished.metrics) == (
        f"1 mask looks wrong (label-quality score above 0.3): see "
        f"{finished.tags['label_ranking']}; check them, then rerun with "
        f"-P exclude=<that file or a file of stems>")
    assert finished.tags["label_ranking"].endswith("label_quality/ranking.csv")


def test_a_group_the_model_fails_on_as_a_whole_ranks_below_one_wrong_mask(tmp_path):
    """Five views of a car the model sees as all object while their masks are empty (the model
    fails on that car, own scores 0.98) against a car of three views with one mask that holds
    the whole image where the model sees the left half (own score 0.49 by hand: the right half,
    752 of 1536 pixels at weight 0.98, over the union, 1536). The ranked score is the excess
    over the group's median, and the panel of the winner is predicted again after its arrays
    were dropped by the streaming (keep=1)."""
    from PIL import Image

    from unet.data.pairs import Pair, load_mask

    class Bright:
        """Sure of the object where the image is bright, whatever order the images come in."""
        binary, image_size, window = True, (32, 48), None

        def probabilities_resized(self, images):
            return np.where(images[..., 0] > 128, 0.99, 0.01).astype(np.float32)

    def pair(stem, bright_columns, mask_columns):
        image, mask = np.zeros((32, 48, 3), np.uint8), np.zeros((32, 48), np.uint8)
        image[:, :bright_columns], mask[:, :mask_columns] = 255, 255
        Image.fromarray(image).save(tmp_path / f"{stem}.png")
        Image.fromarray(mask).save(tmp_path / f"{stem}_mask.png")
        return Pair(stem, tmp_path / f"{stem}.png", tmp_path / f"{stem}_mask.png")

    car = [pair("car_01", 24, 48), pair("car_02", 24, 24), pair("car_03", 24, 24)]
    dark = [pair(f"dark_0{v}", 48, 0) for v in range(1, 6)]
    rows, worst = lq.score_pairs(Bright(), {"train": car, "test": dark}, load_mask,
                                 threshold=0.3, batch_size=2, keep=1)
    first, *rest = rows
    assert first.stem == "car_01" and first.flagged and not any(r.flagged for r in rest)
    assert first.image_score == pytest.approx(0.49) and first.score == pytest.approx(0.49)
    assert first.group_median == 0.0
    darks = [r for r in rows if r.stem.startswith("dark")]
    assert all(r.image_score == pytest.approx(0.98) and r.score == 0.0 for r in darks)
    assert all(r.group_median == pytest.approx(0.98) for r in darks)
    assert list(worst) == ["car_01"]
    assert (worst["car_01"].mask == 1).all() and (worst["car_01"].pred[:, :24] == 1).all()


def test_groups_of_fewer_than_three_images_keep_their_own_scores():
    rows = [lq.Row("a_1", "train", 0.6, 0.5, 10, [0.6]), lq.Row("a_2", "train", 0.2, 0.9, 2, [0.2]),
            lq.Row("b_1", "train", 0.5, 0.5, 10, [0.5]), lq.Row("b_2", "val", 0.1, 0.9, 1, [0.1]),
            lq.Row("b_3", "val", 0.3, 0.7, 5, [0.3]), lq.Row("b_4", "val", 0.7, 0.4, 12, [0.7])]
    lq.relative_to_groups(rows, {r.stem: r.stem[0] for r in rows})
    assert [r.score for r in rows[:2]] == [0.6, 0.2]                   # group a: 2 images
    # group b: the median of the other three, by hand: b_1 0.3, b_2 0.5, b_3 0.5, b_4 0.3.
    assert [r.group_median for r in rows[2:]] == pytest.approx([0.3, 0.5, 0.5, 0.3])
    assert [r.score for r in rows[2:]] == pytest.approx([0.2, 0.0, 0.0, 0.4])


def test_the_corruptions_of_tools_datasets(tmp_path):
    from tools.datasets import CORRUPTIONS, corrupt, corrupt_masks
    from unet.data.pairs import load_mask

    mask = square(h=20, w=40, top=5, left=10, size=10)          # columns 10..19
    shifted = corrupt(mask, "shifted")
    assert np.array_equal(shifted[:, 14:24], mask[:, 10:20]) and shifted.sum() == mask.sum()
    half = corrupt(mask, "half_erased")
    assert half[5:15, 10:15].all() and half.sum() == mask.sum() // 2
    assert not half[:, 15:].any()
    assert corrupt(mask, "emptied").sum() == 0
    other = square(h=20, w=40, left=25)
    assert np.array_equal(corrupt(mask, "swapped", other), other)
    stems = generate(tmp_path, 24, 32, 48, seed=6)
    before = {s: load_mask(tmp_path / "train_masks" / f"{s}_mask.gif") for s in stems}
    record = corrupt_masks(tmp_path, 0.1, seed=1)              # ceil(2.4) = 3 masks
    assert list(record.values()) == list(CORRUPTIONS[:3])
    assert json.loads((tmp_path / "corrupted.json").read_text()) == record
    changed = {s for s in stems
               if not np.array_equal(before[s], load_mask(tmp_path / "train_masks" / f"{s}_mask.gif"))}
    assert changed == set(record)
