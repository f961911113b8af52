"""The pipeline against a shared tracking server: `mlflow server` with a SQL store and
artifacts proxied by the server (--serve-artifacts), as a team would run it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

from conftest import (
    ROOT,
    TINY,
    answers,
    background,
    first_version_aliases,
    free_port,
    mlflow_run,
)


def rest(url: str, body: dict | None = None) -> dict:
    """GET (or POST `body` to) a REST endpoint of the tracking server; the JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def test_main_against_a_tracking_server(tmp_path):
    port, artifacts = free_port(), tmp_path / "artifact-store"
    url = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "mlflow", "server",
              "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
              "--artifacts-destination", str(artifacts), "--serve-artifacts",
              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with background(server, tmp_path / "server.log", answers(f"{url}/health")):
        result = mlflow_run("main", TINY, url)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert "=== pipeline summary ===" in result.stdout
        assert f"open the UI: {url} " in result.stdout
        # The same pipeline with a password in the tracking URI (the server ignores it):
        # reused steps, and the summary, the runs' output and MLflow's own lines never show it.
        secret_url = f"http://u:secret@127.0.0.1:{port}"
        args = [arg for key, value in TINY.items() for arg in (f"--{key}", value)]
        again = subprocess.run([sys.executable, "-m", "steps.main", *args], cwd=ROOT,
                               env={**os.environ, "MLFLOW_TRACKING_URI": secret_url},
                               capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "secret" not in again.stdout + again.stderr
        assert f"open the UI: http://u:***@127.0.0.1:{port} " in again.stdout

        query = urllib.parse.urlencode({"name": "unet-carvana", "version": "1"})
        version = rest(f"{url}/api/2.0/mlflow/model-versions/get?{query}")["model_version"]
        tags = {t["key"]: t["value"] for t in version["tags"]}
        assert version.get("aliases", []) == first_version_aliases(tags)
        runs = rest(f"{url}/api/2.0/mlflow/runs/search", {"experiment_ids": ["0"]})["runs"]
        steps = {tag["value"]: r for r in runs for tag in r["data"]["tags"] if tag["key"] == "step"}
        assert sorted(steps) == ["evaluate", "main", "split_data", "train"]
        assert tags["train_run_id"] == steps["train"]["info"]["run_id"]
        assert all(r["info"]["status"] == "FINISHED" for r in runs)

    # the artifacts went through the server into its store
    split_id, train_id = (steps[name]["info"]["run_id"] for name in ("split_data", "train"))
    assert (artifacts / "0" / split_id / "artifacts" / "split.json").is_file()
    assert (artifacts / "0" / train_id / "artifacts" / "checkpoints" / "last.pt").is_file()
