"""Everything that talks to MLflow: parameters, the split, models, the registry, step reuse.

Steps hand each other run ids; what a step needs from an earlier one (the split, the data set
when it was generated, the model) comes from that run's logged artifacts and tags.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import shlex
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
import pandas as pd
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema

from unet.data import Pair
from unet.errors import UserError
from unet.predict import Segmenter, encode_png

with warnings.catch_warnings(record=True):
    # MLflow warns, once per process, that predict has no type hints it understands: the
    # model's interface is declared by SIGNATURE below instead (a column of images).
    from unet.serving import DEFAULT_THRESHOLD, INPUT_COLUMN, SegmentationModel

SPLIT_FILE = "split.json"
REPORT_JSON, REPORT_TEXT = "data_report.json", "data_report.txt"
CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}
DATA_ARTIFACTS = "data"
CHECKPOINT_ARTIFACT = "checkpoints/last.pt"
MODEL_NAME_IN_RUN = "model"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
INTERRUPTED_TAG = "interrupted"   # set when Ctrl-C or SIGTERM stopped the step
STEP_TAG = "step"          # set by every step itself, also when run without `mlflow run`
GIT_COMMIT_TAG = "mlflow.source.git.commit"
CHAMPION, CHALLENGER = "champion", "challenger"
PACKAGE_DIR = Path(__file__).resolve().parent
MODEL_REQUIREMENTS = ["torch==2.13.0", "numpy", "pillow", "opencv-python-headless", "albumentations"]


# --- parameters -----------------------------------------------------------------------------

def log_effective_params(params: dict[str, str]) -> None:
    """Logs params not logged yet; for those `mlflow run` logged as "auto", logs the value the
    preset gave as `effective.<name>` (a logged param can't be changed)."""
    logged = mlflow.active_run().data.params
    new = {}
    for name, value in params.items():
        if name not in logged:
            new[name] = value
        elif logged[name] == "auto" and value != "auto":
            new[f"effective.{name}"] = value
    if new:
        mlflow.log_params(new)


def log_plan(plan) -> None:
    """The training plan as `plan.json` and `plan.txt`, and its measurements as `plan.<name>`
    params (the values it chose are logged with the config, as `effective.<name>`)."""
    mlflow.log_dict(plan.to_dict(), "plan.json")
    mlflow.log_text(plan.to_text() + "\n", "plan.txt")
    fp = plan.fingerprint
    mlflow.log_params({
        "plan.train_images": fp.train_images, "plan.val_images": fp.val_images,
        "plan.median_size": f"{fp.median_height}x{fp.median_width}",
        "plan.small_object_px": "none" if fp.small_object_px is None else f"{fp.small_object_px:.1f}",
        "plan.machine": f"{plan.machine.device}{' bf16' if plan.machine.bf16 else ''} "
                        f"{plan.machine.cores} cores",
        "plan.budget_minutes": plan.budget_minutes,
        "plan.estimated_minutes": ("n/a" if plan.estimated_minutes is None
                                   else f"{plan.estimated_minutes:.1f}"),
        "plan.seconds_per_step": ("n/a" if plan.speed is None
                                  else f"{plan.speed.seconds_per_step:.4f}")})


# --- the store ------------------------------------------------------------------------------

def store_uri() -> str:
    """The tracking URI in effect, a relative sqlite path made absolute (servers started from
    it, e.g. the UI, may run in another directory)."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return f"{prefix}{Path(uri[len(prefix):]).resolve()}"
    return uri


# --- runs -----------------------------------------------------------------------------------

@contextlib.contextmanager
def step_run(step: str):
    """The step's run (the one `mlflow run` created, or a new one), tagged with the step.
    It ends FINISHED, FAILED on an error, or KILLED when interrupted (Ctrl-C, SIGTERM)."""
    with mlflow.start_run() as run:
        mlflow.set_tag(STEP_TAG, step)
        try:
            yield run
        except KeyboardInterrupt:
            # The tag outlives `mlflow run`, which then overwrites KILLED with FAILED (MLflow
            # 3.17 _maybe_set_run_terminated passes a status string to RunStatus.is_terminated).
            mlflow.set_tag(INTERRUPTED_TAG, "true")
            mlflow.end_run("KILLED")
            raise


def get_run(run_id: str, entry_point: str, param: str, finished: bool = True):
    """The run `run_id`, checked to come from `entry_point` (and to have finished); UserError
    naming `param` if not."""
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        raise UserError(f"parameter {param}={run_id}: no such run in the tracking store "
                        f"{mlflow.get_tracking_uri()}") from None
    actual = run.data.tags.get(STEP_TAG, run.data.tags.get(ENTRY_POINT_TAG))
    if actual != entry_point:
        raise UserError(f"parameter {param}={run_id}: that run is a '{actual}' run; "
                        f"pass the id of a '{entry_point}' run")
    if finished and run.info.status != "FINISHED":
        raise UserError(f"parameter {param}={run_id}: that run did not finish ({run.info.status})")
    return run


# --- the split ------------------------------------------------------------------------------

@dataclasses.dataclass
class Split:
    """The split a split_data run logged, with its pairs on this machine."""
    run_id: str
    builtin: bool
    subsets: dict[str, list[Pair]]     # "train", "val", "test"
    data_dir: Path


def _pairs_digest(pairs: list[Pair]) -> str:
    """Names and sizes of the files: cheap on 5,000 Carvana photos, changes when files do."""
    h = hashlib.sha256()
    for p in pairs:
        for f in (p.image, p.mask):
            h.update(f"{f.name}:{f.stat().st_size};".encode())
    return h.hexdigest()[:16]


def log_dataset(pairs: list[Pair], name: str, context: str, source: str) -> None:
    """Records a subset as a run input (lineage in the UI): name, digest, source."""
    if source.startswith("mlflow-artifacts:"):
        # Artifacts a tracking server proxies: MLflow has no dataset source for that scheme,
        # so record the server's HTTP address of the same files.
        source = MlflowArtifactsRepository.resolve_uri(source, mlflow.get_tracking_uri())
    with warnings.catch_warnings():   # a local path matches two equivalent source types
        warnings.simplefilter("ignore", UserWarning)
        resolved = resolve_dataset_source(source)
    dataset = MetaDataset(resolved, name=name, digest=_pairs_digest(pairs))
    mlflow.log_input(dataset, context=context)


def log_split(subsets: dict[str, list[Pair]], layout: dict[str, str], data_dir: Path,
              builtin: bool) -> None:
    """Logs split.json (stems per subset and the folder layout), the generated data set itself
    when builtin, and each subset as an input."""
    record = {"builtin": builtin, "data_dir": None if builtin else str(Path(data_dir).resolve()),
              **layout, **{name: [p.image.name for p in pairs] for name, pairs in subsets.items()}}
    mlflow.log_dict(record, SPLIT_FILE)
    if builtin:
        mlflow.log_artifacts(str(data_dir), DATA_ARTIFACTS)
    source = mlflow.get_artifact_uri(DATA_ARTIFACTS) if builtin else str(Path(data_dir).resolve())
    for name, pairs in subsets.items():
        if pairs:
            log_dataset(pairs, name, CONTEXTS[name], source)
    mlflow.log_metrics({f"{name}_images": len(pairs) for name, pairs in subsets.items()})


def log_data_report(report) -> str:
    """Logs a validation.DataReport (JSON and readable text) and its counts as metrics
    `data_<kind>`; returns where the readable report is."""
    mlflow.log_dict(report.to_dict(), REPORT_JSON)
    mlflow.log_text(report.to_text(), REPORT_TEXT)
    mlflow.log_metrics({f"data_{kind}": n for kind, n in report.counts.items()})
    return mlflow.get_artifact_uri(REPORT_TEXT)


def dataset_source(split: Split) -> str:
    """Where the split's data lives for lineage: the split run's artifacts, or the folder."""
    if split.builtin:
        return f"{mlflow.get_run(split.run_id).info.artifact_uri}/{DATA_ARTIFACTS}"
    return str(split.data_dir)


def log_split_inputs(split: Split, names: tuple[str, ...]) -> None:
    """Records the split's subsets `names` as inputs of the active run."""
    for name in names:
        log_dataset(split.subsets[name], name, CONTEXTS[name], dataset_source(split))


def load_split(run_id: str, param: str = "split_run_id", workdir: Path | None = None) -> Split:
    """The split of split_data run `run_id`; the generated data set is downloaded to workdir."""
    get_run(run_id, "split_data", param)
    try:
        record = mlflow.artifacts.load_dict(f"runs:/{run_id}/{SPLIT_FILE}")
    except MlflowException:
        raise UserError(f"parameter {param}={run_id}: that run logged no {SPLIT_FILE}; "
                        f"pass the id of a finished split_data run") from None
    if record["builtin"]:
        workdir = Path(workdir or tempfile.mkdtemp(prefix="unet-data-"))
        data_dir = Path(mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=DATA_ARTIFACTS, dst_path=str(workdir)))
    else:
        data_dir = Path(record["data_dir"])
        if not data_dir.is_dir():
            raise UserError(f"the data of split run {run_id} was at {data_dir}, which is not on "
                            f"this machine: run split_data here with -P data_dir=...")
    image_dir, mask_dir = data_dir / record["image_dir"], data_dir / record["mask_dir"]
    suffix = record["mask_suffix"] + record["mask_ext"]
    subsets = {name: [Pair(Path(n).stem, image_dir / n, mask_dir / f"{Path(n).stem}{suffix}")
                      for n in record[name]] for name in ("train", "val", "test")}
    missing = [p.image for pairs in subsets.values() for p in pairs if not p.image.is_file()]
    if missing:
        raise UserError(f"{len(missing)} image(s) of split run {run_id} are gone, e.g. "
                        f"{missing[0]}: restore them or run split_data again")
    return Split(run_id, record["builtin"], subsets, data_dir)


# --- models ---------------------------------------------------------------------------------

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
    outputs=Schema([ColSpec(DataType.binary, "mask"), ColSpec(DataType.long, "height"),
                    ColSpec(DataType.long, "width"),
                    ColSpec(DataType.binary, "probabilities", required=False)]),
    params=ParamSchema([ParamSpec("threshold", DataType.double, DEFAULT_THRESHOLD),
                        ParamSpec("return_probabilities", DataType.boolean, False)]),
)


def log_model(segmenter: Segmenter, example: np.ndarray) -> str:
    """Logs the segmenter as pyfunc model "model" of the active run; returns its models:/ URI.

    `example` (H, W, 3) uint8 is stored, as PNG bytes, as the input example. The unet package
    travels with the model (code_paths), so it loads where this project is not installed.
    """
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "segmenter.pt"
        torch.save(segmenter.to_state(), weights)
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN, python_model=SegmentationModel(),
            artifacts={"segmenter": str(weights)}, code_paths=[str(PACKAGE_DIR)],
            signature=SIGNATURE,
            input_example=pd.DataFrame({INPUT_COLUMN: [encode_png(example)]}),
            pip_requirements=MODEL_REQUIREMENTS)
    mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def load_segmenter(model_uri: str) -> Segmenter:
    """The Segmenter inside a logged model (runs it in-process, batched, without pyfunc)."""
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except (MlflowException, OSError) as e:
        reason = str(e.message if isinstance(e, MlflowException) else e).splitlines()[0]
        raise UserError(f"model {model_uri}: cannot load it from {mlflow.get_tracking_uri()} "
                        f"({reason}); run the pipeline first or pass another model_uri") from None
    return model.unwrap_python_model().segmenter


def log_epoch(result, checkpoint: Path, samples: np.ndarray) -> None:
    """Per-epoch metrics (step = epoch), the checkpoint and sample panels of an EpochResult."""
    metrics = {f"train_{k}": v for k, v in result.train.items() if k != "images"}
    metrics.update({f"val_{k}": v for k, v in result.val.items()})
    mlflow.log_metrics(metrics, step=result.epoch)
    log_checkpoint(checkpoint)
    mlflow.log_image(samples, f"samples/epoch_{result.epoch:03d}.png")


def log_checkpoint(checkpoint: Path) -> None:
    mlflow.log_artifact(str(checkpoint), Path(CHECKPOINT_ARTIFACT).parent.as_posix())


def load_checkpoint(resume_from: str, workdir: Path, local_dir: Path) -> dict:
    """A checkpoint from a file path, or the last one of a train run (finished, failed, killed
    or still marked running after a kill -9): its local copy `local_dir/<run id>/last.pt` when
    this machine has it (written atomically, never behind the logged one), else the logged one."""
    path = Path(resume_from).expanduser()
    if not path.is_file() and (path.suffix or "/" in resume_from):
        raise UserError(f"parameter resume_from={resume_from}: no such checkpoint file")
    if not path.is_file():
        get_run(resume_from, "train", "resume_from", finished=False)
        path = Path(local_dir) / resume_from / Path(CHECKPOINT_ARTIFACT).name
    if not path.is_file():
        try:
            path = Path(mlflow.artifacts.download_artifacts(
                run_id=resume_from, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(workdir)))
        except (MlflowException, OSError):
            raise UserError(f"parameter resume_from={resume_from}: that run logged no "
                            f"checkpoint ({CHECKPOINT_ARTIFACT})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"parameter resume_from={resume_from}: {path} is not a readable "
                        f"checkpoint ({type(e).__name__})") from None


# --- the registry ---------------------------------------------------------------------------

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


# --- multi-step runs ------------------------------------------------------------------------

def find_finished_run(experiment_id: str, entry_point: str, params: dict[str, str],
                      git_commit: str | None):
    """A FINISHED run of entry_point at git_commit whose stored parameters equal `params`
    (compared as the strings MLflow stores, which it shell-quotes: "" is stored as "''"), or
    None. No commit (not a git checkout): None."""
    if not git_commit:
        return None
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{ENTRY_POINT_TAG}` = '{entry_point}' and "
                      f"tags.`{GIT_COMMIT_TAG}` = '{git_commit}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    for run in runs:
        stored = run.data.params
        if all(stored.get(k) == shlex.quote(v) for k, v in params.items()):
            return run
    return None


def run_step(entry_point: str, params: dict[str, str]):
    """Runs entry point of this project as a child of the active run, or reuses an identical
    finished one. Returns (run, reused)."""
    parent = mlflow.active_run()
    commit = parent.data.tags.get(GIT_COMMIT_TAG)
    found = find_finished_run(parent.info.experiment_id, entry_point, params, commit)
    if found is not None:
        return found, True
    submitted = mlflow.projects.run(uri=".", entry_point=entry_point, parameters=params,
                                    env_manager="local", experiment_id=parent.info.experiment_id,
                                    synchronous=True)
    return MlflowClient().get_run(submitted.run_id), False
