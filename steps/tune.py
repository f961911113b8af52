"""Entry point tune: a hyperparameter search with Optuna around the training plan.

This run is the study's parent run (one per worker); each trial is a nested child run that
looks like a train run. Workers started with the same storage and study_name share the study.
At the end the best trial's model goes through the evaluate step (the promotion floor and the
champion/challenger rule of main).
"""
import dataclasses
import tempfile
from pathlib import Path

import mlflow
from mlflow.exceptions import ExecutionException

from unet.config import pipeline as config
from unet.config.checks import AUTO
from unet.config.entries import TuneConfig
from unet.errors import UserError
from unet.planning import search
from unet.tracking import cli, runs
from unet.tracking import tune as tracking


def tune() -> None:
    params, given = config.read_params(), cli.overrides("tune")
    own = {f.name for f in dataclasses.fields(TuneConfig)}
    cfg = config.load("tune", {k: v for k, v in given.items() if k in own})
    search.parse_space(params["tune"]["space"])                   # a bad space: before any work
    storage_url = search.storage_url(cfg.storage)                 # -P storage, or the env
    storage = search.open_storage(storage_url, cfg.heartbeat_s)   # before any work
    # Every train parameter as text: the given one, else params.yaml's; the trial's budget
    # is tune's time_budget_min.
    fixed = {**config.step_params("train", given, params),
             "time_budget_min": str(cfg.time_budget_min)}
    split_params = config.step_params("split_data", given, params)
    # The parent run records the worker's CPU/memory use (its trials run in this process).
    with runs.step_run("tune", fixed["system_metrics"].lower() == "true") as run, \
            tempfile.TemporaryDirectory() as tmp:
        split = tracking.shared_split(cfg.split_run_id, split_params, Path(tmp))
        fixed["split_run_id"] = split.run_id
        job = tracking.prepare(split, fixed, params["tune"]["space"])
        settings = tracking.study_settings(
            {"split_run_id": cfg.split_run_id} if cfg.split_run_id else split_params, fixed,
            params["tune"]["space"])
        name = search.study_name(settings) if cfg.study_name == AUTO else cfg.study_name
        study = search.open_study(name, storage, settings, params["tune"]["pruner"])
        search.enqueue_plan(study, job.space, job.plan)
        mlflow.set_tags({"study_name": name, "storage": search.shown(storage_url),
                         "split_run_id": split.run_id})
        search_trials(study, job, cfg, run)
        evaluate_best(study, given, params)


def search_trials(study, job, cfg, run) -> None:
    """Runs this worker's trials and prints where the study stands."""
    print(f"study {study.study_name}: {search.finished(study)} of {cfg.n_trials} trials "
          f"finished before this worker; parent run {run.info.run_id}", flush=True)
    closed = tracking.close_dead_runs(study)
    search.optimize(study, tracking.objective(job, study.study_name), cfg.n_trials,
                    cfg.timeout_min, catch=(UserError,))
    closed += tracking.close_dead_runs(study)     # workers found dead while this one ran
    if closed:
        print(f"{closed} trial run(s) of workers that died marked FAILED")
    # This worker's trials: those whose run is nested under this run.
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(search.RUN_ID_ATTR)
            and mlflow.get_run(t.user_attrs[search.RUN_ID_ATTR]).data.tags.get(
                "mlflow.parentRunId") == run.info.run_id]
    print(f"study {study.study_name}: this worker ran {len(mine)} trial(s); the study holds "
          f"{search.finished(study)} finished of {cfg.n_trials}", flush=True)
    best = tracking.log_study(study, len(mine))
    if best is None:
        raise UserError(f"study {study.study_name}: no trial completed (all pruned or failed, "
                        f"see the child runs); nothing to evaluate")
    runs.name_run(f"tune {study.study_name}: best Dice {best.value:.3f} (trial {best.number})")
    print(f"best trial {best.number}: val Dice {best.value:.4f}, "
          + ", ".join(f"{k}={v}" for k, v in best.user_attrs["train_params"].items())
          + f"; run {best.user_attrs[search.RUN_ID_ATTR]}", flush=True)


def evaluate_best(study, given: dict, params: dict) -> None:
    """The best trial's run through the evaluate step: test, register, promote (as main)."""
    best_run = study.best_trial.user_attrs[search.RUN_ID_ATTR]
    step_params = {**config.step_params("evaluate", given, params), "train_run_id": best_run}
    try:
        evaluated, reused = runs.run_step("evaluate", step_params)
    except ExecutionException:
        raise UserError("step evaluate failed on the best trial's run (its error is printed "
                        "above)") from None
    tags, metrics = evaluated.data.tags, evaluated.data.metrics
    mlflow.set_tags({"evaluate_run_id": evaluated.info.run_id, "model_name": tags["model_name"],
                     "model_version": tags["model_version"], "model_alias": tags["model_alias"]})
    mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith("test_")})
    print(f"best trial's model: test Dice {metrics['test_dice']:.4f}; {tags['model_name']} "
          f"version {tags['model_version']} -> {tags['model_alias']} "
          f"({'evaluate reused' if reused else 'evaluated'}: run {evaluated.info.run_id})")


if __name__ == "__main__":
    cli.main(tune)
