"""How every step starts and fails: one line for a user's mistake, never a traceback."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable

from unet.errors import UserError


def main(step: Callable[[], None]) -> None:
    """Runs a step; a UserError prints `error: ...` and exits 2."""
    if not sys.stderr.isatty():   # progress bars in a log file are noise (tqdm: disable=None)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        step()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
