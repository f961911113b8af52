"""How every step starts and fails: one line for a user's mistake, never a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import traceback
from collections.abc import Callable

from unet.config import pipeline as config
from unet.config.entries import TuneConfig
from unet.errors import UserError
from unet.secrets import mask, mask_logging


def _interrupt(signum, frame) -> None:
    """Ctrl-C (SIGINT) or SIGTERM: raise KeyboardInterrupt once, then ignore both, so that the
    step can save and log its state. `mlflow run` answers Ctrl-C by sending its child a SIGTERM
    right after the SIGINT; without this the second signal would kill the step mid-save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def _masked_traceback(kind, value, tb) -> None:
    """sys.excepthook: the traceback as Python prints it, passwords in URLs masked."""
    text = "".join(traceback.format_exception(kind, value, tb))
    sys.stderr.write(mask(text))


def main(step: Callable[[], None]) -> None:
    """Runs a step; a UserError prints `error: ...` and exits 2; an interruption (Ctrl-C,
    SIGTERM) prints `interrupted: ...` and exits 130, as shells do for Ctrl-C. A tracking
    server that does not answer is one line too (asked first: MLflow itself would retry for
    two minutes and then print the URI, password and all); nothing printed or logged shows a
    password (unet.secrets.mask_logging)."""
    if not sys.stderr.isatty():   # progress bars in a log file are noise (tqdm: disable=None)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if mask(uri) != uri:   # MLflow prints "View run ... at: <tracking URI>" as runs end
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    sys.excepthook = _masked_traceback
    mask_logging()
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if uri.startswith(("http://", "https://")):
            # Lazily: the core imports without MLflow; every step talks to the tracking store.
            from unet.tracking.failures import cannot_reach, server_answers, unreachable
            if not server_answers(uri):
                raise UserError(cannot_reach(uri))
        step()
    except UserError as e:
        print(f"error: {mask(str(e))}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if not (uri.startswith(("http://", "https://")) and unreachable(e)):
            raise
        # Ending the run with the server away fails too; a UserError before it says more.
        earlier = e.__context__
        while earlier is not None and not isinstance(earlier, UserError):
            earlier = earlier.__context__
        print(f"error: {mask(str(earlier)) if earlier else cannot_reach(uri)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f"interrupted: {e or 'stopped by a signal'}", file=sys.stderr)
        sys.exit(130)


def overrides(step: str, argv: list[str] | None = None) -> dict[str, str]:
    """Parses `--name value` for every field of `step`'s config (for "main": of the PIPELINE
    steps but the run ids that chain them; "tune": those and its own); returns only those given."""
    parser = argparse.ArgumentParser(prog=f"steps.{step}")
    if step in ("main", "tune"):   # tune: its own, then main's (the data, train, evaluate)
        fields = [f for name in config.PIPELINE for f in dataclasses.fields(config.STEPS[name])
                  if not f.name.endswith("_run_id")]
        if step == "tune":
            fields = list(dataclasses.fields(TuneConfig)) + fields
    else:
        fields = dataclasses.fields(config.STEPS[step])
    for name in dict.fromkeys(f.name for f in fields):
        parser.add_argument(f"--{name}", default=None)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
