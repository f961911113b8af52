"""Entry point predict: segment a folder (or a list) of images with a registered model, as
masks (with a model for instances also label images and objects.csv) or one Kaggle submission
CSV, streaming and resumable; engine=spark runs the model as a Spark UDF."""
import os
import sys

import mlflow

from unet.config import pipeline as config
from unet.errors import UserError
from unet.images.formats import EXTS_TEXT
from unet.inference.jobs import claim, plan_job
from unet.inference.streaming import CsvSink, Outcome, predict_stream
from unet.tracking import cli, models, runs, serving

ARTIFACT_LIMIT = 20 * 2**20   # a submission CSV up to this size is logged with the run


def predict() -> None:
    cfg = config.load("predict", cli.overrides("predict"))
    with runs.step_run("predict") as run:
        runs.log_effective_params(config.as_params(cfg))
        job = plan_job(cfg.input_dir, cfg.input_list, cfg.output_dir, cfg.format, cfg.overlay,
                       cfg.engine)
        model = models.resolve(cfg.model_uri)      # an alias may move while a job resumes
        classes = models.classes_of(model)
        if len(classes) > 2 and cfg.format == "rle":
            raise UserError(f"parameter format=rle: the Kaggle RLE holds binary masks, and "
                            f"{cfg.model_uri} segments {len(classes)} classes; use format=png "
                            f"(class-index PNGs)")
        if len(classes) > 2:
            job.sink.classes = len(classes)      # a PngSink: class-index masks
        if models.output_of(model) == "instances" and cfg.format == "png":
            job.sink.objects = True              # label images and objects.csv beside masks
        models.check_predict_scale(model, cfg.predict_scale)
        claim_output(cfg, model)
        mlflow.set_tag("model", model)
        if cfg.engine == "spark":   # the model's limit in the Spark workers: their environment
            os.environ[serving.MAX_PIXELS_ENV] = f"{cfg.max_megapixels:g}"
            from unet.tracking.spark_predict import predict_spark
            outcome = predict_spark(model, job.images, job.sink, cfg.threshold, cfg.tta,
                                    cfg.batch_size, cfg.spark_master, runtime=cfg.runtime,
                                    predict_scale=cfg.predict_scale)
        else:
            segmenter = models.load_segmenter(model, cfg.runtime,
                                              cfg.predict_scale).with_tta(cfg.tta)
            mlflow.set_tags({"tta": segmenter.tta, "runtime": segmenter.runtime,
                             "predict_scale": segmenter.predict_scale})
            outcome = predict_stream(segmenter, job.images, job.sink, cfg.threshold,
                                     cfg.batch_size, max_pixels=int(cfg.max_megapixels * 1e6))
        report(run, outcome, job.sink, job.ignored)


def claim_output(cfg, model: str) -> None:
    """Every setting that changes what lands in output_dir, recorded there (or checked
    against an earlier run's record): a resumed job never mixes two models or settings."""
    default_runtime = models.default_runtime(model)
    claim(cfg.output_dir, {"model": model, "threshold": f"{cfg.threshold:g}", "tta": cfg.tta,
                           "format": cfg.format, "predict_scale": cfg.predict_scale,
                           "runtime": default_runtime if cfg.runtime == "auto" else cfg.runtime,
                           "overlay": str(cfg.overlay).lower(), "engine": cfg.engine},
          # what a record made before a setting was recorded was made with: its default
          before={"predict_scale": "auto", "runtime": default_runtime, "overlay": "false",
                  "engine": "local"})


def report(run, outcome: Outcome, sink, ignored: int) -> None:
    """Logs the counts (and a small CSV); prints the final line; UserError if images failed."""
    runs.name_run(f"predict {outcome.predicted} images")
    mlflow.log_metrics({"images_predicted": outcome.predicted,
                        "images_skipped": outcome.skipped, "images_failed": len(outcome.failed)})
    mlflow.set_tag("output", sink.describe())
    if isinstance(sink, CsvSink) and sink.path.stat().st_size <= ARTIFACT_LIMIT:
        mlflow.log_artifact(str(sink.path))
    print(f"predict run {run.info.run_id}: {outcome.line()}; output in {sink.describe()}"
          + (f"; ignored {ignored} file(s) that are not images ({EXTS_TEXT})" if ignored else ""))
    if outcome.failed:
        print(f"{len(outcome.failed)} image(s) skipped (unreadable or over the limits):", file=sys.stderr)
        for path, why in outcome.failed:
            print(f"  {path}: {why}", file=sys.stderr)
        total = outcome.predicted + len(outcome.failed)
        raise UserError(f"{len(outcome.failed)} of {total} image(s) could not be read (listed "
                        f"above); the others were written")


if __name__ == "__main__":
    cli.main(predict)
