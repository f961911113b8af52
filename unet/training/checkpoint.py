"""Checkpoints written so that a crash mid-write never leaves a truncated one."""
from __future__ import annotations

from pathlib import Path

import torch

from unet.atomic import write_atomically


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save, written atomically and fsync'ed (unet.atomic): a crash mid-write leaves
    the previous checkpoint intact, never a truncated one."""
    write_atomically(Path(path), lambda f: torch.save(state, f), durable=True)
