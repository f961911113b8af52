import dataclasses

import pytest
import yaml
from conftest import ROOT

from unet.config import pipeline as config
from unet.errors import UserError
from unet.tracking import cli

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
PARAMS = config.read_params()


def test_mlproject_is_generated_from_params_yaml():
    """MLproject declares exactly params.yaml's defaults (python -m tools.mlproject)."""
    from tools.mlproject import render
    assert (ROOT / "MLproject").read_text() == render(PARAMS)
    for step in config.STEPS:
        if step == "tune":      # its own and main's parameters: tests/test_tune.py
            continue
        declared = {k: v["default"] for k, v in MLPROJECT[step]["parameters"].items()}
        assert declared == {k: str(v) for k, v in PARAMS[step].items()}
        assert set(declared) == {f.name for f in dataclasses.fields(config.STEPS[step])}
        for name in declared:                   # every parameter reaches the script
            assert f"--{name} {{{name}}}" in MLPROJECT[step]["command"]


def test_main_accepts_every_step_parameter_with_the_same_default():
    main = {k: v["default"] for k, v in MLPROJECT["main"]["parameters"].items()}
    expected = {k: str(v) for step in ("split_data", "train", "evaluate")
                for k, v in PARAMS[step].items() if not k.endswith("_run_id")}
    assert main == expected


SEED = {**config.preset("train", "seed"), "steps_per_epoch": 1}


def test_the_seed_preset_is_the_tutorials_settings_and_explicit_values_win():
    seed = config.load("train", {"split_run_id": "x"}, auto=SEED)
    assert seed.features == (64, 128, 256, 512) and (seed.image_height, seed.image_width) == (160, 240)
    assert (seed.batch_size, seed.lr, seed.epochs) == (16, 1e-4, 1)
    assert (seed.loss, seed.lr_schedule, seed.warmup_steps) == ("bce", "constant", 0)
    assert (seed.color_jitter, seed.patience, seed.bn_recalibration) == (0, 0, 0)
    mine = config.load("train", {"split_run_id": "x", "lr": "3e-4"}, auto=SEED)
    assert mine.lr == 3e-4


def test_auto_without_a_value_is_named():
    with pytest.raises(UserError, match="parameter lr=auto: nothing gives it a value"):
        config.load("train", {"split_run_id": "x"}, auto={})
    with pytest.raises(UserError, match="parameter preset=fast: use auto or seed"):
        config.preset("train", "fast")


@pytest.mark.parametrize("step,overrides,message", [
    ("train", {"lr": "0"}, "parameter lr=0.0: must be > 0"),
    ("train", {"lr": "-1e-3"}, "parameter lr=-0.001"),
    ("train", {"lr": "fast"}, "parameter lr='fast': expected a number"),
    ("train", {"features": "64;128"}, "parameter features='64;128': expected a comma list"),
    ("train", {"image_height": "8"}, "parameter image_height=8: too small for 4 levels; use at least 16"),
    ("train", {"epochs": "0"}, "parameter epochs=0"),
    ("train", {"split_run_id": ""}, "parameter split_run_id is missing"),
    ("train", {"nproc": "0"}, "parameter nproc=0: must be >= 1"),
    ("train", {"nproc": "3"}, "parameters batch_size=16, nproc=3: the batch is shared out"),
    ("train", {"sync_bn": "maybe"}, "parameter sync_bn='maybe': expected true or false"),
    ("train", {"compile": "yes"}, "parameter compile='yes': expected true or false"),
    ("train", {"loss": "focal"}, "parameter loss=focal: use bce_dice or bce"),
    ("train", {"time_budget_min": "0"}, "parameter time_budget_min=0.0: must be > 0"),
    ("train", {"color_jitter": "2"}, "parameter color_jitter=2.0: must be in [0, 1]"),
    ("train", {"patience": "-1"}, "parameter patience=-1: must be >= 0"),
    ("train", {"output": "objects"}, "parameter output=objects: use auto, mask or instances"),
    ("evaluate", {"train_run_id": "x", "tta": "rot90"}, "parameter tta=rot90: use auto, none, hflip, flips"),
    ("evaluate", {"train_run_id": "x", "floor_margin": "-0.1"}, "parameter floor_margin=-0.1"),
    ("split_data", {"val_fraction": "1.2"}, "parameter val_fraction=1.2: must be in [0, 1)"),
    ("split_data", {"test_fraction": "-0.1"}, "parameter test_fraction=-0.1"),
    ("split_data", {"val_fraction": "0.5", "test_fraction": "0.5"}, "must sum to less than 1"),
    ("evaluate", {"train_run_id": ""}, "parameter train_run_id is missing"),
    ("evaluate", {"train_run_id": "x", "threshold": "1.5"}, "parameter threshold=1.5"),
])
def test_bad_parameters_are_named(step, overrides, message):
    base = {"split_run_id": "x"} if step == "train" else {}
    with pytest.raises(UserError) as err:
        config.load(step, {**base, **overrides}, auto=SEED)
    assert message in str(err.value)


def test_cli_overrides_parse_only_given_values():
    assert cli.overrides("train", ["--lr", "1e-4", "--epochs", "3"]) == {"lr": "1e-4", "epochs": "3"}
    main = cli.overrides("main", ["--data_dir", "/x", "--threshold", "0.4"])
    assert main == {"data_dir": "/x", "threshold": "0.4"}
    with pytest.raises(SystemExit):
        cli.overrides("main", ["--split_run_id", "abc"])   # main chains run ids itself


def test_conda_yaml_installs_what_pyproject_depends_on():
    """`mlflow run` without --env-manager local builds conda.yaml's environment: it must hold
    every dependency, with the same pins (a missing onnx fails when the model is logged)."""
    tomllib = pytest.importorskip("tomllib")          # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())["dependencies"]
    (pip,) = [entry["pip"] for entry in conda if isinstance(entry, dict)]
    assert sorted(pip) == sorted(project)


def test_every_step_parameter_is_in_the_parameters_manual():
    text = (ROOT / "docs" / "parameters.md").read_text()
    documented = set()
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| parameter"):
            documented |= {name.strip() for name in line.split("|")[1].split(",")}
    params = config.read_params()
    for step in config.PIPELINE:
        missing = set(config.scalars(params[step])) - documented
        assert not missing, f"{step}: {sorted(missing)} not in docs/parameters.md"
