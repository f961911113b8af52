"""The comparison: the project's split made once, then per budget and seed the project, nnU-Net
and YOLO trained on it and scored by one scorer; an MLflow run per budget, a table, a chart."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil

from tools.peers import nnunet, yolo
from tools.peers.scoring import score
from tools.quality import FOLDERS, ROOT, cpu_flags, folder_layout, mlflow_run, tracking_store
from unet.images.reading import load_image
from unet.tracking.models import load_segmenter
from unet.tracking.splits import Split, load_split

SYSTEMS = ("project", "nnunet", "yolo")
DATASET_ID, DATASET_NAME = 501, "Peers"
POLL_S = 0.5
# The peers' own environment: ultralytics needs torchvision, which has no build beside the
# pipeline's CPU torch (docs/peers.md).
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
INSTALL = ("python -m venv .venv-peers && .venv-peers/bin/pip install -r "
           "tools/peers/requirements.txt")


class PeakMemory:
    """The largest summed RSS of this process's descendants (the process tree of a child and
    its workers), sampled every POLL_S seconds while the block runs: peaks shorter than that
    may be missed."""

    def __enter__(self) -> "PeakMemory":
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            total = 0
            for child in psutil.Process().children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.Error:        # ended between listing and reading
                    pass
            self.peak = max(self.peak, total)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20


def run_child(cmd: list[str], python: Path, env: dict, log: Path,
              limit_s: float | None = None) -> dict:
    """Runs a peer's command in the peers' environment (`python`'s folder first on PATH, the
    repository's root the working folder), its output appended to `log`; {"seconds",
    "rss_mb", "timed_out"}. RuntimeError naming the log where it fails; the tree is killed
    past limit_s (then "timed_out": the caller says what that means)."""
    env = {**os.environ, **env,
           "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start, timed_out = time.perf_counter(), False
    with open(log, "a") as f, PeakMemory() as memory:
        child = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                 start_new_session=True)
        try:
            code = child.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)
            code, timed_out = child.wait(), True
    seconds = time.perf_counter() - start
    if code != 0 and not timed_out:
        raise RuntimeError(f"{cmd[0]} {' '.join(cmd[1:3])} failed (exit {code}) after "
                           f"{seconds:.0f} s, see {log}")
    return {"seconds": seconds, "rss_mb": memory.mb, "timed_out": timed_out}


def project(split: Split, split_id: str, seed: int, budget: float, store: str,
            out: Path) -> dict:
    """The project as a user runs it (train, evaluate), its test images predicted by the
    logged model and scored by the peers' scorer; evaluate's own test_dice beside it."""
    log = out / f"project-{budget:g}min-seed{seed}.log"
    start = time.perf_counter()
    with PeakMemory() as memory:
        train_id = mlflow_run("train", {"split_run_id": split_id, "seed": seed,
                                        "time_budget_min": budget}, store, log)
    train_s = time.perf_counter() - start
    evaluate_id = mlflow_run("evaluate", {"train_run_id": train_id, "model_name": "peers"},
                             store, log)
    client = mlflow.MlflowClient(store)
    train = client.get_run(train_id)
    start = time.perf_counter()
    segmenter = load_segmenter(train.data.tags["model_uri"])
    images = [load_image(p.image, window=segmenter.window) for p in split.subsets["test"]]
    masks = segmenter.masks(images, 0.5, sizes=[image.shape[:2] for image in images])
    predictions = {p.stem: mask for p, mask in zip(split.subsets["test"], masks)}
    predict_s = time.perf_counter() - start
    params = train.data.params
    chose = {name: params.get(f"effective.{name}", params.get(name)) for name in
             ("features", "epochs", "steps_per_epoch", "batch_size", "patch_height",
              "patch_width")} | {"precision": train.data.tags.get("precision")}
    return {**score(predictions, split.subsets["test"], split.read_mask, split.classes),
            "train_s": train_s, "predict_s": predict_s, "train_rss_mb": memory.mb,
            "evaluate_test_dice": client.get_run(evaluate_id).data.metrics["test_dice"],
            "chose": chose}


def nnunet_prepare(split: Split, python: Path, out: Path) -> dict:
    """nnU-Net's dataset, plan and fold 0, made once for every budget and seed."""
    folder = out / "raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    preprocessed = out / "preprocessed" / folder.name
    if not (preprocessed / "splits_final.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        cases = nnunet.write_dataset(folder, split.subsets, split.classes, split.read_mask)
        run_child(nnunet.plan_command(DATASET_ID), python,
                  nnunet.environment(out, out / "results"), out / "plan.log")
        nnunet.write_fold(preprocessed, split.subsets, cases)
    return {"folder": folder, "preprocessed": preprocessed,
            "cases": json.loads((folder / nnunet.CASES_FILE).read_text()),
            "ending": json.loads((folder / "dataset.json").read_text())["file_ending"]}


def nnunet_run(split: Split, seed: int, budget: float, trainer: str, mirroring: bool,
               python: Path, limit_s: float, out: Path) -> dict:
    """nnU-Net trained with `trainer` (nnUNetTrainerBudget: fitted to the budget; or one of
    nnU-Net's fixed lengths; no seed flag: runs differ by its own randomness), killed past
    limit_s, then its prediction of the test images."""
    prepared = nnunet_prepare(split, python, out)
    name = f"{budget:g}min-seed{seed}"
    env = {**nnunet.environment(out, out / "results" / name), **nnunet.budget(budget * 60)}
    log = out / f"train-{name}.log"
    log.unlink(missing_ok=True)
    trained = run_child(nnunet.train_command(DATASET_ID, trainer), python, env, log, limit_s)
    epochs = nnunet.epochs_done(log.read_text())
    if trained["timed_out"]:
        raise RuntimeError(f"{trainer} killed after {trained['seconds']:.0f} s with {epochs} "
                           f"epoch(s) done" + (": not one epoch in that time" if not epochs
                                               else ""))
    predicted = out / "predicted" / name
    shutil.rmtree(predicted, ignore_errors=True)
    guessed = run_child(nnunet.predict_command(DATASET_ID, trainer,
                                               prepared["folder"] / "imagesTs", predicted,
                                               mirroring),
                        python, env, out / f"predict-{name}.log")
    predictions = nnunet.read_predictions(predicted, prepared["cases"], prepared["ending"])
    return {**score(predictions, split.subsets["test"], split.read_mask, split.classes),
            "train_s": trained["seconds"], "predict_s": guessed["seconds"],
            "train_rss_mb": trained["rss_mb"], "predict_rss_mb": guessed["rss_mb"],
            "chose": {"trainer": trainer, "epochs": epochs, "mirroring": mirroring,
                      **nnunet.chosen(prepared["preprocessed"])}}


def yolo_run(split: Split, seed: int, budget: float, imgsz: str, python: Path,
             limit_s: float, out: Path) -> dict:
    """YOLO trained from scratch for `budget` minutes (its own `time`), then its prediction of
    the test images (the converted 8-bit copies)."""
    data = out / "data" / "data.yaml"
    if not data.is_file():
        shutil.rmtree(data.parent, ignore_errors=True)
        yolo.write_dataset(data.parent, split.subsets, split.classes, split.read_mask,
                           yolo.training_window(split.subsets))
    size = (yolo.auto_imgsz([p.image for p in split.subsets["train"]]) if imgsz == "auto"
            else int(imgsz))
    name = f"{budget:g}min-seed{seed}"
    run_dir = out / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [str(python), "-m", "tools.peers.yolo_child"]
    trained = run_child([*command, "train", str(data), str(run_dir), "--minutes", f"{budget}",
                         "--seed", str(seed), "--imgsz", str(size)], python, yolo.environment(out),
                        out / f"{name}.log", limit_s)
    chose = yolo.chosen(run_dir) if (run_dir / "args.yaml").is_file() else {"epochs": 0}
    if trained["timed_out"] or not chose["epochs"]:
        raise RuntimeError(f"not one epoch in {budget:g} min: stopped after "
                           f"{trained['seconds']:.0f} s")
    images = out / f"test-{name}.txt"
    images.write_text("".join(f"{data.parent / 'images' / 'test' / p.stem}.png\n"
                              for p in split.subsets["test"]))
    predicted = out / "predicted" / name
    shutil.rmtree(predicted, ignore_errors=True)
    guessed = run_child([*command, "predict", str(yolo.weights(run_dir)), str(images),
                         str(predicted), "--imgsz", str(size)], python, yolo.environment(out),
                        out / f"{name}.log")
    return {**score(yolo.read_predictions(predicted), split.subsets["test"], split.read_mask,
                    split.classes),
            "train_s": trained["seconds"], "predict_s": guessed["seconds"],
            "train_rss_mb": trained["rss_mb"], "predict_rss_mb": guessed["rss_mb"],
            "chose": chose}


def missing(system: str, python: Path) -> str | None:
    """Why a peer cannot run here (its environment or its package missing), or None."""
    package = {"nnunet": "nnunetv2", "yolo": "ultralytics"}.get(system)
    if package is None:
        return None
    if not python.is_file():
        return f"no peers' environment at {python}: {INSTALL}"
    found = subprocess.run([str(python), "-c", f"import importlib.util, sys; sys.exit("
                            f"importlib.util.find_spec({package!r}) is None)"])
    return None if found.returncode == 0 else f"{package} is not in {python}: {INSTALL}"


def one(system: str, split: Split, split_id: str, seed: int, budget: float, args,
        store: str) -> dict:
    """One system, seed and budget -> its row; a failure is the row's "error", and the
    comparison goes on."""
    row = {"system": system, "seed": seed, "budget_min": budget}
    why = missing(system, args.peers_python)
    if why:
        return {**row, "error": why}
    out = args.out / system
    out.mkdir(parents=True, exist_ok=True)
    limit_s = args.limit_factor * budget * 60
    try:
        if system == "project":
            return {**row, **project(split, split_id, seed, budget, store, out)}
        if system == "nnunet":
            return {**row, **nnunet_run(split, seed, budget, args.trainer_for(budget),
                                        not args.nnunet_no_mirroring, args.peers_python,
                                        limit_s, out)}
        return {**row, **yolo_run(split, seed, budget, args.yolo_imgsz, args.peers_python,
                                  limit_s, out)}
    except Exception as e:       # any failure of one system: recorded in its row
        return {**row, "error": f"{type(e).__name__}: {e}"}


def table(rows: list[dict]) -> str:
    """The comparison as markdown: one line per system and seed, a failed one saying why."""
    lines = ["| system | seed | test Dice (per image) | pooled Dice | IoU | train | predict | "
             "peak RSS train | chose / why not |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | {r['seed']} | - | - | - | - | - | - | "
                         f"failed: {r['error']} |")
            continue
        chose = ", ".join(f"{k} {v}" for k, v in r["chose"].items())
        if "evaluate_test_dice" in r:
            chose += f"; evaluate's test_dice {r['evaluate_test_dice']:.4f}"
        lines.append(f"| {r['system']} | {r['seed']} | {r['dice']:.4f} | "
                     f"{r['dice_pooled']:.4f} | {r['iou']:.4f} | {r['train_s'] / 60:.1f} min | "
                     f"{r['predict_s']:.0f} s | {r['train_rss_mb']:.0f} MB | {chose} |")
    return "\n".join(lines)


def chart(rows: list[dict], path: Path, title: str) -> None:
    """Bars of the median test Dice and training minutes per system (seeds as dots); a system
    without a finished run is labelled failed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "dice", "test Dice (per image)"),
                           (axes[1], "train_s", "training minutes")):
        for x, system in enumerate(SYSTEMS):
            values = [r[key] / (60 if key == "train_s" else 1) for r in rows
                      if r["system"] == system and "error" not in r]
            if values:
                ax.bar(x, statistics.median(values), color="#8ab")
                ax.plot([x] * len(values), values, "k.")
            else:
                ax.text(x, 0, "failed", ha="center", va="bottom")
        ax.set_xticks(range(len(SYSTEMS)), SYSTEMS)
        ax.set_ylabel(label)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_row(row: dict) -> None:
    """A nested run of one system and seed: its scores and times as metrics."""
    with mlflow.start_run(run_name=f"{row['system']}-seed{row['seed']}", nested=True):
        mlflow.log_params({"system": row["system"], "seed": row["seed"],
                           "budget_min": row["budget_min"]})
        if "error" in row:
            mlflow.set_tag("error", row["error"][:5000])
            return
        mlflow.log_params({f"chose.{k}": v for k, v in row["chose"].items()})
        mlflow.log_metrics({k: float(v) for k, v in row.items()
                            if isinstance(v, (int, float, np.floating)) and not np.isnan(v)
                            and k not in ("seed", "budget_min")})


def compare(split: Split, split_id: str, budget: float, args, store: str) -> list[dict]:
    """One budget: every seed of every system, each logged as it finishes; the table (markdown
    and JSON) and the chart written under OUT and logged to the budget's run."""
    rows = []
    name = f"{budget:g}min"
    with mlflow.start_run(run_name=f"peers-{name}"):
        mlflow.log_params({"budget_min": budget, "seeds": args.seeds, "split_run_id": split_id,
                           "nnunet_trainer": args.trainer_for(budget),
                           "nnunet_mirroring": not args.nnunet_no_mirroring,
                           "yolo_imgsz": args.yolo_imgsz, "cpu": cpu_flags()[:500]})
        for seed in (int(s) for s in args.seeds.split(",")):
            for system in args.systems:
                rows.append(one(system, split, split_id, seed, budget, args, store))
                print(json.dumps(rows[-1], default=str), flush=True)
                log_row(rows[-1])
                (args.out / f"peers-{name}.json").write_text(
                    json.dumps(rows, indent=1, default=str))
        (args.out / f"peers-{name}.md").write_text(table(rows) + "\n")
        chart(rows, args.out / f"peers-{name}.png", f"{budget:g} min budget, CPU")
        for suffix in ("json", "md", "png"):
            mlflow.log_artifact(str(args.out / f"peers-{name}.{suffix}"))
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import tools.peers
    parser = argparse.ArgumentParser(prog="tools.peers",
                                     description=tools.peers.__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir",
                       help="the folder (split_data's data_dir; synthetic: the built-in set)")
    where.add_argument("--folder", choices=sorted(FOLDERS),
                       help="a folder of tools.quality, generated (or fetched) under OUT/data")
    parser.add_argument("--data-seed", type=int, default=2026,
                        help="the generated folder's seed (--folder)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a split_data parameter (the folder's layout), repeatable")
    parser.add_argument("--budget-min", default="5", help="minutes of training, comma list")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        help="which of project, nnunet, yolo to run")
    parser.add_argument("--nnunet-trainer", default="nnUNetTrainerBudget",
                        help="nnU-Net's trainer, one or one per budget (nnUNetTrainerBudget: "
                             "fitted to the budget; nnUNetTrainer_5epochs: a fixed length)")
    parser.add_argument("--nnunet-no-mirroring", action="store_true",
                        help="nnU-Net predicts without its test-time mirroring (--disable_tta): "
                             "4 times faster, for large images on a CPU")
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON,
                        help="the peers' environment's python")
    parser.add_argument("--yolo-imgsz", default="auto",
                        help="YOLO's size; auto: the longest image side, at most 640")
    parser.add_argument("--limit-factor", type=float, default=3.0,
                        help="a peer's training is killed past this many budgets")
    args = parser.parse_args(argv)
    try:
        args.budgets = [float(b) for b in args.budget_min.split(",")]
    except ValueError:
        args.budgets = []
    if not args.budgets or min(args.budgets) <= 0:
        parser.error(f"--budget-min {args.budget_min}: minutes above 0, a number or a comma "
                     "list (5,30)")
    args.systems = args.systems.split(",")
    if not set(args.systems) <= set(SYSTEMS):
        parser.error(f"--systems {','.join(args.systems)}: choose from {', '.join(SYSTEMS)}")
    trainers = args.nnunet_trainer.split(",")
    if len(trainers) not in (1, len(args.budgets)):
        parser.error("--nnunet-trainer: one trainer, or one per budget")
    by_budget = dict(zip(args.budgets, trainers * len(args.budgets)))
    args.trainer_for = by_budget.__getitem__
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Reading the split back from the store draws a bar per file otherwise.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    store = tracking_store(args.out, "peers")
    mlflow.set_tracking_uri(store)
    if args.folder:
        layout = folder_layout(args.folder, args.out / "data", args.data_seed)[0]
    else:
        # `mlflow run` starts the step in the project's folder: a folder given relative to
        # here is made absolute.
        layout = {"data_dir": (args.data_dir if args.data_dir == "synthetic"
                               else str(Path(args.data_dir).resolve()))}
    layout.update(item.split("=", 1) for item in args.set)
    try:
        split_id = mlflow_run("split_data", layout, store, args.out / "split.log")
    except RuntimeError as e:    # the folder itself is wrong: no system can run on it
        sys.exit(f"tools.peers: {e}")
    split = load_split(split_id, workdir=args.out / "split-data")
    mlflow.set_experiment("peers")
    for budget in args.budgets:
        rows = compare(split, split_id, budget, args, store)
        print(f"\n{budget:g} min budget; {cpu_flags()}\n{table(rows)}", flush=True)


if __name__ == "__main__":
    main()
