"""How long and in what order training runs: the lr schedule and the epoch sampler."""
from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long and how fast to train: `epochs` validation rounds of `steps_per_epoch`
    optimizer steps, lr warmed up then decayed per step (see lr_factor); stop early after
    `patience` rounds without a better validation Dice (0: never), once may_stop allows."""
    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    patience: int = 0

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def may_stop(self, step: int) -> bool:
        """Whether early stopping may end training after `step` optimizer steps: once a
        decaying lr is at most half its peak (a round without progress at a high lr is noise,
        and stopping there keeps weights that never annealed); a constant lr never anneals,
        so there the user's patience applies as it is."""
        if self.lr_schedule == "constant":
            return True
        return step >= self.warmup_steps and \
            lr_factor(step, self.total_steps, self.warmup_steps, self.lr_schedule) <= 0.5


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): a linear warm-up from
    1/warmup_steps to 1 over warmup_steps steps (Adam's early moment estimates are noisy; a
    large lr then can wreck a fresh network), then "cosine" decays to 0 at total_steps,
    "constant" stays at 1 (the seed tutorial's)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class EpochSampler(torch.utils.data.Sampler[int]):
    """`samples` indices per epoch, this process's share of them, drawn from an endless stream
    of permutations of the dataset (permutation k shuffled with seed + k).

    An epoch is a validation interval, not a pass over the data: a small folder repeats images
    within an epoch, and a large one may need several epochs for one pass, but every image is
    seen once before any is seen again. The same seed and epoch give the same indices in every
    process; process r of w takes every w-th of them from position r.
    """

    def __init__(self, size: int, samples: int, seed: int, rank: int = 0, world_size: int = 1):
        if samples % world_size:
            raise ValueError(f"samples={samples} is not divisible by world_size={world_size}")
        self.size, self.samples, self.seed = size, samples, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """1-based, as the Trainer counts."""
        self.epoch = epoch

    def _permutation(self, k: int) -> torch.Tensor:
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + k))

    def __iter__(self):
        start = (self.epoch - 1) * self.samples
        first, last = start // self.size, (start + self.samples - 1) // self.size
        stream = torch.cat([self._permutation(k) for k in range(first, last + 1)])
        offset = start - first * self.size
        indices = stream[offset:offset + self.samples]
        return iter(indices[self.rank::self.world_size].tolist())

    def __len__(self) -> int:
        return self.samples // self.world_size
