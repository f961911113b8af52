"""Quality that holds: each folder trained with several seeds, as a user runs the pipeline, on
folders the defaults were not tuned on; worst and median test Dice per folder, never the best.

    python -m tools.quality OUT [--folders quick,car8,car24,car64,cells96,parts8,dsb-tiles,
                                dsb-png,labelled-tiles,labelled-png,touching] [--seeds 1,2,3]
                                [--set name=value ...] [--final] [--json FILE]

For each folder (generated into OUT/data once, see tools/datasets.py) the split is made once
(`mlflow run -e split_data`, only the layout parameters), then for each training seed `-e train
-P seed=S` and `-e evaluate` run with `--env-manager local` into OUT/mlflow.db, as `main` would
run them. `--set` adds train parameters to every run (e.g. `--set preset=seed`, or the
settings of an earlier version to compare with). The table gives worst and median test Dice
(mean foreground Dice for several classes), how far the kept weights' validation Dice is below
the best round's, the wall time of train + evaluate, and the CPU. `--final`: where the kept
weights are not the final ones, the same seed is trained again with `keep=final` and its test
Dice is the "final" column (where the final weights were kept, they are the same weights). On a
budget-sized run (steps from the measured speed) the second run may train a few steps more or
less than the first.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tools import datasets

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "quality"      # where mlflow_run's steps log
# name -> (how to make it, layout parameters); "quick" is the built-in set of the quick start
FOLDERS = {
    "quick": (None, {"data_dir": "synthetic"}),
    "car8": (lambda out, seed: datasets.carvana_folder(out, 128, seed, views=16,
                                                      unseen_paints=True),
             datasets.CARVANA_LAYOUT),
    "car24": (lambda out, seed: datasets.carvana_folder(out, 384, seed, views=16),
              datasets.CARVANA_LAYOUT),
    "car64": (lambda out, seed: datasets.carvana_folder(out, 64, seed), datasets.CARVANA_LAYOUT),
    "cells96": (lambda out, seed: datasets.cells_folder(out, 96, seed), datasets.CELLS_LAYOUT),
    "parts8": (lambda out, seed: datasets.carvana_folder(out, 128, seed, size=(640, 960),
                                                        views=16, parts=True),
               datasets.PARTS_LAYOUT),
    # The real field (downloaded once by pip: tools.datasets dsb-field) as users keep it, and
    # its 8-bit PNG copy; the data seed does not change a real field.
    "dsb-tiles": (lambda out, seed: datasets.field_folders(out, *datasets.dsb_field()),
                  {**datasets.FLUORESCENCE_LAYOUT, "subfolder": "tiles", "field": "field"}),
    "dsb-png": (lambda out, seed: datasets.field_folders(out, *datasets.dsb_field()),
                {**datasets.CELLS_LAYOUT, "subfolder": "png"}),
    # Its generated look-alike: tiles of labelled fields, global ids, 0..6 objects a tile.
    "labelled-tiles": (lambda out, seed: datasets.labelled_tiles_folder(out, seed, fields=4),
                       datasets.FLUORESCENCE_LAYOUT),
    "labelled-png": (lambda out, seed: datasets.png_copy(
        datasets.labelled_tiles_folder(out.with_name(out.name + "-tif"), seed, fields=4), out),
        datasets.CELLS_LAYOUT),
    # Objects that touch (instance output): 48 fields of 128x128, clusters of 1..4 nuclei.
    "touching": (lambda out, seed: datasets.touching_folder(out, 48, seed),
                 datasets.TOUCHING_LAYOUT),
}


def generated(path: Path, make) -> Path:
    """`path`, made by make(folder) into a temporary folder renamed when complete (an
    interrupted generation is made again, never used half-written)."""
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        make(partial)
        partial.rename(path)
    return path


def folder_layout(name: str, data: Path, seed: int) -> tuple[dict, Path | None]:
    """(split_data's parameters, the whole-field folder or None) of the folder `name`, made
    under `data` first if it is not there."""
    make, layout = FOLDERS[name]
    if make is None:
        return dict(layout), None
    # Folders made together (a field's tiles and their PNG copy) share one directory.
    layout = dict(layout)
    sub, field = layout.pop("subfolder", None), layout.pop("field", None)
    made = generated(data / (name.split("-")[0] if sub else name), lambda f: make(f, seed))
    return {"data_dir": made / sub if sub else made, **layout}, made / field if field else None


def cpu_flags() -> str:
    """The CPU model and the flags that decide the training speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if info else set()
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    isa = os.environ.get("ATEN_CPU_CAPABILITY")
    return (f"{model.group(1) if model else platform.machine()}, {os.cpu_count()} cores, "
            f"flags {' '.join(wanted)}" + (f", ATEN_CPU_CAPABILITY={isa}" if isa else "")
            + f", torch {torch.__version__}")


def tracking_store(out: Path, *experiments: str) -> str:
    """OUT/mlflow.db as a tracking URI, with its experiments (EXPERIMENT and `experiments`)
    keeping their artifacts under OUT/artifacts/<name>. MLflow would put them in ./mlruns of
    the process that creates the experiment: for `mlflow run`'s steps, the project's checkout,
    shared by every OUT and lost with the checkout (a champion registered there then fails the
    next evaluate: "No such artifact")."""
    import mlflow
    store = f"sqlite:///{(out / 'mlflow.db').resolve()}"
    client = mlflow.MlflowClient(store)
    for name in (EXPERIMENT, *experiments):
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(
                name, artifact_location=(out / "artifacts" / name).resolve().as_uri())
    return store


def mlflow_run(entry: str, params: dict, store: str, log: Path) -> str:
    """Runs an entry point as a user would; returns its run id (printed by MLflow)."""
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", entry,
           "--env-manager", "local", "--experiment-name", EXPERIMENT]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    # `mlflow run` starts the steps with the `python` on PATH: this interpreter's. An
    # experiment a caller set (tools.peers) is its own, not the step's.
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_EXPERIMENT_ID"},
           "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = log.stat().st_size if log.exists() else 0    # the log may hold earlier runs
    with open(log, "a") as f:
        done = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, text=True)
    text = log.read_bytes()[start:].decode(errors="replace")
    found = re.findall(r"=== Run \(ID '([0-9a-f]+)'\) succeeded ===", text)
    if done.returncode != 0 or not found:
        # A step's one-line reason (its "error: ..." line) is in the message, not only the log.
        reason = re.findall(r"^error: (.*)$", text, re.MULTILINE)
        raise RuntimeError(f"{entry} failed (exit {done.returncode})"
                           f"{': ' + reason[-1] if reason else ''}; see {log}")
    return found[-1]


def field_scores(model_uri: str, field: Path, store: str, out: Path, log: Path) -> dict:
    """A tile model on the whole fields of `field` (images/, masks/ with the tiles' layout):
    predicted by the predict entry point as a user would, scored by the project's metrics:
    "field_dice", the per-image Dice (unet.evaluation.metrics.confusion; a label mask's nonzero
    values are the object); for a model of instances also "field_map" (the DSB mAP of its
    label images, unet.evaluation.objects) and the object baselines' on the same fields,
    "field_map_components" and "field_map_otsu" (unet.evaluation.baselines)."""
    import tifffile
    from PIL import Image

    from unet.evaluation import baselines, objects
    from unet.evaluation.metrics import confusion, scores
    from unet.images.reading import load_image
    predicted = out / f"predicted-{log.stem}"
    shutil.rmtree(predicted, ignore_errors=True)
    mlflow_run("predict", {"model_uri": model_uri, "input_dir": str(field / "images"),
                           "output_dir": str(predicted)}, store, log)
    counts, found = [], {"": [], "_components": [], "_otsu": []}
    for mask in sorted((field / "masks").iterdir()):
        stem = mask.name.rsplit("_mask", 1)[0]
        labels = tifffile.imread(mask)
        guess = np.asarray(Image.open(predicted / f"{stem}_mask.png")) > 0
        counts.append(confusion(torch.from_numpy(guess)[None],
                                torch.from_numpy((labels > 0).astype("uint8"))[None]))
        if (predicted / f"{stem}_labels.png").exists():
            (image,) = [p for p in (field / "images").iterdir() if p.stem == stem]
            window = tuple(float(v) for v in np.percentile(tifffile.imread(image), (0.5, 99.5)))
            found[""].append(objects.match(labels, np.asarray(
                Image.open(predicted / f"{stem}_labels.png")).astype(np.int32)))
            found["_components"].append(objects.match(labels, baselines.components(
                guess.astype(np.uint8))))
            found["_otsu"].append(objects.match(labels, baselines.otsu_watershed(
                load_image(image, window=window))))
    result = {"field_dice": float(scores(torch.cat(counts))["dice"].mean())}
    if found[""]:
        result.update({f"field_map{k}": objects.summarize(v)["map"] for k, v in found.items()})
    return result


def one_seed(name: str, split_id: str, seed: int, extra: dict, store: str, out: Path,
             field: Path | None = None, final: bool = False) -> dict:
    result = one_run(name, split_id, seed, extra, store, out, field)
    if final:
        result["final_test_dice"] = result["test_dice"]
        if result["kept_epoch"] != result["epochs"]:
            again = one_run(name, split_id, seed, {**extra, "keep": "final"}, store, out,
                            field, suffix="-final")
            result["final_test_dice"] = again["test_dice"]
            result["final_steps"] = again["steps"]
    return result


def one_run(name: str, split_id: str, seed: int, extra: dict, store: str, out: Path,
            field: Path | None = None, suffix: str = "") -> dict:
    log = out / f"{name}-seed{seed}{suffix}.log"
    log.unlink(missing_ok=True)
    start = time.perf_counter()
    train_id = mlflow_run("train", {"split_run_id": split_id, "seed": seed, **extra}, store, log)
    evaluate_id = mlflow_run("evaluate", {"train_run_id": train_id, "model_name": name},
                             store, log)
    wall = time.perf_counter() - start
    import mlflow
    client = mlflow.MlflowClient(store)
    train, evaluate = client.get_run(train_id), client.get_run(evaluate_id)

    def value(name: str) -> str:
        """A train value in effect: the plan's (effective.*) or the one given."""
        params = train.data.params
        return params.get(f"effective.{name}", params.get(name))
    m, t = evaluate.data.metrics, train.data.metrics
    rounds = sorted(client.get_metric_history(train_id, "val_dice"), key=lambda x: x.step)
    whole = {} if field is None else field_scores(train.data.tags["model_uri"], field, store,
                                                  out, log)
    # A model of instances: its objects and the object baselines' (unet.evaluation.scoring)
    instances = {key: m[f"test_{key}"] for key in ("map", "map_components", "map_otsu",
                                                    "ap50", "f1_50", "count_error")
                 if f"test_{key}" in m}
    # test_dice: per-image Dice; with several classes, the mean over the foreground classes.
    return {"folder": name, "seed": seed, "test_dice": m["test_dice"],
            "alias": evaluate.data.tags.get("model_alias", ""), "wall_seconds": wall,
            "kept_val_dice": t.get("kept_val_dice", t["best_val_dice"]),
            "best_val_dice": t["best_val_dice"], "best_epoch": int(t["best_epoch"]),
            "val_dice_last3": [r.value for r in rounds[-3:]],
            "steps": int(value("epochs")) * int(value("steps_per_epoch")),
            "batch": value("batch_size"), "patch": f"{value('patch_height')}x{value('patch_width')}",
            "size": f"{value('image_height')}x{value('image_width')}",
            "kept_epoch": int(t.get("kept_epoch", 0)), "epochs": len(rounds),
            "final_val_dice": rounds[-1].value if rounds else None, **whole, **instances}


def table(results: list[dict]) -> str:
    lines = [("| folder | test Dice per seed | worst | median | final weights: test Dice per "
              "seed, worst, median | kept round / rounds | kept val Dice below the best "
              "round's, at most | wall per run (train + evaluate) | plan |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["folder"] for r in results):
        runs = [r for r in results if r["folder"] == name]
        dice = [r["test_dice"] for r in runs]
        wall = statistics.median(r["wall_seconds"] for r in runs) / 60
        below = max(r["best_val_dice"] - r["kept_val_dice"] for r in runs)
        final = [r.get("final_test_dice") for r in runs]
        final = ("-" if None in final else f"{', '.join(f'{d:.4f}' for d in final)}; "
                 f"{min(final):.4f}, {statistics.median(final):.4f}")
        kept = ", ".join(f"{r['kept_epoch']}/{r['epochs']}" for r in runs)
        if "field_dice" in runs[0]:      # a tile model on the whole field
            whole = [r["field_dice"] for r in runs]
            name = (f"{name} (whole field: {', '.join(f'{d:.4f}' for d in whole)}; worst "
                    f"{min(whole):.4f}, median {statistics.median(whole):.4f})")
        lines.append(f"| {name} | {', '.join(f'{d:.4f}' for d in dice)} | {min(dice):.4f} | "
                     f"{statistics.median(dice):.4f} | {final} | {kept} | {below:.4f} | "
                     f"{wall:.1f} min | "
                     f"{runs[0]['steps']} "
                     f"steps, batch {runs[0]['batch']}, {runs[0]['size']} (crops {runs[0]['patch']}) |")
    return "\n".join(lines)


def objects_table(results: list[dict]) -> str:
    """Worst / median mAP@0.5:0.95 of the folders whose models give instances, against the
    object baselines on the same test images (and on the whole field, for tiles)."""
    lines = ["| folder | model mAP per seed | worst / median | components of its foreground "
             "(worst / median) | Otsu + distance watershed | whole field: model, components, "
             "Otsu (median) |", "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["folder"] for r in results if "map" in r):
        runs = [r for r in results if r["folder"] == name and "map" in r]

        def spread(key: str) -> str:
            values = [r[key] for r in runs]
            return f"{min(values):.4f} / {statistics.median(values):.4f}"
        field = ", ".join(f"{statistics.median(r[k] for r in runs):.4f}"
                          for k in ("field_map", "field_map_components", "field_map_otsu")) \
            if "field_map" in runs[0] else "-"
        maps = ", ".join(f"{r['map']:.4f}" for r in runs)
        lines.append(f"| {name} | {maps} | "
                     f"{spread('map')} | {spread('map_components')} | {spread('map_otsu')} | "
                     f"{field} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.quality", description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--folders", default=",".join(FOLDERS))
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (the split is kept)")
    parser.add_argument("--data-seed", type=int, default=2026, help="not the built-in 42")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a train parameter for every run")
    parser.add_argument("--final", action="store_true",
                        help="also train keep=final where the rule kept an earlier round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = tracking_store(args.out)
    extra = dict(item.split("=", 1) for item in args.set)
    results = []
    for name in args.folders.split(","):
        layout, field = folder_layout(name, args.out / "data", args.data_seed)
        split_id = mlflow_run("split_data", layout, store,
                              args.out / f"{name}-split.log")
        for seed in (int(s) for s in args.seeds.split(",")):
            try:
                result = one_seed(name, split_id, seed, extra, store, args.out,
                                  field, args.final)
            except RuntimeError as e:
                result = {"folder": name, "seed": seed, "error": str(e)}
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    print(f"\n{cpu_flags()}" + (f"; train parameters {extra}" if extra else ""))
    print(table([r for r in results if "error" not in r]))
    print(objects_table([r for r in results if "error" not in r]))


if __name__ == "__main__":
    main()
