"""The logged model: the Segmenter as an MLflow pyfunc model (unet.tracking.serving) with its
signature, and loading it back for evaluate and predict."""
from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from unet.errors import UserError
from unet.images.reading import encode_png
from unet.inference import onnx_runtime
from unet.inference.segmenter import Segmenter
from unet.labels.classes import BINARY_NAMES
from unet.secrets import mask

with warnings.catch_warnings(record=True):
    # MLflow warns, once per process, that predict has no type hints it understands: the
    # model's interface is declared by SIGNATURE below instead (a column of images).
    from unet.tracking.serving import DEFAULT_THRESHOLD, INPUT_COLUMN, SegmentationModel

MODEL_NAME_IN_RUN = "model"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
# What a logged model needs to load and predict: the pyfunc class and its imports, no more
# (tests/test_tracking.py checks that these import on their own).
MODEL_MODULES = ("__init__.py", "errors.py", "sampling.py",
                 "images/__init__.py", "images/formats.py", "images/intensity.py",
                 "images/reading.py", "images/transforms.py",
                 "inference/__init__.py", "inference/instances.py", "inference/onnx_runtime.py",
                 "inference/rle.py",
                 "inference/segmenter.py", "inference/tiling.py",
                 "network/__init__.py", "network/model.py", "network/precision.py",
                 "config/__init__.py", "config/checks.py",
                 "tracking/__init__.py", "tracking/serving.py")
# onnx: the int8 file's quantization tools read it; onnxruntime runs runtime=onnx/onnx-int8.
MODEL_REQUIREMENTS = ["torch==2.13.0", "onnx==1.23.2", "onnxruntime==1.32.0", "numpy", "pillow",
                      "opencv-python-headless", "albumentations", "tifffile", "scipy", "scikit-image"]


SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
    # format "png" (default): mask, height, width [, probabilities] [, labels, objects: a
    # model for instances]; format "rle": rle_mask, height, width, error (unet.tracking.serving)
    outputs=Schema([ColSpec(DataType.binary, "mask", required=False),
                    ColSpec(DataType.binary, "labels", required=False),
                    ColSpec(DataType.long, "objects", required=False),
                    ColSpec(DataType.long, "height"), ColSpec(DataType.long, "width"),
                    ColSpec(DataType.binary, "probabilities", required=False),
                    ColSpec(DataType.string, "rle_mask", required=False),
                    ColSpec(DataType.string, "error", required=False)]),
    params=ParamSchema([ParamSpec("threshold", DataType.double, DEFAULT_THRESHOLD),
                        ParamSpec("return_probabilities", DataType.boolean, False),
                        ParamSpec("tta", DataType.string, "auto"),
                        ParamSpec("format", DataType.string, "png"),
                        # auto: the model's default (its metadata `runtime`)
                        ParamSpec("runtime", DataType.string, "auto"),
                        # auto: the model's own (its metadata `predict_scale`)
                        ParamSpec("predict_scale", DataType.string, "auto")]),
)


def log_model(segmenter: Segmenter, example: np.ndarray) -> str:
    """Logs the segmenter as pyfunc model "model" of the active run; returns its models:/ URI.

    `example` (H, W, 3) uint8 is stored, as PNG bytes, as the input example. The modules of
    the unet package that inference needs (MODEL_MODULES) travel with the model (code_paths),
    so it loads where this project is not installed. The same network goes along as ONNX
    (unet.inference.onnx_runtime); the runtime measured faster here becomes the default (metadata
    `runtime`, and model_config, which the pyfunc reads). A model trained on 16-bit or float
    images carries its intensity window (metadata `intensity_window`: [low, high]; it is in
    the weights' state too, which is what the pyfunc applies). Metadata `scale` and
    `predict_scale` say how it meets images of other sizes (unet.inference.segmenter.Segmenter;
    also in the state).
    """
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "segmenter.pt"
        torch.save(segmenter.to_state(), weights)
        onnx_file = onnx_runtime.export(segmenter.model, Path(tmp) / onnx_runtime.ONNX_FILE,
                                        segmenter.image_size)
        runtime, ms = onnx_runtime.faster_runtime(
            {"torch": segmenter,
             "onnx": onnx_runtime.OnnxSegmenter(segmenter, onnx_file, shared=False)})
        code = Path(tmp) / "code" / "unet"
        for name in MODEL_MODULES:
            (code / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PACKAGE_DIR / name, code / name)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN, python_model=SegmentationModel(),
            artifacts={"segmenter": str(weights), "onnx": str(onnx_file)},
            code_paths=[str(code)], signature=SIGNATURE, model_config={"runtime": runtime},
            # an instance model's masks are its foreground: binary
            metadata={"classes": list(BINARY_NAMES if segmenter.binary else segmenter.classes),
                      # mask | instances (label images beside the mask, made by `watershed`)
                      "output": "instances" if segmenter.instances else "mask",
                      **({"watershed": dataclasses.asdict(segmenter.watershed)}
                         if segmenter.instances else {}),
                      # input pixels per original pixel (None: resized to image_size)
                      "scale": list(segmenter.scale) if segmenter.scale else None,
                      # native: predicted at that scale; fit: resized to image_size
                      "predict_scale": segmenter.predict_scale,
                      "image_size": list(segmenter.image_size),
                      "runtime": runtime, "runtime_ms_per_image": ms,
                      "runtime_measured_on": machine(segmenter),
                      **({"intensity_window": list(segmenter.window)}
                         if segmenter.window is not None else {})},
            input_example=pd.DataFrame({INPUT_COLUMN: [encode_png(example)]}),
            pip_requirements=MODEL_REQUIREMENTS)
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def machine(segmenter: Segmenter) -> str:
    """Where the runtimes were timed, e.g. "cpu (torch bf16)": the torch side runs in the
    precision this machine picks (bf16 where the CPU has it), the ONNX side in fp32."""
    return f"{segmenter.precision.device.type} (torch {segmenter.precision.name})"


def unloadable(model_uri: str, error: Exception) -> UserError:
    """The one line for a model that can't be read from the tracking store."""
    reason = mask(str(error.message if isinstance(error, MlflowException) else error)
                  .splitlines()[0])
    return UserError(f"model {model_uri}: cannot load it from {mask(mlflow.get_tracking_uri())} "
                     f"({reason}); run the pipeline first or pass another model_uri")


def resolve(model_uri: str) -> str:
    """The model a URI names now, fixed: an alias (models:/<name>@<alias>), `latest`
    (models:/<name>/latest) or a stage (models:/<name>/Production) becomes the version it
    points to (models:/<name>/<version>); other URIs (a version, runs:/<run id>/...,
    models:/m-<id>) already name one model and are returned as they are."""
    if not model_uri.startswith("models:/"):
        return model_uri
    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    if not at:
        name, _, alias = name.partition("/")
        if not alias or alias.isdigit():
            return model_uri
    client = MlflowClient()
    try:
        if at:
            version = client.get_model_version_by_alias(name, alias).version
        else:           # latest, or a stage: the newest version (in that stage)
            versions = [v for v in client.search_model_versions(f"name='{name}'")
                        if alias == "latest" or v.current_stage.lower() == alias.lower()]
            if not versions:
                raise MlflowException(f"no version of {name} is {alias}")
            version = max(int(v.version) for v in versions)
    except MlflowException as e:
        raise unloadable(model_uri, e) from None
    return f"models:/{name}/{version}"


def output_of(model_uri: str) -> str:
    """What a logged model gives: "instances" (label images beside its masks) or "mask"
    (metadata `output`; models logged before instances give masks)."""
    return (mlflow.models.get_model_info(model_uri).metadata or {}).get("output", "mask")


def classes_of(model_uri: str) -> list[str]:
    """The class names a logged model segments (its metadata `classes`; binary models logged
    before classes existed have none: background and foreground)."""
    try:
        metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    except (MlflowException, OSError) as e:
        raise unloadable(model_uri, e) from None
    return list(metadata.get("classes") or BINARY_NAMES)


def check_predict_scale(model_uri: str, predict_scale: str) -> None:
    """UserError if `predict_scale` is "native" and the model records no training scale (one
    logged before scales existed can only fit): checked before predict writes anything."""
    if predict_scale == "native" and not (
            mlflow.models.get_model_info(model_uri).metadata or {}).get("scale"):
        raise UserError(f"parameter predict_scale=native: {model_uri} records no training scale "
                        f"(logged before scales existed); use auto or fit")


def load_segmenter(model_uri: str, runtime: str = "auto", predict_scale: str = "auto"
                   ) -> Segmenter:
    """The Segmenter inside a logged model (runs it in-process, batched, without pyfunc), on
    `runtime` (auto: the model's default; torch for a model logged before ONNX existed), at
    `predict_scale` (auto: the model's own; native, fit: unet.inference.segmenter.Segmenter)."""
    path = list(sys.path)
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as e:
        raise unloadable(model_uri, e) from None
    finally:
        # MLflow puts the model's copy of unet (its code_paths) first on sys.path. This process
        # runs the installed unet already; left there, the copy would be what processes
        # spawned later (DataLoader workers, torch.multiprocessing) import as unet.
        sys.path[:] = path
    try:
        segmenter = model.unwrap_python_model().on_runtime(runtime)
    except MlflowException as e:
        raise UserError(f"{e.message.replace('param ', 'parameter ', 1)} ({model_uri})") from None
    try:
        return segmenter.with_predict_scale(predict_scale)
    except ValueError as e:
        raise UserError(f"parameter {e} ({model_uri})") from None


def default_runtime(model_uri: str) -> str:
    """The runtime a logged model runs on by default (torch for models before ONNX)."""
    return (mlflow.models.get_model_info(model_uri).metadata or {}).get("runtime", "torch")


def runtime_note(model_uri: str, tested_on: str, int8=None) -> str:
    """The model card's line on runtimes: the default and what it was chosen by, what the test
    ran on, and the int8 file's fate (a quantize.Int8Result, or None: not tried)."""
    metadata = mlflow.models.get_model_info(model_uri).metadata or {}
    default = metadata.get("runtime", "torch")
    timed = ", ".join(f"{k} {v} ms" for k, v in metadata.get("runtime_ms_per_image", {}).items())
    chosen = (f"the faster per image on {metadata.get('runtime_measured_on', '?')} when it "
              f"was logged: {timed}" if timed else "logged before ONNX export: torch only")
    return (f"default `{default}` ({chosen}); tested on `{tested_on}`; "
            + ("int8: not made (evaluate -P quantize=int8 makes one)" if int8 is None
               else int8.line) + ". Pick one with param `runtime` (docs/onnx.md).")


def add_int8(model_uri: str, int8_file: Path) -> None:
    """Ships an int8 ONNX file with the logged model, beside its fp32 file (the pyfunc finds it
    there: runtime=onnx-int8). Made by evaluate after the model was logged by train."""
    model_id = mlflow.models.get_model_info(model_uri).model_id
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(int8_file, Path(tmp) / onnx_runtime.INT8_FILE)
        mlflow.MlflowClient().log_model_artifacts(model_id, tmp, "artifacts")
