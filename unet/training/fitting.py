"""What a TrainConfig trains with: datasets, loaders and the Trainer, in this process (one of
several under torchrun). Knows nothing of MLflow (unet/tracking/training.py logs the fit)."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from unet.config.pipeline import TrainConfig
from unet.data.cache import ArrayCache
from unet.data.pairs import Pair, SegmentationDataset
from unet.errors import UserError
from unet.images import intensity, transforms
from unet.images.formats import read_deep
from unet.labels import borders
from unet.labels.classes import Classes, reader
from unet.network.model import UNet
from unet.network.precision import Precision
from unet.training import batchnorm, distributed, engine, seeding
from unet.training.schedule import EpochSampler, Schedule


@dataclasses.dataclass
class TrainData:
    train_set: SegmentationDataset     # resized once, augmented per read
    val_set: SegmentationDataset       # resized once, normalized only
    batch_size: int                    # this process's share of the global batch
    seed: int                          # this process's augmentation seed
    cache: ArrayCache | None
    classes: Classes                   # binary, or K > 2 (a K-channel softmax model)
    instances: bool = False            # classes background, interior, border (objects)


def output_of(output: str, labelled: bool, classes: Classes) -> str:
    """Parameter `output` -> what the model learns: "instances" (objects: background, interior
    and border, unet.labels.borders) or "mask". "auto": instances where the split's masks hold
    instance labels (`labelled`), else a mask. "instances" on binary masks takes each
    connected region of a mask as one object; on masks of K > 2 classes it is refused."""
    if output == "auto":
        return "instances" if labelled else "mask"
    if output == "instances" and not classes.binary:
        raise UserError(f"parameter output=instances: the masks hold {classes.count} classes "
                        f"({', '.join(classes.names)}), not objects; instances are learnt from "
                        f"label images or binary masks (run split_data with -P "
                        f"mask_kind=instances if the values are object labels)")
    return output


def load_data(cfg: TrainConfig, subsets: dict[str, list[Pair]],
              classes: Classes = Classes.numbered(2), ignore: int | None = None,
              instances: bool = False) -> TrainData:
    """Decodes and resizes the train and val pairs (through the disk cache when on); masks
    as 0/1, or as class indices when there are K > 2 classes, void pixels (value `ignore`)
    VOID and instance labels all foreground (unet.labels.classes.reader); for cfg.output
    "instances" as background / interior / border (unet.labels.borders.load_target: label
    images, or `instances` False the regions of binary masks). 16-bit and float images
    go through the intensity window measured here on the training images (unet.images.intensity;
    every process measures the same images, so all agree)."""
    world = distributed.world_size()
    if cfg.batch_size % world:
        raise UserError(f"parameter batch_size={cfg.batch_size}: the batch is shared out among "
                        f"{world} processes; make it a multiple of that")
    # Augmentation and loader workers draw differently in each process.
    seed = cfg.seed + distributed.rank()
    size, patch = (cfg.image_height, cfg.image_width), (cfg.patch_height, cfg.patch_width)
    augment = transforms.train_transform(cfg.rotate_limit, cfg.hflip, cfg.vflip,
                                         cfg.color_jitter, seed, patch if patch != size else None,
                                         cfg.appearance)
    cache = ArrayCache(cfg.cache_dir) if cfg.cache_dir else None
    # `labels` keeps cache entries of the same files read another way apart.
    reading = ("binary" if classes.binary else f"{classes.count} classes") + \
        (f" void {ignore}" if ignore is not None else "") + (" instances" if instances else "")
    masks = {} if reading == "binary" else {
        "read_mask": reader(classes, ignore, instances), "labels": reading}
    objects = cfg.output == "instances"
    if objects:
        masks = {"read_mask": functools.partial(borders.load_target, ignore=ignore,
                                                labelled=instances),
                 "labels": "objects interior/border" + (" of labels" if instances else "")
                 + (f" void {ignore}" if ignore is not None else "")}
        classes = Classes(borders.CLASSES)
    window = intensity.measure([pair.image for pair in subsets["train"]], read_deep)
    train_set = SegmentationDataset(subsets["train"], size, augment, cache, **masks,
                                    window=window).preload()
    val_set = SegmentationDataset(subsets["val"], size, transforms.eval_transform(),
                                  cache, **masks, window=window).preload()
    return TrainData(train_set, val_set, cfg.batch_size // world, seed, cache, classes, objects)


def make_trainer(cfg: TrainConfig, data: TrainData, precision: Precision,
                 checkpoint: Path) -> engine.Trainer:
    """The Trainer of cfg: its schedule, loss, BatchNorm calibration images and the model
    wrapped for several processes."""
    seeding.seed_everything(cfg.seed)       # the same initial weights in every process
    schedule = Schedule(cfg.lr, cfg.epochs, cfg.steps_per_epoch, cfg.warmup_steps,
                        cfg.lr_schedule, cfg.patience)
    calibration = batchnorm.calibration_batches(
        data.train_set.with_transform(transforms.eval_transform()), cfg.bn_recalibration,
        data.batch_size, cfg.seed)
    classes = data.classes
    trainer = engine.Trainer(UNet(out_channels=classes.out_channels, features=cfg.features),
                             schedule, precision, checkpoint, cfg.loss, calibration,
                             wrap=lambda model: distributed.wrap(model, cfg.sync_bn),
                             seed=data.seed, classes=None if classes.binary else classes.names,
                             average_steps=cfg.average_steps, keep=cfg.keep,
                             instances=data.instances)
    if cfg.compile:
        trainer.model.compile()   # in place: state_dict keys stay those of the UNet
    return trainer


def make_loaders(cfg: TrainConfig, data: TrainData, precision: Precision):
    """(train loader, val loader): every process draws the same global order of training
    images (same seed) and takes its share; each validates its share of the val images."""
    sampler = EpochSampler(len(data.train_set), cfg.steps_per_epoch * cfg.batch_size, cfg.seed,
                           distributed.rank(), distributed.world_size())
    train = engine.make_loader(data.train_set, data.batch_size, cfg.num_workers, data.seed,
                               precision, sampler)
    val = engine.make_loader(distributed.shard(data.val_set), data.batch_size, cfg.num_workers,
                             data.seed, precision)
    return train, val
