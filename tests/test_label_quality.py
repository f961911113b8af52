"""unet/label_quality.py: the score on hand-made masks and probabilities."""
import numpy as np
import pytest
import torch

from unet import label_quality as lq


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
    assert lines[0] == "rank,stem,subset,score,dice,disagree_px,flagged"
    assert lines[1] == "1,a,train,0.9000,0.1000,500,true"
    assert lq.read_stems(tmp_path / "ranking.csv") == ["a"]
    (tmp_path / "stems.txt").write_text("# masks to drop\nx_01\n\n  y_02  # swapped\n")
    assert lq.read_stems(tmp_path / "stems.txt") == ["x_01", "y_02"]
