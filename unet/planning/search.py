"""The hyperparameter search's Optuna side: the search space of params.yaml (`tune.space`),
what a trial trains with, the study in its shared storage. Knows nothing of MLflow
(unet/tracking/tune.py runs the trials as nested runs).

The space is centred on the training plan: lr, batch_size and features are searched as factors
of the plan's values, so one space fits a 48-image folder on a CPU and Carvana on a GPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, get_type_hints

import optuna
from optuna.trial import TrialState

from unet.config import pipeline as config
from unet.config.checks import LOSSES
from unet.errors import UserError
from unet.planning.plan import batch_for, lr_at_batch, scale_features
from unet.secrets import mask

# Train parameters a space may name; FACTORS are multiples of the plan's value.
SEARCHABLE = ("lr", "batch_size", "features", "loss", "color_jitter", "lr_schedule",
              "warmup_steps", "patience", "bn_recalibration", "rotate_limit", "hflip", "vflip")
FACTORS = ("lr", "batch_size", "features")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)   # what counts towards n_trials
DEFAULT_STORAGE = Path("~/.cache/unet-mlflow/optuna.db")   # next to train's cache_dir
RUN_ID_ATTR = "mlflow_run_id"                         # a trial's MLflow child run

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched parameter: a range [low, high] (log scale, whole numbers) or choices."""
    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def parse_space(table: dict[str, Any]) -> dict[str, Dimension]:
    """params.yaml's `tune.space` as Dimensions; UserError naming the first bad entry."""
    if not isinstance(table, dict) or not table:
        raise UserError("params.yaml tune.space: give at least one parameter to search")
    space = {}
    for name, entry in table.items():
        where = f"params.yaml tune.space.{name}"
        if name not in SEARCHABLE:
            raise UserError(f"{where}: unknown parameter (searchable: {', '.join(SEARCHABLE)})")
        entry = entry if isinstance(entry, dict) else {}
        unknown = set(entry) - {"low", "high", "log", "int", "choices"}
        if unknown or ("choices" in entry) == ("low" in entry or "high" in entry):
            raise UserError(f"{where}: write {{low: .., high: ..}} (log, int optional) or "
                            f"{{choices: [..]}}")
        space[name] = (_choices if "choices" in entry else _range)(name, entry, where)
    return space


def _choices(name: str, entry: dict, where: str) -> Dimension:
    choices = entry["choices"]
    if not isinstance(choices, list) or not choices:
        raise UserError(f"{where}: choices must be a non-empty list")
    for value in choices:
        _check_value(name, value, where)
    return Dimension(name, choices=tuple(choices))


def _range(name: str, entry: dict, where: str) -> Dimension:
    try:
        low, high = float(entry["low"]), float(entry["high"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: low and high must both be numbers") from None
    if low > high:
        raise UserError(f"{where}: low {low:g} > high {high:g}")
    if entry.get("log") and low <= 0:
        raise UserError(f"{where}: a log scale needs low > 0 (got {low:g})")
    for value in (low, high):
        _check_value(name, value, where)
    return Dimension(name, low, high, bool(entry.get("log")), bool(entry.get("int")))


def _check_value(name: str, value: Any, where: str) -> None:
    """A factor must be > 0; any other value must parse as the train parameter's type."""
    if name in FACTORS:
        if not isinstance(value, (int, float)) or value <= 0:
            raise UserError(f"{where}: {value!r} is not a factor > 0 of the plan's {name}")
        return
    hint = get_type_hints(config.TrainConfig)[name]
    config.parse_value(f"{name} (in {where})", value, hint)
    if name == "loss" and value not in LOSSES:
        raise UserError(f"{where}: loss {value!r}: use {' or '.join(LOSSES)}")


def trial_overrides(suggested: dict[str, Any], plan: dict[str, Any], train_images: int,
                    nproc: int = 1) -> dict[str, str]:
    """The train parameters (as text) of one trial: `suggested` applied to the base plan's
    values. batch: the plan's x factor, 2..half the training images, a multiple of nproc;
    lr: the plan's lr at the trial's batch (x sqrt(batch ratio), the plan's rule) x factor;
    features: every width x factor."""
    out = {k: f"{v:.3g}" if isinstance(v, float) else config.as_text(v)
           for k, v in suggested.items() if k not in FACTORS}
    batch = plan["batch_size"]
    if "batch_size" in suggested:
        batch = batch_for(round(plan["batch_size"] * suggested["batch_size"]), train_images, nproc)
        out["batch_size"] = str(batch)
    if "lr" in suggested:
        scaled = lr_at_batch(plan["lr"], batch, plan["batch_size"]) * suggested["lr"]
        out["lr"] = f"{scaled:.3g}"
    if "features" in suggested:
        out["features"] = config.as_text(scale_features(plan["features"], suggested["features"]))
    return out


def study_name(settings: dict[str, str]) -> str:
    """The name of `study_name=auto`: a digest of what the trials are compared on (the data,
    the fixed train settings, the space), so that the same command resumes the same study."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"unet-{digest[:10]}"


STORAGE_ENV = "UNET_TUNE_STORAGE"   # the storage URL, kept out of the run's parameters


def storage_url(param: str) -> str:
    """The storage: parameter `storage`, else the environment variable UNET_TUNE_STORAGE (a URL
    with a password given this way never becomes a run parameter), else "" (the default)."""
    return param or os.environ.get(STORAGE_ENV, "").strip()


def shown(url: str) -> str:
    """A storage URL fit to print and log: a password in it masked."""
    return mask(url) if url else "default"


def open_storage(url: str, heartbeat_s: int):
    """Optuna's storage: "" the sqlite file DEFAULT_STORAGE; an RDB URL (sqlite, postgresql,
    mysql) with a heartbeat, so that a dead worker's trial is failed (and retried once) by the
    next worker; `journal:/path` a journal file (no heartbeat: a killed worker's trial stays
    RUNNING, which blocks nothing). UserError when it can't be opened."""
    if not url:
        DEFAULT_STORAGE.expanduser().parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{DEFAULT_STORAGE.expanduser()}"
    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):]).expanduser()
            return optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(path)))
        return _rdb_storage(url, heartbeat_s)
    except Exception as e:   # drivers raise their own types: name the storage, not a traceback
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"parameter storage={shown(url)}: cannot open it ({mask(reason)})") from None


def _rdb_storage(url: str, heartbeat_s: int, attempts: int = 3):
    """RDBStorage with a heartbeat and one retry of a dead worker's trial. Workers started at
    once on a new database race to create its tables: the loser tries again."""
    # Workers sharing a sqlite file wait for its lock instead of failing after 5 s.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine, heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=1))
        except Exception as e:
            if attempt == attempts - 1 or not _lost_creation_race(e):
                raise
            time.sleep(1 + attempt)


def _lost_creation_race(error: Exception) -> bool:
    """True when creating the tables failed because another worker created them first: a table
    "already exists", or the schema version row was inserted twice (sqlite's "UNIQUE
    constraint failed", postgres' "duplicate key", mysql's "Duplicate entry")."""
    text = str(error).lower()
    return any(sign in text for sign in ("already exists", "unique constraint", "duplicate"))


def open_study(name: str, storage, settings: dict[str, str], pruner: dict[str, int]):
    """The study `name` in `storage` (created by the first worker, joined by the others);
    UserError when it was started with other settings (its trials would not compare)."""
    study = optuna.create_study(
        study_name=name, storage=storage, direction="maximize", load_if_exists=True,
        # constant_liar: a worker treats the others' running trials as bad, so that workers
        # started together do not all sample the same point.
        sampler=optuna.samplers.TPESampler(constant_liar=True),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner["startup_trials"],
                                           n_warmup_steps=pruner["warmup_epochs"]))
    optuna.storages.fail_stale_trials(study)     # dead workers' trials (a no-op without heartbeat)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
    elif stored != settings:
        differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise UserError(f"study {name} was started with other settings ({', '.join(differ)} "
                        f"differ): rerun with those, or pass another study_name")
    return study


def enqueue_plan(study, space: dict[str, Dimension], plan: dict[str, Any]) -> None:
    """A new study's first trial is the plan itself (every factor 1, the plan's values), so
    that a search never ends below what train would have done: what the space holds of it."""
    if study.trials:
        return
    point = {name: 1 if name in FACTORS else plan[name] for name, dim in space.items()
             if name in FACTORS or name in plan}
    point = {name: value for name, value in point.items()
             if (value in space[name].choices if space[name].choices is not None
                 else space[name].low <= value <= space[name].high)}
    study.enqueue_trial(point, skip_if_exists=True)


def finished(study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(study, objective, n_trials: int, timeout_min: float, catch=()) -> None:
    """Runs trials in this process until the study holds n_trials finished (complete or
    pruned) trials, counting every worker's, or timeout_min passes (0: no limit). Optuna fails
    dead workers' trials (heartbeat) before each trial it starts."""
    if finished(study) >= n_trials:
        return
    study.optimize(objective, timeout=timeout_min * 60 or None, catch=catch,
                   callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED)])
