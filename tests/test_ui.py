"""The ui entry point: the MLflow UI on the project's store, and the ngrok path's errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import mlflow
import pytest
from conftest import ROOT, free_port, mlflow_run

from unet.tracking import ui


def test_ui_serves_the_store_and_stops(tracking_uri):
    mlflow.create_experiment("cars-ui-test")
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    process = subprocess.Popen([sys.executable, "-m", "steps.ui", "--port", str(port)],
                               cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        ui.wait_until_up(process, f"{url}/health")
        with urllib.request.urlopen(
                f"{url}/api/2.0/mlflow/experiments/search?max_results=100", timeout=30) as r:
            names = [e["name"] for e in json.loads(r.read())["experiments"]]
        assert "cars-ui-test" in names
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0
    with pytest.raises(urllib.error.URLError):          # the server went with it
        urllib.request.urlopen(f"{url}/health", timeout=5)


def test_ngrok_without_a_token_says_what_to_set(tracking_uri, monkeypatch):
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    result = mlflow_run("ui", {"tunnel": "ngrok"}, tracking_uri)
    assert result.returncode != 0
    assert "error: tunnel=ngrok needs your ngrok auth token in the environment: export " \
           "NGROK_AUTHTOKEN=" in result.stderr
    assert "Traceback" not in result.stderr


def test_ngrok_without_pyngrok_says_what_to_install(tmp_path):
    # pyngrok is an optional extra: hide it, whether or not this environment has it
    code = ("import sys, runpy; sys.modules['pyngrok'] = None; "
            "sys.argv = ['steps.ui', '--tunnel', 'ngrok']; "
            "runpy.run_module('steps.ui', run_name='__main__')")
    env = {**os.environ, "NGROK_AUTHTOKEN": "a-token-that-must-not-be-printed",
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: tunnel=ngrok needs the optional package pyngrok: {ui.INSTALL_NGROK}"]
    assert "a-token-that-must-not-be-printed" not in result.stdout + result.stderr
