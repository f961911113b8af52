"""Registry promotion against a real (sqlite) tracking store."""
import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from unet.data.pairs import Pair
from unet.data.synthetic import generate
from unet.evaluation import baselines
from unet.evaluation.scoring import evaluate_pairs
from unet.inference.segmenter import Segmenter
from unet.network.model import UNet
from unet.tracking import models, registry

# A floor every model of these tests clears (the floor has tests of its own below).
LOW = registry.Floor({"all_background": 0.0, "mean_mask": 0.1}, margin=0.05)


def logged_model(seed: int) -> str:
    import torch
    torch.manual_seed(seed)
    with mlflow.start_run():
        return models.log_model(Segmenter(UNet(features=(4, 8)), (16, 16)),
                                  np.zeros((8, 12, 3), np.uint8))


def aliases(name: str) -> dict[str, str]:
    model = MlflowClient().get_registered_model(name)
    return {alias: str(version) for alias, version in model.aliases.items()}


def test_promotion_only_when_test_dice_beats_the_champion(tracking_uri):
    def never(uri):
        raise AssertionError("the champion was scored on this split already")

    first, worse, better = logged_model(0), logged_model(1), logged_model(2)
    p = registry.register_and_promote(first, "cars", {"dice": 0.90},
                                      registry.Setting("split-a"), "t1", never, LOW)
    assert (p.version, p.alias, p.champion_dice) == ("1", "champion", None)

    p = registry.register_and_promote(worse, "cars", {"dice": 0.80},
                                      registry.Setting("split-a"), "t2", never, LOW)
    assert (p.version, p.alias, p.champion_dice) == ("2", "challenger", 0.90)
    assert aliases("cars") == {"champion": "1", "challenger": "2"}

    # a tie does not take the title; re-running registers nothing new
    p = registry.register_and_promote(worse, "cars", {"dice": 0.90},
                                      registry.Setting("split-a"), "t2", never, LOW)
    assert (p.version, p.alias) == ("2", "challenger")
    assert len(MlflowClient().search_model_versions("name = 'cars'")) == 2

    p = registry.register_and_promote(better, "cars", {"dice": 0.95},
                                      registry.Setting("split-a"), "t3", never, LOW)
    assert (p.version, p.alias) == ("3", "champion")
    assert aliases("cars") == {"champion": "3", "challenger": "2"}
    tags = MlflowClient().get_model_version("cars", "3").tags
    assert tags["test_dice"] == "0.950000" and tags["split_run_id"] == "split-a"
    assert tags["train_run_id"] == "t3"


def test_a_champion_from_another_split_is_scored_again_on_this_one(tracking_uri):
    first, second = logged_model(0), logged_model(1)
    registry.register_and_promote(first, "cars", {"dice": 0.99},
                                  registry.Setting("split-a"), "t1", None, LOW)
    scored = []

    def rescore(uri):
        scored.append(uri)
        return 0.70          # the champion's Dice on split-b, lower than its 0.99 on split-a

    p = registry.register_and_promote(second, "cars", {"dice": 0.75},
                                      registry.Setting("split-b"), "t2", rescore, LOW)
    assert scored == ["models:/cars@champion"]
    assert (p.alias, p.champion_dice) == ("champion", pytest.approx(0.70))
    assert aliases("cars") == {"champion": "2"}


def constant_model(logit: float) -> Segmenter:
    """A UNet whose output is `logit` everywhere, whatever the image (zero head weights)."""
    model = UNet(features=(4, 8))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(logit)
    return Segmenter(model, (32, 48))


def test_a_constant_output_model_is_registered_but_never_champion(tracking_uri, tmp_path):
    stems = generate(tmp_path, 12, 48, 72, seed=3)
    pairs = [Pair(s, tmp_path / "train" / f"{s}.jpg", tmp_path / "train_masks" / f"{s}_mask.gif")
             for s in stems]
    train, test = pairs[:8], pairs[8:]
    floor = registry.Floor(baselines.baseline_dice(test, baselines.mean_mask(train)), 0.05)
    for logit, name in ((5.0, "all_foreground"), (-5.0, "all_background")):
        # the constant model scores exactly its baseline, so it never clears the floor
        dice = evaluate_pairs(constant_model(logit), test)["dice"]
        assert dice == pytest.approx(floor.baselines[name])
    with mlflow.start_run():
        uri = models.log_model(constant_model(5.0), np.zeros((8, 12, 3), np.uint8))
    p = registry.register_and_promote(uri, "cars", {"dice": dice},
                                      registry.Setting("split-a"), "t1", None, floor)
    assert (p.version, p.alias) == ("1", None)                 # even as the first version
    assert aliases("cars") == {}
    tags = MlflowClient().get_model_version("cars", "1").tags
    assert tags["promotion"].startswith(f"not promoted: test Dice {dice:.4f} is not above the floor")
    assert float(tags["floor_dice"]) == pytest.approx(floor.dice, abs=1e-6)
    assert float(tags["baseline_dice_mean_mask"]) == pytest.approx(floor.baselines["mean_mask"], abs=1e-6)

    # and with a champion in place, a model under the floor does not even become challenger
    good = logged_model(1)
    registry.register_and_promote(good, "cars", {"dice": 0.95},
                                  registry.Setting("split-a"), "t2", None, floor)
    assert aliases("cars") == {"champion": "2"}
    p = registry.register_and_promote(logged_model(2), "cars", {"dice": floor.dice},
                                      registry.Setting("split-a"), "t3", None, floor)
    assert p.alias is None and aliases("cars") == {"champion": "2"}


def test_the_model_card_says_how_the_model_meets_images_of_other_sizes():
    from unet.tracking.reports import scale_line
    why = "photos: 31 of 32 sampled masks frame their object"
    assert scale_line({"scale": "0.8,0.8", "predict_scale": "fit",
                       "predict_scale_why": why}) == (
        f"each image resized to the input (`predict_scale` fit; {why}; predict and serving "
        f"take `predict_scale` to override)")
    assert scale_line({"scale": "1,1", "predict_scale": "native", "predict_scale_why": "given"}
                      ).startswith("predicted at scale 1,1 (input pixels per image pixel) "
                                   "(`predict_scale` native; given;")
    # Train runs of before predict_scale: their models predict at their scale, if any.
    assert scale_line({"scale": "0.5,0.5"}).startswith(
        "predicted at scale 0.5,0.5 (input pixels per image pixel) (`predict_scale` native;")
    assert scale_line({}).startswith("each image resized to the input (`predict_scale` fit;")
