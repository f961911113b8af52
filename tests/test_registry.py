"""Registry safety: evaluate touches the registry only after its metrics are logged, a failure
leaves the champion as it was, and re-running the promotion ends with the same aliases."""
from __future__ import annotations

import sys

import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY, only
from unet.tracking import registry
from test_bad_input import run_step

NAME = "cars"


def aliases() -> dict[str, str]:
    return {alias: str(v) for alias, v in
            MlflowClient().get_registered_model(NAME).aliases.items()}


def evaluate(monkeypatch, train_run_id: str) -> None:
    from steps.evaluate import evaluate as step
    # These tests are about failures of the registry, not the floor: every model clears it.
    monkeypatch.setattr("unet.baselines.baseline_dice", lambda *args: {"all_background": 0.0})
    monkeypatch.setattr(sys, "argv", ["evaluate", "--train_run_id", train_run_id,
                                      "--model_name", NAME])
    step()


def train(split_id: str, tracking_uri: str, seed: str) -> str:
    result = run_step("train", {**only(TINY, "train"), "epochs": "1", "seed": seed,
                                "split_run_id": split_id}, tracking_uri)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.rsplit("train run ", 1)[1].split(":")[0]


def test_a_failed_promotion_keeps_the_champion_and_a_rerun_is_idempotent(tracking_uri,
                                                                         monkeypatch):
    split = run_step("split_data", only(TINY, "split_data"), tracking_uri)
    split_id = split.stdout.split("split_data run ")[1].split(":")[0]
    first, second = train(split_id, tracking_uri, "1"), train(split_id, tracking_uri, "2")
    evaluate(monkeypatch, first)
    assert aliases() == {"champion": "1"}

    def fail(*args, **kwargs):
        raise RuntimeError("registry down")
    for target in ("register_model", "score"):       # before and after the version exists
        with monkeypatch.context() as patch:
            if target == "register_model":
                patch.setattr(registry.mlflow, "register_model", fail)
            else:
                patch.setattr(MlflowClient, "set_registered_model_alias", fail)
            with pytest.raises(RuntimeError, match="registry down"):
                evaluate(patch, second)
        runs = MlflowClient().search_runs(
            [e.experiment_id for e in MlflowClient().search_experiments()],
            filter_string="tags.step = 'evaluate'", order_by=["attributes.start_time DESC"])
        assert runs[0].info.status == "FAILED" and "test_dice" in runs[0].data.metrics
        assert aliases() == {"champion": "1"}                 # untouched

    evaluate(monkeypatch, second)                            # finishes the half-made version
    after = aliases()
    assert "2" in after.values() and set(after) <= {"champion", "challenger"}
    evaluate(monkeypatch, second)                            # and again: nothing changes
    assert aliases() == after
    assert len(MlflowClient().search_model_versions(f"name = '{NAME}'")) == 2
