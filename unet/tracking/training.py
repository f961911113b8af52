"""The train step around the engine: the inputs it fetches, the hand-off to torchrun, the fit
loop with its logging, and the best model logged at the end.

With nproc > 1 the step's process only launches: it fetches the split once, then runs the step
again in nproc processes under torchrun (unet/training/distributed.py). Of those, rank 0 logs to
the run (the one `mlflow run` made, found through MLFLOW_RUN_ID, or a new one); the others only
train.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from pathlib import Path

import mlflow

from unet.config import pipeline as config
from unet.config.checks import AUTO
from unet.errors import UserError
from unet.evaluation.scoring import choose_tta, choose_watershed
from unet.evaluation.visualize import sample_grid
from unet.images import intensity, transforms
from unet.inference.instances import Watershed
from unet.inference.segmenter import Segmenter
from unet.labels import borders
from unet.network.model import UNet
from unet.network.precision import Precision, choose_precision
from unet.planning import plan as planning
from unet.planning.plan import Plan
from unet.tracking import models, reports, runs, splits
from unet.tracking.outbox import Outbox, spool_dir
from unet.training import distributed, engine, fitting

CHECKPOINTS = Path("checkpoints")   # <run id>/last.pt: the latest completed epoch of each run
HANDOFF = "UNET_TRAIN_INPUTS"       # set by `launch`: where the pickled TrainInputs are


@dataclasses.dataclass
class TrainInputs:
    cfg: config.TrainConfig
    plan: Plan
    split: splits.Split
    resume: dict | None                # the checkpoint to continue from


def fetch(overrides: dict[str, str], workdir: Path) -> TrainInputs:
    """The config (its "auto" values from the plan for this split and machine), the plan, the
    split (a generated data set downloaded into workdir) and the checkpoint to resume from."""
    if not overrides.get("split_run_id"):
        raise UserError("parameter split_run_id is missing: pass the run id printed by split_data")
    split = splits.load_split(overrides["split_run_id"], workdir=workdir)
    if not split.subsets["val"]:
        raise UserError(f"split run {split.run_id} has no validation images: run split_data "
                        f"with val_fraction > 0")
    precision = choose_precision(config.given("train", overrides).get("precision", AUTO))
    cfg, plan = configure(overrides, split, precision)
    resume = (runs.load_checkpoint(cfg.resume_from, workdir, CHECKPOINTS)
              if cfg.resume_from else None)
    return TrainInputs(cfg, plan, split, resume)


def configure(overrides: dict[str, str], split: splits.Split, precision: Precision
              ) -> tuple[config.TrainConfig, Plan]:
    """The plan's config for this split (unet.planning.plan.configure), what the model learns
    (`output`) decided from its masks (unet.training.fitting.output_of)."""
    cfg, plan = planning.configure(overrides, split.subsets["train"], split.subsets["val"],
                                   precision, read_mask=split.plan_reader)
    return dataclasses.replace(cfg, output=fitting.output_of(cfg.output, split.instances,
                                                             split.classes)), plan


def handed_off() -> TrainInputs | None:
    """In a process `launch` started: the inputs it fetched; else None."""
    path = os.environ.get(HANDOFF)
    return pickle.loads(Path(path).read_bytes()) if path else None


def launch(inputs: TrainInputs, module: str, workdir: Path) -> None:
    """Runs `python -m module` in cfg.nproc processes under torchrun, handing them the inputs
    fetched here once (the split's data stays in workdir until they finish)."""
    handoff = workdir / "inputs.pickle"
    handoff.write_bytes(pickle.dumps(inputs))
    nproc = inputs.cfg.nproc
    status = distributed.launch(nproc, module, {HANDOFF: str(handoff)})
    if status != 0:
        raise UserError(f"training in {nproc} processes failed (torchrun exit status "
                        f"{status}): see the processes' errors above")


def log_inputs(inputs: TrainInputs, precision: Precision) -> None:
    """The plan, the effective config, the split and the machine, on the active run."""
    print(inputs.plan.to_text(), flush=True)
    cfg, split = inputs.cfg, inputs.split
    groups = len({split.group_rule.of(pair.stem) for pairs in split.subsets.values()
                  for pair in pairs})
    runs.name_run(f"train lr={cfg.lr:.3g} {groups} groups {cfg.image_height}x{cfg.image_width}"
                  + (f" preset={cfg.preset}" if cfg.preset != AUTO else ""))
    reports.log_plan(inputs.plan)
    runs.log_effective_params(config.as_params(inputs.cfg))
    mlflow.set_tag("split_run_id", inputs.split.run_id)
    splits.log_split_inputs(inputs.split, ("train", "val"))
    mlflow.set_tags({"precision": precision.name, "device": str(precision.device),
                     "world_size": distributed.world_size()})


def fit(inputs: TrainInputs, precision: Precision, run, on_epoch=None) -> engine.Trainer:
    """Trains in this process (one of several under torchrun); `run` is None but in rank 0,
    which logs every epoch and, at the end, the best model. `on_epoch(EpochResult)` is called
    after each epoch is logged (the search reports to Optuna there, and may stop the fit by
    raising). Returns the Trainer (its best_dice, best_epoch)."""
    cfg = inputs.cfg
    if run is not None:
        log_inputs(inputs, precision)
    data = fitting.load_data(cfg, inputs.split.subsets, inputs.split.classes,
                             inputs.split.ignore_index, inputs.split.instances)
    if data.cache is not None and run is not None:
        print(f"resized arrays: {data.cache.hits} from {data.cache.directory}, "
              f"{data.cache.misses} decoded")
        if data.cache.rebuilt:
            print(f"rebuilt {len(data.cache.rebuilt)} unreadable cache entries: "
                  + ", ".join(p.name for p in data.cache.rebuilt))
    # Only rank 0 (which has the run) writes the checkpoint.
    checkpoint = CHECKPOINTS / (run.info.run_id if run else "-") / "last.pt"
    trainer = fitting.make_trainer(cfg, data, precision, checkpoint)
    if inputs.resume is not None:
        # A new run continues the old one's last completed epoch (a killed run can't be
        # reopened: its status is KILLED, or RUNNING forever after a kill -9).
        trainer.load_state(inputs.resume)
        if run is not None:
            mlflow.set_tag("resumed_from", cfg.resume_from)
            print(f"resuming {cfg.resume_from} after epoch {trainer.epoch}")
            if spool_dir(cfg.resume_from).is_dir():   # what it kept through an outage
                Outbox(cfg.resume_from).flush()
    train_loader, val_loader = fitting.make_loaders(cfg, data, precision)
    if run is not None:
        print(f"train run {run.info.run_id}: {len(data.train_set)} train and "
              f"{len(data.val_set)} val images, {cfg.epochs} epochs, {precision.name} on "
              f"{precision.device}; intensity window {intensity.describe(data.train_set.window)}",
              flush=True)
    run_epochs(trainer, train_loader, val_loader, data.val_set, run, on_epoch,
               cfg.tracking_wait_min * 60)
    if run is not None:
        split = inputs.split
        log_best_model(cfg, trainer, data.val_set, precision, run,
                       training_scale(cfg, inputs.plan.fingerprint), inputs.plan.scale_why,
                       inputs.plan.steps_why,
                       lambda path: borders.load_labels(path, split.ignore_index, split.instances))
    return trainer


def run_epochs(trainer: engine.Trainer, train_loader, val_loader, val_set, run,
               on_epoch=None, wait_s: float = 3600) -> None:
    """The fit loop: logs and prints each epoch (rank 0); an interruption logs the last
    completed epoch's checkpoint and says how to resume; a non-finite loss is one line. At the
    end, waits up to wait_s for records kept through an outage (Outbox.wait_until_sent)."""
    live = Segmenter(trainer.model, val_set.size, trainer.precision,   # the weights in training
                     classes=trainer.classes, window=val_set.window,
                     watershed=Watershed() if trainer.instances else None)
    outbox = Outbox(run.info.run_id) if run is not None else None
    try:
        for result in trainer.fit(train_loader, val_loader):
            if run is None:
                continue
            reports.log_epoch(outbox, result, trainer.checkpoint_path,
                              sample_grid(live, val_set))
            print(f"epoch {result.epoch}/{trainer.epochs}: train loss "
                  f"{result.train['loss']:.4f}, val loss {result.val['loss']:.4f}, val Dice "
                  f"{result.val['dice']:.4f}, lr {result.train['lr']:.2e}, "
                  f"{result.train['images_per_second']:.1f} img/s"
                  + (" (best)" if result.improved else ""), flush=True)
            if on_epoch is not None:
                on_epoch(result)
    except KeyboardInterrupt:
        if run is None:
            raise
        # The epoch under way is dropped; the checkpoint on disk is the last completed one.
        outbox.log_artifact(trainer.checkpoint_path,
                            Path(runs.CHECKPOINT_ARTIFACT).parent.as_posix())
        raise KeyboardInterrupt(
            f"train run {run.info.run_id} stopped during epoch {trainer.epoch + 1}/"
            f"{trainer.epochs} (marked KILLED); the checkpoint of epoch {trainer.epoch} is "
            f"logged as {runs.CHECKPOINT_ARTIFACT}: continue with -P resume_from="
            f"{run.info.run_id}") from None
    except engine.NonFiniteLoss as e:
        raise UserError(f"training stopped: {e}. The checkpoint of epoch {trainer.epoch}, "
                        f"the last good one, is kept in {trainer.checkpoint_path}") from None
    if outbox is not None:
        # The model and the run's end need the server.
        outbox.wait_until_sent(wait_s)


def training_scale(cfg: config.TrainConfig, fp) -> tuple[float, float]:
    """(sy, sx): pixels of the network input per pixel of an original training image, the
    input size over the training folder's median image size (fp: its Fingerprint). Every
    image was resized to the input: in a folder of one size that is its scale exactly; in a
    folder of mixed sizes the median image's (unet.inference.segmenter.Segmenter)."""
    return cfg.image_height / fp.median_height, cfg.image_width / fp.median_width


def log_best_model(cfg: config.TrainConfig, trainer: engine.Trainer, val_set, precision, run,
                   scale: tuple[float, float] | None = None, scale_why: str = "",
                   steps_why: str = "", read_labels=None):
    """Logs the kept weights (cfg.keep: the final or the best round's, averaged) as the run's
    model, with the test-time augmentation that validation measured to help, the scale it
    was trained at, how it meets images of other sizes (cfg.predict_scale, decided by the
    plan for `scale_why`: tags `predict_scale`, `predict_scale_why`;
    unet.inference.segmenter.Segmenter), the intensity window of 16-bit/float training images (tag
    `intensity_window`), why training stopped where it did (`steps_why`: the plan's) and which
    weights were kept (tags `steps_why`, `kept_why`), and an input example. A model for
    instances also carries the watershed settings that scored the best mAP on the validation
    objects (`read_labels`: a mask path -> its true labels; tag `watershed`, metric
    `val_map`; unet.evaluation.scoring.choose_watershed)."""
    kept = UNet(out_channels=trainer.model.head.out_channels, features=cfg.features)
    kept.load_state_dict(trainer.kept_state)
    segmenter = Segmenter(kept, (cfg.image_height, cfg.image_width), precision,
                          classes=trainer.classes, window=val_set.window,
                          watershed=Watershed() if trainer.instances else None)
    # TTA is chosen on the validation images already at the input size: without a scale,
    # which would resize them again.
    segmenter.tta, tta_dice = choose_tta(segmenter, val_set)
    if trainer.instances:
        segmenter.watershed, val_map = choose_watershed(segmenter, val_set, read_labels)
        mlflow.log_metric("val_map", val_map)
        mlflow.set_tag("watershed", ", ".join(f"{k} {v:g}" for k, v in
                                              dataclasses.asdict(segmenter.watershed).items()))
    segmenter.scale, segmenter.predict_scale = scale, cfg.predict_scale
    mlflow.log_metrics({f"val_dice_tta_{mode}": dice for mode, dice in tta_dice.items()})
    image, _ = val_set.resized(0)
    example = transforms.resize_image(image, (cfg.image_height // 2, cfg.image_width // 2))
    model_uri = models.log_model(segmenter, example)
    mlflow.log_metrics({"best_val_dice": trainer.best_dice, "best_epoch": trainer.best_epoch,
                        "kept_val_dice": trainer.kept_dice, "kept_epoch": trainer.kept_epoch})
    mlflow.set_tags({"tta": segmenter.tta, "stopped_early": str(trainer.stopped_early).lower(),
                     "scale": ",".join(f"{s:.6g}" for s in scale) if scale else "none",
                     "predict_scale": segmenter.predict_scale, "predict_scale_why": scale_why,
                     "intensity_window": intensity.describe(segmenter.window)})
    stop = (f"stopped early after epoch {trainer.epoch} (no better val Dice for "
            f"{cfg.patience} epochs)" if trainer.stopped_early else
            f"trained {trainer.epoch} rounds, {steps_why or 'the epochs given'}")
    kept = trainer.kept_reason or (f"the {cfg.keep} weights (round {trainer.kept_epoch}, val "
                                   f"Dice {trainer.kept_dice:.4f})")
    mlflow.set_tags({"steps_why": stop, "kept_why": kept})
    print(f"train run {run.info.run_id}: {stop}; kept {kept}; best round "
          f"{trainer.best_epoch}: {trainer.best_dice:.4f}; test-time augmentation "
          f"{segmenter.tta}, predict scale {segmenter.predict_scale} ({scale_why}); model "
          f"{model_uri}")
