"""Secrets stay secret: a tracking URI or storage URL with a password is never printed, and
the ngrok tunnel does not open without a login unless the user says the UI may be public."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT, free_port

from unet.secrets import mask, mask_logging

# The least each entry point needs to get as far as the tracking server.
ENTRY_POINTS = {
    "split_data": [], "train": ["--split_run_id", "0123"], "evaluate": ["--train_run_id", "0123"],
    "predict": ["--input_dir", "/tmp", "--output_dir", "/tmp/unet-secret-test"],
    "main": [], "tune": [], "ui": [],
}


def test_mask_hides_passwords_in_any_url():
    assert mask("http://u:secret@host:5000/x and postgresql://me:p%40ss@db/optuna") == \
        "http://u:***@host:5000/x and postgresql://me:***@db/optuna"
    assert mask("postgresql://nobody@db/optuna") == "postgresql://nobody@db/optuna"
    assert mask("sqlite:////abs/mlflow.db") == "sqlite:////abs/mlflow.db"


@pytest.mark.parametrize("text,masked", [
    ("http://u:p@ss@host:5000/x", "http://u:***@host:5000/x"),          # a raw @ in the password
    ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),      # no user, a password
    ("https://ghp_16C7e42F292c6912E7710c838347Ae178B4a@github.com/o/r.git",
     "https://***@github.com/o/r.git"),                                  # a token as the user
    ("https://host/api?user=me&password=hunter2&x=1", "https://host/api?user=me&password=***&x=1"),
    ("postgresql://db/optuna?sslmode=require&token=abc", "postgresql://db/optuna?sslmode=require&token=***"),
    ("a@b.c and mailto:me@example.org", "a@b.c and mailto:me@example.org"),   # no URL user info
    ("http://alice@host/x", "http://alice@host/x"),                       # a user name alone
])
def test_mask_hides_the_url_secrets_that_are_not_a_plain_password(text, masked):
    assert mask(text) == masked



def test_log_records_of_any_logger_and_thread_are_masked(caplog):
    """What MLflow's system-metrics thread logs when the server goes away: its URL."""
    import logging
    import threading
    make = logging.getLogRecordFactory()
    try:
        mask_logging()
        mask_logging()                              # once is enough: not masked twice over
        logger = logging.getLogger("mlflow.system_metrics.system_metrics_monitor")
        thread = threading.Thread(target=lambda: logger.warning(
            "Failed to log system metrics: %s", "https://u:hunter2@host/api/2.0/x"))
        thread.start()
        thread.join()
        logging.getLogger().error("to %s", "redis://:s3cret@cache/0")
    finally:
        logging.setLogRecordFactory(make)
    assert "hunter2" not in caplog.text and "s3cret" not in caplog.text
    assert "Failed to log system metrics: https://u:***@host/api/2.0/x" in caplog.text
    assert "to redis://:***@cache/0" in caplog.text

@pytest.mark.parametrize("step", sorted(ENTRY_POINTS))
def test_an_unreachable_server_is_one_line_without_the_password(step):
    uri = f"http://u:secret@127.0.0.1:{free_port()}"              # nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run([sys.executable, "-m", f"steps.{step}", *ENTRY_POINTS[step]],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "secret" not in out, out[-3000:]
    assert out.strip().splitlines() == [
        f"error: the tracking server {uri.replace(':secret@', ':***@')} cannot be reached "
        f"(MLFLOW_TRACKING_URI): start it, check the address, or unset MLFLOW_TRACKING_URI "
        f"for the local store"], out[-3000:]


def test_the_storage_url_comes_from_the_environment_and_is_masked(tracking_uri):
    env = {**os.environ, "UNET_TUNE_STORAGE": "postgresql://nobody:secret@127.0.0.1:1/optuna"}
    result = subprocess.run([sys.executable, "-m", "steps.tune"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "secret" not in result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: parameter storage=postgresql://nobody:***@127.0.0.1:1/"
                           "optuna: cannot open it")


# steps.ui with a stand-in pyngrok whose connect would open the tunnel.
FAKE_NGROK = """
import os, runpy, sys, types
pyngrok = types.ModuleType("pyngrok")
pyngrok.conf = types.SimpleNamespace(PyngrokConfig=lambda **kw: kw)
def connect(addr, proto, pyngrok_config=None, **options):
    # pyngrok adds `--authtoken <token>` to the agent's command line when the config has one
    assert not (pyngrok_config or {}).get("auth_token"), "the token would be on the command line"
    assert os.environ["NGROK_AUTHTOKEN"], "the agent inherits it from the environment"
    print("TUNNEL OPENED", options)
    raise SystemExit(3)
pyngrok.ngrok = types.SimpleNamespace(connect=connect, kill=lambda config: None)
sys.modules["pyngrok"] = pyngrok
sys.argv = ["steps.ui", "--tunnel", "ngrok", "--port", sys.argv[1], *sys.argv[2:]]
runpy.run_module("steps.ui", run_name="__main__")
"""


def test_the_ngrok_tunnel_needs_a_login_or_an_explicit_public(tracking_uri):
    env = {**os.environ, "NGROK_AUTHTOKEN": "a-token"}
    env.pop("NGROK_BASIC_AUTH", None)

    def ui(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", FAKE_NGROK, str(free_port()), *args],
                              cwd=ROOT, env={**env, **extra}, capture_output=True, text=True,
                              timeout=300)
    refused = ui()
    assert refused.returncode == 2 and "TUNNEL OPENED" not in refused.stdout
    assert refused.stderr.strip().splitlines() == [
        "error: tunnel=ngrok would put the MLflow UI, which has no login, on a public URL: "
        "export NGROK_BASIC_AUTH=user:password (ngrok then asks every visitor for it), or pass "
        "-P public=true if anyone may see your runs and models"]
    with_login = ui(NGROK_BASIC_AUTH="me:a-long-password")
    assert "TUNNEL OPENED {'basic_auth': ['me:a-long-password']}" in with_login.stdout
    public = ui("--public", "true")
    assert "TUNNEL OPENED {}" in public.stdout


def test_a_run_that_cannot_be_ended_keeps_the_steps_own_line(monkeypatch, capsys):
    """Training that gave up waiting for the server raises its UserError (how to send the
    kept records later); MLflow then fails to end the run on the same absent server. The
    user gets the step's line, not the second failure."""
    from mlflow.exceptions import MlflowException

    from unet.errors import UserError
    from unet.tracking import cli
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:secret@127.0.0.1:9")
    monkeypatch.setattr("unet.tracking.failures.server_answers", lambda uri: True)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)

    def step():
        try:
            raise UserError("3 record(s) kept: python -m unet.tracking.outbox r1 sends them")
        finally:                                    # what mlflow.start_run's exit then does
            raise MlflowException("API request to http://u:secret@127.0.0.1:9/api/2.0/mlflow/"
                                  "runs/update failed with exception Max retries exceeded")
    with pytest.raises(SystemExit) as ended:
        cli.main(step)
    assert ended.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: 3 record(s) kept: python -m unet.tracking.outbox r1 sends them"]
