"""Losses by hand: the soft Dice of K classes and the softmax forms of the loss names."""
import pytest
import torch

from unet.training.losses import CeDiceLoss, make_loss, soft_dice_loss_classes


def test_soft_dice_of_classes_by_hand():
    # One image of 2 pixels, truth classes [1, 2]; the logits say class 1 at both, surely.
    labels = torch.tensor([[[1, 2]]])
    logits = torch.full((1, 3, 1, 2), -50.0)
    logits[0, 1] = 50.0
    # class 1: p = [1, 1], t = [1, 0] -> 1 - (2*1 + 1) / (2 + 1 + 1) = 0.25
    # class 2: p = [0, 0], t = [0, 1] -> 1 - (0 + 1) / (0 + 1 + 1) = 0.5; background left out
    assert soft_dice_loss_classes(logits, labels).item() == pytest.approx(0.375, abs=1e-6)


def test_loss_names_take_their_softmax_form_for_several_classes():
    labels = torch.tensor([[[0, 1], [2, 0]]])
    logits = torch.randn(1, 3, 2, 2)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert make_loss("bce", classes=3)(logits, labels).item() == pytest.approx(ce.item())
    both = make_loss("bce_dice", classes=3)
    assert isinstance(both, CeDiceLoss)
    assert both(logits, labels).item() == pytest.approx(
        ce.item() + soft_dice_loss_classes(logits, labels).item())
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        make_loss("focal", classes=3)
