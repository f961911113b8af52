"""Shared fixtures: a private tracking store per test, and a runner for the real `mlflow run`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Settings small enough for a test to train in seconds; `-P` pairs for `mlflow run`.
TINY = {"num_images": "24", "synthetic_height": "48", "synthetic_width": "72",
        "epochs": "2", "image_height": "32", "image_width": "48", "features": "4,8,16,32",
        "batch_size": "4", "num_workers": "0"}


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch) -> str:
    """An empty sqlite store for this test (absolute: `mlflow run` changes directory)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def mlflow_run(entry_point: str, params: dict[str, str], tracking_uri: str,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """`mlflow run <repo> -e entry_point -P ... --env-manager local`, output captured."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry_point,
           "--env-manager", "local"]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def only(params: dict[str, str], entry_point: str) -> dict[str, str]:
    """The subset of `params` that entry_point declares in MLproject."""
    import yaml
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][entry_point]
    return {k: v for k, v in params.items() if k in declared["parameters"]}


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def register_untrained_champion(name: str = "unet-carvana") -> str:
    """Logs an untrained tiny model through the project's own log_model and registers it as
    `name`@champion in the current tracking store: the model interface without training time.
    Returns models:/name@champion."""
    import mlflow
    import numpy as np
    import torch
    from mlflow import MlflowClient

    from unet import tracking
    from unet.model import UNet
    from unet.predict import Segmenter

    torch.manual_seed(0)
    with mlflow.start_run():
        segmenter = Segmenter(UNet(features=(4, 8, 16, 32)), (32, 48))
        model_uri = tracking.log_model(segmenter, np.full((16, 24, 3), 128, np.uint8))
    version = mlflow.register_model(model_uri, name).version
    MlflowClient().set_registered_model_alias(name, tracking.CHAMPION, version)
    return f"models:/{name}@{tracking.CHAMPION}"
