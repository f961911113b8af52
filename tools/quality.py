"""Time-to-quality benchmark: the pipeline's defaults against the seed tutorial's settings on
folders the defaults were not tuned on, each run as a user would run it.

    python -m tools.quality OUT [--carvana 64,320,1600] [--cells 96] [--json FILE]

For each folder (generated into OUT/data once, see tools/datasets.py) and each setting
(`plan`: only the layout parameters; `seed`: the same plus `-P preset=seed`) it runs
`mlflow run <project> --env-manager local` into OUT/mlflow.db, then reads the test Dice from the
runs and prints one table: test Dice and wall time side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from tools import datasets

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"plan": {}, "seed": {"preset": "seed"}}


def generated(path: Path, make) -> Path:
    """`path`, made by make(folder) into a temporary folder renamed when complete (an
    interrupted generation is made again, never used half-written)."""
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make(partial)
        partial.rename(path)
    return path


def folders(out: Path, carvana: list[int], cells: int, seed: int) -> dict[str, tuple[Path, dict]]:
    """name -> (folder, layout parameters); generated where missing."""
    made = {}
    for n in carvana:
        path = generated(out / "data" / f"carvana-{n}",
                         lambda folder: datasets.carvana_folder(folder, n, seed))
        made[f"carvana-{n}"] = (path, datasets.CARVANA_LAYOUT)
    if cells:
        path = generated(out / "data" / f"cells-{cells}",
                         lambda folder: datasets.cells_folder(folder, cells, seed))
        made[f"cells-{cells}"] = (path, datasets.CELLS_LAYOUT)
    return made


def run(name: str, folder: Path, layout: dict, setting: str, store: str, log: Path) -> dict:
    params = {"data_dir": str(folder), **layout, **SETTINGS[setting],
              "model_name": f"{name}-{setting}"}
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local"]
    # `mlflow run` starts the steps with the `python` on PATH: this interpreter's.
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"folder": name, "setting": setting, "error": f"exit {done.returncode}, see {log}"}
    import mlflow
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    main = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.step = 'main'",
                              order_by=["attributes.start_time DESC"], max_results=1)[0]
    train = client.get_run(main.data.tags["train_run_id"])
    evaluate = client.get_run(main.data.tags["evaluate_run_id"])
    m = evaluate.data.metrics
    return {"folder": name, "setting": setting, "test_dice": m["test_dice"],
            "floor_dice": m["floor_dice"], "wall_seconds": wall,
            "train_seconds": (train.info.end_time - train.info.start_time) / 1000,
            "best_val_dice": train.data.metrics["best_val_dice"],
            "epochs_run": int(train.data.metrics["best_epoch"]),
            "tta": train.data.tags.get("tta"), "alias": evaluate.data.tags.get("model_alias"),
            "train_images": int(train.data.params.get("plan.train_images", 0))}


def table(results: list[dict]) -> str:
    lines = ["| folder | train images | setting | test Dice | wall (whole pipeline) | train step | alias |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['folder']} | | {r['setting']} | {r['error']} | | | |")
            continue
        lines.append(f"| {r['folder']} | {r['train_images']} | {r['setting']} | "
                     f"{r['test_dice']:.4f} | {r['wall_seconds'] / 60:.1f} min | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['alias']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.quality", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--carvana", default="64,320,1600", help="folder sizes, comma list")
    parser.add_argument("--cells", type=int, default=96, help="images in the cells folder (0: none)")
    parser.add_argument("--settings", default="plan,seed")
    parser.add_argument("--seed", type=int, default=2026, help="data seed (not the built-in 42)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    carvana = [int(n) for n in args.carvana.split(",") if n]
    results = []
    for name, (folder, layout) in folders(args.out, carvana, args.cells, args.seed).items():
        for setting in args.settings.split(","):
            result = run(name, folder, layout, setting, store, args.out / f"{name}-{setting}.log")
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}")
    print(table(results))


if __name__ == "__main__":
    main()
