"""Checks of parameter values shared by the entry points' configs: each failure is one
UserError line naming the parameter."""
from __future__ import annotations

from unet.errors import UserError

AUTO = "auto"
# The choices of parameters, defined here (the configs import no torch) for the modules that
# implement them: unet.training.losses, unet.inference.segmenter (TTA_FLIPS, predict_scale),
# unet.inference.onnx_runtime, unet.labels.classes.detect.
LOSSES = ("bce_dice", "bce")
TTA_MODES = ("none", "hflip", "flips")
RUNTIMES = ("torch", "onnx", "onnx-int8")
MASK_KINDS = ("auto", "binary", "classes", "instances")
OUTPUTS = ("auto", "mask", "instances")     # train: a mask, or objects (label images)
SCALE_MODES = ("native", "fit")
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
