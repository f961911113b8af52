"""Training losses on logits (B, 1, H, W) against 0/1 masks (B, 1, H, W), computed in fp32.

BCE alone (the seed tutorial's loss) scores every pixel alike, so on images where the object is
a small share of the pixels it is nearly minimized by predicting background everywhere. Adding
soft Dice, which scores the overlap of each image's object, removes that easy minimum; the BCE
term keeps gradients well-behaved where the soft Dice is flat (nnU-Net uses the same sum).
"""
from __future__ import annotations

import torch
from torch import nn

from unet.config import LOSSES


def soft_dice_loss(logits: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s) per image, averaged over the batch;
    p = sigmoid(logits). An image whose truth is empty scores 0 when p is near 0 everywhere."""
    probs = torch.sigmoid(logits).flatten(1)
    target = masks.flatten(1)
    overlap = (probs * target).sum(1)
    total = probs.sum(1) + target.sum(1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


class BceDiceLoss(nn.Module):
    """BCE-with-logits + soft Dice, both on the same logits."""

    def __init__(self):
        super().__init__()
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, masks) + soft_dice_loss(logits, masks)


def make_loss(name: str) -> nn.Module:
    """"bce_dice" (default) or "bce" (the seed tutorial's)."""
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "bce_dice":
        return BceDiceLoss()
    raise ValueError(f"unknown loss {name!r}; use one of {LOSSES}")
