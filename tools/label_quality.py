"""Does the label-quality check find wrong masks? Runs the whole pipeline (`mlflow run . -e
main`, only data_dir and a model name given) on generated Carvana-layout folders with a share of
their masks corrupted (tools.datasets.corrupt_masks) and on clean ones, and reports how many of
the corrupted masks rank in the worst 10% of the evaluate run's label_quality/ranking.csv.

    python -m tools.label_quality OUT --images 64 400 --corrupt 0.05 --clean
    python -m tools.label_quality OUT --images 400 --clean --score-with models:/NAME/1

    python -m tools.label_quality OUT --images 64 400 --clean --evaluate-again

With --evaluate-again, only evaluate runs again, on the train runs of the folders' last
report (a changed label-quality rule measured without training again). With --score-with, no
pipeline runs: an already trained model scores every mask of the folders
(cheap: one forward pass per image; every prediction is then out of sample).

Writes OUT/report.json and prints a table. Folders are generated once under OUT and reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "label-quality"


def experiment(out: Path, tracking_uri: str) -> None:
    """The runs' experiment, its artifacts under OUT (not ./mlruns of the working directory)."""
    import mlflow
    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=(out / "mlruns").as_uri())


def folder(out: Path, images: int, seed: int, fraction: float) -> Path:
    """A generated folder of `images` (clean: fraction 0), made once and reused."""
    from tools.datasets import CORRUPTED_FILE, carvana_folder, corrupt_masks
    name = out / (f"corrupt{images}" if fraction else f"clean{images}")
    if (name / "train").is_dir() and (not fraction or (name / CORRUPTED_FILE).is_file()):
        return name
    base = out / f"base{images}"
    if not (base / "train").is_dir() or len(list((base / "train").glob("*.jpg"))) < images:
        carvana_folder(base, images, seed)
    shutil.copytree(base, name, dirs_exist_ok=True)
    if fraction:
        corrupt_masks(name, fraction, seed)
    return name


def run_pipeline(data_dir: Path, tracking_uri: str, model_name: str, extra: list[str],
                 train_run: str = "") -> tuple[str, float]:
    """`mlflow run . -e main` on data_dir, or `-e evaluate` of `train_run` when one is given;
    (the evaluate run's id, wall seconds)."""
    step = ["-e", "evaluate", "-P", f"train_run_id={train_run}"] if train_run else \
        ["-e", "main", "-P", f"data_dir={data_dir}"]
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), *step, "--env-manager", "local",
           "--experiment-name", EXPERIMENT, "-P", f"model_name={model_name}", *extra]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (data_dir.parent / f"{data_dir.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"the pipeline failed on {data_dir}: see {data_dir.parent}/"
                         f"{data_dir.name}.log")
    if train_run:
        line = next(x for x in done.stdout.splitlines() if x.startswith("evaluate run "))
        print(line)
        return line.split()[2].rstrip(":"), seconds
    marker = "=== pipeline summary ==="
    summary = done.stdout[done.stdout.index(marker):] if marker in done.stdout else ""
    print(summary)
    run_id = [line.split()[-1] for line in summary.splitlines() if line.strip().startswith("evaluate")][0]
    return run_id, seconds


def ranking(evaluate_run: str) -> list[dict]:
    import mlflow
    path = mlflow.artifacts.download_artifacts(run_id=evaluate_run,
                                               artifact_path="label_quality/ranking.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def measure(rows: list[dict], corrupted: dict[str, str]) -> dict:
    """Recall of the corrupted masks in the worst 10% (ceil) and among the flagged rows."""
    top = math.ceil(0.1 * len(rows))
    worst = {r["stem"] for r in rows[:top]}
    flagged = {r["stem"] for r in rows if r["flagged"] == "true"}
    rank = {r["stem"]: int(r["rank"]) for r in rows}
    subset = {r["stem"]: r["subset"] for r in rows}
    result = {"images": len(rows), "worst_10pct": top, "flagged": len(flagged),
              "scores": [float(r["score"]) for r in rows],
              "top_subsets": {s: sum(subset[x] == s for x in worst) for s in ("train", "val", "test")},
              "all_subsets": {s: sum(v == s for v in subset.values()) for s in ("train", "val", "test")}}
    if corrupted:
        result.update({
            "corrupted": len(corrupted),
            "recall_worst_10pct": sum(s in worst for s in corrupted) / len(corrupted),
            "recall_flagged": sum(s in flagged for s in corrupted) / len(corrupted),
            "false_flags": len(flagged - set(corrupted)),
            "corrupted_ranks": {s: [kind, rank.get(s), subset.get(s)] for s, kind in corrupted.items()}})
    return result


def score_folder(data_dir: Path, model_uri: str, threshold: float) -> tuple[list[dict], float]:
    """Without training: every pair of data_dir scored by an already trained model (whose
    predictions are then all out of sample), as ranking.csv rows (subset "folder")."""
    from unet.data.check import validate_folder
    from unet.data.pairs import load_mask
    from unet.evaluation import label_quality
    from unet.tracking import models
    pairs = validate_folder(data_dir / "train", data_dir / "train_masks").pairs
    start = time.perf_counter()
    rows, _ = label_quality.score_pairs(models.load_segmenter(model_uri), {"folder": pairs},
                                        load_mask, threshold, keep=1)
    seconds = time.perf_counter() - start
    path = data_dir.parent / f"{data_dir.name}-scored.csv"
    label_quality.write_ranking(path, rows, ("background", "object"))
    with open(path, newline="") as f:
        return list(csv.DictReader(f)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.label_quality", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, nargs="+", default=[64, 400])
    parser.add_argument("--corrupt", type=float, default=0.05)
    parser.add_argument("--clean", action="store_true", help="also the clean folders")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("-P", dest="params", action="append", default=[],
                        help="more name=value for mlflow run (e.g. time_budget_min=5)")
    parser.add_argument("--score-with", default="",
                        help="a model URI: score the folders with it instead of running the pipeline")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--evaluate-again", action="store_true",
                        help="run evaluate again on each folder's train run of the last report")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    experiment(out, tracking_uri)
    extra = [x for p in args.params for x in ("-P", p)]
    report_path = out / ("report-scored.json" if args.score_with else "report.json")
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    jobs = ([(n, args.corrupt) for n in args.images] if args.corrupt else []) + \
        ([(n, 0.0) for n in args.images] if args.clean else [])
    for images, fraction in jobs:
        data_dir = folder(out, images, args.seed + images, fraction)
        corrupted = (json.loads((data_dir / "corrupted.json").read_text()) if fraction else {})
        if args.score_with:
            rows, seconds = score_folder(data_dir, args.score_with, args.threshold)
            result = measure(rows, corrupted) | {"model": args.score_with,
                                                 "label_quality_seconds": round(seconds, 1)}
            report[f"{data_dir.name}-scored"] = result
            report_path.write_text(json.dumps(report, indent=1) + "\n")
            print(f"{data_dir.name} scored: {json.dumps({k: v for k, v in result.items() if k != 'scores'})}",
                  flush=True)
            continue
        import mlflow
        first = "-".join([data_dir.name, *args.params])
        train_run = (mlflow.get_run(report[first]["evaluate_run_id"]).data
                     .params["train_run_id"] if args.evaluate_again else "")
        run_id, seconds = run_pipeline(data_dir, tracking_uri, f"lq-{data_dir.name}", extra,
                                       train_run)
        evaluate = mlflow.get_run(run_id)
        result = measure(ranking(evaluate.info.run_id), corrupted)
        result.update({("evaluate_seconds" if train_run else "pipeline_seconds"): round(seconds),
                       "label_quality_seconds": evaluate.data.metrics.get("label_quality_seconds"),
                       "test_dice": evaluate.data.metrics.get("test_dice"),
                       "evaluate_run_id": run_id})
        # Runs with other parameters (e.g. -P seed=1) are kept beside the default's.
        key = "-".join([data_dir.name, *args.params] + (["evaluated-again"] if train_run else []))
        report[key] = result
        report_path.write_text(json.dumps(report, indent=1) + "\n")
        shown = {k: v for k, v in result.items() if k not in ("scores",)}
        print(f"{key}: {json.dumps(shown)}", flush=True)


if __name__ == "__main__":
    main()
