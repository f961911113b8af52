"""What is logged for people to look at: per-epoch metrics and sample panels, the training
plan, the data report."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np

from unet.tracking.runs import CHECKPOINT_ARTIFACT

REPORT_JSON, REPORT_TEXT = "data_report.json", "data_report.txt"


def log_plan(plan) -> None:
    """The training plan as `plan.json` and `plan.txt`, and its measurements as `plan.<name>`
    params (the values it chose are logged with the config, as `effective.<name>`)."""
    mlflow.log_dict(plan.to_dict(), "plan.json")
    mlflow.log_text(plan.to_text() + "\n", "plan.txt")
    values = {k: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
              for k, v in plan.values.items()}
    mlflow.log_table({"setting": list(values), "value": list(values.values())}, "plan_table.json")
    fp = plan.fingerprint
    mlflow.log_params({
        "plan.train_images": fp.train_images, "plan.val_images": fp.val_images,
        "plan.median_size": f"{fp.median_height}x{fp.median_width}",
        "plan.small_object_px": "none" if fp.small_object_px is None else f"{fp.small_object_px:.1f}",
        "plan.machine": f"{plan.machine.device}{' bf16' if plan.machine.bf16 else ''} "
                        f"{plan.machine.cores} cores",
        "plan.budget_minutes": plan.budget_minutes,
        "plan.estimated_minutes": ("n/a" if plan.estimated_minutes is None
                                   else f"{plan.estimated_minutes:.1f}"),
        "plan.seconds_per_step": ("n/a" if plan.speed is None
                                  else f"{plan.speed.seconds_per_step:.4f}")})


def log_data_report(report) -> str:
    """Logs a validation.DataReport (JSON and readable text) and its counts as metrics
    `data_<kind>`; returns where the readable report is."""
    mlflow.log_dict(report.to_dict(), REPORT_JSON)
    mlflow.log_text(report.to_text(), REPORT_TEXT)
    counts = report.counts
    mlflow.log_table({"finding": list(counts), "files": list(counts.values())},
                     "data_report_table.json")
    mlflow.log_metrics({f"data_{kind}": n for kind, n in report.counts.items()})
    return mlflow.get_artifact_uri(REPORT_TEXT)


def log_epoch(outbox, result, checkpoint: Path, samples: np.ndarray) -> None:
    """Per-epoch metrics (step = epoch), the checkpoint and the sample panels (image key
    `samples`, step = epoch) of an EpochResult, through `outbox` (unet.tracking.outbox: sent
    now, or kept on disk while the tracking server is away)."""
    metrics = {f"train_{k}": v for k, v in result.train.items() if k != "images"}
    metrics.update({f"val_{k}": v for k, v in result.val.items()})
    outbox.log_metrics(metrics, step=result.epoch)
    outbox.log_artifact(checkpoint, Path(CHECKPOINT_ARTIFACT).parent.as_posix())
    # Step-indexed: the run page shows them with a slider over the epochs.
    outbox.log_image(samples, key="samples", step=result.epoch)


def model_card(split, metrics: dict[str, float], floor, promotion, train_run,
               runtime: str = "") -> str:
    """A model version's description: its data, test scores next to the trivial baselines and
    the previous champion, the plan it was trained with, its runtimes (`runtime`: one line,
    unet.tracking.models.runtime_note) and where its pictures are."""
    sizes = ", ".join(f"{len(pairs)} {name}" for name, pairs in split.subsets.items())
    source = "the built-in generated set" if split.builtin else f"`{split.data_dir}`"
    p = train_run.data.params
    value = lambda name: p.get(f"effective.{name}", p.get(name, "?"))     # noqa: E731
    baselines = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in floor.baselines.items())
    classes = split.classes.foreground if not split.classes.binary else ()
    per_class = ("" if not classes else " (mean of the classes: " + ", ".join(
        f"{name} {metrics[f'dice_{name}']:.4f}" for name in classes) + ")")
    other = promotion.compared_with
    compared = "no other version" if other is None else f"v{other[0]}, Dice {other[1]:.4f}"
    return "\n".join([
        f"**Data**: {source} ({p.get('plan.median_size', '?')} median image size); images "
        f"per split: {sizes} (split run `{split.run_id}`).",
        f"**Test**: Dice {metrics['dice']:.4f}, IoU {metrics['iou']:.4f} per image at full "
        f"resolution{per_class}. Trivial baselines: {baselines}; floor {floor.dice:.4f}. "
        f"Compared with: {compared} on this split.",
        f"**Promotion**: {promotion.reason}.",
        f"**Plan**: input {value('image_height')}x{value('image_width')}, features "
        f"{value('features')}, batch {value('batch_size')}, lr {value('lr')} "
        f"{value('lr_schedule')}, {value('epochs')} epochs x {value('steps_per_epoch')} steps, "
        f"loss {value('loss')}, test-time flips {train_run.data.tags.get('tta', 'none')} "
        f"(train run `{train_run.info.run_id}`, its `plan.txt`).",
        *([f"**Runtime**: {runtime}"] if runtime else []),
        "**Pictures**: per-epoch validation samples in the train run (image key `samples`); "
        "test panels (image | truth | prediction | overlay) in the evaluate run's "
        "`predictions/panels/`.",
    ])
