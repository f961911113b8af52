"""Entry point evaluate: test a train run's model at full resolution next to the trivial
baselines, then register it and move the aliases (unet/tracking/registry.py)."""
import functools
import tempfile
import time
from pathlib import Path

import mlflow

from unet.config import pipeline as config
from unet.errors import UserError
from unet.evaluation import label_quality
from unet.evaluation.scoring import evaluate_pairs
from unet.labels import borders
from unet.tracking import cli, models, quantize, registry, reports, runs, splits


def evaluate() -> None:
    cfg = config.load("evaluate", cli.overrides("evaluate"))
    with runs.step_run("evaluate") as run, tempfile.TemporaryDirectory() as tmp:
        runs.log_effective_params(config.as_params(cfg))
        train_run = runs.get_run(cfg.train_run_id, "train", "train_run_id")
        split = splits.load_split(train_run.data.params["split_run_id"], workdir=Path(tmp))
        if not split.subsets["test"]:
            raise UserError(f"split run {split.run_id} has no test images: run split_data with "
                            f"test_fraction > 0")
        mlflow.set_tags({"split_run_id": split.run_id, "train_run_id": train_run.info.run_id})
        splits.log_split_inputs(split, ("test",))
        model_uri = train_run.data.tags["model_uri"]
        metrics, runtime = test_model(cfg, model_uri, split, Path(tmp) / "predictions")
        labels = check_labels(cfg, model_uri, split, Path(tmp) / "labels")
        int8 = (quantize.try_int8(model_uri, split.subsets, cfg,
                                  metrics["dice"] if runtime == "onnx" else None,
                                  split.read_mask)
                if cfg.quantize == "int8" else None)
        floor = registry.log_floor(split.subsets, cfg.threshold, cfg.floor_margin,
                                   split.classes, split.read_mask)

        # Registration comes last: a failure above leaves the registry as it was.
        def score_champion(uri: str) -> float:
            return evaluate_pairs(models.load_segmenter(uri, cfg.runtime).with_tta(cfg.tta),
                                  split.subsets["test"], cfg.threshold,
                                  cfg.eval_batch_size, read_mask=split.read_mask)["dice"]

        setting = registry.Setting(split.run_id, cfg.threshold, cfg.tta, cfg.runtime)
        promotion = registry.register_and_promote(model_uri, cfg.model_name, metrics, setting,
                                                  train_run.info.run_id, score_champion, floor)
        registry.describe(cfg.model_name, promotion.version,
                          reports.model_card(split, metrics, floor, promotion, train_run,
                                             labels,
                                             models.runtime_note(model_uri, runtime, int8)))
        announce(run, cfg.model_name, metrics, promotion)


def announce(run, name: str, metrics: dict, promotion: registry.Promotion) -> None:
    """Names and tags the run after the version it made; prints one line."""
    alias = "@" + promotion.alias if promotion.alias else "no alias"
    runs.name_run(f"evaluate {name} v{promotion.version} Dice {metrics['dice']:.3f} {alias}")
    mlflow.set_tags({"model_name": name, "model_version": promotion.version,
                     "model_alias": promotion.alias or "none", "promotion": promotion.reason})
    objects = (f"; objects mAP {metrics['map']:.4f} (components {metrics['map_components']:.4f}"
               f", Otsu watershed {metrics['map_otsu']:.4f})" if "map" in metrics else "")
    print(f"evaluate run {run.info.run_id}: test Dice {metrics['dice']:.4f}, IoU "
          f"{metrics['iou']:.4f}, accuracy {metrics['accuracy']:.4f}{objects}; {name} version "
          f"{promotion.version} -> {alias}: {promotion.reason}")


def test_model(cfg: config.EvaluateConfig, model_uri: str, split, out_dir: Path
               ) -> tuple[dict, str]:
    """Scores the model on the split's test pairs at full resolution on cfg.runtime (void
    pixels left out) and logs the metrics and the predictions (masks, overlays, panels,
    per-image CSV); returns the metrics and the runtime it ran on."""
    test = split.subsets["test"]
    segmenter = models.load_segmenter(model_uri, cfg.runtime).with_tta(cfg.tta)
    mlflow.set_tags({"tta": segmenter.tta, "runtime": segmenter.runtime})
    start = time.perf_counter()
    # Masks of objects (or a model for them): also scored per object, against the objects.
    read_labels = functools.partial(borders.load_labels, ignore=split.ignore_index,
                                    labelled=split.instances) \
        if segmenter.instances or split.instances else None
    metrics = evaluate_pairs(segmenter, test, cfg.threshold, cfg.eval_batch_size, out_dir,
                             split.read_mask, read_labels)
    mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
    # Full resolution end to end: decode, predict, score, write the prediction files.
    mlflow.log_metric("test_images_per_second", len(test) / (time.perf_counter() - start))
    mlflow.log_artifacts(str(out_dir), "predictions")
    return metrics, segmenter.runtime


def check_labels(cfg: config.EvaluateConfig, model_uri: str, split, out_dir: Path) -> str:
    """Scores every mask of the split against the model (unet.evaluation.label_quality) and logs
    the ranking; returns the model card's line ("" with -P label_quality=false)."""
    if not cfg.label_quality:
        return ""
    segmenter = models.load_segmenter(model_uri).with_tta(cfg.tta)
    read_mask = split.read_mask
    start = time.perf_counter()
    rows, worst = label_quality.score_pairs(segmenter, split.subsets, read_mask,
                                            cfg.label_threshold, cfg.eval_batch_size,
                                            group_of=split.group_rule.of)
    line = reports.log_label_quality(rows, worst, cfg.label_threshold, split.classes.names,
                                     time.perf_counter() - start, out_dir)
    excluded = int(mlflow.get_run(split.run_id).data.metrics.get("data_excluded", 0))
    print(f"label quality: {sum(r.flagged for r in rows)} of {len(rows)} masks score above "
          f"{cfg.label_threshold:g} ({time.perf_counter() - start:.0f} s)")
    return line + (f" {excluded} image(s) were left out at split_data (parameter exclude)."
                   if excluded else "")


if __name__ == "__main__":
    cli.main(evaluate)
