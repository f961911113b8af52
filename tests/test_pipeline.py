"""End to end: the real `mlflow run` of every entry point against a private sqlite store."""
from __future__ import annotations

import csv
import io

import mlflow
import numpy as np
import pytest
from conftest import TINY, first_version_aliases, mlflow_run, only
from mlflow.tracking import MlflowClient
from PIL import Image

from unet.config.pipeline import read_params
from unet.data.synthetic import generate

RULES = read_params()["plan"]


def runs_of(entry_point: str):
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string=f"tags.`mlflow.project.entryPoint` = '{entry_point}'",
        order_by=["attributes.start_time ASC"])


def artifact_names(run_id: str, path: str = "") -> list[str]:
    return sorted(f.path for f in MlflowClient().list_artifacts(run_id, path))


def test_main_trains_registers_and_reuses_finished_steps(tracking_uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")   # a short train run
    first = mlflow_run("main", TINY, tracking_uri)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "=== pipeline summary ===" in first.stdout
    assert "split_data  ran" in first.stdout and "evaluate    ran" in first.stdout

    (split,), (train,), (evaluate,) = runs_of("split_data"), runs_of("train"), runs_of("evaluate")
    main = runs_of("main")[0]
    for child in (split, train, evaluate):   # nested under main, visible in the UI as a tree
        assert child.data.tags["mlflow.parentRunId"] == main.info.run_id
    assert train.data.params["split_run_id"] == split.info.run_id
    assert evaluate.data.params["train_run_id"] == train.info.run_id

    # split: the generated data and the split travel as artifacts; subsets are logged inputs
    assert artifact_names(split.info.run_id) == \
        ["data", "data_report.json", "data_report.txt", "data_report_table.json", "split.json"]
    record = mlflow.artifacts.load_dict(f"runs:/{split.info.run_id}/split.json")
    assert len(record["train"]) + len(record["val"]) + len(record["test"]) == 24
    assert {d.dataset.name for d in split.inputs.dataset_inputs} == {"train", "val", "test"}

    # train: per-epoch metrics, a checkpoint, sample panels, the model
    history = MlflowClient().get_metric_history(train.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2]
    assert "checkpoints/last.pt" in artifact_names(train.info.run_id, "checkpoints")
    # sample panels step-indexed under one image key (the UI's slider)
    assert {name.split("+")[2] for name in artifact_names(train.info.run_id, "images")
            if name.startswith("images/samples+step+")} == {"1", "2"}
    assert train.data.params["features"] == "4,8,16,32"        # given
    assert train.data.params["lr"] == "auto"                   # not given: the plan's rule
    assert float(train.data.params["effective.lr"]) == RULES["lr"] * (4 / 8) ** 0.5
    assert train.data.params["effective.loss"] == "bce_dice"
    assert train.data.params["plan.train_images"] == str(len(record["train"]))
    plan = mlflow.artifacts.load_dict(f"runs:/{train.info.run_id}/plan.json")
    assert plan["values"]["steps_per_epoch"] == -(-len(record["train"]) // 4)   # one pass
    assert plan["fingerprint"]["median_height"] == 48
    assert train.data.metrics["train_images_per_second"] > 0
    assert train.data.tags["tta"] in ("none", "hflip", "flips")
    assert {f"val_dice_tta_{m}" for m in ("none", "hflip", "flips")} <= set(train.data.metrics)

    # evaluate: metrics, per-image CSV and a mask per test image at the image's size
    test_count = len(record["test"])
    masks = artifact_names(evaluate.info.run_id, "predictions/masks")
    assert len(masks) == test_count
    local = mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                artifact_path="predictions/per_image.csv")
    rows = list(csv.DictReader(open(local)))
    assert len(rows) == test_count
    # test_dice is the mean of the per-image Dice, each 2TP / (2TP + FP + FN) of its counts
    for row in rows:
        tp, fp, fn = (int(row[k]) for k in ("tp", "fp", "fn"))
        expected = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        assert float(row["dice"]) == pytest.approx(expected, abs=1e-6)
    assert evaluate.data.metrics["test_dice"] == \
        pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-5)
    mask = Image.open(mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                          artifact_path=masks[0]))
    assert mask.size == (72, 48)

    # the registry: version 1, tagged with its test metrics, the baselines and the floor
    version = MlflowClient().get_model_version("unet-carvana", "1")
    assert version.tags["train_run_id"] == train.info.run_id
    assert float(version.tags["test_dice"]) == \
        round(evaluate.data.metrics["test_dice"], 6)
    best_baseline = max(evaluate.data.metrics[f"baseline_dice_{name}"] for name in
                        ("all_background", "all_foreground", "mean_mask"))
    assert float(version.tags["floor_dice"]) == round(best_baseline + 0.05, 6)
    assert list(version.aliases) == first_version_aliases(version.tags)
    assert version.tags["promotion"] in first.stdout

    # what a person sees in the UI: the experiment opens as model training, runs say what
    # they are, the train run has system metrics, the version and the model have descriptions
    experiment = MlflowClient().get_experiment(train.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert train.data.tags["mlflow.runName"] == \
        f"train lr={float(train.data.params['effective.lr']):.3g} 6 groups 32x48"
    assert split.data.tags["mlflow.runName"] == "split_data built-in: 6 groups, 24 images"
    assert any(name.startswith("system/cpu_utilization") for name in train.data.metrics)
    card = version.description
    assert f"Dice {float(version.tags['test_dice']):.4f}" in card and "built-in" in card
    assert f"{len(record['train'])} train, {len(record['val'])} val, {test_count} test" in card
    assert "mean mask" in card and "samples" in card and "32x48" in card
    # why training stopped where it did and which weights it kept (TINY gives the epochs; 2
    # rounds have no earlier stretch to go back to)
    assert train.data.tags["steps_why"] == "trained 2 rounds, the epochs given"
    assert train.data.tags["kept_why"].startswith("the final weights (round 2, val Dice")
    assert (f"**Training**: trained 2 rounds, the epochs given; kept "
            f"{train.data.tags['kept_why']}.") in card
    assert "binary segmentation" in MlflowClient().get_registered_model("unet-carvana").description
    table = mlflow.load_table("plan_table.json", run_ids=[train.info.run_id])
    assert dict(zip(table["setting"], table["value"]))["features"] == "4,8,16,32"

    # the model loads and segments images of other sizes and batch sizes
    model = mlflow.pyfunc.load_model("models:/unet-carvana/1")
    out = model.predict({"image": list(np.random.randint(0, 255, (3, 37, 53, 3), dtype=np.uint8))})
    masks = [np.asarray(Image.open(io.BytesIO(png))) for png in out["mask"]]
    assert [m.shape for m in masks] == [(37, 53)] * 3
    assert all(set(np.unique(m)) <= {0, 255} for m in masks)

    second = mlflow_run("main", TINY, tracking_uri)
    assert second.returncode == 0, second.stderr[-3000:]
    for step in ("split_data", "train", "evaluate"):
        assert f"{step:<11} reused  run" in second.stdout
    assert len(runs_of("train")) == 1
    assert len(MlflowClient().search_model_versions("name = 'unet-carvana'")) == 1


def test_each_entry_point_runs_alone_and_main_reuses_them(tracking_uri):
    result = mlflow_run("split_data", only(TINY, "split_data"), tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    split_id = runs_of("split_data")[0].info.run_id

    result = mlflow_run("train", {**only(TINY, "train"), "split_run_id": split_id, "lr": "1e-3"},
                        tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    train = runs_of("train")[0]
    assert train.data.params["lr"] == "1e-3"          # stored as the text given

    result = mlflow_run("evaluate", {"train_run_id": train.info.run_id, "model_name": "cars"},
                        tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    version = MlflowClient().get_model_version("cars", "1")
    assert list(version.aliases) == first_version_aliases(version.tags)

    # main with the same split settings finds the finished split_data run
    result = mlflow_run("main", {**TINY, "lr": "1e-3", "model_name": "cars"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"split_data  reused  run {split_id}" in result.stdout
    assert f"train       reused  run {train.info.run_id}" in result.stdout


def test_carvana_layout_at_full_size_needs_only_data_dir(tracking_uri, tmp_path):
    """1918x1280 photos in train/ and train_masks/: the plan scales them to the pixel budget."""
    generate(tmp_path / "carvana", 12, 1280, 1918, seed=5)
    result = mlflow_run("main", {"data_dir": str(tmp_path / "carvana"), "epochs": "1"},
                        tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "=== training plan ===" in result.stdout
    train = runs_of("train")[0]
    assert train.data.params.get("effective.features") == RULES["cpu"]["features"]
    assert (train.data.params["effective.image_height"],
            train.data.params["effective.image_width"]) == ("128", "192")
    evaluate = runs_of("evaluate")[0]
    mask_path = artifact_names(evaluate.info.run_id, "predictions/masks")[0]
    mask = Image.open(mlflow.artifacts.download_artifacts(run_id=evaluate.info.run_id,
                                                          artifact_path=mask_path))
    assert mask.size == (1918, 1280)


def test_a_useless_model_is_registered_but_never_champion(tracking_uri):
    """lr=1e-12 leaves the network as initialized: below the floor on a fresh store, and on a
    store that has a champion (which it keeps)."""
    useless = {**TINY, "lr": "1e-12"}
    result = mlflow_run("main", useless, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    version = MlflowClient().get_model_version("unet-carvana", "1")
    assert list(version.aliases) == []
    assert version.tags["promotion"].startswith("not promoted: test Dice")
    assert "aliases: none" in result.stdout and version.tags["promotion"] in result.stdout

    # A store with a champion: make version 1 champion by hand, as a user may.
    MlflowClient().set_registered_model_alias("unet-carvana", "champion", "1")
    result = mlflow_run("main", {**useless, "seed": "7"}, tracking_uri)
    assert result.returncode == 0, result.stderr[-3000:]
    version = MlflowClient().get_model_version("unet-carvana", "2")
    assert list(version.aliases) == [] and version.tags["promotion"].startswith("not promoted")
    champion = MlflowClient().get_model_version_by_alias("unet-carvana", "champion")
    assert str(champion.version) == "1"
