"""The logged model's interface (MLflow pyfunc): images in, masks out.

Input: a DataFrame with one column `image`, one row per image of any size. A cell holds the
bytes of a JPEG, PNG or TIFF file (over HTTP: base64 text, which MLflow decodes because the
column's type is binary; a TIFF is told by its first bytes) or, from Python, an (H, W, 3)
uint8 RGB array. 16-bit and float images go through the model's intensity window
(unet.images.intensity; its metadata `intensity_window`), as in training.

Output: a DataFrame, one row per image: `mask` (PNG bytes, (H, W), 0 background / 255 object,
at the image's own size; base64 text over HTTP; a model of K > 2 classes gives the class map,
pixel values 0..K-1, its class names in the model's metadata `classes`), `height`, `width`, and
with params {"return_probabilities": True} `probabilities` (PNG bytes, 8-bit, probability * 255).
A model trained for instances (metadata `output` "instances") gives its foreground as `mask`
and also `labels` (a 16-bit PNG label image: 0 background, objects 1..N, at the image's size;
unet.inference.instances) and `objects` (N).
Param `tta` ("auto": the model's own test-time flips; "none", "hflip", "flips") overrides them.
Param `runtime` ("auto": the model's default, its metadata `runtime`; "torch"; "onnx": the
same network in ONNX Runtime, fp32; "onnx-int8" where evaluate kept an int8 file) picks what
runs the network; inputs and outputs are the same on each (unet.inference.onnx_runtime).
Param `predict_scale` ("auto": the model's own, its metadata `predict_scale`; "native": at its
training scale; "fit": each image resized to its input; unet.inference.segmenter.Segmenter)
overrides how images of other sizes are met.

With params {"format": "rle"} (what predict's Spark engine asks for: a Spark UDF returns
strings, not images) the output is `rle_mask` (unet.inference.rle: Kaggle Carvana run-length
encoding at the image's size), `height`, `width` and `error`: "" or why that image could not be
read, in which case its other cells are empty; one bad image does not fail the others. Images are
read as predict reads them (JPEG draft mode), so the runs equal predict's local engine's.

Hostile input is refused cheaply, from what a request declares, before any pixel is decoded:
only JPEG, PNG and TIFF within their decode budget (unet.images.formats); at most
UNET_MAX_MEGAPIXELS megapixels per image (read from the image's header; default 100),
UNET_MAX_ROWS rows per request (default 64) and UNET_MAX_REQUEST_MEGAPIXELS megapixels over all
rows of a request (their headers summed; default 200), all environment variables of the serving
process (the operator's choice, not the client's). A refusal is a 400 with one line (format
"png") or that row's `error` (format "rle"); the server stays up. Rows are then decoded and
predicted a batch at a time (at most BATCH_MEGAPIXELS megapixels of declared pixels, or one
image), so a request holds one batch of decoded images and its outputs' PNG bytes, not all of
its images.
Images are resized to the model's input (predict_scale "fit") or predicted at its training
scale, large ones by tiles ("native"; unet.inference.segmenter.Segmenter), so at "native" a raised
limit costs time and a stated amount of memory per image (an 8000 x 8000 JPEG: under 1 GB beside
the runtime; docs/predict.md).
"""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from unet.config.checks import RUNTIMES
from unet.images.formats import MAX_PIXELS, UnreadableImage, image_size, is_tiff, sniff
from unet.images.reading import encode_png, read_for_model, read_image
from unet.inference import instances, rle
from unet.inference.onnx_runtime import INT8_FILE, with_runtime
from unet.inference.segmenter import TTA_FLIPS, Segmenter, as_written

INPUT_COLUMN = "image"
DEFAULT_THRESHOLD = 0.5
FORMATS = ("png", "rle")
RLE_COLUMNS = ["rle_mask", "height", "width", "error"]
MAX_PIXELS_ENV, MAX_ROWS_ENV, MAX_ROWS = "UNET_MAX_MEGAPIXELS", "UNET_MAX_ROWS", 64
MAX_REQUEST_ENV, MAX_REQUEST_MEGAPIXELS = "UNET_MAX_REQUEST_MEGAPIXELS", 200
BATCH_MEGAPIXELS = 16     # declared pixels decoded together (6 full-size Carvana photos)


def max_pixels() -> int:
    """The serving process's limit of pixels per image (UNET_MAX_MEGAPIXELS, default 100)."""
    megapixels = os.environ.get(MAX_PIXELS_ENV)
    return int(float(megapixels) * 1e6) if megapixels else MAX_PIXELS


def max_rows() -> int:
    """The serving process's limit of rows per request (UNET_MAX_ROWS, default 64)."""
    return int(os.environ.get(MAX_ROWS_ENV) or MAX_ROWS)


def max_request_pixels() -> int:
    """The serving process's limit of declared pixels over a request's rows
    (UNET_MAX_REQUEST_MEGAPIXELS, default 200)."""
    return int(float(os.environ.get(MAX_REQUEST_ENV) or MAX_REQUEST_MEGAPIXELS) * 1e6)


class Refusal(MlflowException):
    """An MlflowException whose message stays the one line it was made with. MLflow's scoring
    server prefixes a model's error with the whole request (`Failed to predict data '<the
    DataFrame, bytes echoed>'`, several lines); the client gets this line alone."""

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_line"):       # set once, by MlflowException.__init__
            self._line = value


def invalid(message: str) -> MlflowException:
    """An error the scoring server answers with HTTP 400 and this one-line message."""
    return Refusal(message, error_code=INVALID_PARAMETER_VALUE)


def cell_bytes(cell: bytes | bytearray) -> bytes:
    """A cell's image bytes: the cell itself when it starts as an image file does, else its
    base64 decoding ({"inputs": ...} requests reach the model still base64-encoded: MLflow
    decodes only dataframe_split/dataframe_records for binary columns); the bytes as they came
    where neither holds, for the reader to name what they are."""
    raw = bytes(cell)
    if is_tiff(raw) or sniff(raw[:16]) in ("JPEG", "PNG"):
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error:
        return raw


def declared_pixels(cell: Any) -> int:
    """The pixels a cell (image bytes, decoded from base64 already, or an array) declares: its
    header's width x height (nothing decoded), an array's own; 0 where the header cannot be
    read (its reader then names why)."""
    if isinstance(cell, np.ndarray):
        return int(np.prod(cell.shape[:2]))
    if not isinstance(cell, (bytes, bytearray)):
        return 0
    try:
        height, width = image_size(cell)
    except UnreadableImage:
        return 0
    return height * width


def batches(declared: list[int]) -> list[list[int]]:
    """The rows of a request (their declared pixels) in batches decoded and predicted
    together: consecutive rows while their pixels stay within BATCH_MEGAPIXELS (a larger
    image alone)."""
    out: list[list[int]] = []
    pixels = 0
    for i, declared in enumerate(declared):
        if not out or pixels + declared > BATCH_MEGAPIXELS * 1e6:
            out.append([])
            pixels = 0
        out[-1].append(i)
        pixels += declared
    return out


def check_pixels(declared: list[int]) -> None:
    """`invalid` for a request whose rows declare more pixels than the server takes."""
    total = sum(declared)
    if total > max_request_pixels():
        raise invalid(f"{len(declared)} images of {total / 1e6:g} megapixels in one request; at "
                      f"most {max_request_pixels() / 1e6:g} ({MAX_REQUEST_ENV} of the server): "
                      f"split it into smaller requests")


def as_image(index: int, cell: Any, window=None) -> np.ndarray:
    """One input cell (image bytes or an (H, W, 3) uint8 array) -> (H, W, 3) uint8; 16-bit
    and float images through the model's intensity `window`."""
    if isinstance(cell, (bytes, bytearray)):
        try:
            return read_image(cell_bytes(cell), max_pixels(), window)
        except UnreadableImage as e:
            raise invalid(f"image {index}: {e}; send the base64 of a JPEG, PNG or TIFF file "
                          f"of at most {max_pixels() / 1e6:g} megapixels") from None
    if isinstance(cell, np.ndarray) and cell.dtype == np.uint8 and cell.ndim == 3 \
            and cell.shape[2] == 3:
        return cell
    kind = (f"an array of {cell.dtype} {cell.shape}" if isinstance(cell, np.ndarray)
            else f"a {type(cell).__name__}")
    raise invalid(f"image {index}: got {kind}; expected JPEG/PNG/TIFF bytes (base64 over "
                  f"HTTP) or an (H, W, 3) uint8 array")


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """A Segmenter (UNet + its training preprocessing) behind the image interface above.
    Params: `threshold` (default 0.5) cuts the probabilities; `return_probabilities`;
    `runtime` (unet.inference.onnx_runtime: torch, onnx or onnx-int8; auto: the model's default);
    `predict_scale` (native or fit; auto: the model's own)."""

    def load_context(self, context) -> None:
        state = torch.load(context.artifacts["segmenter"], map_location="cpu", weights_only=True)
        self.segmenter = Segmenter.from_state(state)
        # A model logged before ONNX carries segmenter.pt only: it runs on torch.
        self.files = {}
        if "onnx" in context.artifacts:
            fp32 = Path(context.artifacts["onnx"])
            self.files["onnx"] = str(fp32)
            if (fp32.parent / INT8_FILE).is_file():   # added by evaluate -P quantize=int8
                self.files["onnx-int8"] = str(fp32.parent / INT8_FILE)
        self.default_runtime = (context.model_config or {}).get("runtime", "torch")
        self.on_runtime("auto")          # its session is made now, not on the first request

    def on_runtime(self, runtime: str) -> Segmenter:
        """The segmenter on `runtime` ("auto": the model's default); `invalid` if the model
        carries no file for it."""
        runtime = self.default_runtime if runtime == "auto" else runtime
        if runtime not in RUNTIMES:
            raise invalid(f"param runtime={runtime}: use auto, {', '.join(RUNTIMES)}")
        if runtime != "torch" and runtime not in self.files:
            why = ("evaluate keeps an int8 file only with -P quantize=int8 and a test Dice "
                   "within 0.005 of fp32" if runtime == "onnx-int8" and self.files
                   else "the model was logged before ONNX export existed")
            raise invalid(f"param runtime={runtime}: this model carries no file for it ({why}); "
                          f"use {' or '.join(['torch', *self.files])}")
        return with_runtime(self.segmenter, runtime, self.files)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
                ) -> pd.DataFrame:
        params = params or {}
        threshold = float(params.get("threshold", DEFAULT_THRESHOLD))
        if not 0 < threshold < 1:
            raise invalid(f"param threshold={threshold}: must be in (0, 1)")
        with_probabilities = bool(params.get("return_probabilities", False))
        tta = str(params.get("tta", "auto"))
        if tta != "auto" and tta not in TTA_FLIPS:
            raise invalid(f"param tta={tta}: use auto, {', '.join(TTA_FLIPS)}")
        fmt = str(params.get("format", "png"))
        if fmt not in FORMATS:
            raise invalid(f"param format={fmt}: use png or rle")
        segmenter = self.on_runtime(str(params.get("runtime", "auto"))).with_tta(tta)
        try:
            segmenter = segmenter.with_predict_scale(str(params.get("predict_scale", "auto")))
        except ValueError as e:
            raise invalid(f"param {e}") from None
        if not isinstance(model_input, pd.DataFrame) or INPUT_COLUMN not in model_input:
            raise invalid(f"expected a column '{INPUT_COLUMN}' of images")
        # Each cell's bytes once (base64 decoded where it came so), then its header's pixels.
        cells = [cell_bytes(c) if isinstance(c, (bytes, bytearray)) else c
                 for c in model_input[INPUT_COLUMN]]
        if len(cells) > max_rows():
            raise invalid(f"{len(cells)} images in one request; at most {max_rows()} "
                          f"({MAX_ROWS_ENV} of the server): split it into smaller requests")
        if fmt == "rle":    # each row its own outcome, a batch at a time: no request budget
            if not segmenter.binary:
                raise invalid(f"param format=rle: the Kaggle RLE holds binary masks; this model "
                              f"has {len(segmenter.classes)} classes (use format=png)")
            return rle_rows(segmenter, cells, threshold)
        if with_probabilities and not segmenter.binary:
            raise invalid("param return_probabilities: only for binary models; this one has "
                          f"{len(segmenter.classes)} classes")
        declared = [declared_pixels(cell) for cell in cells]
        check_pixels(declared)
        return png_rows(segmenter, cells, declared, threshold, with_probabilities)


def png_rows(segmenter: Segmenter, cells: list, declared: list[int], threshold: float,
             with_probabilities: bool) -> pd.DataFrame:
    """The output of format "png" (module docstring) of cells declaring `declared` pixels,
    decoded and predicted a batch at a time (`batches`)."""
    rows = []
    for batch in batches(declared):
        images = [as_image(i, cells[i], segmenter.window) for i in batch]
        for image, probs in zip(images, segmenter.probabilities(images)):
            mask = as_written(segmenter.decide(probs, threshold), segmenter.binary)
            row = {"mask": encode_png(mask), "height": image.shape[0], "width": image.shape[1]}
            if with_probabilities:
                shown = instances.foreground(probs) if segmenter.instances else probs
                row["probabilities"] = encode_png(np.round(shown * 255).astype(np.uint8))
            if segmenter.instances:
                labels = segmenter.labels(probs)
                row["labels"] = encode_png(label_cell(labels))
                row["objects"] = int(labels.max(initial=0))
            rows.append(row)
    return pd.DataFrame(rows, columns=["mask", "height", "width"]
                        + (["probabilities"] if with_probabilities else [])
                        + (["labels", "objects"] if segmenter.instances else []))


def read_cell(index: int, cell: Any,
              size: tuple[int, int] | Callable[[int, int], tuple[int, int]], window=None
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """An input cell as predict reads a file (unet.images.reading.read_for_model): (image, full
    size). Bytes may be base64 text (HTTP); UnreadableImage or `invalid` say why not."""
    if not isinstance(cell, (bytes, bytearray)):
        image = as_image(index, cell)
        return image, image.shape[:2]
    return read_for_model(cell_bytes(cell), size, max_pixels(), window)


def rle_rows(segmenter: Segmenter, cells: list, threshold: float) -> pd.DataFrame:
    """The output of format "rle": one row per cell, an unreadable image as a row with its
    `error` (so that a batch of a Spark job goes on); decoded and predicted a batch at a time."""
    rows: list[dict | None] = [None] * len(cells)
    for batch in batches([declared_pixels(cell) for cell in cells]):
        images, sizes, at = [], [], []
        for i in batch:
            try:
                image, size = read_cell(i, cells[i], segmenter.input_size, segmenter.window)
            except (UnreadableImage, MlflowException) as e:
                rows[i] = {"rle_mask": "", "height": 0, "width": 0,
                           "error": str(getattr(e, "message", e))}
                continue
            images.append(image)
            sizes.append(size)
            at.append(i)
        for i, size, mask in zip(at, sizes, segmenter.masks(images, threshold, sizes=sizes)):
            rows[i] = {"rle_mask": rle.encode(mask), "height": size[0], "width": size[1],
                       "error": ""}
    return pd.DataFrame(rows, columns=RLE_COLUMNS)


def label_cell(labels: np.ndarray) -> np.ndarray:
    """Labels as a `labels` cell holds them (uint16); `invalid` beyond 65535 objects."""
    try:
        return instances.label_image(labels)
    except ValueError as e:
        raise invalid(f"{e}: predict writes such label images as 32-bit TIFF files") from None


def decode_mask(png: bytes) -> np.ndarray:
    """A `mask` cell of the model's output -> (H, W) uint8 0/1."""
    return (read_image(png)[..., 0] > 127).astype(np.uint8)
