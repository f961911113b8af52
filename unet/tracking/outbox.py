"""Per-epoch logging that survives a tracking server going away, for any length of time.

MLflow's HTTP client retries a failed request for about two minutes and then raises, which
would end a training run that has hours of work in it. The train loop logs through an Outbox
instead: while the server answers, records go straight to it; once a record cannot be sent,
it and every record after it are kept on local disk, in order (a JSON line each, files copied
beside), and training goes on. Before each later record the Outbox asks the server's API
(failures.api_state: one authenticated runs/get within 2 seconds, not MLflow's two-minute
retry; /health says "OK" while the database behind it is down) and, once it takes requests,
sends what was kept, in the order it was kept, then carries on sending directly. Local stores
(sqlite, files) have no outages: records go straight through. Of the checkpoint (an artifact
logged every round to the same path) only the newest is kept: a long outage costs one file.

Failures:
- Outage (no answer, a timeout, HTTP 5xx, 408, 425, 429, and the API probe says so too): the
  record and all after it wait.
- One record failing while the API answers (a 5xx for this record alone, a proxy's 403 for its
  body): that record is tried again at later flushes, the others go on; after GIVE_UP_S of
  failing (and 3 tries) it goes to the dead letters.
- 401/403 for everything (an expired token): records wait as in an outage for GIVE_UP_S, then
  go to the dead letters.
- 413 (a proxy's body limit): a metrics record is sent in halves; a file too large goes to the
  dead letters with one line.
- Any other 4xx (400 for a deleted run), a kept file that is gone: never sendable, so to the
  dead letters at once.
The dead letters (`dead.jsonl` beside the spool) are named on stderr, one line each with the
server's answer; `python -m unet.tracking.outbox RUN_ID` sends them again with what is kept.

Crash safety (kill -9 at any point): a file is copied before its journal line is written, a
record leaves the journal (an atomic rewrite) only after it was sent, and its file is deleted
only after that; files no journal line names are swept on the next flush. A crash loses no
kept record (one may be sent twice) and never leaves a journal line without its file.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from unet.atomic import write_atomically
from unet.errors import UserError
from unet.secrets import mask
from unet.tracking.failures import (
    REFUSING,
    UP,
    answer,
    api_state,
    http_status,
    permanent,
)

SPOOL = Path("checkpoints")      # <run id>/outbox/: beside the run's local checkpoint
SEND_LATER = "python -m unet.tracking.outbox"
GIVE_UP_S = 600                  # a record refused or failing this long goes to the dead letters
MIN_TRIES = 3                    # ... once tried at least this many times


def spool_dir(run_id: str) -> Path:
    return SPOOL / run_id / "outbox"


class Outbox:
    """Metrics, files and images of one run, sent now or kept until the server is back."""

    def __init__(self, run_id: str, tracking_uri: str | None = None,
                 give_up_s: float = GIVE_UP_S):
        self.run_id = run_id
        self.uri = tracking_uri or mlflow.get_tracking_uri()
        self.remote = self.uri.startswith(("http://", "https://"))
        self.dir = spool_dir(run_id)
        self.journal = self.dir / "records.jsonl"
        self.dead = self.dir / "dead.jsonl"        # refused: kept, sent again by main()
        self.give_up_s = give_up_s
        self.down_since: float | None = None
        self.refused_since: float | None = None   # 401/403 to the API probe since then
        self.blocked = False       # the last flush stopped at an outage or a refusal

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
        return len(self._records(self.journal))

    def flush(self) -> bool:
        """Sends every kept record in order if the server's API takes requests (module
        docstring: a record failing alone waits for its next try or goes to the dead letters);
        True when none is left."""
        records = self._records(self.journal)
        self._sweep()
        self.blocked = False
        if not records:
            return True
        if self.remote and not self._available():
            self.blocked = True
            return False
        sent, refusals, waiting = 0, 0, []
        for n, record in enumerate(records):
            try:
                self._send_or_split(record)
                sent += 1
                done = True
            except Exception as e:     # noqa: BLE001 - outages show up as many error types
                if not self.remote:
                    raise
                if permanent(e) or self._gave_up(record):
                    self._refuse(record, e, copy=False)
                    refusals, done = refusals + 1, False
                elif not self._available():      # an outage: this record and the rest wait
                    self._rewrite(waiting + records[n:])
                    self.blocked = True
                    return False
                else:                            # this record alone: tried again later
                    waiting.append(self._tried(record))
                    done = False
            self._rewrite(waiting + records[n + 1:])   # sent: never sent again after a crash
            if done:
                self._drop_files(record)     # only now: a journal line always has its file
        print(f"tracking server {mask(self.uri)} is back: sent {sent} kept record(s) to run "
              f"{self.run_id}"
              + (f" ({refusals} refused, in {self.dead})" if refusals else "")
              + (f"; {len(waiting)} failing alone, tried again later" if waiting else ""),
              flush=True)
        self.down_since = None
        return not waiting

    def requeue_dead(self) -> int:
        """Moves the dead letters back to the records to send (after the journal's: a crash
        between sends one twice at worst); how many."""
        dead = self._records(self.dead)
        for record in dead:
            self._append(self.journal, {k: v for k, v in record.items()
                                        if k not in ("dead", "tries", "failing_since")})
        self.dead.unlink(missing_ok=True)
        return len(dead)

    def _available(self) -> bool:
        """Whether the API takes requests now (failures.api_state). Refused (401/403) for
        more than give_up_s: the kept records go to the dead letters, and so does what comes."""
        state = api_state(self.uri, self.run_id)
        if state != REFUSING:
            self.refused_since = None
            return state == UP
        now = time.monotonic()
        self.refused_since = self.refused_since or now
        if now - self.refused_since >= self.give_up_s:
            records = self._records(self.journal)
            for record in records:
                self._append(self.dead, {**record, "dead": "HTTP 401/403 for "
                                         f"{(now - self.refused_since) / 60:.0f} min"})
            self.journal.unlink(missing_ok=True)
            if records:
                print(f"outbox: the tracking server {mask(self.uri)} refused run "
                      f"{self.run_id}'s records (HTTP 401/403) for {self.give_up_s / 60:g} "
                      f"min: {len(records)} kept in {self.dead}; `{SEND_LATER} "
                      f"{self.run_id}` sends them when it takes them again",
                      file=sys.stderr, flush=True)
        return False

    def _gave_up(self, record: dict) -> bool:
        """Whether a record failing alone has failed long and often enough to give up."""
        return self.give_up_s == 0 or (
            record.get("tries", 0) + 1 >= MIN_TRIES
            and time.time() - record.get("failing_since", time.time()) >= self.give_up_s)

    @staticmethod
    def _tried(record: dict) -> dict:
        return {**record, "tries": record.get("tries", 0) + 1,
                "failing_since": record.get("failing_since", time.time())}

    def _send_or_split(self, record: dict) -> None:
        """Sends a record; a metrics record answered 413 (a proxy's body limit) is sent in
        halves, down to single metrics."""
        try:
            self._send(record)
        except Exception as e:
            metrics = record.get("metrics") or {}
            if http_status(e) != 413 or len(metrics) < 2:
                raise
            keys = list(metrics)
            for half in (keys[:len(keys) // 2], keys[len(keys) // 2:]):
                self._send_or_split({**record, "metrics": {k: metrics[k] for k in half}})

    def wait_until_sent(self, limit_s: float, poll_seconds: float = 5.0) -> None:
        """Blocks until every kept record is sent (what follows needs the server: the model,
        the run's end), for at most limit_s seconds; then UserError saying how to send the
        rest later. Says once that it waits, and how to stop without losing anything."""
        deadline, told = time.monotonic() + limit_s, False
        while not self.flush():
            if time.monotonic() >= deadline:
                raise UserError(
                    f"the tracking server {mask(self.uri)} did not answer within "
                    f"{limit_s / 60:g} min: {self.pending} record(s) of run {self.run_id} "
                    f"are kept in {self.dir.resolve()} and the model is not logged; when it "
                    f"is back, `{SEND_LATER} {self.run_id}` (from {Path.cwd()}) sends them, "
                    f"and -P resume_from={self.run_id} logs the model from the checkpoint")
            if not told:
                print(f"waiting up to {limit_s / 60:g} min for the tracking server "
                      f"{mask(self.uri)} to send {self.pending} kept record(s) and log the "
                      f"model; Ctrl-C stops: the checkpoint stays on disk and "
                      f"-P resume_from={self.run_id} continues", file=sys.stderr, flush=True)
                told = True
            time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))

    def _put(self, record: dict) -> None:
        # Order: nothing goes straight out while older records wait on disk (but those failing
        # alone). Asking the API first keeps an outage from costing MLflow's two-minute retry
        # on every record.
        if self.remote:
            self.flush()
            if self.blocked or not self._available():
                self._keep(record, self.journal)
                return
        try:
            self._send_or_split(record)
        except Exception as e:         # noqa: BLE001 - an outage shows up as many error types
            if not self.remote:
                raise                  # a local store has no outages: a real error
            if permanent(e) or (self.give_up_s == 0 and
                                api_state(self.uri, self.run_id) == UP):
                self._refuse(record, e, copy=True)
            else:                      # an outage, a refusal or this record alone: kept
                self._keep(record, self.journal, e)

    def _refuse(self, record: dict, error: Exception, copy: bool) -> None:
        """A record the server will never take: into the dead-letter file, one line said."""
        if copy:
            self._keep(record, self.dead, error, quiet=True)
        else:                          # its kept file stays, named by the dead-letter line
            self._append(self.dead, {**record, "dead": answer(error)})
        what = f"{record['kind']} record" + (f" of step {record['step']}" if "step" in record
                                             else f" {Path(record['file']).name}")
        print(f"outbox: the tracking server refused the {what} of run {self.run_id} "
              f"({answer(error)}); kept in {self.dead}, the other records go on",
              file=sys.stderr, flush=True)

    def _keep(self, record: dict, journal: Path, error: Exception | None = None,
              quiet: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # The file first, then its line: a crash between leaves a file no line names (swept).
        if record["kind"] == "artifact":     # the file may change before it is sent: a copy,
            copy = self.dir / uuid.uuid4().hex / Path(record["file"]).name   # same name
            copy.parent.mkdir()
            shutil.copy2(record["file"], copy)
            record = {**record, "file": str(copy), "owned": True}
        elif record["kind"] == "image":
            copy = self.dir / f"{uuid.uuid4().hex}.npy"
            np.save(copy, record["image"])
            record = {**record, "image": str(copy)}
        if journal == self.dead:
            record = {**record, "dead": answer(error) if error else "refused"}
        self._append(journal, record)
        if record["kind"] == "artifact" and journal == self.journal:
            self._keep_newest(record)
        if self.down_since is None and not quiet:
            self.down_since = time.monotonic()
            why = f" ({type(error).__name__})" if error is not None else ""
            print(f"tracking server {mask(self.uri)} unreachable{why}: training goes on; "
                  f"metrics and artifacts are kept in {self.dir} and sent when it is back",
                  file=sys.stderr, flush=True)

    def _keep_newest(self, record: dict) -> None:
        """Drops the kept records of the same file at the same artifact path as `record` (a
        checkpoint logged each round): only the newest would remain after sending them all.
        Its line is written before: a crash between keeps both, never neither."""
        same = (record["artifact_path"], Path(record["file"]).name)
        records = self._records(self.journal)
        older = [r for r in records[:-1] if r["kind"] == "artifact"
                 and (r["artifact_path"], Path(r["file"]).name) == same]
        if older:
            self._rewrite([r for r in records if r not in older])
            for r in older:
                self._drop_files(r)

    @staticmethod
    def _append(journal: Path, record: dict) -> None:
        """One line per record, flushed to disk: a crash keeps it or leaves a torn tail,
        which is cut off first (else the next line would be glued to it)."""
        journal.parent.mkdir(parents=True, exist_ok=True)
        with open(journal, "ab+") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.seek(0)
                    data = f.read()
                    f.truncate(data.rfind(b"\n") + 1)
            f.write((json.dumps(record) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())

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

    @staticmethod
    def _drop_files(record: dict) -> None:
        if record.get("owned"):
            shutil.rmtree(Path(record["file"]).parent, ignore_errors=True)
        elif record["kind"] == "image" and isinstance(record["image"], str):
            Path(record["image"]).unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Deletes kept files that no journal line names (a crash between writing a file and
        its line, or between a record leaving the journal and its file being deleted)."""
        if not self.dir.is_dir():
            return
        named = {Path(r.get("file") or r.get("image") or "").resolve()
                 for journal in (self.journal, self.dead) for r in self._records(journal)}
        for entry in self.dir.iterdir():
            if entry.suffix in (".jsonl", ".tmp"):
                continue
            inside = {entry.resolve()} | ({p.resolve() for p in entry.iterdir()}
                                          if entry.is_dir() else set())
            if not inside & named:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    @staticmethod
    def _records(journal: Path) -> list[dict]:
        if not journal.exists():
            return []
        records = []
        for line in journal.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:     # a line torn by a crash mid-write: never sent
                break
        return records

    def _rewrite(self, records: list[dict]) -> None:
        if not records:
            self.journal.unlink(missing_ok=True)
            return
        write_atomically(self.journal,
                         lambda f: f.write("".join(json.dumps(r) + "\n" for r in records).encode()))


def main(argv: list[str] | None = None) -> None:
    """`python -m unet.tracking.outbox RUN_ID`: sends what a run kept through an outage (run
    it from the folder training ran in, with MLFLOW_TRACKING_URI set as it was)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not spool_dir(args[0]).is_dir():
        raise UserError(f"usage: {SEND_LATER} RUN_ID, in the folder that holds "
                        f"{spool_dir(args[0] if args else 'RUN_ID')}")
    outbox = Outbox(args[0], give_up_s=0)       # refused again: back to the dead letters
    again = outbox.requeue_dead()
    if again:
        print(f"run {args[0]}: {again} refused record(s) from {outbox.dead.name} sent again")
    if not outbox.flush():
        raise UserError(f"the tracking server {mask(outbox.uri)} cannot be reached: "
                        f"{outbox.pending} record(s) still kept in {outbox.dir}")
    left = len(outbox._records(outbox.dead))
    print(f"run {args[0]}: nothing left to send" if not left else
          f"run {args[0]}: {left} record(s) refused again, kept in {outbox.dead}")


if __name__ == "__main__":
    from unet.tracking import cli
    cli.main(main)
