"""The training plan: settings derived from the data, the machine and a time budget.

As nnU-Net does, in three stages: a fingerprint of the data (how many images, their size, how
small the objects are) and of the machine (unet/planning/fingerprint.py); a planner that turns them
and the budget into settings by a few rules, each stated where it is applied; and the plan, printed
and logged (`plan.json`, `plan.txt`) before training, whose values become the train config.
Every value the user gave wins; the plan fills in the rest and sizes the number of optimizer
steps to the values in effect (passing a plan's values with -P trains with the same settings
without measuring anything).

The rules' constants live in params.yaml (`plan:`), where they can be read and changed.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

from unet.config import pipeline as config
from unet.config.checks import AUTO
from unet.data.pairs import Pair
from unet.network.precision import Precision
from unet.planning.fingerprint import (
    Fingerprint,
    Machine,
    Speed,
    fingerprint,
    measure_speed,
)
from unet.planning.sizing import (
    cap_size,
    memory_pixels,
    plan_patch,
    plan_size,
    round_to,
    scale_rule,
)

# Settings the plan fills in when the user leaves them "auto".
PLANNED = ("lr", "lr_schedule", "warmup_steps", "batch_size", "epochs", "steps_per_epoch",
           "image_height", "image_width", "patch_height", "patch_width", "features", "loss",
           "color_jitter", "appearance", "patience", "average_steps", "bn_recalibration",
           "memory_format", "predict_scale")
# How the model meets images of other sizes (unet.inference.segmenter.Segmenter)
SCALE_MEANING = {"fit": "each image resized to the input",
                 "native": "every image at the training scale"}


@dataclasses.dataclass
class Plan:
    values: dict[str, Any]        # a value for every name in PLANNED
    fingerprint: Fingerprint
    machine: Machine
    speed: Speed | None           # None when the number of steps was given
    budget_minutes: float
    estimated_minutes: float | None
    notes: list[str]              # why each value is what it is
    scale_why: str = ""           # why predict_scale is what it is (scale_rule, or given)

    @property
    def steps_why(self) -> str:
        """Why training runs as many steps as it does (the note "steps: set by ..."), e.g.
        "set by 100 passes over the data (6 steps per pass over the data)"."""
        return next((note.removeprefix("steps: ") for note in self.notes
                     if note.startswith("steps: ")), "")

    def to_dict(self) -> dict:
        return {"values": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in self.values.items()},
                "fingerprint": dataclasses.asdict(self.fingerprint),
                "machine": dataclasses.asdict(self.machine),
                "speed": dataclasses.asdict(self.speed) if self.speed else None,
                "budget_minutes": self.budget_minutes,
                "estimated_minutes": self.estimated_minutes, "notes": self.notes,
                "scale_why": self.scale_why}

    def to_text(self) -> str:
        fp, m = self.fingerprint, self.machine
        objects = f"{fp.small_object_px:.0f} px" if fp.small_object_px else "none found"
        lines = ["=== training plan ===",
                 f"  data     {fp.train_images} train / {fp.val_images} val images, median "
                 f"{fp.median_height}x{fp.median_width}, foreground {fp.foreground_fraction:.0%},"
                 f" small objects {objects}",
                 f"  machine  {m.device}{' bf16' if m.bf16 else ''}, {m.cores} cores"
                 + (f", {m.gpu_memory_gb} GB" if m.device == "cuda" else "")
                 + (f", {m.memory_gb:g} GB RAM" if m.memory_gb else "")]
        v = self.values
        whole = (v["patch_height"], v["patch_width"]) == (v["image_height"], v["image_width"])
        patch = "" if whole else f" (trained on {v['patch_height']}x{v['patch_width']} crops)"
        lines += [f"  input    {v['image_height']}x{v['image_width']}{patch}, features "
                  f"{','.join(map(str, v['features']))}, batch {v['batch_size']}, "
                  f"{v['memory_format']}",
                  f"  steps    {v['epochs']} epochs x {v['steps_per_epoch']} = "
                  f"{v['epochs'] * v['steps_per_epoch']} (warm-up {v['warmup_steps']}, "
                  f"early stop after {v['patience'] or 'never'})",
                  f"  optim    Adam lr {v['lr']:.3g} {v['lr_schedule']}, loss {v['loss']}, "
                  f"weights averaged over ~{v['average_steps']} steps, BN recalibration on "
                  f"{v['bn_recalibration']} images",
                  f"  augment  colour jitter {v['color_jitter']}, appearance {v['appearance']}",
                  f"  predict  {v['predict_scale']} ({SCALE_MEANING[v['predict_scale']]}): "
                  f"{self.scale_why}"]
        if self.estimated_minutes is not None:
            lines.append(f"  time     ~{self.estimated_minutes:.1f} min of a "
                         f"{self.budget_minutes:g} min budget "
                         f"({self.speed.seconds_per_step * 1000:.0f} ms per step measured)")
        if self.speed is not None:
            # evaluate's label-quality check (unet/evaluation/label_quality.py) costs one forward
            # pass per image of the split at this input size, plus decoding.
            lines.append(f"  labels   after training, evaluate scores every mask: ~"
                         f"{100 / self.speed.eval_images_per_second:.0f} s per 100 images "
                         f"(x2 / x4 with test-time flips); -P label_quality=false skips it")
        lines += [f"  why      {note}" for note in self.notes]
        return "\n".join(lines)


def batch_for(wanted: int, train_images: int, nproc: int) -> int:
    """A batch of about `wanted`: at least 2, at most half the training images (so that an
    epoch has 2+ steps), a multiple of the processes sharing it."""
    batch = max(2, min(wanted, train_images // 2))
    return -(-batch // nproc) * nproc


def lr_at_batch(lr: float, batch: int, reference_batch: int) -> float:
    """`lr`, right at `reference_batch`, at `batch`: Adam's lr grows with the square root of
    the batch (the noise of a gradient estimate)."""
    return lr * math.sqrt(batch / reference_batch)

def rounds_of(steps: int, natural: int, rules: dict) -> tuple[int, int]:
    """(rounds, steps per round): validate after every pass over the data (`natural` steps),
    but at least min_rounds and at most max_rounds times (a big folder validates within a
    pass)."""
    per_round = min(max(natural, math.ceil(steps / rules["max_rounds"])),
                    math.ceil(steps / rules["min_rounds"]))
    return max(1, round(steps / per_round)), per_round


def budget_steps(budget: float, seconds_per_step: float, round_seconds: float, natural: int,
                 rules: dict, per_round: int | None = None) -> tuple[int, str]:
    """(optimizer steps, why): what fills `budget` seconds once the validation rounds are paid
    for, at most max_passes over the data, never fewer than min_steps. The rounds depend on the
    steps and the steps on the rounds: a few substitutions settle both."""
    rounds = rules["max_rounds"]
    for _ in range(3):
        steps = min((budget - rounds * round_seconds) / seconds_per_step,
                    rules["max_passes"] * natural)
        why = ("the time budget" if steps < rules["max_passes"] * natural
               else f"{rules['max_passes']} passes over the data")
        if steps < rules["min_steps"]:
            steps, why = rules["min_steps"], f"the minimum of {rules['min_steps']} steps"
        steps = int(steps)
        rounds = (max(1, round(steps / per_round)) if per_round
                  else rounds_of(steps, natural, rules)[0])
    return steps, why


def make_plan(fp: Fingerprint, machine: Machine, budget_minutes: float, given: dict[str, Any],
              rules: dict, nproc: int = 1,
              measure: Callable[[tuple, tuple, tuple, int], Speed] | None = None) -> Plan:
    """The settings in PLANNED: `given` (the user's explicit values) as they are, the rest by
    the rules of Planner. `measure(features, patch, size, batch)` times the machine (only
    called when the number of steps is left to the budget)."""
    return Planner(fp, machine, budget_minutes, given, rules, nproc, measure).plan()


class Planner:
    """The plan's rules, one method each, applied in order (each may use the settings of those
    before it); a rule sets only what `given` leaves open."""

    def __init__(self, fp: Fingerprint, machine: Machine, budget_minutes: float,
                 given: dict[str, Any], rules: dict, nproc: int, measure) -> None:
        self.fp, self.machine, self.budget_minutes = fp, machine, budget_minutes
        self.given, self.rules, self.nproc, self.measure = given, rules, nproc, measure
        device = rules["gpu"] if machine.device == "cuda" else rules["cpu"]
        self.device = {**device, "min_object_px": rules["min_object_px"]}
        self.v: dict[str, Any] = dict(given)
        self.notes: list[str] = []
        self.speed: Speed | None = None
        self.estimate: float | None = None

    def plan(self) -> Plan:
        for rule in (self.network, self.batch, self.input_size, self.crops, self.optimizer,
                     self.steps, self.schedule, self.appearance):
            rule()
        scale_why = self.predict_scale()
        return Plan({name: self.v[name] for name in PLANNED}, self.fp, self.machine, self.speed,
                    self.budget_minutes, self.estimate, self.notes, scale_why)

    @property
    def levels(self) -> int:
        return 2 ** len(self.v["features"])     # what a size must be a multiple of

    @property
    def natural(self) -> int:
        """Steps in one pass over the training data."""
        return math.ceil(self.fp.train_images / self.v["batch_size"])

    def network(self) -> None:
        """The device's widths (narrowed later by `steps` where the budget buys few steps)."""
        self.v.setdefault("features", tuple(int(f) for f in
                                            str(self.device["features"]).split(",")))

    def batch(self) -> None:
        if "batch_size" not in self.v:
            self.v["batch_size"] = batch_for(self.device["batch_size"], self.fp.train_images,
                                             self.nproc)

    def input_size(self) -> None:
        """From the objects' size and the images' (plan_size), capped by memory; one side
        given: the other keeps the images' aspect."""
        v, fp = self.v, self.fp
        if "image_height" in v and "image_width" in v:
            return
        (height, width), why = plan_size(fp, len(v["features"]), self.device)
        cap = memory_pixels(fp, self.machine, v["features"], v["batch_size"], self.rules)
        if cap is not None and height * width > cap[0]:
            (height, width) = cap_size((height, width), cap[0], self.levels)
            why = f"{why}; {cap[1]}"
        aspect = fp.median_width / fp.median_height
        if "image_height" in v:
            width = round_to(v["image_height"] * aspect, self.levels)
        elif "image_width" in v:
            height = round_to(v["image_width"] / aspect, self.levels)
        v.setdefault("image_height", height)
        v.setdefault("image_width", width)
        self.notes.append(f"input size: {why}")

    def crops(self) -> None:
        """The whole input when it fits the pixel budget, else crops of the budget's size and
        the input's aspect (the network is convolutional: it predicts whole inputs). A size
        the user chose (one side or both) is trained on whole."""
        size = (self.v["image_height"], self.v["image_width"])
        planned = "image_height" not in self.given and "image_width" not in self.given
        patch = plan_patch(size, self.device["pixels"], self.levels) if planned else size
        self.v.setdefault("patch_height", patch[0])
        self.v.setdefault("patch_width", patch[1])

    def optimizer(self) -> None:
        self.v.setdefault("lr", lr_at_batch(self.rules["lr"], self.v["batch_size"], 8))
        for name in ("lr_schedule", "loss", "color_jitter", "bn_recalibration"):
            self.v.setdefault(name, self.rules[name])

    def steps(self) -> None:
        """Epochs and steps per epoch: the epochs given, each a pass over the data; else as many
        steps as the time budget buys at the measured speed (budget_steps), with a narrower
        network where the budget buys few (narrower), validated in rounds_of's rounds."""
        v, rules = self.v, self.rules
        if "epochs" in v:
            v.setdefault("steps_per_epoch", self.natural)
            return
        self.speed = self.measure_at(v["features"])
        steps, why, _ = self.budget(self.speed)
        if "features" not in self.given:
            steps, why = self.narrower(steps, why)
        round_seconds = self.budget(self.speed)[2]
        v.setdefault("steps_per_epoch", rounds_of(steps, self.natural, rules)[1])
        v["epochs"] = max(1, round(steps / v["steps_per_epoch"]))
        self.notes.append(f"steps: set by {why} ({self.natural} steps per pass over the data)")
        total = v["epochs"] * v["steps_per_epoch"]
        self.estimate = (total * self.speed.seconds_per_step + v["epochs"] * round_seconds) / 60
        if why.startswith("the minimum") and self.estimate > self.budget_minutes:
            self.notes.append(f"over budget: ~{self.estimate:.1f} min for the minimum of "
                              f"{rules['min_steps']} steps and their validations; raise "
                              f"time_budget_min or set epochs")

    def measure_at(self, features: tuple[int, ...]) -> Speed:
        v = self.v
        return self.measure(features, (v["patch_height"], v["patch_width"]),
                            (v["image_height"], v["image_width"]), v["batch_size"])

    def budget(self, speed: Speed) -> tuple[int, str, float]:
        """(steps, why, seconds a validation round costs) at `speed`. A round costs a pass over
        the validation images, the BN recalibration images and about a second of
        checkpointing and logging."""
        round_seconds = ((self.fp.val_images + self.v["bn_recalibration"])
                         / speed.eval_images_per_second + self.rules["round_overhead_seconds"])
        return (*budget_steps(self.budget_minutes * 60, speed.seconds_per_step, round_seconds,
                              self.natural, self.rules, self.v.get("steps_per_epoch")),
                round_seconds)

    def narrower(self, steps: int, why: str) -> tuple[int, str]:
        """On a machine whose budget buys fewer than `min_budget_steps` steps at the planned
        widths, a narrower network: the widths times each of `narrower_factors` in turn, timed,
        the widest that buys them (else the narrowest). A step costs about the square of the
        width, and at a 5-minute budget more steps of a narrower network won: on the quick
        start's folder without bf16 (fp32), 16..128 on 455 steps reached test Dice 0.9562,
        12..96 on 840 0.9711, 8..64 on 1890 0.9755; with bf16, 16..128 on ~990 steps 0.9737,
        8..64 on 2220 0.9749. A small folder wants no more than max_passes over it. Sets
        `features` and `speed`; returns the (steps, why) in effect."""
        rules, v = self.rules, self.v
        wanted = min(rules["min_budget_steps"], rules["max_passes"] * self.natural)
        if steps >= wanted:
            return steps, why

        def tried() -> str:
            return (f"{','.join(map(str, v['features']))}: {steps} "
                    f"({self.speed.seconds_per_step * 1000:.0f} ms a step)")
        planned, widths = v["features"], [tried()]
        for factor in rules["narrower_factors"]:
            v["features"] = scale_features(planned, factor, multiple=4)
            self.speed = self.measure_at(v["features"])
            steps, why, _ = self.budget(self.speed)
            widths.append(tried())
            if steps >= wanted:
                break
        self.notes.append(f"width: fewer than {wanted} steps in the budget at the planned "
                          f"features; features tried: {'; '.join(widths)}")
        return steps, why

    def schedule(self) -> None:
        """Warm-up over 5% of the steps (at most max_warmup). The budget is spent on the
        schedule: no early stopping (on 2 validation cars, rounds without progress were noise
        and runs stopped with the lr at half its peak); the model is the weight average at its
        end."""
        v, rules = self.v, self.rules
        total = v["epochs"] * v["steps_per_epoch"]
        v.setdefault("warmup_steps", min(rules["max_warmup"],
                                         math.ceil(rules["warmup_fraction"] * total)))
        v.setdefault("patience", 0)
        v.setdefault("average_steps", max(10, round(rules["average_fraction"] * total)))

    def appearance(self) -> None:
        """Colour augmentation that makes colour no cue, unless there is no colour to vary; the
        memory format the probe found faster (channels_last is oneDNN's and cuDNN's best in
        bf16/fp16; on an fp32-only CPU NCHW can win), unmeasured the precision's default."""
        self.v.setdefault("appearance", "colour" if self.fp.colour else "grey")
        self.v.setdefault("memory_format", ("channels_last" if self.speed.channels_last
                                            else "contiguous") if self.speed else "auto")
        if not self.fp.colour:
            self.notes.append("appearance: grey images (brightness and contrast vary, no hue)")

    def predict_scale(self) -> str:
        """How the model meets images of other sizes (scale_rule); returns why."""
        if "predict_scale" in self.v:
            return "given (-P predict_scale)"
        self.v["predict_scale"], why = scale_rule(self.fp)
        return why


def scale_features(features: Sequence[int], factor: float, multiple: int = 1
                   ) -> tuple[int, ...]:
    """Every width times `factor`, rounded to a multiple of `multiple` (at least that)."""
    return tuple(max(multiple, round(f * factor / multiple) * multiple) for f in features)


def configure(overrides: dict[str, str], train: Sequence[Pair], val: Sequence[Pair],
              precision: Precision, params: dict[str, Any] | None = None, read_mask=None):
    """The train config for this split: the user's values, then the preset's (if one is
    named), then the plan's (its masks read by `read_mask`, as
    unet.planning.fingerprint.fingerprint). Returns (TrainConfig, Plan)."""
    params = params if params is not None else config.read_params()
    explicit = config.given("train", overrides, params)
    # Check the user's values before measuring anything (placeholders stand in for "auto").
    # A placeholder must not fail a check that the plan's own value would pass (or name a
    # value the user never saw): sizes agree with the sizes given.
    seed = config.preset("train", "seed", params)
    placeholders = {**seed, "steps_per_epoch": 1, "batch_size": 8 * max(1, explicit["nproc"])}
    for side in ("height", "width"):
        image = explicit.get(f"image_{side}",
                             max(seed[f"image_{side}"], explicit.get(f"patch_{side}", 0)))
        placeholders.update({f"image_{side}": image, f"patch_{side}": image})
    config.load("train", overrides, auto=placeholders, params=params)
    fixed = {**config.preset("train", explicit.get("preset", AUTO), params),
             **{k: v for k, v in explicit.items() if k in PLANNED}}
    # The memory formats to time: both, unless the user chose one.
    formats = ((explicit["memory_format"] == "channels_last",) if "memory_format" in explicit
               else (True, False))
    plan = make_plan(fingerprint(train, val, read_mask=read_mask), Machine.of(precision),
                     explicit["time_budget_min"], fixed, params["plan"], explicit["nproc"],
                     measure=lambda f, patch, size, b: measure_speed(f, patch, size, b, precision,
                                                                     formats=formats))
    return config.load("train", overrides, auto=plan.values, params=params), plan
