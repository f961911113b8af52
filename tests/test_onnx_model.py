"""The logged model's runtimes (issue 21): `mlflow models serve`, predict's CSV and evaluate's
int8 file give the torch model's masks; models logged before ONNX still load on torch."""
from __future__ import annotations

import base64
import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, TINY, mlflow_run, model_server
from mlflow import MlflowClient
from test_serving import encoded, photo, post, request_for

from tools.datasets import carvana_folder
from unet.errors import UserError
from unet.images.reading import read_for_model, read_image
from unet.inference import rle
from unet.inference.segmenter import Segmenter
from unet.network.model import UNet
from unet.tracking import models, quantize, splits
from unet.tracking.serving import decode_mask

# The last commit before ONNX export: a model logged by its code has segmenter.pt only.
BEFORE_ONNX = "22b0a19ebfad9de79f7f336a1c822436649921b9"


def near_threshold(segmenter) -> float:
    """How close to the threshold torch's probability may be where torch and ONNX fp32 masks
    differ: 1e-4 where torch runs fp32; where it runs bf16 (its choice on CPUs with bf16, as
    in training) bf16's 8-bit mantissa moves probabilities by up to ~1e-2."""
    return 1e-4 if segmenter.precision.name == "fp32" else 2e-2


def check_same_masks(torch_mask, onnx_mask, torch_probs, threshold, tolerance) -> int:
    """Asserts the masks are equal except where torch's probability is within `tolerance` of
    the threshold; returns how many such pixels differ."""
    differ = torch_mask != onnx_mask
    near = np.abs(torch_probs - threshold) <= tolerance
    assert np.all(near[differ]), np.abs(torch_probs[differ] - threshold).max()
    print(f"{differ.mean():.4%} of pixels differ; {near.mean():.4%} are near the threshold")
    assert near.mean() < 0.5          # the exception covers a minority: the check has teeth
    return int(differ.sum())


def colour_model() -> UNet:
    """A 4-level U-Net whose probability is a function of each pixel's colour, spread over
    (0, 1): an untrained U-Net's probabilities all sit within ~0.01 of one value, where every
    pixel would be "near the threshold" and torch bf16 vs ONNX fp32 could not be told apart
    from noise. The first level and the last decoder block pass the image through (identity
    3x3 kernels), the other levels are zeros; the head mixes the colours."""
    model = UNet(features=(4, 8, 16, 32)).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
        for conv in (model.downs[0][0], model.downs[0][3], model.ups[-1].conv[0],
                     model.ups[-1].conv[3]):
            for channel in range(3):          # the skip is the first half of Up's input
                conv.weight[channel, channel, 1, 1] = 1.0
        model.head.weight[0, :3, 0, 0] = torch.tensor([14.0, -14.0, 6.0])
        model.head.bias.fill_(-3.0)
    return model


def register_spread_champion(name: str = "unet-carvana") -> str:
    """Like conftest's register_untrained_champion, with colour_model's weights."""
    model = colour_model()
    with mlflow.start_run():
        model_uri = models.log_model(Segmenter(model, (32, 48)), np.zeros((16, 24, 3), np.uint8))
    version = mlflow.register_model(model_uri, name).version
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return f"models:/{name}@champion"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, model_uri): an untrained champion (with its ONNX file) served on a free port."""
    with model_server(tmp_path_factory.mktemp("store"), register_spread_champion) as served:
        url, _, model_uri = served
        yield url, model_uri


def test_the_server_answers_one_jpeg_with_the_same_mask_on_torch_and_onnx(served):
    url, model_uri = served
    data = encoded(photo(1280, 1918), "JPEG")
    image = read_image(data)
    torch_segmenter = models.load_segmenter(model_uri, "torch")
    probs = next(torch_segmenter.probabilities([image]))
    threshold = float(np.median(probs))
    masks = {}
    for runtime in ("torch", "onnx"):
        status, answer = post(url, request_for(data, threshold=threshold, runtime=runtime))
        assert status == 200, answer
        masks[runtime] = decode_mask(base64.b64decode(answer["predictions"][0]["mask"]))
        assert masks[runtime].shape == (1280, 1918)
    assert np.array_equal(masks["torch"], torch_segmenter.decide(probs, threshold))
    assert 0 < masks["torch"].mean() < 1
    differ = check_same_masks(masks["torch"], masks["onnx"], probs, threshold,
                              near_threshold(torch_segmenter))
    print(f"torch ({torch_segmenter.precision.name}) vs onnx: {differ} of "
          f"{masks['torch'].size} pixels differ, each near the threshold")
    # no runtime param: the model's default, recorded in its metadata
    default = mlflow.models.get_model_info(model_uri).metadata["runtime"]
    status, answer = post(url, request_for(data, threshold=threshold))
    assert np.array_equal(decode_mask(base64.b64decode(answer["predictions"][0]["mask"])),
                          masks[default])


@pytest.mark.parametrize("runtime,message", [
    ("tensorrt", "param runtime=tensorrt: use auto, torch, onnx, onnx-int8"),
    ("onnx-int8", "param runtime=onnx-int8: this model carries no file for it")])
def test_an_unknown_or_missing_runtime_is_a_400_naming_the_param(served, runtime, message):
    url, _ = served
    status, answer = post(url, request_for(encoded(photo(40, 60), "PNG"), runtime=runtime))
    assert status == 400 and message in answer["message"]


def test_the_logged_model_carries_its_onnx_file_and_the_default_it_measured(served):
    _, model_uri = served
    info = mlflow.models.get_model_info(model_uri)
    assert info.metadata["runtime"] in ("torch", "onnx")
    timed = info.metadata["runtime_ms_per_image"]
    assert set(timed) == {"torch", "onnx"} and all(ms > 0 for ms in timed.values())
    assert info.metadata["runtime"] == min(timed, key=timed.get)
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    assert (local / "artifacts" / "segmenter.onnx").stat().st_size > 10_000
    assert "onnxruntime==1.32.0" in (local / "requirements.txt").read_text()
    assert len(MlflowClient().search_registered_models()) == 1    # one model, two files


def test_predict_rle_csv_is_the_same_on_torch_and_onnx(tracking_uri, tmp_path):
    model_uri = register_spread_champion()
    folder = carvana_folder(tmp_path / "cars", images=4, seed=21, size=(320, 478)) / "train"
    rows = {}
    for runtime in ("torch", "onnx"):
        result = mlflow_run("predict", {"input_dir": str(folder), "format": "rle",
                                        "output_dir": str(tmp_path / runtime),
                                        "runtime": runtime}, tracking_uri)
        assert result.returncode == 0, result.stderr[-2000:]
        lines = (tmp_path / runtime / "submission.csv").read_text().splitlines()
        assert lines[0] == "img,rle_mask" and len(lines) == 5
        rows[runtime] = dict(line.split(",") for line in lines[1:])
    assert list(rows["torch"]) == list(rows["onnx"])
    torch_segmenter = models.load_segmenter(model_uri, "torch")
    exceptions = 0
    for name, runs in rows["torch"].items():
        image, size = read_for_model(folder / name, torch_segmenter.image_size)
        (probs,) = torch_segmenter.probabilities([image], sizes=[size])
        torch_mask = rle.decode(runs, *size)
        assert np.array_equal(torch_mask, torch_segmenter.decide(probs, 0.5))
        exceptions += check_same_masks(torch_mask, rle.decode(rows["onnx"][name], *size), probs,
                                       0.5, near_threshold(torch_segmenter))
    print(f"predict rle: torch ({torch_segmenter.precision.name}) vs onnx rows: "
          f"{sum(rows['torch'][n] != rows['onnx'][n] for n in rows['torch'])} of 4 differ, "
          f"{exceptions} pixels, each near the threshold")


def old_model(tmp_path: Path, tracking_uri: str) -> str:
    """A model logged by the code of BEFORE_ONNX (git archive of its unet/), in a subprocess;
    its models:/ URI."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_ONNX, "unet"],
                                 capture_output=True, check=True).stdout
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip(f"commit {BEFORE_ONNX[:7]} is not in this clone")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tmp_path / "old")
    (tmp_path / "old" / "unet" / "params.yaml").unlink(missing_ok=True)   # a link in git
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import mlflow, numpy as np; "
              "from unet.model import UNet; from unet.predict import Segmenter; "   # its layout
              "from unet.tracking import models; import unet; "
              "assert unet.__file__.startswith(sys.argv[1]); mlflow.start_run(); "
              "print(models.log_model(Segmenter(UNet(features=(4, 8)), (16, 24)), "
              "np.zeros((8, 12, 3), np.uint8)))")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "old")], text=True,
                         capture_output=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_a_model_logged_before_onnx_still_loads_and_predicts_on_torch(tracking_uri, tmp_path):
    uri = old_model(tmp_path, tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(uri))
    assert not (local / "artifacts" / "segmenter.onnx").exists()
    assert models.default_runtime(uri) == "torch"
    segmenter = models.load_segmenter(uri)
    assert segmenter.runtime == "torch"
    image = photo(50, 70)
    expected = next(segmenter.masks([image]))
    out = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": [image]}))
    assert np.array_equal(decode_mask(out["mask"][0]), expected * 1)
    with pytest.raises(UserError, match="parameter runtime=onnx: this model carries no file "
                                        "for it \\(the model was logged before ONNX"):
        models.load_segmenter(uri, "onnx")


def test_evaluate_int8_ships_the_file_only_within_the_dice_tolerance(tracking_uri, tmp_path,
                                                                       monkeypatch):
    result = mlflow_run("main", {**TINY, "quantize": "int8"}, tracking_uri, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("int8 "))
    run = MlflowClient().search_runs(
        [mlflow.get_experiment_by_name("Default").experiment_id],
        "tags.mlflow.runName LIKE 'evaluate%'")[0]
    assert run.data.tags["int8"] == line
    change = run.data.metrics["int8_dice_change"]
    kept = change >= -quantize.INT8_TOLERANCE
    assert line.startswith("int8 kept" if kept else "int8 not shipped")
    model_uri = run.data.tags.get("model_uri") or MlflowClient().get_run(
        run.data.tags["train_run_id"]).data.tags["model_uri"]
    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    assert (local / "artifacts" / "segmenter.int8.onnx").exists() == kept
    version = MlflowClient().get_model_version("unet-carvana", run.data.tags["model_version"])
    assert "**Runtime**: default `" in version.description and line in version.description
    if kept:
        assert models.load_segmenter(model_uri, "onnx-int8").runtime == "onnx-int8"

    # The other side: with no tolerance left, the file is not shipped and the line says why.
    monkeypatch.setattr(quantize, "INT8_TOLERANCE", -1.0)
    split = splits.load_split(run.data.tags["split_run_id"], workdir=tmp_path)
    with mlflow.start_run():
        fresh = models.log_model(models.load_segmenter(model_uri, "torch"),
                                 np.zeros((16, 24, 3), np.uint8))
        cfg = type("Cfg", (), {"tta": "none", "threshold": 0.5, "eval_batch_size": 4})
        verdict = quantize.try_int8(fresh, split.subsets, cfg)
    assert not verdict.kept and verdict.line.startswith("int8 not shipped: test Dice")
    local = Path(mlflow.artifacts.download_artifacts(fresh))
    assert not (local / "artifacts" / "segmenter.int8.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("pyspark") is None,
                    reason="pyspark is not installed: pip install -e '.[spark]'")
def test_spark_engine_on_onnx_writes_the_local_engines_onnx_rows(tracking_uri, tmp_path):
    register_spread_champion()
    folder = carvana_folder(tmp_path / "cars", images=8, seed=5, size=(320, 478)) / "train"
    rows = {}
    for engine in ("local", "spark"):
        result = mlflow_run("predict", {"input_dir": str(folder), "format": "rle",
                                        "output_dir": str(tmp_path / engine), "engine": engine,
                                        "runtime": "onnx", "spark_master": "local[2]"},
                            tracking_uri, timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]
        rows[engine] = (tmp_path / engine / "submission.csv").read_text()
    assert rows["spark"] == rows["local"] and rows["local"].count("\n") == 9
