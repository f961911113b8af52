"""The logged model: the Segmenter as an MLflow pyfunc model (unet.serving) with its
signature, and loading it back for evaluate and predict."""
from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from unet.errors import UserError
from unet.predict import Segmenter, encode_png
from unet.secrets import mask

with warnings.catch_warnings(record=True):
    # MLflow warns, once per process, that predict has no type hints it understands: the
    # model's interface is declared by SIGNATURE below instead (a column of images).
    from unet.serving import DEFAULT_THRESHOLD, INPUT_COLUMN, SegmentationModel

MODEL_NAME_IN_RUN = "model"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# What a logged model needs to load and predict: the pyfunc class and its imports, no more
# (tests/test_tracking.py checks that these import on their own).
MODEL_MODULES = ("__init__.py", "cache.py", "data.py", "errors.py", "model.py", "precision.py",
                 "predict.py", "rle.py", "serving.py", "transforms.py")
MODEL_REQUIREMENTS = ["torch==2.13.0", "numpy", "pillow", "opencv-python-headless", "albumentations"]


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
    # format "png" (default): mask, height, width [, probabilities]; format "rle": rle_mask,
    # height, width, error (unet.serving)
    outputs=Schema([ColSpec(DataType.binary, "mask", required=False),
                    ColSpec(DataType.long, "height"), ColSpec(DataType.long, "width"),
                    ColSpec(DataType.binary, "probabilities", required=False),
                    ColSpec(DataType.string, "rle_mask", required=False),
                    ColSpec(DataType.string, "error", required=False)]),
    params=ParamSchema([ParamSpec("threshold", DataType.double, DEFAULT_THRESHOLD),
                        ParamSpec("return_probabilities", DataType.boolean, False),
                        ParamSpec("tta", DataType.string, "auto"),
                        ParamSpec("format", DataType.string, "png")]),
)


def log_model(segmenter: Segmenter, example: np.ndarray) -> str:
    """Logs the segmenter as pyfunc model "model" of the active run; returns its models:/ URI.

    `example` (H, W, 3) uint8 is stored, as PNG bytes, as the input example. The modules of
    the unet package that inference needs (MODEL_MODULES) travel with the model (code_paths),
    so it loads where this project is not installed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "segmenter.pt"
        torch.save(segmenter.to_state(), weights)
        code = Path(tmp) / "code" / "unet"
        code.mkdir(parents=True)
        for name in MODEL_MODULES:
            shutil.copyfile(PACKAGE_DIR / name, code / name)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN, python_model=SegmentationModel(),
            artifacts={"segmenter": str(weights)}, code_paths=[str(code)],
            signature=SIGNATURE,
            metadata={"classes": list(segmenter.classes or ("background", "foreground"))},
            input_example=pd.DataFrame({INPUT_COLUMN: [encode_png(example)]}),
            pip_requirements=MODEL_REQUIREMENTS)
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def unloadable(model_uri: str, error: Exception) -> UserError:
    """The one line for a model that can't be read from the tracking store."""
    reason = mask(str(error.message if isinstance(error, MlflowException) else error)
                  .splitlines()[0])
    return UserError(f"model {model_uri}: cannot load it from {mask(mlflow.get_tracking_uri())} "
                     f"({reason}); run the pipeline first or pass another model_uri")


def resolve(model_uri: str) -> str:
    """The model a URI names now, fixed: an alias (models:/<name>@<alias>) becomes the version
    it points to (models:/<name>/<version>); other URIs (a version, runs:/<run id>/...,
    models:/m-<id>) already name one model and are returned as they are."""
    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    if not (model_uri.startswith("models:/") and at):
        return model_uri
    try:
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException as e:
        raise unloadable(model_uri, e) from None
    return f"models:/{name}/{version}"


def classes_of(model_uri: str) -> list[str]:
    """The class names a logged model segments (its metadata `classes`; binary models logged
    before classes existed have none: background and foreground)."""
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError) as e:
        raise unloadable(model_uri, e) from None
    return list(metadata.get("classes") or ("background", "foreground"))


def load_segmenter(model_uri: str) -> Segmenter:
    """The Segmenter inside a logged model (runs it in-process, batched, without pyfunc)."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as e:
        raise unloadable(model_uri, e) from None
    return model.unwrap_python_model().segmenter
