"""Training and validation loops and checkpoints. Knows nothing of MLflow."""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from unet.errors import UserError
from unet.evaluation.metrics import SegmentationMetrics, summarize
from unet.labels.masks import VOID
from unet.network.precision import Precision, prepare
from unet.training import batchnorm, distributed
from unet.training.averaging import WeightAverage
from unet.training.checkpoint import save_checkpoint
from unet.training.keeping import SteadyRounds
from unet.training.losses import make_loss
from unet.training.schedule import Schedule, lr_factor
from unet.training.seeding import rng_state, set_rng_state


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a copy of the transform with the same seed: without reseeding, every
    # worker would draw the same augmentation sequence. torch gives each worker (and each
    # epoch) a distinct seed derived from the loader's generator, so this stays reproducible.
    transform = getattr(torch.utils.data.get_worker_info().dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def make_loader(dataset, batch_size: int, num_workers: int, seed: int, precision: Precision,
                sampler=None) -> torch.utils.data.DataLoader:
    """Batches of (images (B, 3, H, W), masks (B, H, W)), in the order of `sampler` (training:
    an EpochSampler), else in dataset order (validation)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        persistent_workers=num_workers > 0, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
        pin_memory=precision.device.type == "cuda")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training can't go on from here."""


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    loss_fn: nn.Module, precision: Precision, scaler: torch.amp.GradScaler,
                    scheduler=None, desc: str = "train", after_step=None) -> dict[str, float]:
    """One pass over loader of (images (B, 3, H, W), masks (B, H, W)), one optimizer (and
    scheduler) step per batch, then `after_step()` (the weight average); returns mean loss, images
    seen and images per second, over all processes when there are several."""
    model.train()
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                disable=None)
    for images, masks in bar:
        images = precision.to_device(images)
        masks = masks.to(precision.device, non_blocking=True)
        with precision.context():
            logits = model(images)
        # The loss in fp32: BCE on bf16 logits loses precision near 0 and 1.
        loss = loss_fn(logits.float(), loss_target(logits, masks))
        if not torch.isfinite(loss):
            # Every process raises (torchrun then stops them all); skipping the batch on one
            # process only would leave the others waiting in DDP's gradient exchange. Overflow
            # in fp16 gradients is another matter: the GradScaler skips those steps itself.
            raise NonFiniteLoss(f"loss is {loss.item()} at {desc}: lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        total_loss += loss.item() * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    seconds = time.perf_counter() - start
    total_loss, seen = distributed.sum_over_ranks(total_loss, seen)
    return {"loss": total_loss / max(seen, 1), "images": int(seen),
            "images_per_second": seen / seconds if seconds > 0 else math.nan}


def loss_target(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """What the loss compares the logits with: 0/1 masks (B, 1, H, W) for a 1-channel
    (sigmoid) head, class indices (B, H, W) for K channels (softmax)."""
    return masks.unsqueeze(1) if logits.shape[1] == 1 else masks


def decide(logits: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5,
           instances: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, truth) as metrics count them: 0/1 (B, H, W) for a sigmoid head (the
    probability above `threshold`), class indices (B, H, W) for K channels (the argmax); the
    truth keeps its void pixels (VOID), which the metrics leave out. `instances`: the classes
    background, interior, border scored as 0/1 foreground (interior or border), so that the
    Dice that picks and keeps weights is the foreground's, as a binary model's."""
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0]) > threshold, masks
    if instances:
        objects = 1.0 - torch.softmax(logits, 1)[:, 0]
        return objects > threshold, torch.where(masks == VOID, masks, (masks > 0).to(masks.dtype))
    return logits.argmax(1), masks


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: nn.Module, precision: Precision,
             threshold: float = 0.5, names: tuple[str, ...] | None = None,
             instances: bool = False) -> dict[str, float]:
    """Mean loss, accuracy/Dice/IoU (per image and micro) at the loader's resolution; over
    all processes' images when there are several (each validates its share). With K classes
    also per class, named by `names` (unet.evaluation.metrics.summarize_classes); for
    `instances` of the foreground (`decide`)."""
    model.eval()
    metrics = SegmentationMetrics(len(names) if names and not instances else 2)
    total_loss, seen, start = 0.0, 0, time.perf_counter()
    for images, masks in tqdm(loader, desc="val", leave=False, dynamic_ncols=True,
                disable=None):
        images = precision.to_device(images)
        masks = masks.to(precision.device, non_blocking=True)
        with precision.context():
            logits = model(images).float()
        total_loss += loss_fn(logits, loss_target(logits, masks)).item() * len(images)
        seen += len(images)
        metrics.update(*decide(logits, masks, threshold, instances))
    # Every process's counts: the scores of the whole validation set, each image once.
    result = summarize(distributed.gather_over_ranks(metrics.all_counts()),
                       None if instances else names)
    total_loss, seen = distributed.sum_over_ranks(total_loss, seen)
    result["loss"] = total_loss / max(seen, 1)
    result["images_per_second"] = seen / (time.perf_counter() - start)
    return result


@dataclasses.dataclass
class EpochResult:
    epoch: int                    # 1-based, completed
    train: dict[str, float]
    val: dict[str, float]
    improved: bool                # val Dice beat every earlier epoch's


class Trainer:
    """Adam over `schedule`, loss `loss` ("bce_dice" or "bce").

    The weights validated and kept are an exponential moving average of the trained ones over
    about `average_steps` steps (unet.training.averaging; 0: the trained weights themselves).
    `keep` says which round's are the run's model: "final" (the end of the schedule, where the lr
    has annealed: a noisy validation of one or two cars cannot pick a lucky early round), "best"
    (the round of the best validation Dice) or "auto" (unet.training.keeping: the final weights
    unless they are clearly worse on validation than an earlier stretch of rounds, which happens
    where a small folder is overfit).

    Before every validation the BatchNorm statistics are recalibrated on `calibration` (a list
    of un-augmented training image batches (B, 3, H, W); empty = keep the running averages), so
    that validation, the best weights and the exported model see statistics that match the
    weights (unet.training.batchnorm).

    `fit()` yields an EpochResult after every epoch, once the checkpoint `checkpoint_path`
    (model, optimizer, scaler, scheduler, epoch, best score and weights) is on disk, so callers
    log as they go. The checkpoint always holds the state at the end of a completed epoch (the
    starting state before the first): an interrupted epoch is lost, never half-saved, and a state
    whose validation loss is not finite raises NonFiniteLoss instead of replacing it.

    `wrap(model)` gives the module that trains (e.g. DistributedDataParallel around it);
    `model` itself holds the weights for checkpoints, validation and inference. Under several
    processes only the main one writes the checkpoint.

    `classes`: the class names when the masks hold K > 2 classes (the model then has K output
    channels, the loss is its softmax form, and validation scores every class); None: binary.
    `instances`: the classes are background, interior, border (unet.labels.borders), and
    validation scores the foreground (`decide`).
    """

    def __init__(self, model: nn.Module, schedule: Schedule, precision: Precision,
                 checkpoint_path: Path, loss: str = "bce_dice", calibration=(), wrap=None,
                 seed: int = 0, classes: tuple[str, ...] | None = None,
                 average_steps: int = 0, keep: str = "final", instances: bool = False):
        self.precision = precision
        self.seed = seed
        self.model = prepare(model, precision)
        self.train_module = wrap(self.model) if wrap else self.model
        self.schedule = schedule
        self.epochs = schedule.epochs
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=schedule.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, schedule.total_steps,
                                                   schedule.warmup_steps, schedule.lr_schedule))
        self.average = WeightAverage(self.model, average_steps) if average_steps else None
        self.keep = keep
        self.scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.grad_scaler)
        self.classes = classes             # class names when K > 2 (the model has K channels)
        self.instances = instances
        self.loss_fn = make_loss(loss, len(classes) if classes else 2)
        self.calibration = list(calibration)
        self.checkpoint_path = Path(checkpoint_path)
        self.epoch = 0
        self.stopped_early = False
        self.best_dice = -1.0          # the best validation round (reported; kept if keep=best)
        self.best_epoch = 0
        self.kept_dice, self.kept_epoch = -1.0, 0
        self.kept_state = copy.deepcopy(self.evaluated.state_dict())
        self.kept_reason = ""
        self.rounds = SteadyRounds()       # keep=auto (unet.training.keeping)

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and may be kept: the average, or the trained ones."""
        return self.average.model if self.average else self.model

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "scheduler": self.scheduler.state_dict(),
                "epoch": self.epoch, "stopped_early": self.stopped_early,
                "best_dice": self.best_dice, "best_epoch": self.best_epoch,
                "kept_dice": self.kept_dice, "kept_epoch": self.kept_epoch,
                "kept_model": self.kept_state, "rng": rng_state(),
                "average": self.average.state_dict() if self.average else None,
                **self.rounds.state()}

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
        self.stopped_early = state.get("stopped_early", False)
        self.best_epoch = state["best_epoch"]
        # Checkpoints from before weight averaging kept the best round's weights.
        self.kept_state = state.get("kept_model", state.get("best_model"))
        self.kept_dice = state.get("kept_dice", state["best_dice"])
        self.kept_epoch = state.get("kept_epoch", state["best_epoch"])
        if self.average and state.get("average"):
            self.average.load_state_dict(state["average"])
        self.rounds = SteadyRounds.from_state(state)
        # The sampler and the augmentation are reseeded from (seed, epoch) every epoch; the
        # global generators are restored too, for whatever else draws from them.
        if "rng" in state:
            set_rng_state(state["rng"])

    def validate(self, val_loader) -> dict[str, float]:
        """Recalibrates BatchNorm, then validates the evaluated weights in eval mode."""
        batchnorm.recalibrate(self.evaluated, self.calibration, self.precision)
        return validate(self.evaluated, val_loader, self.loss_fn, self.precision,
                        names=self.classes, instances=self.instances)

    def fit(self, train_loader, val_loader) -> Iterator[EpochResult]:
        epochs, patience = self.epochs, self.schedule.patience
        if distributed.is_main() and not self.checkpoint_path.exists():
            save_checkpoint(self.state(), self.checkpoint_path)
        while self.epoch < epochs and not self.stopped_early:
            epoch = self.epoch + 1
            sampler = getattr(train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            # Augmentation drawn from (seed, epoch), like the sampler: a resumed run draws what
            # the uninterrupted one drew (loader workers reseed themselves, see _seed_worker).
            transform = getattr(getattr(train_loader, "dataset", None), "transform", None)
            if hasattr(transform, "set_random_seed"):
                transform.set_random_seed(self.seed * 100_003 + epoch)
            train = train_one_epoch(self.train_module, train_loader, self.optimizer, self.loss_fn,
                                    self.precision, self.scaler, self.scheduler,
                                    desc=f"epoch {epoch}/{epochs}", after_step=self._average)
            train["lr"] = self.scheduler.get_last_lr()[0]
            val = self.validate(val_loader)
            if not math.isfinite(val["loss"]):
                raise NonFiniteLoss(f"validation loss is {val['loss']} after epoch {epoch}: "
                                    f"lower lr or check the data")
            improved = val["dice"] > self.best_dice
            if improved:
                self.best_dice, self.best_epoch = val["dice"], epoch
            if improved or self.keep != "best":
                self.kept_dice, self.kept_epoch = val["dice"], epoch
                self.kept_state = copy.deepcopy(self.evaluated.state_dict())
            if self.keep == "auto":
                self.rounds.track(val["dice"], self.evaluated.state_dict())
            self.epoch = epoch
            # Early stopping, only once the lr has annealed (Schedule.may_stop): before
            # that, rounds without progress are noise, not a plateau.
            self.stopped_early = bool(patience) and epoch < epochs and \
                epoch - self.best_epoch >= patience and \
                self.schedule.may_stop(epoch * self.schedule.steps_per_epoch)
            if distributed.is_main():
                try:
                    save_checkpoint(self.state(), self.checkpoint_path)
                except OSError as e:         # a full disk, a lost mount: stop, keep the last
                    raise UserError(f"could not write the checkpoint of epoch {epoch} to "
                                    f"{self.checkpoint_path} ({e.strerror or e}); the one "
                                    f"there (epoch {epoch - 1}) is intact: free space and "
                                    f"resume from it") from None
            yield EpochResult(epoch, train, val, improved)
        if self.keep == "auto" and self.rounds.history:
            epoch, dice, weights, self.kept_reason = self.rounds.settle()
            if weights is not None:    # an earlier steady round's; else the final, kept_state
                self.kept_epoch, self.kept_dice, self.kept_state = epoch, dice, weights

    def _average(self) -> None:
        if self.average is not None:
            self.average.update(self.model)
