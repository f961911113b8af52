"""Writes MLproject from params.yaml, the one place defaults are written.

    python -m tools.mlproject          # rewrite MLproject
    python -m tools.mlproject --check  # exit 1 if MLproject is not what params.yaml gives

Each entry point declares the parameters of its section of params.yaml with the same defaults;
`main` declares those of the steps it chains (not the run ids it fills in itself); `tune`
declares its own and main's, its own default winning where both have one (time_budget_min).
tests/test_config.py fails when the file is out of date.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_type_hints

from unet.config import pipeline as config
from unet.config.entries import TuneConfig

ROOT = Path(__file__).resolve().parent.parent
TYPES = {int: "int", float: "float"}
HEADER = """\
# GENERATED from params.yaml by `python -m tools.mlproject`: edit params.yaml, then rerun it.
# The pipeline's table of contents: one entry point per step (steps/<name>.py); `main` runs
# split_data -> train -> evaluate; `tune` searches train's settings with Optuna.
name: unet-mlflow

conda_env: conda.yaml

entry_points:
"""


def entry_point(step: str, names: dict[str, object], hints: dict) -> str:
    lines = [f"  {step}:", "    parameters:"]
    for name, default in names.items():
        kind = TYPES.get(hints[name], "string")
        lines.append(f'      {name}: {{type: {kind}, default: "{default}"}}')
    command = " ".join([f"python -m steps.{step}"] + [f"--{n} {{{n}}}" for n in names])
    lines.append(f'    command: "{command}"')
    return "\n".join(lines) + "\n"


def render(params: dict | None = None) -> str:
    params = params if params is not None else config.read_params()
    blocks = []
    for step, cls in config.STEPS.items():
        if step != "tune":
            blocks.append(entry_point(step, params[step], get_type_hints(cls)))
    main: dict[str, object] = {}
    hints: dict = {}
    for step in config.PIPELINE:
        hints.update(get_type_hints(config.STEPS[step]))
        main.update({k: v for k, v in params[step].items()
                     if not k.endswith("_run_id") and k not in main})
    blocks.append(entry_point("main", main, hints))
    tune = config.scalars(params["tune"])
    blocks.append(entry_point("tune", {**tune, **{k: v for k, v in main.items() if k not in tune}},
                              {**hints, **get_type_hints(TuneConfig)}))
    return HEADER + "\n".join(blocks)


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.mlproject", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true")
    text = render()
    path = ROOT / "MLproject"
    if parser.parse_args().check:
        sys.exit(0 if path.read_text() == text else 1)
    path.write_text(text)


if __name__ == "__main__":
    main()
