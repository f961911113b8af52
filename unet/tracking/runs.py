"""Runs: the step's own run, the runs it is handed, the artifacts steps pass along, and
the reuse of finished steps by `main`.

Steps hand each other run ids; what a step needs from an earlier one (the split, the data set
when it was generated, the model, a checkpoint) comes from that run's artifacts and tags.
"""
from __future__ import annotations

import contextlib
import os
import shlex
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from unet.errors import UserError

CHECKPOINT_ARTIFACT = "checkpoints/last.pt"
ENTRY_POINT_TAG = "mlflow.project.entryPoint"
INTERRUPTED_TAG = "interrupted"   # set when Ctrl-C or SIGTERM stopped the step
STEP_TAG = "step"          # set by every step itself, also when run without `mlflow run`
GIT_COMMIT_TAG = "mlflow.source.git.commit"
RUN_NAME_TAG = "mlflow.runName"
# MLflow 3 opens an experiment in its GenAI view unless this tag says it trains models.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


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


def store_uri() -> str:
    """The tracking URI in effect, a relative sqlite path made absolute (servers started from
    it, e.g. the UI, may run in another directory)."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return f"{prefix}{Path(uri[len(prefix):]).resolve()}"
    return uri


@contextlib.contextmanager
def step_run(step: str, system_metrics: bool = False):
    """The step's run (the one `mlflow run` created, or a new one), tagged with the step, in an
    experiment tagged as model training; with system_metrics, MLflow records CPU, memory (and
    GPU) use as `system/...` metrics while it runs. It ends FINISHED, FAILED on an error, or
    KILLED when interrupted (Ctrl-C, SIGTERM)."""
    if system_metrics:
        # A sample every 5 s (MLflow's default is 10 s: a few points for a short run); the
        # environment variables, when set, win.
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "5")
        os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    with mlflow.start_run(log_system_metrics=system_metrics) as run:
        mlflow.set_tag(STEP_TAG, step)
        mark_experiment(run.info.experiment_id)
        try:
            yield run
        except KeyboardInterrupt:
            # The tag outlives `mlflow run`, which then overwrites KILLED with FAILED (MLflow
            # 3.17 _maybe_set_run_terminated passes a status string to RunStatus.is_terminated).
            mlflow.set_tag(INTERRUPTED_TAG, "true")
            mlflow.end_run("KILLED")
            raise


def mark_experiment(experiment_id: str) -> None:
    """Tags the experiment as model training (the UI's training view), once."""
    client = MlflowClient()
    if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def name_run(name: str) -> None:
    """Gives the active run a name that says what it is (the UI's run list shows it)."""
    mlflow.set_tag(RUN_NAME_TAG, name)


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


def load_checkpoint(resume_from: str, workdir: Path, local_dir: Path) -> dict:
    """A checkpoint from a file path, or the last one of a train run (finished, failed, killed
    or still marked running after a kill -9): its local copy `local_dir/<run id>/last.pt` when
    this machine has it (written atomically, never behind the logged one), else, or when that
    copy is unreadable (one line says so), the logged one. UserError naming every file tried
    when none is readable."""
    path = Path(resume_from).expanduser()
    if not path.is_file() and (path.suffix or "/" in resume_from):
        raise UserError(f"parameter resume_from={resume_from}: no such checkpoint file")
    if path.is_file():
        return _read_checkpoint(path, resume_from)
    get_run(resume_from, "train", "resume_from", finished=False)
    local = Path(local_dir) / resume_from / Path(CHECKPOINT_ARTIFACT).name
    if local.is_file():
        try:
            return _read_checkpoint(local, resume_from)
        except UserError as e:
            print(f"warning: {e}; using the checkpoint the run logged instead", flush=True)
    try:
        logged = Path(mlflow.artifacts.download_artifacts(
            run_id=resume_from, artifact_path=CHECKPOINT_ARTIFACT, dst_path=str(workdir)))
    except (MlflowException, OSError):
        raise UserError(f"parameter resume_from={resume_from}: "
                        + (f"{local} is unreadable and " if local.is_file() else "")
                        + f"that run logged no checkpoint ({CHECKPOINT_ARTIFACT})") from None
    return _read_checkpoint(logged, resume_from)


def _read_checkpoint(path: Path, resume_from: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"parameter resume_from={resume_from}: {path} is not a readable "
                        f"checkpoint ({type(e).__name__})") from None


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
