"""Registry promotion against a real (sqlite) tracking store."""
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from unet import tracking
from unet.model import UNet
from unet.predict import Segmenter


def logged_model(seed: int) -> str:
    import torch
    torch.manual_seed(seed)
    with mlflow.start_run():
        return tracking.log_model(Segmenter(UNet(features=(4, 8)), (16, 16)),
                                  np.zeros((8, 12, 3), np.uint8))


def aliases(name: str) -> dict[str, str]:
    model = MlflowClient().get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_promotion_only_when_test_dice_beats_the_champion(tracking_uri):
    def never(uri):
        raise AssertionError("the champion was scored on this split already")

    first, worse, better = logged_model(0), logged_model(1), logged_model(2)
    p = tracking.register_and_promote(first, "cars", {"dice": 0.90}, "split-a", "t1", never)
    assert (p.version, p.alias, p.champion_dice) == ("1", "champion", None)

    p = tracking.register_and_promote(worse, "cars", {"dice": 0.80}, "split-a", "t2", never)
    assert (p.version, p.alias, p.champion_dice) == ("2", "challenger", 0.90)
    assert aliases("cars") == {"champion": "1", "challenger": "2"}

    # a tie does not take the title; re-running registers nothing new
    p = tracking.register_and_promote(worse, "cars", {"dice": 0.90}, "split-a", "t2", never)
    assert (p.version, p.alias) == ("2", "challenger")
    assert len(MlflowClient().search_model_versions("name = 'cars'")) == 2

    p = tracking.register_and_promote(better, "cars", {"dice": 0.95}, "split-a", "t3", never)
    assert (p.version, p.alias) == ("3", "champion")
    assert aliases("cars") == {"champion": "3", "challenger": "2"}
    tags = MlflowClient().get_model_version("cars", "3").tags
    assert tags["test_dice"] == "0.950000" and tags["split_run_id"] == "split-a"
    assert tags["train_run_id"] == "t3"


def test_a_champion_from_another_split_is_scored_again_on_this_one(tracking_uri):
    first, second = logged_model(0), logged_model(1)
    tracking.register_and_promote(first, "cars", {"dice": 0.99}, "split-a", "t1", None)
    scored = []

    def rescore(uri):
        scored.append(uri)
        return 0.70          # the champion's Dice on split-b, lower than its 0.99 on split-a

    p = tracking.register_and_promote(second, "cars", {"dice": 0.75}, "split-b", "t2", rescore)
    assert scored == ["models:/cars@champion"]
    assert (p.alias, p.champion_dice) == ("champion", pytest.approx(0.70))
    assert aliases("cars") == {"champion": "2"}
