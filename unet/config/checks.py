"""Checks of parameter values shared by the entry points' configs: each failure is one
UserError line naming the parameter."""
from __future__ import annotations

from unet.errors import UserError

AUTO = "auto"
LOSSES = ("bce_dice", "bce")              # unet.training.losses
TTA_MODES = ("none", "hflip", "flips")    # unet.inference.segmenter.TTA_FLIPS
RUNTIMES = ("torch", "onnx", "onnx-int8")  # unet.inference.onnx_runtime.RUNTIMES
MASK_KINDS = ("auto", "binary", "classes", "instances")   # unet.labels.classes.detect
SCALE_MODES = ("native", "fit")           # unet.inference.segmenter.Segmenter.predict_scale
PREDICT_SCALES = (AUTO, *SCALE_MODES)     # a parameter: auto is the model's (or the plan's)


def at_least(config, names: tuple[str, ...], low: int) -> None:
    for name in names:
        if getattr(config, name) < low:
            raise UserError(f"parameter {name}={getattr(config, name)}: must be >= {low}")


def one_of(config, name: str, options: tuple) -> None:
    if getattr(config, name) not in options:
        raise UserError(f"parameter {name}={getattr(config, name)}: use "
                        f"{', '.join(map(str, options[:-1]))} or {options[-1]}")


def check_tta(tta: str) -> None:
    if tta != AUTO and tta not in TTA_MODES:
        raise UserError(f"parameter tta={tta}: use auto, {', '.join(TTA_MODES)}")


def check_runtime(runtime: str) -> None:
    if runtime != AUTO and runtime not in RUNTIMES:
        raise UserError(f"parameter runtime={runtime}: use auto, {', '.join(RUNTIMES)}")
