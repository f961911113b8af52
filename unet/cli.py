"""How every step starts and fails: one line for a user's mistake, never a traceback."""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Callable

from unet import config
from unet.errors import UserError


def _interrupt(signum, frame) -> None:
    """Ctrl-C (SIGINT) or SIGTERM: raise KeyboardInterrupt once, then ignore both, so that the
    step can save and log its state. `mlflow run` answers Ctrl-C by sending its child a SIGTERM
    right after the SIGINT; without this the second signal would kill the step mid-save."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(step: Callable[[], None]) -> None:
    """Runs a step; a UserError prints `error: ...` and exits 2; an interruption (Ctrl-C,
    SIGTERM) prints `interrupted: ...` and exits 130, as shells do for Ctrl-C."""
    if not sys.stderr.isatty():   # progress bars in a log file are noise (tqdm: disable=None)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        step()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
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
            fields = list(dataclasses.fields(config.TuneConfig)) + fields
    else:
        fields = dataclasses.fields(config.STEPS[step])
    for name in dict.fromkeys(f.name for f in fields):
        parser.add_argument(f"--{name}", default=None)
    return {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
