"""Tracking outages: a real `mlflow server` stopped in the middle of a real training process
for longer than MLflow's retry budget, then started again on the same store."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, answers, free_port
from test_interrupt import read_until, split_run, train_cmd
from unet.tracking.outbox import Outbox, spool_dir
from unet.ui import stop_server

# MLflow's HTTP retry budget cut from ~2 minutes to ~2 seconds: an outage of 20 s outlasts it.
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}


class Server:
    """`mlflow server` on 127.0.0.1:port over a store in `folder`, stoppable and restartable."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server",
               "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
               "--artifacts-destination", str(self.folder / "artifacts"), "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline, up = time.monotonic() + 120, answers(f"{self.url}/health")
        while not up():
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                (self.folder / "server.log").read_text()[-3000:]
            time.sleep(0.3)

    def stop(self) -> None:
        stop_server(self.proc)


@pytest.fixture
def server(tmp_path, monkeypatch):
    server = Server(tmp_path)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    for key, value in SHORT_RETRIES.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def history(run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient().get_metric_history(run_id, key)]


def test_records_kept_through_an_outage_are_sent_in_order_once(server, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(tmp_path)                     # the spool lives under ./checkpoints
    run_id = MlflowClient(server.url).create_run("0").info.run_id
    outbox = Outbox(run_id, server.url)
    outbox.log_metrics({"loss": 1.0}, step=1)
    server.stop()
    checkpoint = tmp_path / "last.pt"
    checkpoint.write_bytes(b"epoch 2")
    outbox.log_metrics({"loss": 0.5}, step=2)
    outbox.log_artifact(checkpoint, "checkpoints")
    checkpoint.write_bytes(b"epoch 3")              # changed before it could be sent: a copy
    outbox.log_metrics({"loss": 0.25}, step=3)
    outbox.log_image(np.zeros((4, 6, 3), np.uint8), key="samples", step=3)
    assert outbox.pending == 4
    assert not outbox.flush()                       # still away: nothing lost, nothing sent
    err = capsys.readouterr().err
    assert err.count("unreachable") == 1 and str(spool_dir(run_id)) in err

    server.start()
    outbox.log_metrics({"loss": 0.125}, step=4)     # first sends what was kept, in order
    assert outbox.pending == 0 and not (spool_dir(run_id) / "records.jsonl").exists()
    assert capsys.readouterr().out.count("is back: sent 4 kept record(s)") == 1
    assert history(run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.125)]
    sent = MlflowClient().download_artifacts(run_id, "checkpoints/last.pt", str(tmp_path))
    assert Path(sent).read_bytes() == b"epoch 2"
    assert list(spool_dir(run_id).iterdir()) == []  # the copies went with their records


@pytest.mark.slow     # minutes: 25 epochs around a 20-second outage and two server starts
def test_training_survives_an_outage_longer_than_the_retry_budget(server, tmp_path):
    split_id = split_run(server.url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(train_cmd(split_id, epochs="25"), cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        run_id = next(line.split()[2].rstrip(":") for line in read_until(proc, "epoch 2/")
                      if line.startswith("train run "))
        server.stop()
        time.sleep(20)                              # ten times the retry budget
        assert proc.poll() is None                  # training goes on without the server
        server.start()
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert err.count("unreachable") == 1 and out.count("is back: sent") >= 1
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED"
    epochs = sorted(step for step, _ in history(run_id, "val_dice"))
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 3   # each epoch once
    assert len(epochs) == 25 or run.data.tags.get("stopped_early") == "true"
    assert "model_uri" in run.data.tags
