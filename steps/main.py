"""Entry point main: split_data -> train -> evaluate, reusing identical finished steps."""
import mlflow
from mlflow.exceptions import ExecutionException

from unet.config import pipeline as config
from unet.errors import UserError
from unet.secrets import mask
from unet.tracking import cli, registry, runs

CHAINED = {"train": "split_run_id", "evaluate": "train_run_id"}   # filled from the step before


def main() -> None:
    params = config.read_params()
    given = cli.overrides("main")
    with runs.step_run("main") as run:
        done, previous = {}, None
        for step in config.PIPELINE:
            # Every parameter is passed as text, defaults included, so a later run with the
            # same settings finds this one by comparing the strings MLflow stored.
            step_params = config.step_params(step, given, params)
            if step in CHAINED:
                step_params[CHAINED[step]] = previous.info.run_id
            try:
                previous, reused = runs.run_step(step, step_params)
            except ExecutionException:
                raise UserError(f"step {step} failed (its error is printed above)") from None
            done[step] = (previous, reused)
        summary(done, run)


def summary(done: dict, main_run) -> None:
    """Prints what ran or was reused, the test metrics and the model; tags the main run."""
    evaluate = done["evaluate"][0]
    tags, metrics = evaluate.data.tags, evaluate.data.metrics
    name, version = tags["model_name"], tags["model_version"]
    aliases = registry.aliases_of(name, version)
    mlflow.set_tags({f"{step}_run_id": r.info.run_id for step, (r, _) in done.items()})
    mlflow.set_tags({"model_name": name, "model_version": version})
    mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith("test_")})
    runs.name_run(f"main: {name} v{version} Dice {metrics['test_dice']:.3f} "
                  f"{'@' + aliases[0] if aliases else 'no alias'}")
    print("\n=== pipeline summary ===")
    for step, (r, reused) in done.items():
        print(f"  {step:<11} {'reused' if reused else 'ran':<7} run {r.info.run_id}")
    print(f"  test Dice {metrics['test_dice']:.4f} per image, {metrics['test_dice_micro']:.4f} "
          f"pooled; IoU {metrics['test_iou']:.4f}; accuracy {metrics['test_accuracy']:.4f}")
    if "test_map" in metrics:
        print(f"  objects: mAP@0.5:0.95 {metrics['test_map']:.4f}, F1@0.5 "
              f"{metrics['test_f1_50']:.4f}, count error {metrics['test_count_error']:.2f} per "
              f"image (baselines: components {metrics['test_map_components']:.4f}, Otsu "
              f"watershed {metrics['test_map_otsu']:.4f})")
    print(f"  model {name} version {version}, aliases: {', '.join(aliases) or 'none'}"
          f" (load it as models:/{name}@{registry.CHAMPION})")
    print(f"  {tags.get('promotion', '')}")
    if "label_suspects" in tags:
        print(f"  {label_line(tags, metrics)}")
    uri = mask(mlflow.get_tracking_uri())          # a password in it is never printed
    if uri.startswith(("http://", "https://")):     # a tracking server serves the UI itself
        print(f"  open the UI: {uri} (experiment of run {main_run.info.run_id})")
    else:
        print(f"  open the UI: mlflow ui --backend-store-uri {uri}"
              f"  (then http://127.0.0.1:5000, experiment of run {main_run.info.run_id})")


def label_line(tags: dict, metrics: dict) -> str:
    """The summary's line on the label-quality check of the evaluate run."""
    count, threshold = int(tags["label_suspects"]), tags["label_threshold"]
    if not count:
        return (f"labels: no mask looks wrong (worst label-quality score "
                f"{metrics['label_score_max']:.3f}, threshold {threshold})")
    return (f"{count} mask{'s look' if count > 1 else ' looks'} wrong (label-quality score above "
            f"{threshold}): see {tags['label_ranking']}; check them, then rerun with "
            f"-P exclude=<that file or a file of stems>")


if __name__ == "__main__":
    cli.main(main)
