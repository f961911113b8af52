"""Per-epoch logging that survives a tracking server going away, for any length of time.

MLflow's HTTP client retries a failed request for about two minutes and then raises, which
would end a training run that has hours of work in it. The train loop logs through an Outbox
instead: while the server answers, records go straight to it; once a record cannot be sent,
it and every record after it are kept on local disk, in order (a JSON line each, files copied
beside), and training goes on. Before each later record the Outbox asks the server's /health
(a 2-second request, not the two-minute retry) and, once it answers, sends what was kept, in
the order it was kept, then carries on sending directly. A record is removed from the spool
only after it was sent, so a crash loses none and a resume (`flush` of the old run's spool)
sends them into the run they belong to. Local stores (sqlite, files) have no outages: records
go straight through.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

SPOOL = Path("checkpoints")      # <run id>/outbox/: beside the run's local checkpoint
HEALTH_TIMEOUT = 2.0             # seconds for the /health probe


def spool_dir(run_id: str) -> Path:
    return SPOOL / run_id / "outbox"


def server_answers(uri: str) -> bool:
    """True when the tracking server at `uri` (http/https) answers /health now."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT) as r:
            return r.status == 200
    except OSError:
        return False


class Outbox:
    """Metrics, files and images of one run, sent now or kept until the server is back."""

    def __init__(self, run_id: str, tracking_uri: str | None = None):
        self.run_id = run_id
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.remote = self.uri.startswith(("http://", "https://"))
        self.dir = spool_dir(run_id)
        self.journal = self.dir / "records.jsonl"
        self.down_since: float | None = None

    # What the train loop logs.
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._put({"kind": "metrics", "metrics": metrics, "step": step,
                   "timestamp": int(time.time() * 1000)})

    def log_artifact(self, path: Path, artifact_path: str) -> None:
        self._put({"kind": "artifact", "file": str(path), "artifact_path": artifact_path})

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self._put({"kind": "image", "image": image, "key": key, "step": step,
                   "timestamp": int(time.time() * 1000)})

    @property
    def pending(self) -> int:
        return len(self._records())

    def flush(self) -> bool:
        """Sends every kept record in order if the server answers; True when none is left."""
        records = self._records()
        if not records:
            return True
        if self.remote and not server_answers(self.uri):
            return False
        for n, record in enumerate(records):
            try:
                self._send(record)
            except Exception:          # noqa: BLE001 - any failure: keep the rest for later
                return False
            self._rewrite(records[n + 1:])   # sent: never sent again, even after a crash
        print(f"tracking server {self.uri} is back: sent {len(records)} kept record(s) to run "
              f"{self.run_id}", flush=True)
        self.down_since = None
        return True

    def wait_until_sent(self, poll_seconds: float = 5.0) -> None:
        """Blocks until every kept record is sent (what follows needs the server: the model,
        the run's end). Says once that it waits, and how to stop without losing anything."""
        told = False
        while not self.flush():
            if not told:
                print(f"waiting for the tracking server {self.uri} to send {self.pending} kept "
                      f"record(s) and log the model; Ctrl-C stops: the checkpoint stays on "
                      f"disk and -P resume_from={self.run_id} continues", file=sys.stderr,
                      flush=True)
                told = True
            time.sleep(poll_seconds)

    def _put(self, record: dict) -> None:
        # Order: nothing goes straight out while older records wait on disk. Asking /health
        # first keeps an outage from costing MLflow's two-minute retry on every record.
        if self.remote and not (self.flush() and server_answers(self.uri)):
            self._keep(record)
            return
        try:
            self._send(record)
        except Exception as e:         # noqa: BLE001 - an outage shows up as many error types
            if not self.remote or server_answers(self.uri):
                raise                  # the server is there: a real error, not an outage
            self._keep(record, e)

    def _keep(self, record: dict, error: Exception | None = None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if record["kind"] == "artifact":     # the file may change before it is sent: a copy,
            copy = self.dir / uuid.uuid4().hex / Path(record["file"]).name   # same name
            copy.parent.mkdir()
            shutil.copy2(record["file"], copy)
            record = {**record, "file": str(copy), "owned": True}
        elif record["kind"] == "image":
            copy = self.dir / f"{uuid.uuid4().hex}.npy"
            np.save(copy, record["image"])
            record = {**record, "image": str(copy)}
        with open(self.journal, "a") as f:   # one line per record, flushed: a crash keeps it
            f.write(json.dumps(record) + "\n")
            f.flush()
        if self.down_since is None:
            self.down_since = time.monotonic()
            why = f" ({type(error).__name__})" if error is not None else ""
            print(f"tracking server {self.uri} unreachable{why}: training goes on; metrics "
                  f"and artifacts are kept in {self.dir} and sent when it is back",
                  file=sys.stderr, flush=True)

    def _send(self, record: dict) -> None:
        client = MlflowClient(self.uri)
        if record["kind"] == "metrics":
            metrics = [mlflow.entities.Metric(k, v, record["timestamp"], record["step"])
                       for k, v in record["metrics"].items()]
            client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        elif record["kind"] == "artifact":
            client.log_artifact(self.run_id, record["file"], record["artifact_path"])
        else:
            image = record["image"]
            image = np.load(image) if isinstance(image, str) else image
            client.log_image(self.run_id, image, key=record["key"], step=record["step"],
                             timestamp=record["timestamp"], synchronous=True)
        if record.get("owned"):
            shutil.rmtree(Path(record["file"]).parent, ignore_errors=True)
        elif record["kind"] == "image" and isinstance(record["image"], str):
            Path(record["image"]).unlink(missing_ok=True)

    def _records(self) -> list[dict]:
        if not self.journal.exists():
            return []
        lines = self.journal.read_text().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:     # a line torn by a crash mid-write: never sent
                break
        return records

    def _rewrite(self, records: list[dict]) -> None:
        if not records:
            self.journal.unlink(missing_ok=True)
            return
        tmp = self.journal.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        tmp.replace(self.journal)
