"""Objects, not pixels: the per-object scores on hand-made label images with known matches, the
instance target of touching objects, and the watershed that splits them again."""
from __future__ import annotations

import numpy as np
import pytest

from unet.evaluation.objects import THRESHOLDS, match, summarize
from unet.inference.instances import Watershed, choose
from unet.labels.borders import BACKGROUND, BORDER, INTERIOR, interior_border


def square(labels: np.ndarray, value: int, top: int, left: int, side: int) -> None:
    labels[top:top + side, left:left + side] = value


def disc(shape, centre, radius) -> np.ndarray:
    y, x = np.mgrid[0:shape[0], 0:shape[1]]
    return (y - centre[0]) ** 2 + (x - centre[1]) ** 2 <= radius ** 2


def test_matches_by_iou_give_the_dsb_precision_f1_and_count_error_by_hand():
    """Truth: 3 squares of 10x10 (ids 83, 154, 7). Prediction: the first exactly (IoU 1), the
    second shifted by 2 columns (IoU 80/120 = 0.667), the third missed, plus one false object."""
    truth = np.zeros((40, 60), np.int32)
    square(truth, 83, 0, 0, 10)
    square(truth, 154, 0, 20, 10)
    square(truth, 7, 20, 0, 10)
    pred = np.zeros_like(truth)
    square(pred, 1, 0, 0, 10)
    square(pred, 2, 0, 22, 10)
    square(pred, 3, 25, 40, 10)
    found = match(truth, pred)
    assert (found.true_objects, found.predicted_objects) == (3, 3)
    # IoU 1.0 matches at every threshold; 0.667 at 0.5..0.65 (4 thresholds)
    assert found.matches == (2, 2, 2, 2, 1, 1, 1, 1, 1, 1)
    assert found.precision(0.5) == pytest.approx(2 / (2 + 1 + 1))
    assert found.precision(0.75) == pytest.approx(1 / (1 + 2 + 2))
    assert found.f1(0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert found.dsb == pytest.approx((4 * 0.5 + 6 * 0.2) / 10)
    assert found.count_error == 0 and (found.splits, found.merges) == (0, 0)
    assert len(THRESHOLDS) == 10 and THRESHOLDS[0] == 0.5 and THRESHOLDS[-1] == 0.95


def test_a_merge_and_a_split_are_counted_by_majority():
    truth = np.zeros((20, 40), np.int32)
    square(truth, 1, 0, 0, 10)
    square(truth, 2, 0, 10, 10)          # touches object 1
    square(truth, 3, 10, 25, 10)
    pred = np.zeros_like(truth)
    pred[0:10, 0:20] = 5                 # objects 1 and 2 as one: a merge
    pred[10:20, 25:30] = 6               # object 3 in two halves: a split
    pred[10:20, 30:35] = 7
    found = match(truth, pred)
    assert (found.merges, found.splits) == (1, 1)
    assert found.matches[0] == 0          # IoU 0.5 exactly is no match (strictly above)
    assert found.count_error == 0


def test_empty_images_and_the_set_summary():
    empty = np.zeros((8, 8), np.int32)
    one = empty.copy()
    square(one, 9, 2, 2, 4)
    assert match(empty, empty).dsb == 1.0 and match(one, empty).dsb == 0.0
    assert match(empty, one).dsb == 0.0 and match(one, one).dsb == 1.0
    scores = summarize([match(one, one), match(one, empty)])
    assert scores["map"] == 0.5 and scores["ap50"] == 0.5 and scores["f1_50"] == 0.5
    assert scores["count_error"] == 0.5 and scores["true_objects"] == 2
    assert scores["predicted_objects"] == 1


def test_the_target_of_two_touching_squares_has_a_border_between_them():
    labels = np.zeros((8, 12), np.int32)
    labels[1:7, 1:6] = 4
    labels[1:7, 6:11] = 9                 # touches 4 along column 5|6
    target = interior_border(labels)
    assert target[0, 0] == BACKGROUND
    assert target[3, 5] == BORDER and target[3, 6] == BORDER      # where they meet
    assert target[3, 3] == INTERIOR and target[3, 8] == INTERIOR
    assert target[1, 3] == BORDER                                  # the rim on the background
    assert (target[labels == 0] == BACKGROUND).all()
    # an object cut by the image's edge has no border along the edge
    edge = np.zeros((6, 6), np.int32)
    edge[:, :3] = 1
    assert interior_border(edge)[2, 0] == INTERIOR


def probabilities_of(target: np.ndarray, sharp: float = 0.9) -> np.ndarray:
    """A hand-made probability map: each pixel `sharp` on its target class, the rest shared."""
    probs = np.full((*target.shape, 3), (1 - sharp) / 2, np.float32)
    for c in range(3):
        probs[..., c][target == c] = sharp
    return probs


def test_the_watershed_splits_two_touching_discs_that_a_threshold_joins():
    shape = (40, 60)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (20, 20), 11)] = 1
    labels[disc(shape, (20, 39), 11) & (labels == 0)] = 2        # overlapping: they touch
    probs = probabilities_of(interior_border(labels))
    foreground = probs[..., INTERIOR] + probs[..., BORDER] > 0.5
    from scipy import ndimage
    assert ndimage.label(foreground)[1] == 1                      # a threshold: one blob
    found = Watershed(seed=0.5, mask=0.5, min_area=8).labels(probs)
    assert found.max() == 2 and set(np.unique(found)) == {0, 1, 2}
    assert match(labels, found).matches[THRESHOLDS.index(0.9)] == 2   # both at IoU > 0.9
    assert found[20, 20] == 1 and found[20, 39] == 2              # numbered in reading order


def test_small_seeds_and_objects_are_dropped_and_nothing_gives_an_empty_image():
    target = np.zeros((20, 20), np.uint8)
    target[2:4, 2:4] = INTERIOR                                    # 4 pixels: noise
    target[10:18, 10:18] = BORDER
    target[11:17, 11:17] = INTERIOR
    found = Watershed(min_area=8).labels(probabilities_of(target))
    assert found.max() == 1 and found[3, 3] == 0 and (found[10:18, 10:18] == 1).all()
    assert Watershed().labels(probabilities_of(np.zeros((5, 5), np.uint8))).max() == 0


def test_the_settings_are_chosen_on_validation_images():
    """Probabilities whose interiors are faint (0.6): a seed threshold of 0.7 finds nothing,
    so `choose` must pick a lower one."""
    shape = (30, 30)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (10, 10), 6)] = 1
    labels[disc(shape, (20, 20), 6)] = 2
    probs = probabilities_of(interior_border(labels), sharp=0.6)

    def dsb(predicted, truths):
        return float(np.mean([match(t, p).dsb for p, t in zip(predicted, truths)]))
    assert Watershed(seed=0.7, mask=0.5, min_area=4).labels(probs).max() == 0
    settings, score = choose([probs], [labels], dsb,
                             {"seed": (0.7, 0.5), "mask": (0.5,), "min_area": (4,)})
    assert settings.seed == 0.5 and score == pytest.approx(
        dsb([settings.labels(probs)], [labels])) and score > 0.7
