"""The configs of the entry points beside the pipeline: predict, ui and tune (unet.config.pipeline
reads them from params.yaml like the others)."""
from __future__ import annotations

import dataclasses

from unet.config.checks import (
    PREDICT_SCALES,
    at_least,
    check_runtime,
    check_tta,
    one_of,
)
from unet.errors import UserError

TUNNELS = ("none", "ngrok")


@dataclasses.dataclass(frozen=True)
class PredictConfig:
    model_uri: str           # models:/<name>@<alias>, models:/<name>/<version>, runs:/<id>/model
    input_dir: str           # a folder of .jpg/.jpeg/.png/.tif/.tiff images, or ...
    input_list: str          # ... a text file of image paths, one per line
    output_dir: str          # gets <stem>_mask.png (and <stem>_overlay.jpg) or submission.csv
    format: str              # png | rle (Kaggle Carvana submission.csv)
    threshold: float
    overlay: bool
    batch_size: int
    tta: str                 # auto (the model's own) | none | hflip | flips
    engine: str              # local | spark (mlflow.pyfunc.spark_udf; format rle)
    spark_master: str        # engine=spark: e.g. local[*]
    max_megapixels: float    # an image declaring more pixels is refused before it is decoded
    runtime: str             # auto (the model's default) | torch | onnx | onnx-int8
    predict_scale: str = "auto"   # auto (the model's) | native | fit: overrides the model's

    def validate(self) -> None:
        check_tta(self.tta)
        one_of(self, "predict_scale", PREDICT_SCALES)
        check_runtime(self.runtime)
        for name in ("model_uri", "output_dir"):    # input_dir/input_list: unet.inference.jobs
            if not getattr(self, name).strip():
                raise UserError(f"parameter {name} is missing")
        for name, options in (("format", ("png", "rle")), ("engine", ("local", "spark"))):
            one_of(self, name, options)
        if not 0 < self.threshold < 1:
            raise UserError(f"parameter threshold={self.threshold}: must be in (0, 1)")
        at_least(self, ("batch_size",), 1)
        if self.max_megapixels <= 0:
            raise UserError(f"parameter max_megapixels={self.max_megapixels}: must be > 0")


@dataclasses.dataclass(frozen=True)
class UiConfig:
    host: str                # the interface the UI listens on
    port: int
    tunnel: str              # none | ngrok (token from the NGROK_AUTHTOKEN environment variable)
    public: bool             # tunnel=ngrok without NGROK_BASIC_AUTH: true opens it anyway

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise UserError(f"parameter port={self.port}: must be in 1..65535")
        one_of(self, "tunnel", TUNNELS)


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """The search's own settings (its space is params.yaml `tune.space`:
    unet/planning/search.py)."""
    n_trials: int            # the study's target of finished trials, all workers together
    timeout_min: float       # minutes this worker starts trials for; 0 = no limit
    study_name: str          # auto: named after the data and the fixed settings
    storage: str             # "" (env UNET_TUNE_STORAGE, else sqlite in the cache), an RDB URL or journal:/path
    time_budget_min: float   # each trial's training budget (checked as train's)
    heartbeat_s: int         # RDB storage: a worker silent for twice this is presumed dead
    split_run_id: str        # "": make the split (or reuse an identical finished one)

    def validate(self) -> None:
        at_least(self, ("n_trials", "heartbeat_s"), 1)
        at_least(self, ("timeout_min",), 0)
