"""Entry point predict: segment a folder of images with a registered model."""
import sys
from pathlib import Path

import mlflow

from unet import cli, config
from unet.errors import UserError
from unet.folder import plan, predict_folder
from unet.tracking import models, runs


def predict() -> None:
    cfg = config.load("predict", cli.overrides("predict"))
    with runs.step_run("predict") as run:
        runs.log_effective_params(config.as_params(cfg))
        images, ignored = plan(Path(cfg.input_dir), Path(cfg.output_dir), cfg.overlay)
        segmenter = models.load_segmenter(cfg.model_uri).with_tta(cfg.tta)
        mlflow.set_tag("tta", segmenter.tta)
        result = predict_folder(segmenter, images, Path(cfg.output_dir), cfg.threshold,
                                cfg.overlay, cfg.batch_size)
        runs.name_run(f"predict {len(result.written)} images")
        mlflow.log_metrics({"images_written": len(result.written),
                            "images_skipped": len(result.skipped)})
        print(f"predict run {run.info.run_id}: {len(result.written)} mask(s) written to "
              f"{Path(cfg.output_dir).resolve()}"
              + (f"; ignored {ignored} file(s) that are not .jpg/.jpeg/.png" if ignored else ""))
        if result.skipped:
            print(f"{len(result.skipped)} unreadable image(s) skipped:", file=sys.stderr)
            for path, why in result.skipped:
                print(f"  {path}: {why}", file=sys.stderr)
            raise UserError(f"{len(result.skipped)} of {len(result.skipped) + len(result.written)} "
                            f"image(s) could not be read (listed above); the others were written")


if __name__ == "__main__":
    cli.main(predict)
