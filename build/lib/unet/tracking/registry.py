"""The model registry: registration, the promotion floor and the champion/challenger rule."""
from __future__ import annotations

import dataclasses

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from unet import baselines

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclasses.dataclass
class Promotion:
    version: str
    alias: str | None            # CHAMPION, CHALLENGER, or None (below the floor)
    champion_dice: float | None  # the previous champion's test Dice on this split, if any
    reason: str                  # one line, also the version's tag `promotion`


@dataclasses.dataclass(frozen=True)
class Floor:
    """The test Dice a model must beat to be promoted: the best trivial baseline + margin."""
    baselines: dict[str, float]  # baseline name -> its test Dice (unet.baselines)
    margin: float

    @property
    def best(self) -> str:
        return max(self.baselines, key=self.baselines.get)

    @property
    def dice(self) -> float:
        return self.baselines[self.best] + self.margin


def log_floor(subsets: dict, threshold: float, margin: float) -> Floor:
    """The floor for a model tested on subsets["test"]: the trivial baselines (unet.baselines,
    the mean mask from subsets["train"]) logged as `baseline_dice_<name>`, and `floor_dice`."""
    scores = baselines.baseline_dice(subsets["test"], baselines.mean_mask(subsets["train"]),
                                     threshold)
    floor = Floor(scores, margin)
    mlflow.log_metrics({f"baseline_dice_{k}": v for k, v in scores.items()}
                       | {"floor_dice": floor.dice})
    return floor


TASK = ("U-Net binary segmentation (unet-mlflow): input an RGB image of any size, output a "
        "0/255 mask of the objects at the image's size. Each version's description says what "
        "data it was trained on, its test Dice next to the trivial baselines, and its plan; "
        "alias `champion` marks the best on the same test split, `challenger` one that did "
        "not beat it.")


def describe(name: str, version: str, card: str) -> None:
    """Sets the version's description (its model card) and, if it has none, the registered
    model's (the task)."""
    client = MlflowClient()
    client.update_model_version(name, version, description=card)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=TASK)


def champion(name: str):
    """The model version holding alias champion, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_and_promote(model_uri: str, name: str, metrics: dict[str, float], split_run_id: str,
                         train_run_id: str, score_champion, floor: Floor) -> Promotion:
    """Registers model_uri under `name`, tags the version with its test metrics, and gives it
    an alias: none if its test Dice is not above the floor (no better than a trivial guess,
    even as the first version of its name); champion if it beats the current champion's
    test Dice on the same test split (or there is none); else challenger.

    `score_champion(model_uri) -> dice` scores the current champion on this split when its tags
    hold no score for this split (it was tested on another one).
    """
    client = MlflowClient()
    dice = round(metrics["dice"], 6)     # compared at the tags' precision
    floor_dice = round(floor.dice, 6)
    current = champion(name)
    # Everything that can fail slowly (scoring the champion) happens before the registry is
    # touched; the alias moves last. A failure on the way leaves the champion as it was, and
    # at worst a version without alias, which a re-run finds and finishes (same aliases).
    champion_dice = None
    if dice > floor_dice and current is not None and current.source != model_uri:
        if current.tags.get("split_run_id") == split_run_id and "test_dice" in current.tags:
            champion_dice = float(current.tags["test_dice"])
        else:
            champion_dice = score_champion(f"models:/{name}@{CHAMPION}")
    if dice <= floor_dice:
        alias = None
        reason = (f"not promoted: test Dice {dice:.4f} is not above the floor {floor.dice:.4f} "
                  f"(trivial baseline {floor.best} {floor.baselines[floor.best]:.4f} + margin "
                  f"{floor.margin})")
    elif champion_dice is None or dice > champion_dice:
        alias = CHAMPION
        reason = (f"champion: test Dice {dice:.4f} above the floor {floor.dice:.4f}"
                  + ("" if champion_dice is None else
                     f" and the previous champion's {champion_dice:.4f}"))
    else:
        alias = CHALLENGER
        reason = (f"challenger: test Dice {dice:.4f} does not beat the champion's "
                  f"{champion_dice:.4f} on this split")
    version = str(_registered_version(name, model_uri)
                  or mlflow.register_model(model_uri, name).version)
    tags = {f"test_{k}": f"{v:.6f}" for k, v in metrics.items()}
    tags.update({f"baseline_dice_{k}": f"{v:.6f}" for k, v in floor.baselines.items()})
    tags.update({"split_run_id": split_run_id, "train_run_id": train_run_id,
                 "floor_dice": f"{floor.dice:.6f}", "promotion": reason})
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    if alias is not None:
        client.set_registered_model_alias(name, alias, version)
    return Promotion(version, alias, champion_dice, reason)


def aliases_of(name: str, version: str) -> list[str]:
    return list(MlflowClient().get_model_version(name, version).aliases)


def _registered_version(name: str, model_uri: str) -> str | None:
    """The version of `name` already made from model_uri (re-running evaluate registers once)."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((str(v.version) for v in versions if v.source == model_uri), None)
