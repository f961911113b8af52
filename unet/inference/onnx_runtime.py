"""The UNet as an ONNX file, and a Segmenter that runs it with ONNX Runtime.

Export (`export`): torch 2.13's recommended exporter (`torch.onnx.export(..., dynamo=True)`,
which needs onnxscript), fp32, input `image` (B, 3, H, W) -> output `logits` (B, C, H, W),
with B, H and W dynamic. H and W are declared as multiples of 2**levels (UNet.min_size):
then every decoder level meets its skip at the same size and the graph needs no branch for
odd sizes. Other sizes are padded outside the graph (edge rows and columns repeated) and the
logits cropped after (`OnnxSegmenter.logits`).

Runtime (`OnnxSegmenter`): the Segmenter's preprocessing, test-time flips and resizing, with
the network call replaced by an ONNX Runtime session, one per file and process (`session`).
int8 (`quantize_int8`): static QDQ quantization, per-channel weights, calibrated on images.
"""
from __future__ import annotations

import copy
import functools
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from unet.images.transforms import resize_image, to_input
from unet.inference.segmenter import Segmenter
from unet.inference.tiling import pad_size
from unet.network.model import UNet
from unet.network.precision import Precision

ONNX_FILE = "segmenter.onnx"            # fp32, beside segmenter.pt in the logged model
INT8_FILE = "segmenter.int8.onnx"       # evaluate's int8 copy, when it kept it
INPUT, OUTPUT = "image", "logits"
OPSET = 18


def export(model: UNet, path: Path, example_size: tuple[int, int] | None = None) -> Path:
    """Writes `model` (in eval mode, fp32, on the CPU; the caller's model is not touched) to
    `path` as ONNX with dynamic batch, height and width (multiples of model.min_size)."""
    # The exporter warns once per torchvision op it cannot register: torchvision is not used.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    net = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    step = net.min_size
    height, width = example_size or (2 * step, 3 * step)
    example = torch.zeros(2, 3, pad_size(height, step), pad_size(width, step))
    batch = torch.export.Dim("batch", min=1, max=4096)
    # H = step * h: the exporter proves every pooled size is even, so Up never interpolates.
    rows, cols = torch.export.Dim("h", min=1, max=1024), torch.export.Dim("w", min=1, max=1024)
    with torch.no_grad():
        program = torch.onnx.export(
            net, (example,), dynamo=True, opset_version=OPSET, input_names=[INPUT],
            output_names=[OUTPUT], verbose=False,
            dynamic_shapes={"x": {0: batch, 2: step * rows, 3: step * cols}})
    program.save(str(path))
    return Path(path)


def providers() -> list[str]:
    """ONNX Runtime's execution providers: CUDA first where this onnxruntime has it."""
    import onnxruntime as ort
    have = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) \
        + ["CPUExecutionProvider"]


def new_session(path: str):
    """A new ONNX Runtime session of the file at `path` (all graph optimizations)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=providers())


@functools.lru_cache(maxsize=None)
def session(path: str):
    """The session of the file at `path`, created once per process (a session compiles its
    graph: ~0.1-1 s; every request after that reuses it)."""
    return new_session(path)


class OnnxSegmenter(Segmenter):
    """A Segmenter whose network runs in ONNX Runtime (fp32 or int8 file); its image size,
    scale and predict_scale, test-time flips and classes are the torch Segmenter's it was made
    from (its attributes, copied)."""

    def __init__(self, segmenter: Segmenter, path: str | Path, runtime: str = "onnx",
                 shared: bool = True):
        self.__dict__.update(segmenter.__dict__)
        # Inputs stay plain fp32 NCHW arrays on the CPU: ONNX Runtime takes them as they are.
        self.precision = Precision(torch.device("cpu"), None, channels_last=False,
                                   grad_scaler=False)
        self.path = str(path)
        self.runtime = runtime
        # shared: the process's one session of this file; else a session of its own, freed
        # with this object (a file about to be deleted, e.g. timed while a model is logged)
        self.session = session(self.path) if shared else new_session(self.path)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) float32 -> (B, C, h, w) float32 logits; h, w that are not multiples of
        2**levels are padded with edge values, and the padding cropped off the logits."""
        h, w = x.shape[-2:]
        array = np.ascontiguousarray(x.numpy(), dtype=np.float32)
        ph, pw = pad_size(h, self.step) - h, pad_size(w, self.step) - w
        if ph or pw:
            array = np.pad(array, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        (out,) = self.session.run([OUTPUT], {INPUT: array})
        return torch.from_numpy(out[..., :h, :w])


def with_runtime(segmenter: Segmenter, runtime: str, files: dict[str, str]) -> Segmenter:
    """`segmenter` on `runtime` ("torch", "onnx", "onnx-int8"); `files` maps the ONNX runtimes
    to the files a logged model carries. KeyError if it carries none for `runtime`."""
    if runtime == "torch":
        return segmenter
    return OnnxSegmenter(segmenter, files[runtime], runtime)


def seconds_per_batch(segmenter: Segmenter, batch: int = 1, repeats: int = 3) -> float:
    """The best of `repeats` timed forward passes on a (batch, h, w, 3) batch at the
    segmenter's own size, after one untimed pass (allocations, kernel choice)."""
    images = np.zeros((batch, *segmenter.image_size, 3), np.uint8)
    segmenter.probabilities_resized(images)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        segmenter.probabilities_resized(images)
        best = min(best, time.perf_counter() - start)
    return best


def faster_runtime(candidates: dict[str, Segmenter]) -> tuple[str, dict[str, float]]:
    """(the runtime whose forward pass is fastest here, ms per image of each)."""
    ms = {name: round(1000 * seconds_per_batch(s), 2) for name, s in candidates.items()}
    return min(ms, key=ms.get), ms


class CalibrationImages:
    """onnxruntime.quantization's CalibrationDataReader over (H, W, 3) uint8 images: each is
    resized to `size` and normalized as the model's input, one (1, 3, h, w) batch at a time."""

    def __init__(self, images: Iterable[np.ndarray], size: tuple[int, int]):
        self.batches = iter([{INPUT: to_input(resize_image(image, size)[None])}
                             for image in images])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def quantize_int8(fp32_path: Path, out_path: Path, images: Sequence[np.ndarray],
                  size: tuple[int, int]) -> Path:
    """Static int8 quantization of an exported model: QDQ format, weights per output channel
    (symmetric int8), activations (uint8) calibrated on `images` (min-max) at `size`."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prepared = Path(out_path).with_suffix(".prep.onnx")
    # Shape inference and graph folding first, as ONNX Runtime advises for static quantization.
    quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(out_path), CalibrationImages(images, size),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    prepared.unlink()
    return Path(out_path)
