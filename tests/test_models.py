"""The logged model carries only what it needs to load and predict."""
import subprocess
import sys

import mlflow
import numpy as np
import torch

from unet.model import UNet
from unet.predict import Segmenter
from unet.tracking import models


def test_a_logged_model_holds_the_inference_modules_and_they_import_alone(tracking_uri, tmp_path):
    torch.manual_seed(0)
    with mlflow.start_run():
        uri = models.log_model(Segmenter(UNet(features=(4, 8)), (16, 16), tta="hflip"),
                               np.zeros((8, 12, 3), np.uint8))
    location = mlflow.get_logged_model(uri.split("/")[-1]).artifact_location
    local = mlflow.artifacts.download_artifacts(f"{location}/code", dst_path=str(tmp_path))
    code = sorted(p.name for p in (tmp_path / "code" / "unet").iterdir())
    assert local and code == sorted(models.MODEL_MODULES)
    assert not {"engine.py", "planning.py", "bench.py", "tutorial.py", "tracking"} & set(code)
    # Only that folder on the path (the project's own unet is shadowed): serving imports.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import unet.serving, unet; "
              "print(unet.__file__)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "code")], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == str(tmp_path / "code" / "unet" / "__init__.py")
    assert models.load_segmenter(uri).tta == "hflip"       # the model keeps its TTA choice
