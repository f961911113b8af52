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


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a test Dice was measured under: the split's test images, and the evaluation's
    threshold, test-time flips and runtime as asked for ("auto": each model's own). Results
    are compared only under the same setting."""
    split_run_id: str
    threshold: float = 0.5
    tta: str = "auto"
    runtime: str = "auto"

    @property
    def tag(self) -> str:
        """The version tag holding a result under this setting (MLflow's tag-key characters)."""
        return f"result:{self.split_run_id}:{self.threshold:g}:{self.tta}:{self.runtime}"

    def describe(self) -> str:
        return (f"split {self.split_run_id}, threshold {self.threshold:g}, tta {self.tta}, "
                f"runtime {self.runtime}")


RESULT = "result:"                   # the prefix of the result tags


def result_value(dice: float, floor: float) -> str:
    return f"dice {dice:.6f} floor {floor:.6f}"


def parse_result(value: str) -> tuple[float, float]:
    """(dice, floor) of a result tag's value."""
    _, dice, _, floor = value.split()
    return float(dice), float(floor)


def register_and_promote(model_uri: str, name: str, metrics: dict[str, float], setting: Setting,
                         train_run_id: str, score_champion, floor: Floor) -> Promotion:
    """Registers model_uri under `name` (once, however many evaluations of it run at once),
    records its test Dice under `setting` (a tag of its own: a re-evaluation under another
    threshold, tta, runtime or split never overwrites it), tags the version with these test
    metrics (the latest evaluation's, for display), and gives it an alias: none if its test
    Dice is not above the floor (no better than a trivial guess, even as the first version of
    its name); champion if it beats the champion under the same setting (or there is none);
    else challenger.

    `score_champion(model_uri) -> dice` scores the current champion under this setting when it
    has no result there; the score is recorded on the champion's version.

    The rule (docs/promotion.md): `champion` moves only to a version that beat the champion
    under a common setting and never lost to it under another one; one below the floor moves
    no alias at all.

    The registry has no transactions, so the champion is settled rather than set: after its
    result is recorded, each evaluation above the floor re-reads every version's results and
    moves the alias by the rule, and re-reads again after each write (see `settle`). Whatever
    order concurrent evaluations finish in, the last write is made from a complete view.
    """
    client = MlflowClient()
    dice = round(metrics["dice"], 6)     # compared at the tags' precision
    above = dice > round(floor.dice, 6)
    current = champion(name)
    # Everything that can fail slowly (scoring the champion) happens before the registry is
    # touched; the alias moves last. A failure on the way leaves the champion as it was, and
    # at worst a version without alias, which a re-run finds and finishes (same aliases).
    held = None
    if above and current is not None and current.source != model_uri \
            and setting.tag not in current.tags:
        held = (str(current.version), round(score_champion(f"models:/{name}@{CHAMPION}"), 6))
    version = register_once(name, model_uri)
    tags = {f"test_{k}": f"{v:.6f}" for k, v in metrics.items()}
    tags.update({f"baseline_dice_{k}": f"{v:.6f}" for k, v in floor.baselines.items()})
    tags.update({"split_run_id": setting.split_run_id, "train_run_id": train_run_id,
                 "floor_dice": f"{floor.dice:.6f}"})
    for key, value in tags.items():
        write(client.set_model_version_tag, name, version, key, value)
    if held is not None:
        write(client.set_model_version_tag, name, held[0], setting.tag,
              result_value(held[1], floor.dice))
    # Written last: a version is a candidate under this setting only once its scores are there.
    write(client.set_model_version_tag, name, version, setting.tag,
          result_value(dice, floor.dice))
    promotion = _verdict(version, dice, floor, setting,
                         *(settle(name, setting) if above else (None, None)))
    other = promotion.compared_with
    write(client.set_model_version_tag, name, version, "promotion", promotion.reason)
    write(client.set_model_version_tag, name, version, "compared_with",
          "none" if other is None else f"v{other[0]} Dice {other[1]:.6f}")
    if promotion.alias == CHALLENGER:
        write(client.set_registered_model_alias, name, CHALLENGER, version)
    return promotion


Score = tuple[str, float]                # (version, test Dice under the setting being settled)


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


def results(name: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Every version of `name` -> {setting tag: (dice, floor)}."""
    return {str(v.version): {k: parse_result(t) for k, t in v.tags.items()
                             if k.startswith(RESULT)}
            for v in MlflowClient().search_model_versions(f"name = '{name}'")}


def challengers(table: dict[str, dict[str, tuple[float, float]]], held: str, setting: Setting
                ) -> list[Score]:
    """The versions that may take `champion` from `held` under `setting`, best first (ties: the
    earlier version): above their floor there, above held's Dice there, and below held under no
    other setting both were tested on."""
    mine = table.get(held, {})
    if setting.tag not in mine:
        return []

    def lost_to_held(version: str) -> bool:
        return any(key in mine and mine[key][0] > dice
                   for key, (dice, _) in table[version].items())
    out = [(v, r[setting.tag][0]) for v, r in table.items()
           if v != held and setting.tag in r and r[setting.tag][0] > r[setting.tag][1]
           and r[setting.tag][0] > mine[setting.tag][0] and not lost_to_held(v)]
    return sorted(out, key=lambda vd: (-vd[1], int(vd[0])))


def settle(name: str, setting: Setting, rounds: int = 20
           ) -> tuple[tuple[str, float | None] | None, Score | None]:
    """Moves `champion` by the rule (register_and_promote): with no champion, to the best
    version above its floor under `setting`; else to the best of `challengers`. A champion
    with no result under `setting` (a race: it changed since this evaluation scored the one
    before) is kept. Repeats read, decide, write until a read finds nothing to change. Returns
    the champion with its Dice under `setting` (None: none there) and what it was compared
    with (the best other version under `setting`)."""
    client = MlflowClient()
    for _ in range(rounds):
        table = results(name)
        ranked = sorted(((v, r[setting.tag][0]) for v, r in table.items()
                         if setting.tag in r and r[setting.tag][0] > r[setting.tag][1]),
                        key=lambda vd: (-vd[1], int(vd[0])))
        current = champion(name)
        if current is None:
            if not ranked:
                return None, None
            best = ranked[0]
        else:
            held = str(current.version)
            here = table.get(held, {}).get(setting.tag)
            better = challengers(table, held, setting)
            if not better:
                others = [vd for vd in ranked if vd[0] != held]
                if str(client.get_registered_model(name).aliases.get(CHALLENGER)) == held:
                    write(client.delete_registered_model_alias, name, CHALLENGER)
                return (held, None if here is None else here[0]), \
                    (others[0] if others else None)
            best = better[0]
        write(client.set_registered_model_alias, name, CHAMPION, best[0])
    raise RuntimeError(f"the champion of {name} did not settle in {rounds} rounds: other "
                       f"evaluations keep moving it; run evaluate again")


def _verdict(version: str, dice: float, floor: Floor, setting: Setting,
             holder: tuple[str, float | None] | None, rival: Score | None) -> Promotion:
    """The version's alias and the one-line reason, from the settled champion."""
    if holder is None and dice > round(floor.dice, 6):     # its result was not found again
        return Promotion(version, None, None, f"not promoted: its result under "
                         f"{setting.describe()} was not found when the champion was settled; "
                         f"run evaluate again", None)
    if holder is None:
        return Promotion(version, None, None,
                         f"not promoted: test Dice {dice:.4f} is not above the floor "
                         f"{floor.dice:.4f} (trivial baseline {floor.best} "
                         f"{floor.baselines[floor.best]:.4f} + margin {floor.margin})", None)
    if holder[0] == version:
        return Promotion(version, CHAMPION, None if rival is None else rival[1],
                         f"champion: test Dice {dice:.4f} above the floor {floor.dice:.4f}"
                         + ("" if rival is None else f" and v{rival[0]}'s {rival[1]:.4f}"),
                         rival)
    if holder[1] is None:
        return Promotion(version, CHALLENGER, None,
                         f"challenger: champion v{holder[0]} has no result under this "
                         f"setting ({setting.describe()}; it changed during this "
                         f"evaluation); run evaluate again to compare them", None)
    if dice > holder[1]:
        return Promotion(version, CHALLENGER, holder[1],
                         f"challenger: test Dice {dice:.4f} beats champion v{holder[0]}'s "
                         f"{holder[1]:.4f} here, but v{holder[0]} beat it under another "
                         f"setting both were tested on", holder)
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
