import math

import pytest
import torch

from unet.evaluation.metrics import SegmentationMetrics, confusion, scores


def masks(*rows):
    return torch.tensor(rows, dtype=torch.uint8)[None]


def test_counts_and_scores_by_hand():
    pred = masks([1, 1, 0], [0, 1, 0])
    truth = masks([1, 0, 0], [0, 1, 1])
    # TP: (0,0), (1,1) = 2; FP: (0,1) = 1; FN: (1,2) = 1; TN: 2
    assert confusion(pred, truth).tolist() == [[2, 1, 1, 2]]
    s = scores(confusion(pred, truth))
    assert s["accuracy"].item() == pytest.approx(4 / 6)
    assert s["dice"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))   # 0.6667
    assert s["iou"].item() == pytest.approx(2 / 4)


def test_empty_masks_convention():
    empty = masks([0, 0], [0, 0])
    some = masks([0, 1], [0, 0])
    both_empty = scores(confusion(empty, empty))
    assert both_empty["dice"].item() == 1.0 and both_empty["iou"].item() == 1.0
    missed = scores(confusion(empty, some))      # predicted nothing, truth has a pixel
    assert missed["dice"].item() == 0.0 and missed["iou"].item() == 0.0
    assert missed["accuracy"].item() == pytest.approx(3 / 4)


def test_per_image_mean_differs_from_micro():
    m = SegmentationMetrics()
    # image 1: 1 pixel of truth, predicted exactly -> Dice 1
    m.update(masks([1, 0], [0, 0]), masks([1, 0], [0, 0]))
    # image 2: 3 pixels of truth, 1 predicted -> TP 1, FN 2 -> Dice 2/4
    m.update(masks([1, 0], [0, 0]), masks([1, 1], [1, 0]))
    result = m.compute()
    assert result["dice"] == pytest.approx((1.0 + 0.5) / 2)
    # pooled: TP 2, FP 0, FN 2 -> 4 / 6
    assert result["dice_micro"] == pytest.approx(4 / 6)
    assert result["iou_micro"] == pytest.approx(2 / 4)
    assert result["accuracy_micro"] == pytest.approx(6 / 8)
    assert len(m.per_image()["dice"]) == 2


def test_compute_without_images_fails():
    with pytest.raises(ValueError):
        SegmentationMetrics().compute()


def test_per_class_scores_by_hand_with_a_class_absent_from_both():
    from unet.evaluation.metrics import SegmentationMetrics
    # 3 classes (0 background, 1 "road", 2 "car") on two 2x3 images.
    truth = torch.tensor([[[0, 1, 1], [0, 0, 2]],
                          [[0, 1, 1], [1, 0, 0]]])          # image 2 has no car
    pred = torch.tensor([[[0, 1, 0], [0, 2, 2]],
                         [[0, 1, 1], [1, 0, 0]]])           # image 2: car absent from both
    m = SegmentationMetrics(classes=3)
    counts = m.update(pred, truth)
    assert counts.shape == (2, 3, 4)
    assert counts[0, 1].tolist() == [1, 0, 1, 4]             # road: TP 1, FP 0, FN 1, TN 4
    assert counts[0, 2].tolist() == [1, 1, 0, 4]             # car: TP 1, FP 1, FN 0
    r = m.compute_named(("background", "road", "car"))
    # road: image 1 Dice 2/3, image 2 Dice 1 -> 5/6; car: image 1 Dice 2/3, image 2 left out.
    assert r["dice_road"] == pytest.approx(5 / 6)
    assert r["dice_car"] == pytest.approx(2 / 3)
    assert r["dice"] == pytest.approx((5 / 6 + 2 / 3) / 2)
    assert r["iou_road"] == pytest.approx((1 / 2 + 1) / 2) and r["iou_car"] == pytest.approx(1 / 2)
    # pooled: road TP 4, FP 0, FN 1 -> 8/9; car TP 1, FP 1, FN 0 -> 2/3
    assert r["dice_road_micro"] == pytest.approx(8 / 9) and r["dice_car_micro"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx((4 / 6 + 6 / 6) / 2)
    assert r["accuracy_micro"] == pytest.approx(10 / 12)


def test_a_class_absent_from_every_image_has_no_score_and_leaves_the_mean():
    from unet.evaluation.metrics import SegmentationMetrics
    truth = pred = torch.tensor([[[0, 1], [1, 0]]])
    m = SegmentationMetrics(classes=3)
    m.update(pred, truth)
    r = m.compute_named(("background", "a", "b"))
    assert r["dice_a"] == 1.0 and math.isnan(r["dice_b"]) and r["dice"] == 1.0
