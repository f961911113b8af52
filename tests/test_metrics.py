import pytest
import torch

from unet.metrics import SegmentationMetrics, confusion, scores


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
