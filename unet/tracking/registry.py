"""The model registry: registration, the promotion floor and the champion/challenger rule."""
from __future__ import annotations

import dataclasses
import time

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from unet.evaluation import baselines

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclasses.dataclass
class Promotion:
    version: str
    alias: str | None            # CHAMPION, CHALLENGER, or None (below the floor)
    champion_dice: float | None  # the Dice on this split of the version it was compared with
    reason: str                  # one line, also the version's tag `promotion`
    compared_with: tuple[str, float] | None = None   # (version, its Dice on this split)


@dataclasses.dataclass(frozen=True)
class Floor:
    """The test Dice a model must beat to be promoted: the best trivial baseline + margin."""
    baselines: dict[str, float]  # baseline name -> its test Dice (unet.evaluation.baselines)
    margin: float

    @property
    def best(self) -> str:
        return max(self.baselines, key=self.baselines.get)

    @property
    def dice(self) -> float:
        return self.baselines[self.best] + self.margin


def log_floor(subsets: dict, threshold: float, margin: float, classes=None,
              read_mask=None) -> Floor:
    """The floor for a model tested on subsets["test"]: the trivial baselines
    (unet.evaluation.baselines, the mean mask from subsets["train"]; per class with K > 2
    `classes`; masks read by `read_mask`, void left out) logged as `baseline_dice_<name>`, and
    `floor_dice`."""
    scores = baselines.baseline_dice(
        subsets["test"], baselines.mean_mask(subsets["train"], classes=classes,
                                             read_mask=read_mask), threshold,
        classes, read_mask)
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
    """Registers model_uri under `name` (once, however many evaluations of it run at once),
    tags the version with its test metrics, and gives it an alias: none if its test Dice is not
    above the floor (no better than a trivial guess, even as the first version of its name);
    champion if it beats the champion's test Dice on the same test split (or there is none);
    else challenger.

    `score_champion(model_uri) -> dice` scores the current champion on this split when it was
    tested on another one.

    The rule (docs/trust.md): an evaluation never moves `champion` away from a version that it
    did not beat on a common test split, and one below the floor moves no alias at all.

    The registry has no transactions, so the champion is settled rather than set: after its
    version is tagged, each evaluation above the floor re-reads every version of this split and
    moves the alias to the best of them, and re-reads again after each write (see `settle`).
    Whatever order concurrent evaluations finish in, the last write is made from a complete view.
    """
    client = MlflowClient()
    dice = round(metrics["dice"], 6)     # compared at the tags' precision
    current = champion(name)
    # Everything that can fail slowly (scoring the champion) happens before the registry is
    # touched; the alias moves last. A failure on the way leaves the champion as it was, and
    # at worst a version without alias, which a re-run finds and finishes (same aliases).
    outside = None                       # (version, its Dice on this split), if tested elsewhere
    if dice > round(floor.dice, 6) and current is not None and current.source != model_uri \
            and current.tags.get("split_run_id") != split_run_id:
        outside = (str(current.version), round(score_champion(f"models:/{name}@{CHAMPION}"), 6))
    version = register_once(name, model_uri)
    tags = {f"test_{k}": f"{v:.6f}" for k, v in metrics.items()}
    tags.update({f"baseline_dice_{k}": f"{v:.6f}" for k, v in floor.baselines.items()})
    tags.update({"split_run_id": split_run_id, "train_run_id": train_run_id})
    for key, value in tags.items():
        write(client.set_model_version_tag, name, version, key, value)
    # Written last: a version is a candidate for champion only once all its scores are there.
    write(client.set_model_version_tag, name, version, "floor_dice", f"{floor.dice:.6f}")
    above = dice > round(floor.dice, 6)
    promotion = _verdict(version, dice, floor,
                         *(settle(name, split_run_id, outside, dice) if above else (None, None)))
    other = promotion.compared_with
    write(client.set_model_version_tag, name, version, "promotion", promotion.reason)
    write(client.set_model_version_tag, name, version, "compared_with",
          "none" if other is None else f"v{other[0]} Dice {other[1]:.6f}")
    if promotion.alias == CHALLENGER:
        write(client.set_registered_model_alias, name, CHALLENGER, version)
    return promotion


Score = tuple[str, float]                # (version, test Dice on the split being settled)


def write(action, *args, attempts: int = 5) -> None:
    """A registry write (a version tag, an alias), again when it collides with the same write
    of another evaluation: MLflow's SQL store reads, then inserts, so two processes tagging one
    version at once can hit the key's UNIQUE constraint; the next try finds the row and
    updates it."""
    for attempt in range(attempts):
        try:
            action(*args)
            return
        except Exception:  # noqa: BLE001 - sqlite's IntegrityError, or a server's MlflowException
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def settle(name: str, split_run_id: str, outside: Score | None = None,
           dice: float | None = None, rounds: int = 20
           ) -> tuple[tuple[str, float | None] | None, Score | None]:
    """Moves `champion` to the best version of `name` tested on split_run_id, by the rule:
    above its floor, and above the champion's Dice (a tie keeps the earlier version). A
    champion tested on another split moves only when it is `outside` (its Dice on this split,
    measured by this evaluation) and this evaluation's `dice` beats it; one that no evaluation
    of this split scored (a race: it changed since) is kept, with Dice None. Repeats read,
    decide, write until a read finds nothing to change. Returns the champion and what it was
    compared with (the best other version, or the outside champion it displaced)."""
    client = MlflowClient()
    for _ in range(rounds):
        candidates = {}
        for v in client.search_model_versions(f"name = '{name}'"):
            tags = v.tags
            if tags.get("split_run_id") == split_run_id and "floor_dice" in tags \
                    and float(tags["test_dice"]) > float(tags["floor_dice"]):
                candidates[str(v.version)] = float(tags["test_dice"])
        # Deterministic order: higher Dice first, then the earlier version (it got there first).
        ranked = sorted(candidates.items(), key=lambda kv: (-kv[1], int(kv[0])))
        current = champion(name)
        held = None if current is None else str(current.version)
        if current is not None and current.tags.get("split_run_id") != split_run_id:
            if outside is None or held != outside[0]:
                return (held, None), ranked[0] if ranked else None   # never compared: kept
            if dice is None or outside[1] >= dice:
                return outside, ranked[0] if ranked else None      # the outside champion holds
        if not ranked:
            return None, None
        best = ranked[0]
        if held == best[0]:
            displaced = outside if outside is not None and outside[0] != best[0] else None
            # A tracking server returns alias versions as text, sqlite as numbers.
            if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == best[0]:
                write(client.delete_registered_model_alias, name, CHALLENGER)
            return best, ranked[1] if len(ranked) > 1 else displaced
        write(client.set_registered_model_alias, name, CHAMPION, best[0])
    raise RuntimeError(f"the champion of {name} did not settle in {rounds} rounds: other "
                       f"evaluations keep moving it; run evaluate again")


def _verdict(version: str, dice: float, floor: Floor, holder: Score | None,
             rival: Score | None) -> Promotion:
    """The version's alias and the one-line reason, from the settled champion."""
    if dice <= round(floor.dice, 6):
        return Promotion(version, None, None,
                         f"not promoted: test Dice {dice:.4f} is not above the floor "
                         f"{floor.dice:.4f} (trivial baseline {floor.best} "
                         f"{floor.baselines[floor.best]:.4f} + margin {floor.margin})", None)
    if holder is not None and holder[0] == version:
        return Promotion(version, CHAMPION, None if rival is None else rival[1],
                         f"champion: test Dice {dice:.4f} above the floor {floor.dice:.4f}"
                         + ("" if rival is None else f" and v{rival[0]}'s {rival[1]:.4f}"),
                         rival)
    if holder[1] is None:
        return Promotion(version, CHALLENGER, None,
                         f"challenger: champion v{holder[0]} was tested on another split and "
                         f"not scored on this one (it changed during this evaluation); run "
                         f"evaluate again to compare them", None)
    return Promotion(version, CHALLENGER, holder[1],
                     f"challenger: test Dice {dice:.4f} does not beat champion v{holder[0]}'s "
                     f"{holder[1]:.4f} on this split", holder)


def register_once(name: str, model_uri: str) -> str:
    """The version of `name` made from model_uri, registering it if there is none. Two
    evaluations of one model at once may both register it: each then keeps the lowest
    version made from it and deletes its own if that is another, so one remains."""
    made = _versions_of(name, model_uri)
    if made:
        return made[0]
    mine = str(mlflow.register_model(model_uri, name).version)
    kept = _versions_of(name, model_uri)[0]
    if kept != mine:
        MlflowClient().delete_model_version(name, mine)
    return kept


def aliases_of(name: str, version: str) -> list[str]:
    return list(MlflowClient().get_model_version(name, version).aliases)


def _versions_of(name: str, model_uri: str) -> list[str]:
    """The versions of `name` made from model_uri, lowest first."""
    try:
        versions = MlflowClient().search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return sorted((str(v.version) for v in versions if v.source == model_uri), key=int)
