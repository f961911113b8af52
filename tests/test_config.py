import dataclasses

import pytest
import yaml

from unet import config
from unet.errors import UserError

from conftest import ROOT

MLPROJECT = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]
PARAMS = config.read_params()


@pytest.mark.parametrize("step", ["split_data", "train", "evaluate", "predict", "ui"])
def test_mlproject_declares_exactly_the_params_yaml_defaults(step):
    declared = {k: v["default"] for k, v in MLPROJECT[step]["parameters"].items()}
    assert declared == {k: str(v) for k, v in PARAMS[step].items()}
    fields = {f.name for f in dataclasses.fields(config.STEPS[step])}
    assert set(declared) == fields
    for name in declared:                   # every parameter reaches the script
        assert f"--{name} {{{name}}}" in MLPROJECT[step]["command"]


def test_main_accepts_every_step_parameter_with_the_same_default():
    main = {k: v["default"] for k, v in MLPROJECT["main"]["parameters"].items()}
    expected = {k: str(v) for step in ("split_data", "train", "evaluate")
                for k, v in PARAMS[step].items() if not k.endswith("_run_id")}
    assert main == expected
    for name in main:
        assert f"--{name} {{{name}}}" in MLPROJECT["main"]["command"]


def test_presets_fill_auto_and_explicit_values_win():
    real = config.load("train", {"split_run_id": "x"}, preset="real")
    assert real.features == (64, 128, 256, 512) and (real.image_height, real.image_width) == (160, 240)
    assert real.batch_size == 16 and real.lr == 1e-4
    builtin = config.load("train", {"split_run_id": "x", "lr": "3e-4"}, preset="builtin")
    assert builtin.lr == 3e-4 and builtin.features == tuple(
        int(f) for f in str(PARAMS["presets"]["builtin"]["features"]).split(","))


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
    ("split_data", {"val_fraction": "1.2"}, "parameter val_fraction=1.2: must be in [0, 1)"),
    ("split_data", {"test_fraction": "-0.1"}, "parameter test_fraction=-0.1"),
    ("split_data", {"val_fraction": "0.5", "test_fraction": "0.5"}, "must sum to less than 1"),
    ("evaluate", {"train_run_id": ""}, "parameter train_run_id is missing"),
    ("evaluate", {"train_run_id": "x", "threshold": "1.5"}, "parameter threshold=1.5"),
])
def test_bad_parameters_are_named(step, overrides, message):
    base = {"split_run_id": "x"} if step == "train" else {}
    with pytest.raises(UserError) as err:
        config.load(step, {**base, **overrides}, preset="real")
    assert message in str(err.value)


def test_cli_overrides_parse_only_given_values():
    assert config.cli_overrides("train", ["--lr", "1e-4", "--epochs", "3"]) == {"lr": "1e-4", "epochs": "3"}
    main = config.cli_overrides("main", ["--data_dir", "/x", "--threshold", "0.4"])
    assert main == {"data_dir": "/x", "threshold": "0.4"}
    with pytest.raises(SystemExit):
        config.cli_overrides("main", ["--split_run_id", "abc"])   # main chains run ids itself
