"""Is the tracking server there, and will it ever take this record? What the outbox
(unet/tracking/outbox.py) asks of a failed request and of the server's /health."""
from __future__ import annotations

import base64
import os
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from mlflow.exceptions import MlflowException, RestException

from unet.secrets import mask

HEALTH_TIMEOUT = 2.0             # seconds for a probe of the server
TRANSIENT_STATUS = (408, 425, 429)   # 4xx answers that mean "later", not "never"
AUTH_STATUS = (401, 403)         # "not you, not now": an expired token, a proxy's policy
UP, DOWN, REFUSING = "up", "down", "refusing"


def _probe(uri: str, path: str) -> int | None:
    """The HTTP status of a GET of `path` on the server at `uri`, with the credentials MLflow
    would send (user and password from the URL or MLFLOW_TRACKING_USERNAME/PASSWORD, or
    MLFLOW_TRACKING_TOKEN), within HEALTH_TIMEOUT; None when nothing answered."""
    parts = urlsplit(uri)
    headers = {}
    user = parts.username or os.environ.get("MLFLOW_TRACKING_USERNAME")
    password = parts.password or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:          # urllib sends no credentials that sit in the URL itself
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + path, "", ""))
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=HEALTH_TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def server_answers(uri: str) -> bool:
    """True when the tracking server at `uri` (http/https) answers /health now. Any HTTP
    answer but 5xx or 429 counts: a proxy's 401 or 403 means it is there, not an outage."""
    status = _probe(uri, "/health")
    return status is not None and status < 500 and status not in TRANSIENT_STATUS


def api_state(uri: str, run_id: str) -> str:
    """Whether the server's API takes requests for `run_id` now, asked by one cheap
    authenticated call (runs/get; /health says "OK" while the database behind it is down):
    UP (it answered, even "no such run": the records then go to the dead letters), REFUSING
    (401/403: the credentials or a proxy's policy, maybe for a while) or DOWN (no answer,
    5xx, 408, 425, 429)."""
    status = _probe(uri, f"/api/2.0/mlflow/runs/get?run_id={run_id}")
    if status is None or status >= 500 or status in TRANSIENT_STATUS:
        return DOWN
    return REFUSING if status in AUTH_STATUS else UP


def http_status(error: Exception) -> int | None:
    """The HTTP status the server answered a failed request with; None when none came."""
    status = getattr(getattr(error, "response", None), "status_code", None)  # requests' error
    if status is None and isinstance(error, MlflowException):
        found = re.search(r"error code (\d{3}) !=", error.message)  # a non-JSON answer
        if found:
            return int(found[1])
        if isinstance(error, RestException):
            return error.get_http_status_code()
    return status


def permanent(error: Exception) -> bool:
    """True for a failure that no retry mends: a 4xx answer (not 408/425/429, nor 401/403,
    which an expired token or a proxy gives for a while), a file gone."""
    if isinstance(error, FileNotFoundError):
        return True
    status = http_status(error)
    return status is not None and 400 <= status < 500 and \
        status not in TRANSIENT_STATUS + AUTH_STATUS


def answer(error: Exception) -> str:
    """The server's answer to a failed request, as one short line (passwords masked)."""
    status = http_status(error)
    text = str(getattr(error, "message", error)).strip().splitlines() or [type(error).__name__]
    line = mask(text[0])[:200]
    return f"HTTP {status}: {line}" if status else line


def unreachable(error: BaseException) -> bool:
    """True for MLflow's way of saying the tracking server did not answer at all (after its
    own retries): no HTTP status, a connection or timeout failure."""
    import requests
    if isinstance(error, (requests.ConnectionError, requests.Timeout, ConnectionError)):
        return True
    message = getattr(error, "message", "")
    return isinstance(error, MlflowException) and http_status(error) is None and (
        "failed with exception" in message or "failed with timeout" in message)


def cannot_reach(uri: str) -> str:
    """The one line for a tracking server that does not answer (its password masked)."""
    return (f"the tracking server {mask(uri)} cannot be reached (MLFLOW_TRACKING_URI): start "
            f"it, check the address, or unset MLFLOW_TRACKING_URI for the local store")
