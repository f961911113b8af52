"""The U-Net (Ronneberger et al., 2015) with batch norm, as parts named after the paper's
figure."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Sequential):
    """(3x3 conv, no bias => BN => ReLU) * 2; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            # No bias: the batch norm right after it would cancel it.
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Decoder block: 2x2 transposed conv doubles H and W, then DoubleConv on [skip, upsampled]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """x: (B, in, h, w), skip: (B, out, H, W) with H in {2h, 2h+1} -> (B, out, H, W)."""
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Odd sizes lose a row or column to max-pooling; stretch back to the skip's size.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Encoder (DoubleConv + 2x2 max-pool per level), bridge, decoder with skips, 1x1 output conv.

    Input (B, in_channels, H, W) float images; output (B, out_channels, H, W) logits, for any
    H, W >= 2**len(features) (smaller inputs vanish in the bridge).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1,
                 features: Sequence[int] = (64, 128, 256, 512)):
        super().__init__()
        features = tuple(features)
        self.features = features
        self.downs = nn.ModuleList()
        channels = in_channels
        for width in features:
            self.downs.append(DoubleConv(channels, width))
            channels = width
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        # The bridge widens the deepest level (the seed tutorial built it from features[1]).
        self.bridge = DoubleConv(features[-1], 2 * features[-1])
        self.ups = nn.ModuleList(Up(2 * width, width) for width in reversed(features))
        self.head = nn.Conv2d(features[0], out_channels, kernel_size=1)

    @property
    def min_size(self) -> int:
        """Smallest H and W the network accepts: each level halves the size."""
        return 2 ** len(self.features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]}: smaller than "
                             f"{self.min_size}x{self.min_size}, the least this "
                             f"{len(self.features)}-level U-Net accepts")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bridge(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)
