"""Weight averaging: the model a run keeps is an exponential moving average of its weights.

Why: on a few hundred steps of a small folder the weights at any one step are a noisy sample
(validation Dice swung by 0.4 between rounds on 2 validation cars); their average over the
last few dozen steps is a better and steadier model (Polyak averaging, the EMA of timm and
nnU-Net-style trainers). BatchNorm statistics are not averaged: they are recomputed for the
averaged weights before each validation (unet.training.batchnorm).
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def decay_of(horizon_steps: int) -> float:
    """The EMA decay whose memory is about `horizon_steps` steps (weights of steps older than
    that count e^-1 as much); 0 when averaging is off."""
    return 1.0 - 1.0 / horizon_steps if horizon_steps > 0 else 0.0


class WeightAverage:
    """avg <- d * avg + (1 - d) * w after every optimizer step, with d = min(decay,
    (1 + n) / (10 + n)) after n updates so that the first steps, far from where training
    ends up, are forgotten quickly rather than weighing on the average for its whole
    memory. `model` holds the averaged weights (a copy of the trained module: the same
    architecture and buffers)."""

    def __init__(self, model: nn.Module, horizon_steps: int):
        self.decay = decay_of(horizon_steps)
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, trained: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        averaged = [p for p in self.model.parameters()]
        current = [p.detach() for p in trained.parameters()]
        torch._foreach_lerp_(averaged, current, 1.0 - decay)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = state["updates"]
