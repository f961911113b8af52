"""Entry point train: fit a U-Net on a split_data run's split; log metrics, checkpoints, model.

With nproc > 1 this process only launches: it fetches the split once, then runs this script
again in nproc processes under torchrun (unet/distributed.py). Of those, rank 0 logs to the run
(the one `mlflow run` made, found through MLFLOW_RUN_ID, or a new one); the others only train.
"""
import contextlib
import os
import pickle
import tempfile
from pathlib import Path

import mlflow

from unet import cli, config, distributed, engine, planning, tracking, transforms
from unet.cache import ArrayCache
from unet.data import SegmentationDataset
from unet.errors import UserError
from unet.evaluation import choose_tta
from unet.model import UNet
from unet.precision import Precision, choose_precision
from unet.predict import Segmenter
from unet.schedule import EpochSampler, Schedule
from unet.visualize import sample_grid

CHECKPOINTS = Path("checkpoints")   # <run id>/last.pt: the latest completed epoch of each run


# Set by `launch` for the processes it starts: a pickle of the config and what it fetched.
HANDOFF = "UNET_TRAIN_INPUTS"


def train() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if os.environ.get(HANDOFF):
            cfg, plan, split, resume = pickle.loads(Path(os.environ[HANDOFF]).read_bytes())
        else:
            cfg, plan, split, resume = fetch(config.cli_overrides("train"), Path(tmp))
        if cfg.nproc > 1 and not distributed.launched():
            launch((cfg, plan, split, resume), cfg.nproc, Path(tmp))
            return
        precision = choose_precision(cfg.precision, distributed.device())
        distributed.init(precision.device.type)
        try:
            # Only the main process has a run: the others never touch MLflow.
            with (tracking.step_run("train") if distributed.is_main()
                  else contextlib.nullcontext()) as run:
                if run is not None:
                    print(plan.to_text(), flush=True)
                    tracking.log_plan(plan)
                fit(cfg, split, resume, precision, run)
        finally:
            distributed.finish()


def fetch(overrides: dict[str, str], workdir: Path):
    """The config (its "auto" values from the plan for this split and machine), the plan, the
    split and the checkpoint to resume from (or None)."""
    if not overrides.get("split_run_id"):
        raise UserError("parameter split_run_id is missing: pass the run id printed by split_data")
    split = tracking.load_split(overrides["split_run_id"], workdir=workdir)
    if not split.subsets["val"]:
        raise UserError(f"split run {split.run_id} has no validation images: run split_data "
                        f"with val_fraction > 0")
    precision = choose_precision(config.given("train", overrides).get("precision", config.AUTO))
    cfg, plan = planning.configure(overrides, split.subsets["train"], split.subsets["val"],
                                   precision)
    resume = (tracking.load_checkpoint(cfg.resume_from, workdir, CHECKPOINTS)
              if cfg.resume_from else None)
    return cfg, plan, split, resume


def launch(inputs: tuple, nproc: int, workdir: Path) -> None:
    """Runs the training in nproc processes under torchrun, handing them the inputs fetched
    here once (the split's data stays in workdir until they finish)."""
    handoff = workdir / "inputs.pickle"
    handoff.write_bytes(pickle.dumps(inputs))
    status = distributed.launch(nproc, "steps.train", {HANDOFF: str(handoff)})
    if status != 0:
        raise UserError(f"training in {nproc} processes failed (torchrun exit status "
                        f"{status}): see the processes' errors above")


def fit(cfg: config.TrainConfig, split: tracking.Split, resume: dict | None,
        precision: Precision, run) -> None:
    """Trains in this process (one of several under torchrun); `run` is None but in rank 0."""
    if run is not None:
        tracking.log_effective_params(config.as_params(cfg))
        mlflow.set_tag("split_run_id", split.run_id)
        tracking.log_split_inputs(split, ("train", "val"))
        mlflow.set_tags({"precision": precision.name, "device": str(precision.device),
                         "world_size": distributed.world_size()})
    if cfg.batch_size % distributed.world_size():
        raise UserError(f"parameter batch_size={cfg.batch_size}: the batch is shared out among "
                        f"{distributed.world_size()} processes; make it a multiple of that")
    batch_size = cfg.batch_size // distributed.world_size()   # batch_size is the global batch
    engine.seed_everything(cfg.seed)
    # Augmentation and loader workers draw differently in each process.
    seed = cfg.seed + distributed.rank()
    size = (cfg.image_height, cfg.image_width)
    patch = (cfg.patch_height, cfg.patch_width)
    augment = transforms.train_transform(cfg.rotate_limit, cfg.hflip, cfg.vflip,
                                         cfg.color_jitter, seed, patch if patch != size else None)
    cache = ArrayCache(cfg.cache_dir) if cfg.cache_dir else None
    train_set = SegmentationDataset(split.subsets["train"], size, augment, cache).preload()
    val_set = SegmentationDataset(split.subsets["val"], size, transforms.eval_transform(),
                                  cache).preload()
    if cache is not None and run is not None:
        print(f"resized arrays: {cache.hits} from {cache.directory}, {cache.misses} decoded")

    # Only rank 0 (which has the run) writes the checkpoint.
    checkpoint = CHECKPOINTS / (run.info.run_id if run else "-") / "last.pt"
    schedule = Schedule(cfg.lr, cfg.epochs, cfg.steps_per_epoch, cfg.warmup_steps,
                        cfg.lr_schedule, cfg.patience)
    calibration = engine.calibration_batches(train_set.with_transform(transforms.eval_transform()),
                                             cfg.bn_recalibration, batch_size, cfg.seed)
    trainer = engine.Trainer(UNet(features=cfg.features), schedule, precision, checkpoint,
                             cfg.loss, calibration,
                             wrap=lambda model: distributed.wrap(model, cfg.sync_bn), seed=seed)
    if resume is not None:
        # A new run continues the old one's last completed epoch (a killed run can't be
        # reopened: its status is KILLED, or RUNNING forever after a kill -9).
        trainer.load_state(resume)
        if run is not None:
            mlflow.set_tag("resumed_from", cfg.resume_from)
            print(f"resuming {cfg.resume_from} after epoch {trainer.epoch}")
    if cfg.compile:
        trainer.model.compile()   # in place: state_dict keys stay those of the UNet
    # Every process draws the same global order (same seed) and takes its share of it.
    sampler = EpochSampler(len(train_set), cfg.steps_per_epoch * cfg.batch_size, cfg.seed,
                           distributed.rank(), distributed.world_size())
    train_loader = engine.make_loader(train_set, batch_size, cfg.num_workers, seed, precision,
                                      sampler)
    val_loader = engine.make_loader(distributed.shard(val_set), batch_size, cfg.num_workers,
                                    seed, precision)
    live = Segmenter(trainer.model, size, precision)   # shares the weights being trained
    if run is not None:
        print(f"train run {run.info.run_id}: {len(train_set)} train and {len(val_set)} val "
              f"images, {cfg.epochs} epochs, {precision.name} on {precision.device}", flush=True)
    try:
        for result in trainer.fit(train_loader, val_loader):
            if run is None:
                continue
            tracking.log_epoch(result, trainer.checkpoint_path, sample_grid(live, val_set))
            print(f"epoch {result.epoch}/{cfg.epochs}: train loss {result.train['loss']:.4f}, "
                  f"val loss {result.val['loss']:.4f}, val Dice {result.val['dice']:.4f}, "
                  f"lr {result.train['lr']:.2e}, {result.train['images_per_second']:.1f} img/s"
                  + (" (best)" if result.improved else ""), flush=True)
    except KeyboardInterrupt:
        if run is None:
            raise
        # The epoch under way is dropped; the checkpoint on disk is the last completed one.
        tracking.log_checkpoint(trainer.checkpoint_path)
        raise KeyboardInterrupt(
            f"train run {run.info.run_id} stopped during epoch {trainer.epoch + 1}/"
            f"{cfg.epochs} (marked KILLED); the checkpoint of epoch {trainer.epoch} is logged "
            f"as {tracking.CHECKPOINT_ARTIFACT}: continue with -P resume_from="
            f"{run.info.run_id}") from None
    except engine.NonFiniteLoss as e:
        raise UserError(f"training stopped: {e}. The checkpoint of epoch {trainer.epoch}, "
                        f"the last good one, is kept in {trainer.checkpoint_path}") from None

    if run is not None:
        log_best_model(cfg, trainer, val_set, precision, run)


def log_best_model(cfg: config.TrainConfig, trainer: engine.Trainer, val_set, precision, run):
    """Logs the best-by-validation-Dice weights as the run's model, with the test-time
    augmentation that validation measured to help, and an input example."""
    best = UNet(features=cfg.features)
    best.load_state_dict(trainer.best_state)
    segmenter = Segmenter(best, (cfg.image_height, cfg.image_width), precision)
    segmenter.tta, tta_dice = choose_tta(segmenter, val_set)
    mlflow.log_metrics({f"val_dice_tta_{mode}": dice for mode, dice in tta_dice.items()})
    image, _ = val_set.resized(0)
    example = transforms.resize_image(image, (cfg.image_height // 2, cfg.image_width // 2))
    model_uri = tracking.log_model(segmenter, example)
    mlflow.log_metrics({"best_val_dice": trainer.best_dice, "best_epoch": trainer.best_epoch})
    mlflow.set_tags({"tta": segmenter.tta, "stopped_early": str(trainer.stopped_early).lower()})
    stop = (f"stopped early after epoch {trainer.epoch} (no better val Dice for "
            f"{cfg.patience} epochs); " if trainer.stopped_early else "")
    print(f"train run {run.info.run_id}: {stop}best val Dice {trainer.best_dice:.4f} "
          f"(epoch {trainer.best_epoch}), test-time augmentation {segmenter.tta}; "
          f"model {model_uri}")


if __name__ == "__main__":
    cli.main(train)
