"""What is logged for people to look at: per-epoch metrics and sample panels, the training
plan, the data report."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

from unet.evaluation import label_quality
from unet.evaluation.visualize import label_panel
from unet.images.intensity import describe
from unet.tracking.runs import CHECKPOINT_ARTIFACT

REPORT_JSON, REPORT_TEXT = "data_report.json", "data_report.txt"
LABELS = "label_quality"             # the evaluate run's folder of the label-quality check
RANKING = f"{LABELS}/ranking.csv"


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
    """Logs a unet.data.report.DataReport (JSON and readable text) and its counts as metrics
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
               labels: str = "", runtime: str = "") -> str:
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
    # 16-bit/float images: the values that became 0 and 255 (unet.images.intensity)
    window = train_run.data.tags.get("intensity_window", "")
    window = f", intensity window {window}" if window and window != describe(None) else ""
    return "\n".join([
        f"**Data**: {source} ({p.get('plan.median_size', '?')} median image size); images "
        f"per split: {sizes} (split run `{split.run_id}`).",
        f"**Test**: Dice {metrics['dice']:.4f}, IoU {metrics['iou']:.4f} per image at full "
        f"resolution{per_class}. Trivial baselines: {baselines}; floor {floor.dice:.4f}. "
        f"Compared with: {compared} on this split.",
        *([objects_line(metrics, train_run.data.tags)] if "map" in metrics else []),
        f"**Promotion**: {promotion.reason}.",
        f"**Plan**: input {value('image_height')}x{value('image_width')}, features "
        f"{value('features')}, batch {value('batch_size')}, lr {value('lr')} "
        f"{value('lr_schedule')}, {value('epochs')} epochs x {value('steps_per_epoch')} steps, "
        f"loss {value('loss')}, test-time flips {train_run.data.tags.get('tta', 'none')}"
        f"{window}, {scale_line(train_run.data.tags)} "
        f"(train run `{train_run.info.run_id}`, its `plan.txt`).",
        *([f"**Training**: {train_run.data.tags['steps_why']}; kept "
           f"{train_run.data.tags['kept_why']}."] if "kept_why" in train_run.data.tags else []),
        *([f"**Runtime**: {runtime}"] if runtime else []),
        "**Pictures**: per-epoch validation samples in the train run (image key `samples`); "
        "test panels (image | truth | prediction | overlay) in the evaluate run's "
        "`predictions/panels/`.",
    ] + ([labels] if labels else []))


def objects_line(metrics: dict[str, float], tags: dict[str, str]) -> str:
    """The model card's words on an instance model's objects (unet.evaluation.objects)."""
    return (f"**Objects**: mAP@0.5:0.95 {metrics['map']:.4f} (the DSB 2018 score), AP50 "
            f"{metrics['ap50']:.4f}, AP75 {metrics['ap75']:.4f}, F1@0.5 {metrics['f1_50']:.4f}, "
            f"count error {metrics['count_error']:.2f} per image, {metrics['splits']:.0f} "
            f"splits and {metrics['merges']:.0f} merges, {metrics['predicted_objects']:.0f} "
            f"objects found of {metrics['true_objects']:.0f}; baselines on the same images: "
            f"connected components of its own foreground mAP {metrics['map_components']:.4f}, "
            f"Otsu + distance watershed mAP {metrics['map_otsu']:.4f}. Its objects: "
            + (f"seeded watershed of its interior and border ({tags['watershed']}; chosen on "
               f"the validation split)." if "watershed" in tags else
               "a binary model's, the distance watershed of its foreground (-P "
               "output=instances trains for objects)."))


def scale_line(tags: dict[str, str]) -> str:
    """The model card's words on how the model meets images of other sizes, from the train
    run's tags `scale`, `predict_scale` and `predict_scale_why` (a run of before
    predict_scale: at its scale if it has one, as such models predict)."""
    scale = tags.get("scale", "none")
    mode = tags.get("predict_scale", "native" if scale != "none" else "fit")
    why = f"; {tags['predict_scale_why']}" if tags.get("predict_scale_why") else ""
    words = (f"predicted at scale {scale} (input pixels per image pixel)" if mode == "native"
             else "each image resized to the input")
    return (f"{words} (`predict_scale` {mode}{why}; predict and serving take "
            f"`predict_scale` to override)")


def log_label_quality(rows, worst: dict, threshold: float, class_names, seconds: float,
                      out_dir: Path) -> str:
    """The label-quality check (unet.evaluation.label_quality) in the evaluate run:
    `label_quality/` ranking.csv (worst first) and ranking.json (a table in the UI),
    panels/<rank>_<stem>.jpg of the worst (image | mask | prediction | disagreement); metrics
    label_suspects, label_score_max, label_quality_seconds; tags label_suspects, label_ranking.
    Returns the model card's line."""
    out_dir.mkdir(parents=True, exist_ok=True)
    label_quality.write_ranking(out_dir / "ranking.csv", rows, class_names)
    (out_dir / "panels").mkdir(exist_ok=True)
    for rank, row in enumerate(rows[:len(worst)], start=1):
        s = worst[row.stem]
        caption = (f"#{rank} {row.stem} ({row.subset}) score {row.score:.3f} Dice {row.dice:.3f}"
                   + (" FLAGGED" if row.flagged else ""))
        Image.fromarray(label_panel(s.image, s.mask, s.pred, s.heat, len(class_names),
                                    caption)).save(out_dir / "panels" / f"{rank:02d}_{row.stem}.jpg")
    mlflow.log_artifacts(str(out_dir), LABELS)
    mlflow.log_table({"stem": [r.stem for r in rows], "subset": [r.subset for r in rows],
                      "score": [round(r.score, 4) for r in rows],
                      "dice": [round(r.dice, 4) for r in rows],
                      "disagree_px": [r.disagree_px for r in rows],
                      "flagged": [r.flagged for r in rows],
                      "image_score": [round(r.image_score, 4) for r in rows],
                      "group_median": [round(r.group_median, 4) for r in rows]},
                     f"{LABELS}/ranking.json")
    flagged = sum(r.flagged for r in rows)
    top = rows[0].score if rows else 0.0
    mlflow.log_metrics({"label_suspects": flagged, "label_score_max": top,
                        "label_quality_seconds": seconds})
    uri = mlflow.get_artifact_uri(RANKING)
    mlflow.set_tags({"label_suspects": str(flagged), "label_ranking": uri,
                     "label_threshold": f"{threshold:g}"})
    return (f"**Labels**: {flagged} of {len(rows)} masks look wrong (label-quality score above "
            f"{threshold:g}; worst {top:.3f}): `{RANKING}` of the evaluate run ranks them, "
            f"`{LABELS}/panels/` shows the worst.")
