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
from unet.planning.fingerprint import Fingerprint, Machine, Speed, fingerprint, measure_speed
from unet.network.precision import Precision
from unet.planning.sizing import cap_size, memory_pixels, plan_patch, plan_size, round_to, scale_rule


# Settings the plan fills in when the user leaves them "auto".
PLANNED = ("lr", "lr_schedule", "warmup_steps", "batch_size", "epochs", "steps_per_epoch",
           "image_height", "image_width", "patch_height", "patch_width", "features", "loss",
           "color_jitter", "appearance", "patience", "average_steps", "bn_recalibration",
           "memory_format", "predict_scale")
SCALE_MEANING = {"fit": "each image resized to the input",        # unet.inference.segmenter.Segmenter
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
    the rules below. `measure(features, patch, size, batch)` times the machine (only called
    when the number of steps is left to the budget)."""
    device = rules["gpu"] if machine.device == "cuda" else rules["cpu"]
    device = {**device, "min_object_px": rules["min_object_px"]}
    v: dict[str, Any] = dict(given)
    notes: list[str] = []
    v.setdefault("features", tuple(int(f) for f in str(device["features"]).split(",")))
    # A size the user chose (one side or both) is trained on whole; a planned one may be cropped.
    planned_size = "image_height" not in v and "image_width" not in v
    # Batch: the device's, at most half the training images (so an epoch has 2+ steps), a
    # multiple of the processes sharing it.
    if "batch_size" not in v:
        batch = max(2, min(device["batch_size"], fp.train_images // 2))
        v["batch_size"] = -(-batch // nproc) * nproc
    if "image_height" not in v or "image_width" not in v:
        (height, width), why = plan_size(fp, len(v["features"]), device)
        cap = memory_pixels(fp, machine, v["features"], v["batch_size"], rules)
        if cap is not None and height * width > cap[0]:
            (height, width), why = cap_size((height, width), cap[0],
                                            2 ** len(v["features"])), f"{why}; {cap[1]}"
        aspect = fp.median_width / fp.median_height
        if "image_height" in v:          # one side given: the other keeps the aspect
            width = round_to(v["image_height"] * aspect, 2 ** len(v["features"]))
        elif "image_width" in v:
            height = round_to(v["image_width"] / aspect, 2 ** len(v["features"]))
        v.setdefault("image_height", height)
        v.setdefault("image_width", width)
        notes.append(f"input size: {why}")
    # Training crops: the whole input when it fits the pixel budget, else crops of the budget's
    # size and the input's aspect (the network is convolutional: it predicts whole inputs).
    size = (v["image_height"], v["image_width"])
    patch = (plan_patch(size, device["pixels"], 2 ** len(v["features"]))
             if planned_size else size)
    v.setdefault("patch_height", patch[0])
    v.setdefault("patch_width", patch[1])
    # Adam's lr grows with the square root of the batch (the noise of a gradient estimate).
    v.setdefault("lr", rules["lr"] * math.sqrt(v["batch_size"] / 8))
    for name in ("lr_schedule", "loss", "color_jitter", "bn_recalibration"):
        v.setdefault(name, rules[name])
    natural = math.ceil(fp.train_images / v["batch_size"])    # steps in one pass over the data

    speed, estimate, why = None, None, "the epochs given"
    if "epochs" in v:
        v.setdefault("steps_per_epoch", natural)
    else:
        def steps_in_budget(speed: Speed) -> tuple[int, str, float]:
            # Each validation round costs a pass over the validation images, the BN
            # recalibration images and about a second of checkpointing and logging.
            round_seconds = ((fp.val_images + v["bn_recalibration"])
                             / speed.eval_images_per_second + rules["round_overhead_seconds"])
            return (*budget_steps(budget_minutes * 60, speed.seconds_per_step, round_seconds,
                                  natural, rules, v.get("steps_per_epoch")), round_seconds)

        speed = measure(v["features"], (v["patch_height"], v["patch_width"]), size,
                        v["batch_size"])
        steps, why, _ = steps_in_budget(speed)
        if "features" not in given:
            speed, steps, why = fit_width_to_machine(v, speed, steps, why, natural, rules,
                                                     measure, steps_in_budget, notes)
        round_seconds = steps_in_budget(speed)[2]
        v.setdefault("steps_per_epoch", rounds_of(steps, natural, rules)[1])
        v["epochs"] = max(1, round(steps / v["steps_per_epoch"]))
        notes.append(f"steps: set by {why} ({natural} steps per pass over the data)")
    total = v["epochs"] * v["steps_per_epoch"]
    if speed is not None:
        estimate = (total * speed.seconds_per_step + v["epochs"] * round_seconds) / 60
        if why.startswith("the minimum") and estimate > budget_minutes:
            notes.append(f"over budget: ~{estimate:.1f} min for the minimum of "
                         f"{rules['min_steps']} steps and their validations; raise "
                         f"time_budget_min or set epochs")
    # Warm-up over 5% of the steps (at most max_warmup). The budget is spent on the schedule:
    # no early stopping (on 2 validation cars, rounds without progress were noise and runs
    # stopped with the lr at half its peak); the model is the weight average at its end.
    v.setdefault("warmup_steps", min(rules["max_warmup"],
                                     math.ceil(rules["warmup_fraction"] * total)))
    v.setdefault("patience", 0)
    v.setdefault("average_steps", max(10, round(rules["average_fraction"] * total)))
    # Colour augmentation that makes colour no cue, unless there is no colour to vary.
    v.setdefault("appearance", "colour" if fp.colour else "grey")
    # The memory format the probe found faster (channels_last is oneDNN's and cuDNN's best
    # in bf16/fp16; on an fp32-only CPU NCHW can win); unmeasured, the precision's default.
    v.setdefault("memory_format", ("channels_last" if speed.channels_last else "contiguous")
                 if speed else "auto")
    if not fp.colour:
        notes.append("appearance: grey images (brightness and contrast vary, no hue)")
    if "predict_scale" in v:
        scale_why = "given (-P predict_scale)"
    else:
        v["predict_scale"], scale_why = scale_rule(fp)
    return Plan({name: v[name] for name in PLANNED}, fp, machine, speed, budget_minutes,
                estimate, notes, scale_why)


def scale_features(features: Sequence[int], factor: float, multiple: int = 1
                   ) -> tuple[int, ...]:
    """Every width times `factor`, rounded to a multiple of `multiple` (at least that)."""
    return tuple(max(multiple, round(f * factor / multiple) * multiple) for f in features)


def fit_width_to_machine(v: dict, speed: Speed, steps: int, why: str, natural: int,
                         rules: dict, measure, steps_in_budget,
                         notes: list[str]) -> tuple[Speed, int, str]:
    """On a machine whose budget buys fewer than `min_budget_steps` steps at the planned
    widths, a narrower network: the widths times each of `narrower_factors` in turn, timed,
    the widest that buys them (else the narrowest). A step costs about the square of the
    width, and at a 5-minute budget more steps of a narrower network won: on the quick start's
    folder without bf16 (fp32), 16..128 on 455 steps reached test Dice 0.9562, 12..96 on 840
    0.9711, 8..64 on 1890 0.9755; with bf16, 16..128 on ~990 steps 0.9737, 8..64 on 2220
    0.9749. A small folder wants no more than max_passes over it. Returns the (speed, steps,
    why) in effect."""
    wanted = min(rules["min_budget_steps"], rules["max_passes"] * natural)
    if steps >= wanted:
        return speed, steps, why

    def tried(steps: int, speed: Speed) -> str:
        return (f"{','.join(map(str, v['features']))}: {steps} "
                f"({speed.seconds_per_step * 1000:.0f} ms a step)")
    planned, widths = v["features"], [tried(steps, speed)]
    for factor in rules["narrower_factors"]:
        v["features"] = scale_features(planned, factor, multiple=4)
        speed = measure(v["features"], (v["patch_height"], v["patch_width"]),
                        (v["image_height"], v["image_width"]), v["batch_size"])
        steps, why, _ = steps_in_budget(speed)
        widths.append(tried(steps, speed))
        if steps >= wanted:
            break
    notes.append(f"width: fewer than {wanted} steps in the budget at the planned features; "
                 f"features tried: {'; '.join(widths)}")
    return speed, steps, why


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
    plan = make_plan(fingerprint(train, val, read_mask=read_mask), Machine.of(precision), explicit["time_budget_min"],
                     fixed, params["plan"], explicit["nproc"],
                     measure=lambda f, patch, size, b: measure_speed(f, patch, size, b, precision,
                                                                     formats=formats))
    return config.load("train", overrides, auto=plan.values, params=params), plan
