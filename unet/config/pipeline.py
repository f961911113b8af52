"""One typed config per entry point: defaults from params.yaml, overridden by `-P name=value`.

Every value is read as the text MLflow passes on the command line, then parsed by the field's
type, so a bad value is reported by parameter name. A train value of "auto" is filled in by the
training plan (unet.planning.plan), or by a named preset (`-P preset=seed`: params.yaml `presets`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_type_hints

import yaml

# AUTO and LOSSES are also read as config.AUTO, config.LOSSES by the steps and the library.
from unet.config.checks import (  # noqa: F401
    AUTO,
    LOSSES,
    MASK_KINDS,
    OUTPUTS,
    PREDICT_SCALES,
    at_least,
    check_runtime,
    check_tta,
    one_of,
)
from unet.config.entries import PredictConfig, TuneConfig, UiConfig
from unet.data.pairs import parse_group
from unet.errors import UserError
from unet.images.transforms import APPEARANCES
from unet.labels.masks import parse_ignore

# The project's params.yaml, carried by the package (a link in a checkout, a copy when built).
PARAMS_FILE = Path(__file__).parent / "params.yaml"


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    data_dir: str            # "synthetic" or a folder holding image_dir and mask_dir
    image_dir: str           # relative to data_dir
    mask_dir: str
    mask_suffix: str         # image "X.jpg" <-> mask "X{mask_suffix}{mask_ext}"
    mask_ext: str
    num_images: int          # size of the generated set (data_dir=synthetic only)
    synthetic_height: int
    synthetic_width: int
    val_fraction: float
    test_fraction: float
    seed: int
    on_bad_data: str         # fail | skip (drop the pairs the data check rejects)
    multiclass_masks: str    # error | threshold (binarize grey masks of several levels at half)
    classes: str             # auto (detected from the masks) | names, background first
    synthetic_classes: int   # built-in set: 2 or 4 (body, windows, wheels)
    exclude: str = ""        # a file of stems to leave out ("": none)
    ignore_index: str = "auto"   # the void value: auto (VOC's 255) | none | a mask value
    mask_kind: str = "auto"      # auto (decided from the masks) | binary | classes | instances
    group: str = "auto"          # what the split keeps together: auto | none | a regex

    @property
    def ignore(self) -> str | int | None:
        """ignore_index parsed: "auto", None or the value (unet.labels.masks.parse_ignore)."""
        return parse_ignore(self.ignore_index)

    def validate(self) -> None:
        one_of(self, "on_bad_data", ("fail", "skip"))
        one_of(self, "multiclass_masks", ("error", "threshold"))
        parse_ignore(self.ignore_index)
        one_of(self, "mask_kind", MASK_KINDS)
        parse_group(self.group)
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"parameter {name}={getattr(self, name)}: must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise UserError("parameters val_fraction + test_fraction must sum to less than 1 "
                            "(nothing would be left to train on)")
        at_least(self, ("num_images",), 3)
        one_of(self, "synthetic_classes", (2, 4))    # 4: background, body, windows, wheels
        if min(self.synthetic_height, self.synthetic_width) < 32:
            raise UserError("parameters synthetic_height/synthetic_width: must be at least 32")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    split_run_id: str
    preset: str              # auto (the training plan) | a name in params.yaml presets
    time_budget_min: float   # minutes the plan sizes training to (when epochs is auto)
    lr: float
    lr_schedule: str         # cosine | constant
    warmup_steps: int        # optimizer steps of linear lr warm-up
    batch_size: int
    epochs: int              # validation rounds
    steps_per_epoch: int     # optimizer steps per round
    image_height: int        # images are resized to this size (and predicted at it)
    image_width: int
    patch_height: int        # training crops of the resized images
    patch_width: int
    features: tuple[int, ...]
    loss: str                # bce_dice | bce
    color_jitter: float      # augmentation: brightness/contrast/saturation strength
    appearance: str          # colour | grey | jitter: what else the colour augmentation varies
    patience: int            # stop after this many rounds without a better val Dice; 0 never
    average_steps: int       # memory of the weight average (EMA) in optimizer steps; 0 off
    keep: str                # auto | final | best: which round's (averaged) weights are the model
    bn_recalibration: int    # training images BatchNorm statistics are recomputed on; 0 off
    rotate_limit: float      # augmentation: max rotation in degrees
    hflip: float             # augmentation: probability of a horizontal flip
    vflip: float             # augmentation: probability of a vertical flip
    num_workers: int
    precision: str           # auto | fp32 | bf16 | fp16
    memory_format: str       # channels_last | contiguous (the plan measures which is faster)
    seed: int
    resume_from: str         # "" or a train run id (its last checkpoint) or a checkpoint file
    nproc: int               # processes per machine; > 1 trains with DistributedDataParallel
    sync_bn: bool            # BatchNorm statistics over all processes (CUDA only)
    cache_dir: str           # "" (off) or a folder for resized arrays shared across runs
    compile: bool            # torch.compile the model
    system_metrics: bool     # MLflow records CPU/memory/GPU use (system/... metrics)
    tracking_wait_min: float   # at the end, minutes to wait for a tracking server that is away
    predict_scale: str = "auto"   # auto (from the data) | native | fit: unet.inference.segmenter.Segmenter
    output: str = "auto"     # auto (from the masks) | mask | instances: unet.training.fitting.output_of

    def validate(self) -> None:
        if not self.split_run_id:
            raise UserError("parameter split_run_id is missing: pass the run id printed by split_data")
        if self.lr <= 0:
            raise UserError(f"parameter lr={self.lr}: must be > 0 (e.g. 1e-4)")
        at_least(self, ("batch_size", "epochs", "steps_per_epoch", "nproc"), 1)
        for name in ("hflip", "vflip"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"parameter {name}={getattr(self, name)}: a probability, in [0, 1]")
        if not self.features or min(self.features) < 1:
            raise UserError(f"parameter features={self.features}: give positive widths, e.g. 64,128,256,512")
        min_size = 2 ** len(self.features)
        for name in ("image_height", "image_width", "patch_height", "patch_width"):
            if getattr(self, name) < min_size:
                raise UserError(f"parameter {name}={getattr(self, name)}: too small for "
                                f"{len(self.features)} levels; use at least {min_size}")
        for side in ("height", "width"):
            if getattr(self, f"patch_{side}") > getattr(self, f"image_{side}"):
                raise UserError(f"parameter patch_{side}={getattr(self, f'patch_{side}')}: "
                                f"larger than image_{side}={getattr(self, f'image_{side}')}")
        at_least(self, ("warmup_steps", "patience", "bn_recalibration", "num_workers"), 0)
        if self.time_budget_min <= 0:
            raise UserError(f"parameter time_budget_min={self.time_budget_min}: must be > 0 (minutes)")
        if self.tracking_wait_min <= 0:
            raise UserError(f"parameter tracking_wait_min={self.tracking_wait_min}: must be > 0 "
                            f"(minutes)")
        if not 0 <= self.color_jitter <= 1:
            raise UserError(f"parameter color_jitter={self.color_jitter}: must be in [0, 1]")
        one_of(self, "loss", LOSSES)
        one_of(self, "lr_schedule", ("cosine", "constant"))
        one_of(self, "appearance", APPEARANCES)
        one_of(self, "keep", ("auto", "final", "best"))
        one_of(self, "predict_scale", PREDICT_SCALES)
        one_of(self, "output", OUTPUTS)
        at_least(self, ("average_steps",), 0)
        one_of(self, "precision", ("auto", "fp32", "bf16", "fp16"))
        one_of(self, "memory_format", ("auto", "channels_last", "contiguous"))
        if self.batch_size % self.nproc:
            raise UserError(f"parameters batch_size={self.batch_size}, nproc={self.nproc}: the "
                            f"batch is shared out among the processes; make it a multiple of nproc")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    train_run_id: str
    model_name: str
    threshold: float
    eval_batch_size: int
    tta: str                 # auto (the model's own) | none | hflip | flips
    floor_margin: float      # test Dice must beat the best trivial baseline by this much
    runtime: str             # auto (the model's default) | torch | onnx
    quantize: str            # none | int8 (an int8 ONNX file, kept if its Dice holds)
    label_quality: bool = True      # score every mask of the split (unet.evaluation.label_quality)
    label_threshold: float = 0.3    # a score above this flags a mask

    def validate(self) -> None:
        if not self.train_run_id:
            raise UserError("parameter train_run_id is missing: pass the run id printed by train")
        if not 0 < self.threshold < 1:
            raise UserError(f"parameter threshold={self.threshold}: must be in (0, 1)")
        if not self.model_name.strip():
            raise UserError("parameter model_name is empty")
        at_least(self, ("eval_batch_size",), 1)
        check_tta(self.tta)
        if self.runtime == "onnx-int8":
            raise UserError("parameter runtime=onnx-int8: evaluate scores the int8 file "
                            "itself with -P quantize=int8; use auto, torch or onnx")
        check_runtime(self.runtime)
        one_of(self, "quantize", ("none", "int8"))
        if not 0 <= self.floor_margin < 1:
            raise UserError(f"parameter floor_margin={self.floor_margin}: must be in [0, 1)")
        if not 0 < self.label_threshold <= 1:
            raise UserError(f"parameter label_threshold={self.label_threshold}: must be in (0, 1]")


PIPELINE = ("split_data", "train", "evaluate")   # the steps `main` chains
STEPS = {"split_data": SplitConfig, "train": TrainConfig, "evaluate": EvaluateConfig,
         "predict": PredictConfig, "ui": UiConfig, "tune": TuneConfig}


def read_params(path: Path = PARAMS_FILE) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


PARSERS = {int: int, float: float, bool: lambda text: {"true": True, "false": False}[text.lower()],
           tuple[int, ...]: lambda text: tuple(int(part) for part in text.split(","))}


def parse_value(name: str, text: Any, kind: Any) -> Any:
    """Parses one parameter given as text (or a YAML scalar) into `kind`; UserError if it can't."""
    text = str(text).strip()
    try:
        return PARSERS.get(kind, str)(text)
    except (ValueError, KeyError):
        expected = {int: "an integer", float: "a number", bool: "true or false"}.get(
            kind, "a comma list of integers, e.g. 64,128")
        raise UserError(f"parameter {name}={text!r}: expected {expected}") from None


def raw_values(step: str, overrides: dict[str, str] | None = None,
               params: dict[str, Any] | None = None) -> dict[str, Any]:
    """params.yaml's values of `step` < overrides, unparsed; UserError for an unknown name."""
    params = params if params is not None else read_params()
    raw = scalars(params[step])
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = set(raw) - {f.name for f in dataclasses.fields(STEPS[step])}
    if unknown:
        raise UserError(f"unknown parameter(s) for {step}: {', '.join(sorted(unknown))}")
    return raw


def given(step: str, overrides: dict[str, str] | None = None,
          params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The parsed values of `step` that are not "auto" (what the user or params.yaml fixed)."""
    hints = get_type_hints(STEPS[step])
    return {name: parse_value(name, value, hints[name])
            for name, value in raw_values(step, overrides, params).items()
            if str(value) != AUTO}


def preset(step: str, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """A named preset of params.yaml, parsed (e.g. "seed": the tutorial's); {} for "auto"."""
    if name == AUTO:
        return {}
    params = params if params is not None else read_params()
    presets = params.get("presets", {})
    if name not in presets:
        raise UserError(f"parameter preset={name}: use auto or {' or '.join(sorted(presets))}")
    hints = get_type_hints(STEPS[step])
    return {k: parse_value(k, v, hints[k]) for k, v in presets[name].items()}


def load(step: str, overrides: dict[str, str] | None = None, auto: dict[str, Any] | None = None,
         params: dict[str, Any] | None = None):
    """The typed, validated config of `step`: params.yaml < overrides; a value "auto" takes
    auto[name] (the plan's or a preset's)."""
    hints, values = get_type_hints(STEPS[step]), {}
    for name, value in raw_values(step, overrides, params).items():
        if str(value) == AUTO and name in (auto or {}):
            value = as_text(auto[name])
        elif str(value) == AUTO and hints[name] is not str:
            raise UserError(f"parameter {name}=auto: nothing gives it a value here; pass a value")
        values[name] = parse_value(name, value, hints[name])
    config = STEPS[step](**values)
    config.validate()
    return config


def step_params(step: str, given: dict[str, str], params: dict[str, Any]) -> dict[str, str]:
    """Every parameter of `step` as text: the given value, else params.yaml's."""
    return {name: str(given.get(name, default)) for name, default in scalars(params[step]).items()}


def scalars(section: dict[str, Any]) -> dict[str, Any]:
    """A section's parameters, without its tables (tune's `space` is no parameter)."""
    return {k: v for k, v in section.items() if not isinstance(v, dict)}


def as_text(value: Any) -> str:
    """A value as MLflow stores it: features as "64,128", booleans as "true"/"false"."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def as_params(config) -> dict[str, str]:
    """A config as the flat text parameters MLflow stores."""
    return {name: as_text(value) for name, value in dataclasses.asdict(config).items()}
