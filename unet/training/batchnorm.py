"""BatchNorm statistics that match the weights they serve with.

BatchNorm keeps running means and variances as an exponential average (momentum 0.1) of the
batches seen in training. After few optimizer steps, or while a large learning rate still moves
the weights, that average lags behind the weights, and eval mode (which uses it) can fall far
below what the same weights do in train mode: on a small folder the car probability never passed
0.5 in eval mode. Recalibration replaces the averages by the plain mean over a fixed set of
training batches, run through the current weights (as SWA's `update_bn` does).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from unet.training import distributed


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate(model: nn.Module, batches: Iterable[torch.Tensor], precision) -> int:
    """Sets every BatchNorm layer's running mean and variance to the average of its batch
    statistics over `batches` (images (B, 3, H, W), normalized as for training), then leaves
    the model in eval mode. Under several processes the statistics are averaged over them.
    Returns the number of images used (0: nothing changed)."""
    layers = batchnorm_layers(model)
    batches = list(batches)
    if not layers or not batches:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None          # None = cumulative average of every batch seen
    seen = 0
    model.train()
    try:
        for images in batches:
            with precision.context():
                model(precision.to_device(images))
            seen += len(images)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    distributed.average_buffers([b for layer in layers
                                 for b in (layer.running_mean, layer.running_var)])
    return seen


def calibration_batches(dataset, images: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Image batches (B, 3, H, W) of `images` items of `dataset` drawn with `seed` (this
    process's share of them under several processes), for BatchNorm recalibration."""
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    chosen = chosen[:images][distributed.rank()::distributed.world_size()].tolist()
    return [torch.stack([dataset[i][0] for i in chosen[start:start + batch_size]])
            for start in range(0, len(chosen), batch_size)]
