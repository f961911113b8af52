"""Training losses, computed in fp32: binary, logits (B, 1, H, W) against 0/1 masks
(B, 1, H, W); K classes, logits (B, K, H, W) against class indices (B, H, W).

BCE alone (the seed tutorial's loss) scores every pixel alike, so on images where the object is
a small share of the pixels it is nearly minimized by predicting background everywhere. Adding
soft Dice, which scores the overlap of each image's object, removes that easy minimum; the BCE
term keeps gradients well-behaved where the soft Dice is flat (nnU-Net uses the same sum).

Void pixels (mask value VOID, unet.labels.masks) weigh nothing in any of these losses: the loss of
a mask with void pixels is the loss of its other pixels.
"""
from __future__ import annotations

import torch
from torch import nn

from unet.config.checks import LOSSES
from unet.labels.masks import VOID


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s) per image over its non-void pixels,
    averaged over the batch; p = sigmoid(logits). An image whose truth is empty scores 0 when p
    is near 0 everywhere."""
    valid = (masks != VOID).flatten(1)
    probs = torch.sigmoid(logits).flatten(1) * valid
    target = masks.flatten(1) * valid
    overlap = (probs * target).sum(1)
    total = probs.sum(1) + target.sum(1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


def bce_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the non-void pixels of the batch."""
    valid = masks != VOID
    pixels = nn.functional.binary_cross_entropy_with_logits(
        logits, torch.where(valid, masks, 0), reduction="none")
    return (pixels * valid).sum() / valid.sum().clamp_min(1)


class BceLoss(nn.Module):
    """BCE-with-logits, void pixels left out (bce_loss)."""

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, masks)


class BceDiceLoss(nn.Module):
    """BCE-with-logits + soft Dice, both on the same logits."""

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, masks) + soft_dice_loss(logits, masks)


def soft_dice_loss_classes(logits: torch.Tensor, labels: torch.Tensor, smooth: float = 1.0
                           ) -> torch.Tensor:
    """1 - soft Dice of each foreground class (softmax probabilities vs one-hot truth) per
    image, averaged over classes and batch. Background is left out: it is most of the pixels and
    would make the mean look good while a small class is missed. Void pixels are left out."""
    valid = (labels != VOID).flatten(1)[:, None]                            # (B, 1, HW)
    probs = torch.softmax(logits, dim=1)[:, 1:].flatten(2) * valid          # (B, K-1, HW)
    onehot = nn.functional.one_hot(torch.where(labels == VOID, 0, labels).long(),
                                   logits.shape[1])                         # (B, H, W, K)
    target = onehot[..., 1:].permute(0, 3, 1, 2).flatten(2).to(probs.dtype) * valid
    overlap = (probs * target).sum(2)
    total = probs.sum(2) + target.sum(2)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


class CeDiceLoss(nn.Module):
    """Cross-entropy + soft Dice over the foreground classes, both on the same logits."""

    def __init__(self, dice: bool = True):
        super().__init__()
        self.ce, self.dice = nn.CrossEntropyLoss(ignore_index=VOID), dice

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = self.ce(logits, labels.long())
        return loss + soft_dice_loss_classes(logits, labels) if self.dice else loss


def make_loss(name: str, classes: int = 2) -> nn.Module:
    """"bce_dice" (default) or "bce" (the seed tutorial's). For classes > 2 the same names give
    their softmax forms: cross-entropy + soft Dice over the foreground classes, or
    cross-entropy alone."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; use one of {LOSSES}")
    if classes > 2:
        return CeDiceLoss(dice=name == "bce_dice")
    return BceDiceLoss() if name == "bce_dice" else BceLoss()
