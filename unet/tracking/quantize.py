"""evaluate -P quantize=int8: an int8 copy of the logged model's ONNX file, shipped with the
same logged model only if its test Dice stays within INT8_TOLERANCE of the fp32 network's."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlflow

from unet.errors import UserError
from unet.evaluation.scoring import evaluate_pairs
from unet.images.reading import load_image
from unet.inference import onnx_runtime
from unet.sampling import spread
from unet.tracking import models

INT8_TOLERANCE = 0.005       # the most test Dice the int8 file may lose against fp32
CALIBRATION_IMAGES = 64      # training images the activations' ranges are measured on


@dataclasses.dataclass(frozen=True)
class Int8Result:
    kept: bool
    dice: float              # the int8 file's test Dice
    fp32_dice: float         # the ONNX fp32 network's, on the same test pairs
    line: str                # one line: kept, or why not


def calibration_pairs(train: list, count: int = CALIBRATION_IMAGES) -> list:
    """Up to `count` training pairs spread evenly over the list (every car, not the first)."""
    return spread(train, count)


def try_int8(model_uri: str, subsets: dict, cfg, fp32_dice: float | None = None,
             read_mask=None) -> Int8Result:
    """Quantizes the model's ONNX file on training images, scores it on subsets["test"] and,
    if it is within INT8_TOLERANCE of fp32, adds it to the logged model (runtime=onnx-int8).
    `fp32_dice`: the ONNX fp32 test Dice if evaluate measured it already (runtime onnx);
    None: measured here. `read_mask`: how the split reads its masks (void left out; see
    unet.evaluation.scoring.evaluate_pairs). Logs `int8_test_dice`, `int8_dice_change`, tag
    `int8`."""
    try:
        fp32 = models.load_segmenter(model_uri, "onnx").with_tta(cfg.tta)
    except UserError:
        raise UserError(f"parameter quantize=int8: {model_uri} has no ONNX file (logged before "
                        f"ONNX export existed); train it again or use quantize=none") from None
    test = subsets["test"]
    if fp32_dice is None:
        fp32_dice = evaluate_pairs(fp32, test, cfg.threshold, cfg.eval_batch_size,
                                   read_mask=read_mask)["dice"]
    with tempfile.TemporaryDirectory() as tmp:
        int8_file = onnx_runtime.quantize_int8(
            Path(fp32.path), Path(tmp) / onnx_runtime.INT8_FILE,
            [load_image(p.image, window=fp32.window)
             for p in calibration_pairs(subsets["train"])],
            fp32.image_size)
        int8 = onnx_runtime.OnnxSegmenter(fp32, int8_file, "onnx-int8", shared=False)
        dice = evaluate_pairs(int8, test, cfg.threshold, cfg.eval_batch_size,
                              read_mask=read_mask)["dice"]
        kept = fp32_dice - dice <= INT8_TOLERANCE
        if kept:
            models.add_int8(model_uri, int8_file)
    change = f"test Dice {dice:.4f} vs fp32 {fp32_dice:.4f} ({dice - fp32_dice:+.4f})"
    line = (f"int8 kept (runtime=onnx-int8): {change}" if kept else
            f"int8 not shipped: {change} loses more than {INT8_TOLERANCE}")
    mlflow.log_metrics({"int8_test_dice": dice, "int8_dice_change": dice - fp32_dice})
    mlflow.set_tag("int8", line)
    print(line)
    return Int8Result(kept, dice, fp32_dice, line)
