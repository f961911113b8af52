"""Tracking outages: a real `mlflow server` stopped in the middle of a real training process
for longer than MLflow's retry budget, then started again on the same store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, answers, free_port
from mlflow.tracking import MlflowClient
from test_interrupt import read_until, split_run, train_cmd

from unet.tracking.outbox import Outbox, spool_dir
from unet.tracking.ui import stop_server

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
        # Minutes on a loaded machine; a server that never answers is stopped, not leaked.
        deadline, up = time.monotonic() + 300, answers(f"{self.url}/health")
        while not up():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError((self.folder / "server.log").read_text()[-3000:])
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


# No retries, but time to answer on a loaded machine (a timeout is an outage to the outbox).
PATIENT = {**SHORT_RETRIES, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of `target`, as an authenticating gateway would be:
    /health answers 401; a request whose body holds `refuse` gets 403; while `down`, every
    request gets 503; while `api_down`, /health says OK and the API answers 503; `rule` answers
    what it returns."""

    def __init__(self, target: str, refuse: bytes = b"\0never"):
        import http.server
        import threading
        import urllib.error
        import urllib.request
        proxy = self
        self.down = False
        self.api_down = False      # /health says OK, the API answers 503 (database down)
        self.rule = None           # (path, body) -> an HTTP status to answer instead, or None
        self.paths: list[str] = []     # what was asked, in order

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.paths.append(self.path)
                if proxy.down:
                    return self.answer(503, b"gateway: upstream away")
                if self.path == "/health":
                    return self.answer(200, b"OK") if proxy.api_down else \
                        self.answer(401, b"gateway: log in first")
                if proxy.api_down:
                    return self.answer(503, b"database is down")
                status = proxy.rule(self.path, body) if proxy.rule else None
                if status:
                    return self.answer(status, f"gateway: {status}".encode())
                if refuse in body:
                    return self.answer(403, b"gateway: forbidden by policy")
                request = urllib.request.Request(
                    target + self.path, data=body if body else None, method=self.command,
                    headers={k: v for k, v in self.headers.items()
                             if k.lower() in ("content-type",)})
                try:
                    with urllib.request.urlopen(request, timeout=60) as response:
                        status, data, kind = response.status, response.read(), \
                            response.headers.get("Content-Type", "")
                except urllib.error.HTTPError as e:
                    status, data, kind = e.code, e.read(), e.headers.get("Content-Type", "")
                self.answer(status, data, kind)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_refused_record_goes_to_the_dead_letters_and_the_others_are_sent(server, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for key, value in PATIENT.items():
        monkeypatch.setenv(key, value)
    proxy = Proxy(server.url, refuse=b"forbidden")
    try:
        run_id = MlflowClient(server.url).create_run("0").info.run_id
        outbox = Outbox(run_id, proxy.url, give_up_s=0)    # a 403 alone: dead at once
        outbox.log_metrics({"loss": 1.0}, step=1)      # the API answers: the server is there
        outbox.log_metrics({"forbidden": 9.0}, step=1)     # refused as it is sent: goes on
        proxy.down = True
        outbox.log_metrics({"loss": 0.5}, step=2)
        outbox.log_metrics({"forbidden": 8.0}, step=2)     # kept, refused when sent
        outbox.log_metrics({"loss": 0.25}, step=3)
        assert outbox.pending == 3
        proxy.down = False
        started = time.monotonic()
        outbox.wait_until_sent(limit_s=60)                 # ends: nothing left waiting
        assert time.monotonic() - started < 30
    finally:
        proxy.close()
    assert outbox.pending == 0
    assert history(run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert history(run_id, "forbidden") == []
    dead = [json.loads(line) for line in (spool_dir(run_id) / "dead.jsonl").read_text()
            .splitlines()]
    assert [(r["step"], r["metrics"]) for r in dead] == [(1, {"forbidden": 9.0}),
                                                        (2, {"forbidden": 8.0})]
    assert all("HTTP 403" in r["dead"] and "forbidden by policy" in r["dead"] for r in dead)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "refused" in line]
    assert len(lines) == 2 and all("HTTP 403" in line and "dead.jsonl" in line
                                   and "metrics record of step" in line for line in lines)


def proxied(server, tmp_path, monkeypatch) -> tuple[Proxy, str]:
    """A Proxy in front of the server and a new run on it; the spool under tmp_path."""
    monkeypatch.chdir(tmp_path)
    for key, value in PATIENT.items():
        monkeypatch.setenv(key, value)
    return Proxy(server.url), MlflowClient(server.url).create_run("0").info.run_id


def resend_through(proxy: Proxy, run_id: str, monkeypatch) -> None:
    """The resend command as a user runs it, once the proxy lets every request through."""
    from unet.tracking.outbox import main
    proxy.rule = None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    main([run_id])


def test_an_api_that_fails_behind_a_healthy_health_check_is_an_outage(server, tmp_path,
                                                                      monkeypatch):
    """/health says OK while the database behind the API is down: the records wait, each
    after one probe of the API, and no MLflow request (with its retries) is made for them."""
    proxy, run_id = proxied(server, tmp_path, monkeypatch)
    try:
        outbox = Outbox(run_id, proxy.url)
        proxy.api_down = True
        started = time.monotonic()
        for step in range(1, 6):
            outbox.log_metrics({"loss": 1.0 / step}, step=step)
        assert time.monotonic() - started < 10
        assert outbox.pending == 5
        assert not [p for p in proxy.paths if "log-batch" in p]
        assert all(p.startswith("/api/2.0/mlflow/runs/get?run_id=") for p in proxy.paths)
        proxy.api_down = False
        assert outbox.flush()
    finally:
        proxy.close()
    assert [s for s, _ in history(run_id, "loss")] == [1, 2, 3, 4, 5]


def test_a_record_failing_alone_does_not_hold_up_the_others_and_is_sent_again(
        server, tmp_path, monkeypatch):
    """A record the server keeps failing (503 for its body alone) while it takes the others:
    the others are sent at once; it is tried again at each flush, goes to the dead letters
    after give_up_s and 3 tries, and the resend command sends it once the server takes it."""
    proxy, run_id = proxied(server, tmp_path, monkeypatch)
    try:
        proxy.rule = lambda path, body: 503 if b"flaky" in body else None
        outbox = Outbox(run_id, proxy.url, give_up_s=0.5)
        outbox.log_metrics({"loss": 1.0}, step=1)
        outbox.log_metrics({"flaky": 7.0}, step=1)
        outbox.log_metrics({"loss": 0.5}, step=2)         # not held up by the flaky record
        assert history(run_id, "loss") == [(1, 1.0), (2, 0.5)] and outbox.pending == 1
        kept = json.loads((spool_dir(run_id) / "records.jsonl").read_text())
        assert kept["metrics"] == {"flaky": 7.0} and kept["tries"] == 1
        time.sleep(0.6)
        assert not outbox.flush() and outbox.pending == 1      # 2 tries: not yet given up
        assert outbox.flush() and outbox.pending == 0          # 3 tries, 0.5 s: dead letter
        dead = (spool_dir(run_id) / "dead.jsonl").read_text()
        assert "flaky" in dead and "log-batch" in dead          # MLflow words a 503 so
        resend_through(proxy, run_id, monkeypatch)
    finally:
        proxy.close()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    assert history(run_id, "flaky") == [(1, 7.0)]
    assert not (spool_dir(run_id) / "dead.jsonl").exists()


def test_a_refusal_of_everything_waits_then_goes_to_the_dead_letters(server, tmp_path,
                                                                     monkeypatch, capsys):
    """401 for every request (an expired token): records wait as through an outage; after
    give_up_s they go to the dead letters, which the resend command sends once the server
    takes them again (before: 401 sent them to the dead letters at once, for good)."""
    proxy, run_id = proxied(server, tmp_path, monkeypatch)
    try:
        proxy.rule = lambda path, body: 401
        outbox = Outbox(run_id, proxy.url, give_up_s=1)
        outbox.log_metrics({"loss": 1.0}, step=1)
        outbox.log_metrics({"loss": 0.5}, step=2)
        assert outbox.pending == 2 and not (spool_dir(run_id) / "dead.jsonl").exists()
        time.sleep(1.1)
        outbox.log_metrics({"loss": 0.25}, step=3)
        dead = (spool_dir(run_id) / "dead.jsonl").read_text().splitlines()
        assert len(dead) == 2 and outbox.pending == 1
        assert "refused run" in capsys.readouterr().err
        resend_through(proxy, run_id, monkeypatch)
    finally:
        proxy.close()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    assert history(run_id, "loss") == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert "nothing left to send" in capsys.readouterr().out


def test_a_body_limit_splits_metrics_and_refuses_a_file_too_large_in_one_line(
        server, tmp_path, monkeypatch, capsys):
    """A proxy's 413 for bodies over 700 bytes: 40 metrics of one step are sent in halves; a
    5 KB file goes to the dead letters, named in one line."""
    proxy, run_id = proxied(server, tmp_path, monkeypatch)
    try:
        proxy.rule = lambda path, body: 413 if len(body) > 700 else None
        outbox = Outbox(run_id, proxy.url)
        outbox.log_metrics({f"class_{k}_dice": k / 40 for k in range(40)}, step=1)
        big = tmp_path / "big.bin"
        big.write_bytes(bytes(5000))
        outbox.log_artifact(big, "extra")
    finally:
        proxy.close()
    run = MlflowClient(server.url).get_run(run_id)
    assert len(run.data.metrics) == 40 and run.data.metrics["class_39_dice"] == 39 / 40
    assert outbox.pending == 0
    dead = (spool_dir(run_id) / "dead.jsonl").read_text()
    assert "HTTP 413" in dead and "big.bin" in dead
    line = [x for x in capsys.readouterr().err.splitlines() if "refused" in x]
    assert len(line) == 1 and "artifact record big.bin" in line[0]


def test_an_outage_keeps_only_the_newest_checkpoint(server, tmp_path, monkeypatch):
    """10 rounds of a checkpoint logged to the same path during an outage: one copy is kept
    (before: ten, all uploaded later to the same path), and it is the last round's."""
    proxy, run_id = proxied(server, tmp_path, monkeypatch)
    try:
        outbox = Outbox(run_id, proxy.url)
        proxy.down = True
        checkpoint = tmp_path / "last.pt"
        for round_ in range(1, 11):
            checkpoint.write_bytes(f"round {round_} ".encode() * 1000)
            outbox.log_metrics({"val_dice": round_ / 10}, step=round_)
            outbox.log_artifact(checkpoint, "checkpoints")
        kept = [p for p in spool_dir(run_id).rglob("last.pt")]
        assert len(kept) == 1 and kept[0].read_bytes().startswith(b"round 10 ")
        assert outbox.pending == 11
        proxy.down = False
        assert outbox.flush()
    finally:
        proxy.close()
    local = MlflowClient(server.url).download_artifacts(run_id, "checkpoints/last.pt",
                                                        str(tmp_path))
    assert Path(local).read_bytes().startswith(b"round 10 ")
    assert len(history(run_id, "val_dice")) == 10


def test_the_end_of_training_wait_is_bounded_and_says_how_to_send_the_rest(tmp_path,
                                                                        monkeypatch):
    from unet.errors import UserError
    monkeypatch.chdir(tmp_path)
    for key, value in SHORT_RETRIES.items():
        monkeypatch.setenv(key, value)
    outbox = Outbox("r1", f"http://u:secret@127.0.0.1:{free_port()}")   # nothing listens
    outbox.log_metrics({"loss": 1.0}, step=1)
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
        outbox.wait_until_sent(limit_s=1, poll_seconds=0.2)
    assert time.monotonic() - started < 20
    message = str(refused.value)
    assert "python -m unet.tracking.outbox r1" in message and "1 record(s)" in message
    assert "secret" not in message and "u:***@" in message
    assert outbox.pending == 1                         # kept: nothing lost


# One step of an outbox's life in its own process, killed (SIGKILL) right after `point`:
# "write" a kept file (before its journal line), "send" an upload, "rewrite" the journal
# without the sent record, "delete" the sent record's file.
KILLED = """
import os, pathlib, shutil, signal, sys
from mlflow.tracking import MlflowClient
from unet.tracking import outbox as ob
url, run_id, point, phase = sys.argv[1:]
def then_kill(fn):
    def call(*args, **kwargs):
        fn(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return call
box = ob.Outbox(run_id, url)
if phase == "keep":                     # url: nothing listens, every record is kept
    if point == "write":
        ob.shutil.copy2 = then_kill(shutil.copy2)
    box.log_metrics({"loss": 1.0}, step=1)
    pathlib.Path("last.pt").write_bytes(b"epoch 1")
    box.log_artifact(pathlib.Path("last.pt"), "checkpoints")
    box.log_metrics({"loss": 0.5}, step=2)
else:                                   # url: the server, the kept records are sent
    if point == "send":
        MlflowClient.log_artifact = then_kill(MlflowClient.log_artifact)
    elif point == "rewrite":
        os.replace = then_kill(os.replace)
    elif point == "delete":
        shutil.rmtree = then_kill(shutil.rmtree)
    box.flush()
print("not killed")
"""


def dangling(run_id: str) -> list[str]:
    """The journal's lines that name a kept file which is not there."""
    journal = spool_dir(run_id) / "records.jsonl"
    lines = journal.read_text().splitlines() if journal.exists() else []
    return [line for line in lines if line.endswith("}") and not all(
        Path(json.loads(line)[key]).exists() for key in ("file", "image")
        if key in json.loads(line) and isinstance(json.loads(line)[key], str))]


def test_a_kill_at_any_point_of_the_cycle_loses_nothing_and_leaves_no_dangling_line(
        server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in PATIENT.items():
        monkeypatch.setenv(key, value)
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for point in ("write", "send", "rewrite", "delete"):
        run_id = MlflowClient(server.url).create_run("0").info.run_id
        for phase, url in (("keep", closed), ("send", server.url)):
            result = subprocess.run([sys.executable, "-c", KILLED, url, run_id, point, phase],
                                    env=env, cwd=tmp_path, capture_output=True, text=True,
                                    timeout=300)
            killed = result.returncode == -9
            assert killed == (point == "write") if phase == "keep" else killed, \
                (point, phase, result.returncode, result.stderr[-2000:])
            assert dangling(run_id) == [], (point, phase)
            if killed:
                break
        assert Outbox(run_id, server.url).flush(), point     # the next start sends the rest
        # A kill while the artifact was being kept: that call never returned (its file is
        # still where training wrote it); everything accepted before it is there.
        expected = [(1, 1.0)] if point == "write" else [(1, 1.0), (2, 0.5)]
        assert history(run_id, "loss") == expected, point
        if point != "write":
            sent = MlflowClient().download_artifacts(run_id, "checkpoints/last.pt",
                                                     str(tmp_path / point))
            assert Path(sent).read_bytes() == b"epoch 1", point
        assert not spool_dir(run_id).exists() or list(spool_dir(run_id).iterdir()) == [], \
            (point, list(spool_dir(run_id).iterdir()))
