"""Entry point evaluate: test a train run's model, then register it and move the aliases."""
import tempfile
import time
from pathlib import Path

import mlflow

from unet import baselines, cli, config, tracking
from unet.errors import UserError
from unet.evaluation import evaluate_pairs


def evaluate() -> None:
    cfg = config.load("evaluate", config.cli_overrides("evaluate"))
    with tracking.step_run("evaluate") as run, tempfile.TemporaryDirectory() as tmp:
        tracking.log_effective_params(config.as_params(cfg))
        train_run = tracking.get_run(cfg.train_run_id, "train", "train_run_id")
        split = tracking.load_split(train_run.data.params["split_run_id"], workdir=Path(tmp))
        test = split.subsets["test"]
        if not test:
            raise UserError(f"split run {split.run_id} has no test images: run split_data with "
                            f"test_fraction > 0")
        mlflow.set_tags({"split_run_id": split.run_id, "train_run_id": train_run.info.run_id})
        tracking.log_split_inputs(split, ("test",))

        model_uri = train_run.data.tags["model_uri"]
        out_dir = Path(tmp) / "predictions"
        segmenter = tracking.load_segmenter(model_uri).with_tta(cfg.tta)
        mlflow.set_tag("tta", segmenter.tta)
        start = time.perf_counter()
        metrics = evaluate_pairs(segmenter, test, cfg.threshold, cfg.eval_batch_size, out_dir)
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        # Full resolution end to end: decode, predict, score, write the prediction files.
        mlflow.log_metric("test_images_per_second", len(test) / (time.perf_counter() - start))
        mlflow.log_artifacts(str(out_dir), "predictions")
        floor = tracking.Floor(baselines.baseline_dice(
            test, baselines.mean_mask(split.subsets["train"]), cfg.threshold), cfg.floor_margin)
        mlflow.log_metrics({f"baseline_dice_{k}": v for k, v in floor.baselines.items()}
                           | {"floor_dice": floor.dice})

        # Registration comes last: a failure above leaves the registry as it was.
        def score_champion(uri: str) -> float:
            return evaluate_pairs(tracking.load_segmenter(uri).with_tta(cfg.tta), test,
                                  cfg.threshold, cfg.eval_batch_size)["dice"]

        promotion = tracking.register_and_promote(model_uri, cfg.model_name, metrics,
                                                  split.run_id, train_run.info.run_id,
                                                  score_champion, floor)
        mlflow.set_tags({"model_name": cfg.model_name, "model_version": promotion.version,
                         "model_alias": promotion.alias or "none",
                         "promotion": promotion.reason})
        print(f"evaluate run {run.info.run_id}: test Dice {metrics['dice']:.4f}, IoU "
              f"{metrics['iou']:.4f}, accuracy {metrics['accuracy']:.4f}; {cfg.model_name} "
              f"version {promotion.version} -> "
              f"{'@' + promotion.alias if promotion.alias else 'no alias'}: {promotion.reason}")


if __name__ == "__main__":
    cli.main(evaluate)
