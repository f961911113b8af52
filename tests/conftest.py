"""Shared fixtures: a private tracking store per test, and a runner for the real `mlflow run`."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from unet.tracking import models, registry
from unet.tracking.ui import stop_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))    # tools/ (benchmarks, generators) is not part of the package
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# Settings small enough for a test to train in seconds; `-P` pairs for `mlflow run`.
TINY = {"num_images": "24", "synthetic_height": "48", "synthetic_width": "72",
        "epochs": "2", "image_height": "32", "image_width": "48", "features": "4,8,16,32",
        "batch_size": "4", "num_workers": "0", "cache_dir": ""}


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
               timeout: int = 600, project: str = str(ROOT),
               version: str | None = None) -> subprocess.CompletedProcess:
    """`mlflow run <project> [-v version] -e entry_point -P ... --env-manager local` (project:
    this checkout, or a git URL), output captured."""
    cmd = [sys.executable, "-m", "mlflow", "run", project, "-e", entry_point,
           "--env-manager", "local"]
    if version:
        cmd += ["-v", version]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def only(params: dict[str, str], entry_point: str) -> dict[str, str]:
    """The subset of `params` that entry_point declares in MLproject."""
    import yaml
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"][entry_point]
    return {k: v for k, v in params.items() if k in declared["parameters"]}


def first_version_aliases(tags: dict[str, str]) -> list[str]:
    """The aliases the promotion rule gives the first version of a name, from its tags:
    champion if its test Dice is above the floor, none otherwise. (TINY models sit near the
    floor; tests/test_pipeline.py pins each side of it down with a model that can't miss.)"""
    return ["champion"] if float(tags["test_dice"]) > float(tags["floor_dice"]) else []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
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

    from unet.inference.segmenter import Segmenter
    from unet.network.model import UNet

    torch.manual_seed(0)
    with mlflow.start_run():
        segmenter = Segmenter(UNet(features=(4, 8, 16, 32)), (32, 48))
        model_uri = models.log_model(segmenter, np.full((16, 24, 3), 128, np.uint8))
    version = mlflow.register_model(model_uri, name).version
    MlflowClient().set_registered_model_alias(name, registry.CHAMPION, version)
    return f"models:/{name}@{registry.CHAMPION}"


@contextlib.contextmanager
def model_server(store_dir: Path, register: Callable[[], str]):
    """(url, server pid, model_uri): the model that `register()` puts into a private store in
    `store_dir`, served by the real `mlflow models serve` on a free port of 127.0.0.1, which
    reads the registry from that store; stopped by its PID on exit."""
    import mlflow

    from unet.tracking import ui

    store = f"sqlite:///{store_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(store)
    model_uri = register()
    port = free_port()
    server = ui.start_server(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)])
    os.environ["MLFLOW_TRACKING_URI"] = store
    try:
        url = f"http://127.0.0.1:{port}"
        ui.wait_until_up(server, f"{url}/ping")
        yield url, server.pid, model_uri
    finally:
        ui.stop_server(server)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        mlflow.set_tracking_uri(None)


def answers(url: str) -> Callable[[], bool]:
    """A readiness check: `url` answers 200."""
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False
    return check


@contextlib.contextmanager
def background(cmd: list[str], log: Path, ready: Callable[[], bool], timeout: float = 120,
               **popen):
    """Runs a server `cmd` (output to `log`; `popen`: Popen's cwd, env) while the block runs,
    once `ready()` is true; then stops it and its children by its process group."""
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert server.poll() is None, f"{cmd[:4]} exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{cmd[:4]} not ready: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield server
    finally:
        stop_server(server)
