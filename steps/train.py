"""Entry point train: fit a U-Net on a split_data run's split; log metrics, checkpoints, model."""
import tempfile
from pathlib import Path

import mlflow

from unet import cli, config, engine, tracking, transforms
from unet.cache import ArrayCache
from unet.data import SegmentationDataset
from unet.errors import UserError
from unet.model import UNet
from unet.predict import Segmenter
from unet.visualize import sample_grid


def train() -> None:
    overrides = config.cli_overrides("train")
    if not overrides.get("split_run_id"):
        raise UserError("parameter split_run_id is missing: pass the run id printed by split_data")
    with tracking.step_run("train") as run, tempfile.TemporaryDirectory() as tmp:
        split = tracking.load_split(overrides["split_run_id"], workdir=Path(tmp))
        cfg = config.load("train", overrides, preset="builtin" if split.builtin else "real")
        tracking.log_effective_params(config.as_params(cfg))
        if not split.subsets["val"]:
            raise UserError(f"split run {split.run_id} has no validation images: run split_data "
                            f"with val_fraction > 0")
        mlflow.set_tag("split_run_id", split.run_id)
        tracking.log_split_inputs(split, ("train", "val"))
        engine.seed_everything(cfg.seed)
        size = (cfg.image_height, cfg.image_width)
        augment = transforms.train_transform(cfg.rotate_limit, cfg.hflip, cfg.vflip, cfg.seed)
        cache = ArrayCache(cfg.cache_dir) if cfg.cache_dir else None
        train_set = SegmentationDataset(split.subsets["train"], size, augment, cache).preload()
        val_set = SegmentationDataset(split.subsets["val"], size, transforms.eval_transform(),
                                      cache).preload()
        if cache is not None:
            print(f"resized arrays: {cache.hits} from {cache.directory}, {cache.misses} decoded")

        precision = engine.choose_precision(cfg.precision)
        mlflow.set_tags({"precision": precision.name, "device": str(precision.device)})
        trainer = engine.Trainer(UNet(features=cfg.features), cfg.lr, cfg.epochs, precision,
                                 Path("checkpoints") / run.info.run_id / "last.pt",
                                 cfg.lr_schedule)
        if cfg.resume_from:
            trainer.load_state(tracking.load_checkpoint(cfg.resume_from, Path(tmp)))
            print(f"resuming {cfg.resume_from} after epoch {trainer.epoch}")
        if cfg.compile:
            trainer.model.compile()   # in place: state_dict keys stay those of the UNet
        train_loader = engine.make_loader(train_set, cfg.batch_size, True, cfg.num_workers,
                                          cfg.seed, precision)
        val_loader = engine.make_loader(val_set, cfg.batch_size, False, cfg.num_workers,
                                        cfg.seed, precision)
        live = Segmenter(trainer.model, size, precision)   # shares the weights being trained
        for result in trainer.fit(train_loader, val_loader):
            tracking.log_epoch(result, trainer.checkpoint_path,
                               sample_grid(live, val_set))
            print(f"epoch {result.epoch}/{cfg.epochs}: train loss {result.train['loss']:.4f}, "
                  f"val loss {result.val['loss']:.4f}, val Dice {result.val['dice']:.4f}, "
                  f"{result.train['images_per_second']:.1f} img/s"
                  + (" (best)" if result.improved else ""))

        best = UNet(features=cfg.features)
        best.load_state_dict(trainer.best_state)
        segmenter = Segmenter(best, size, precision)
        image, _ = val_set.resized(0)
        example = transforms.resize_image(image, (cfg.image_height // 2, cfg.image_width // 2))
        model_uri = tracking.log_model(segmenter, example[None])
        mlflow.log_metrics({"best_val_dice": trainer.best_dice, "best_epoch": trainer.best_epoch})
        print(f"train run {run.info.run_id}: best val Dice {trainer.best_dice:.4f} "
              f"(epoch {trainer.best_epoch}); model {model_uri}")


if __name__ == "__main__":
    cli.main(train)
