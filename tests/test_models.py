"""The logged model carries only what it needs to load and predict."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from conftest import ROOT

from unet.inference.segmenter import Segmenter
from unet.network.model import UNet
from unet.tracking import models


def test_a_logged_model_holds_the_inference_modules_and_they_import_alone(tracking_uri, tmp_path):
    torch.manual_seed(0)
    with mlflow.start_run():
        uri = models.log_model(Segmenter(UNet(features=(4, 8)), (16, 16), tta="hflip"),
                               np.zeros((8, 12, 3), np.uint8))
    location = mlflow.get_logged_model(uri.split("/")[-1]).artifact_location
    local = mlflow.artifacts.download_artifacts(f"{location}/code", dst_path=str(tmp_path))
    root = tmp_path / "code" / "unet"
    code = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
    assert local and code == sorted(models.MODEL_MODULES)
    assert not {"training/engine.py", "planning/plan.py", "tracking/runs.py"} & set(code)
    # Only that folder on the path, and no way to the project's own unet (an editable install's
    # finder would supply a module the copy lacks): serving imports, every module from the copy.
    script = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
              "import unet.tracking.serving; "
              "print(sorted({m.__file__ for n, m in sys.modules.items() if n.startswith('unet')}))")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "code")], check=True,
                         capture_output=True, text=True).stdout
    files = [Path(f) for f in ast.literal_eval(out)]
    assert sorted(str(f.relative_to(root)) for f in files) == sorted(models.MODEL_MODULES)
    assert models.load_segmenter(uri).tta == "hflip"       # the model keeps its TTA choice


# The last commit whose unet/ was flat (unet/serving.py, unet/predict.py, ...): models
# registered by it pickle their class as unet.serving.SegmentationModel.
FLAT_LAYOUT = "9419078de86bfd0c7c740e9d4dfec58a6861bba8"
REGISTER_AND_PREDICT = """
import sys, numpy as np, unet
from conftest import register_untrained_champion
from conftest import ROOT
from unet.tracking import models
assert unet.__file__.startswith(sys.argv[1]), unet.__file__      # the flat tree, not this one
uri = register_untrained_champion("flat")
image = np.load(sys.argv[2])
np.save(sys.argv[3], next(models.load_segmenter(uri).probabilities([image])))
"""


def test_a_model_registered_before_the_packages_existed_loads_and_predicts_the_same(
        tracking_uri, tmp_path):
    """Registered by the flat package of FLAT_LAYOUT (taken from this repository's history),
    loaded by this one: the same probabilities in-process, and the pyfunc answers."""
    import pandas as pd

    from unet.images.reading import encode_png
    flat = tmp_path / "flat"
    flat.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", FLAT_LAYOUT, "unet",
                              "tests/conftest.py"], capture_output=True)
    assert archive.returncode == 0, f"needs the project's git history: {archive.stderr!r}"
    subprocess.run(["tar", "-x", "-C", str(flat)], input=archive.stdout, check=True)
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    np.save(tmp_path / "image.npy", image)
    env = {**os.environ, "PYTHONPATH": f"{flat}{os.pathsep}{flat / 'tests'}"}
    subprocess.run([sys.executable, "-c", REGISTER_AND_PREDICT, str(flat), str(tmp_path /
                    "image.npy"), str(tmp_path / "before.npy")], env=env, check=True, cwd=tmp_path)
    uri = "models:/flat@champion"
    after = next(models.load_segmenter(uri).probabilities([image]))
    np.testing.assert_allclose(after, np.load(tmp_path / "before.npy"), atol=1e-6)
    answer = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [encode_png(image)]}))
    assert (answer["height"][0], answer["width"][0]) == (20, 30)


def test_resolve_fixes_an_alias_latest_and_a_stage_to_a_version(tracking_uri):
    import warnings

    from mlflow import MlflowClient

    from unet.errors import UserError
    for seed in (0, 1):
        torch.manual_seed(seed)
        with mlflow.start_run():
            uri = models.log_model(Segmenter(UNet(features=(4, 8)), (16, 16)),
                                   np.zeros((8, 12, 3), np.uint8))
        mlflow.register_model(uri, "cars")
    client = MlflowClient()
    client.set_registered_model_alias("cars", "champion", "1")
    with warnings.catch_warnings():            # stages are deprecated, still resolvable
        warnings.simplefilter("ignore")
        client.transition_model_version_stage("cars", "1", "Production")
    assert models.resolve("models:/cars@champion") == "models:/cars/1"
    assert models.resolve("models:/cars/latest") == "models:/cars/2"
    assert models.resolve("models:/cars/production") == "models:/cars/1"
    assert models.resolve("models:/cars/2") == "models:/cars/2"
    assert models.resolve(uri) == uri                       # models:/m-<id>: one model already
    with pytest.raises(UserError, match="models:/cars/Staging: cannot load it"):
        models.resolve("models:/cars/Staging")
