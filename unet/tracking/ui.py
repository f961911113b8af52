"""The MLflow UI on the project's store, on this machine or through an ngrok tunnel (a remote
notebook such as Colab, as in the seed tutorial)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from unet.errors import UserError

TOKEN_ENV = "NGROK_AUTHTOKEN"   # read from the environment only: never a parameter, never logged
AUTH_ENV = "NGROK_BASIC_AUTH"   # user:password ngrok asks visitors for; environment only too
INSTALL_NGROK = 'pip install -e ".[ngrok]"   (or: pip install pyngrok)'


class Tunnel:
    """An ngrok tunnel to a local port (pyngrok), open until close(). The MLflow UI has no
    login: the tunnel asks visitors for NGROK_BASIC_AUTH's user and password, and without one
    it does not open unless `public` (the user said that anyone may see the UI)."""

    def __init__(self, port: int, public: bool = False):
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise UserError(f"tunnel=ngrok needs your ngrok auth token in the environment: "
                            f"export {TOKEN_ENV}=... (https://dashboard.ngrok.com/get-started/"
                            f"your-authtoken)")
        try:
            from pyngrok import conf, ngrok
        except ImportError:
            raise UserError(f"tunnel=ngrok needs the optional package pyngrok: {INSTALL_NGROK}") from None
        auth = os.environ.get(AUTH_ENV, "").strip()
        if not auth and not public:
            raise UserError(f"tunnel=ngrok would put the MLflow UI, which has no login, on a "
                            f"public URL: export {AUTH_ENV}=user:password (ngrok then asks "
                            f"every visitor for it), or pass -P public=true if anyone may see "
                            f"your runs and models")
        if auth and (":" not in auth or len(auth.split(":", 1)[1]) < 8):
            raise UserError(f"{AUTH_ENV}: give user:password, the password at least 8 "
                            f"characters (ngrok's rule)")
        self._ngrok = ngrok
        # No auth_token: pyngrok would put it on the ngrok agent's command line (`--authtoken
        # TOKEN`, pyngrok 9.1 process._start_process), which `ps` shows to every user of the
        # machine. The agent reads NGROK_AUTHTOKEN from the environment it inherits.
        self._config = conf.PyngrokConfig()
        options = {"basic_auth": [auth]} if auth else {}
        self.public_url = ngrok.connect(str(port), "http", pyngrok_config=self._config,
                                        **options).public_url

    @property
    def host(self) -> str:
        return urlparse(self.public_url).hostname

    def close(self) -> None:
        self._ngrok.kill(self._config)


def server_command(store_uri: str, host: str, port: int, public_host: str | None = None
                   ) -> list[str]:
    """`mlflow server` on the store with one worker (the UI needs no more); a public host (the
    tunnel's) is added to the hosts and origins MLflow accepts, which are local ones by default."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
           "--host", host, "--port", str(port), "--workers", "1"]
    if public_host:
        cmd += ["--allowed-hosts", f"localhost:*,127.0.0.1:*,{public_host}",
                "--cors-allowed-origins", f"https://{public_host}"]
    return cmd


def start_server(cmd: list[str]) -> subprocess.Popen:
    """Starts the server in its own process group: `mlflow server` runs uvicorn as a child,
    and stop_server must end both."""
    return subprocess.Popen(cmd, start_new_session=True)


def stop_server(server: subprocess.Popen, timeout: float = 20) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def wait_until_up(server: subprocess.Popen, url: str, timeout: float = 120) -> None:
    """Polls url until it answers 200; UserError if the server exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise UserError(f"the MLflow server exited (code {server.returncode}) before it "
                            f"answered at {url}; its error is printed above (port in use? "
                            f"pass -P port=...)")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise UserError(f"the MLflow server did not answer at {url} within {timeout:.0f} s")


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to host."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{port}"
