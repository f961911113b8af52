"""Training and validation loops, mixed precision and checkpoints. Knows nothing of MLflow."""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from unet import distributed
from unet.errors import UserError
from unet.metrics import SegmentationMetrics


@dataclasses.dataclass(frozen=True)
class Precision:
    """How the model runs: device, autocast dtype (None = fp32), memory format, loss scaling."""
    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool
    grad_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast]

    def context(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Moves an input batch (B, C, H, W) to the device in the model's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def choose_precision(requested: str = "auto", device: str | None = None) -> Precision:
    """CUDA: bf16 autocast where supported, else fp16 with a GradScaler. CPU: bf16 autocast when
    the processor has bf16 instructions (several times faster than fp32 there), else fp32.
    channels_last everywhere: oneDNN and cuDNN both run convolutions fastest in NHWC."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if requested == "auto":
            requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    elif requested == "auto":
        requested = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    elif requested == "fp16":
        raise UserError("parameter precision=fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[requested]
    return Precision(dev, dtype, channels_last=True, grad_scaler=dtype is torch.float16)


def prepare(model: nn.Module, precision: Precision) -> nn.Module:
    if precision.device.type == "cuda":
        # Fixed input sizes: let cuDNN time its convolution algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    model = model.to(precision.device)
    return model.to(memory_format=torch.channels_last) if precision.channels_last else model


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch generators (augmentation is seeded per loader worker)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a copy of the transform with the same seed: without reseeding, every
    # worker would draw the same augmentation sequence. torch gives each worker (and each
    # epoch) a distinct seed derived from the loader's generator, so this stays reproducible.
    transform = getattr(torch.utils.data.get_worker_info().dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                precision: Precision, sampler=None) -> torch.utils.data.DataLoader:
    """Batches of (images (B, 3, H, W), masks (B, H, W)), shuffled reproducibly from `seed`
    (or in the order of `sampler`, e.g. a process's share under DistributedDataParallel)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=precision.device.type == "cuda")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training can't go on from here."""


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, precision: Precision,
                    scaler: torch.amp.GradScaler, desc: str = "train") -> dict[str, float]:
    """One pass over loader of (images (B, 3, H, W), masks (B, H, W)); returns mean loss,
    images seen and images per second, over all processes when there are several."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                disable=None)
    for images, masks in bar:
        images = precision.to_device(images)
        masks = masks.to(precision.device, non_blocking=True).unsqueeze(1)
        with precision.context():
            logits = model(images)
        # The loss in fp32: BCE on bf16 logits loses precision near 0 and 1.
        loss = loss_fn(logits.float(), masks)
        if not torch.isfinite(loss):
            # Every process raises (torchrun then stops them all); skipping the batch on one
            # process only would leave the others waiting in DDP's gradient exchange. Overflow
            # in fp16 gradients is another matter: the GradScaler skips those steps itself.
            raise NonFiniteLoss(f"loss is {loss.item()} at {desc}: lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    total_loss, seen = distributed.sum_over_ranks(total_loss, seen)
    return {"loss": total_loss / max(seen, 1), "images": int(seen),
            "images_per_second": seen / seconds if seconds > 0 else math.nan}


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: nn.Module, precision: Precision,
             threshold: float = 0.5) -> dict[str, float]:
    """Mean loss, accuracy/Dice/IoU (per image and micro) at the loader's resolution; over
    all processes' images when there are several (each validates its share)."""
    model.eval()
    metrics, total_loss, seen, start = SegmentationMetrics(), 0.0, 0, time.perf_counter()
    for images, masks in tqdm(loader, desc="val", leave=False, dynamic_ncols=True,
                disable=None):
        images = precision.to_device(images)
        masks = masks.to(precision.device, non_blocking=True)
        with precision.context():
            logits = model(images).float()
        total_loss += loss_fn(logits, masks.unsqueeze(1)).item() * len(images)
        seen += len(images)
        metrics.update(torch.sigmoid(logits[:, 0]) > threshold, masks > 0.5)
    counts = torch.cat([torch.zeros(0, 4, dtype=torch.long), *metrics.counts])
    metrics.counts = [distributed.gather_over_ranks(counts)]
    total_loss, seen = distributed.sum_over_ranks(total_loss, seen)
    result = metrics.compute()
    result["loss"] = total_loss / max(seen, 1)
    result["images_per_second"] = seen / (time.perf_counter() - start)
    return result


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a temp file in the same folder, then an atomic rename: a crash mid-write
    leaves the previous checkpoint intact, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass
class EpochResult:
    epoch: int                    # 1-based, completed
    train: dict[str, float]
    val: dict[str, float]
    improved: bool                # val Dice beat every earlier epoch's


class Trainer:
    """Adam + BCE-with-logits over `epochs`; keeps the best-by-validation-Dice weights.

    lr_schedule "cosine" decays the learning rate from lr towards 0 over the epochs (the last
    epochs fine-tune instead of bouncing around); "constant" keeps it, as the seed tutorial did.

    `fit()` yields an EpochResult after every epoch, once the checkpoint `checkpoint_path`
    (model, optimizer, scaler, epoch, best score) is on disk, so callers log as they go. The
    checkpoint always holds the state at the end of a completed epoch (the starting state
    before the first): an interrupted epoch is lost, never half-saved, and a state whose
    validation loss is not finite raises NonFiniteLoss instead of replacing it.

    `wrap(model)` gives the module that trains (e.g. DistributedDataParallel around it);
    `model` itself holds the weights for checkpoints, validation and inference. Under several
    processes only the main one writes the checkpoint.
    """

    def __init__(self, model: nn.Module, lr: float, epochs: int, precision: Precision,
                 checkpoint_path: Path, lr_schedule: str = "cosine", wrap=None):
        self.precision = precision
        self.model = prepare(model, precision)
        self.train_module = wrap(self.model) if wrap else self.model
        self.epochs = epochs
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs)
                          if lr_schedule == "cosine" else
                          torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0))
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.grad_scaler)
        self.loss_fn = nn.BCEWithLogitsLoss()
        self.checkpoint_path = Path(checkpoint_path)
        self.epoch = 0
        self.best_dice = -1.0
        self.best_epoch = 0
        self.best_state = copy.deepcopy(self.model.state_dict())

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch,
                "best_dice": self.best_dice, "best_epoch": self.best_epoch,
                "best_model": self.best_state}

    def load_state(self, state: dict) -> None:
        """Resumes from a checkpoint written by `fit` (training continues at epoch + 1)."""
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, KeyError):
            raise UserError("the checkpoint to resume from holds another architecture: pass the "
                            "same features as the run that wrote it") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_dice = state["epoch"], state["best_dice"]
        self.best_epoch, self.best_state = state["best_epoch"], state["best_model"]

    def fit(self, train_loader, val_loader) -> Iterator[EpochResult]:
        epochs = self.epochs
        if distributed.is_main() and not self.checkpoint_path.exists():
            save_checkpoint(self.state(), self.checkpoint_path)
        while self.epoch < epochs:
            epoch = self.epoch + 1
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            train = train_one_epoch(self.train_module, train_loader, self.optimizer, self.loss_fn,
                                    self.precision, self.scaler, desc=f"epoch {epoch}/{epochs}")
            train["lr"] = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            val = validate(self.model, val_loader, self.loss_fn, self.precision)
            if not math.isfinite(val["loss"]):
                raise NonFiniteLoss(f"validation loss is {val['loss']} after epoch {epoch}: "
                                    f"lower lr or check the data")
            improved = val["dice"] > self.best_dice
            if improved:
                self.best_dice, self.best_epoch = val["dice"], epoch
                self.best_state = copy.deepcopy(self.model.state_dict())
            self.epoch = epoch
            if distributed.is_main():
                save_checkpoint(self.state(), self.checkpoint_path)
            yield EpochResult(epoch, train, val, improved)
