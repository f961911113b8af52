"""The logged model's interface (MLflow pyfunc): images in, masks out."""
from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch

from unet.predict import Segmenter


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """The logged model: a batch of (B, H, W, 3) uint8 images of any H, W -> (B, H, W) uint8
    0/1 masks at the same size. Param `threshold` (default 0.5) cuts the probabilities."""

    def load_context(self, context) -> None:
        state = torch.load(context.artifacts["segmenter"], map_location="cpu", weights_only=True)
        self.segmenter = Segmenter.from_state(state)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        threshold = float((params or {}).get("threshold", 0.5))
        images = np.asarray(model_input, dtype=np.uint8)
        return np.stack(list(self.segmenter.masks(images, threshold)))
