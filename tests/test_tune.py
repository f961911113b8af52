"""The tune entry point: the space and its errors, a pruned trial's run, and real searches
(`mlflow run . -e tune`) against a real sqlite Optuna storage: one worker, two workers at once,
and a worker killed with SIGKILL mid-trial then rerun."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy
import yaml
from conftest import ROOT, TINY, mlflow_run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from unet.config import pipeline as config
from unet.errors import UserError
from unet.network.precision import choose_precision
from unet.planning import plan as planning
from unet.planning import search
from unet.tracking import splits
from unet.tracking import tune as tracking

PARAMS = config.read_params()
SEARCH = {**TINY, "system_metrics": "false"}


def children(parent_id: str) -> list:
    return MlflowClient().search_runs(
        [MlflowClient().get_run(parent_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and tags.step = 'train'")


def tune_parents() -> list:
    return MlflowClient().search_runs(
        [e.experiment_id for e in MlflowClient().search_experiments()],
        filter_string="tags.step = 'tune'")


# --- the space --------------------------------------------------------------------------

def test_the_default_space_parses_and_is_centred_on_the_plan():
    space = search.parse_space(PARAMS["tune"]["space"])
    assert set(space) == {"lr", "batch_size", "features", "loss", "color_jitter"}
    assert space["lr"].log and space["lr"].low < 1 < space["lr"].high
    assert 1 in space["batch_size"].choices and 1 in space["features"].choices


@pytest.mark.parametrize("table,message", [
    ({"momentum": {"low": 0.1, "high": 0.9}}, "tune.space.momentum: unknown parameter"),
    ({"lr": {"low": 4, "high": 0.25}}, "tune.space.lr: low 4 > high 0.25"),
    ({"color_jitter": {"low": 0, "high": 0.4, "log": True}}, "a log scale needs low > 0"),
    ({"loss": {"choices": ["bce", "focal"]}}, "loss 'focal': use bce_dice or bce"),
    ({"features": {"choices": [0, 1]}}, "0 is not a factor > 0 of the plan's features"),
    ({"lr": {"low": 1}}, "low and high must both be numbers"),
    ({"lr": {"choices": [1], "low": 1}}, "write {low: .., high: ..}"),
    ({}, "give at least one parameter"),
])
def test_a_bad_space_is_one_error_naming_the_entry(table, message):
    with pytest.raises(UserError, match="params.yaml tune.space") as err:
        search.parse_space(table)
    assert message in str(err.value)


def test_factors_apply_to_the_plan_and_values_pass_as_they_are():
    plan = {"lr": 2e-3, "batch_size": 8, "features": (16, 32, 64, 128)}
    out = search.trial_overrides({"lr": 0.5, "batch_size": 2, "features": 0.5, "loss": "bce",
                                  "color_jitter": 0.123456}, plan, train_images=100)
    # lr: the plan's rule at batch 16 (x sqrt 2), then the factor
    assert out == {"batch_size": "16", "lr": f"{2e-3 * 2 ** 0.5 * 0.5:.3g}",
                   "features": "8,16,32,64", "loss": "bce", "color_jitter": "0.123"}
    # the batch stays within half the training images (so an epoch has 2+ steps)
    assert search.trial_overrides({"batch_size": 2}, plan, train_images=20)["batch_size"] == "10"


def test_mlproject_declares_tune_with_mains_parameters_and_its_own_budget():
    declared = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["tune"]
    defaults = {k: v["default"] for k, v in declared["parameters"].items()}
    main = yaml.safe_load((ROOT / "MLproject").read_text())["entry_points"]["main"]["parameters"]
    assert set(main) < set(defaults)
    assert defaults["time_budget_min"] == str(PARAMS["tune"]["time_budget_min"])
    assert defaults["n_trials"] == str(PARAMS["tune"]["n_trials"])
    assert "space" not in defaults and "pruner" not in defaults


def test_a_study_started_with_other_settings_is_refused():
    storage = optuna.storages.InMemoryStorage()
    rules = PARAMS["tune"]["pruner"]
    search.open_study("s", storage, {"data": "a", "train": "x"}, rules)
    search.open_study("s", storage, {"data": "a", "train": "x"}, rules)      # joins it
    with pytest.raises(UserError, match=r"study s was started with other settings \(train "
                                        r"differ\): rerun with those, or pass another study_name"):
        search.open_study("s", storage, {"data": "a", "train": "y"}, rules)
    assert search.study_name({"data": "a"}) == search.study_name({"data": "a"}) != \
        search.study_name({"data": "b"})


# --- one-line errors, before any work --------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--n_trials", "0"], "error: parameter n_trials=0: must be >= 1"),
    (["--storage", "sqlite:////nonexistent-dir/x/optuna.db"],
     "error: parameter storage=sqlite:////nonexistent-dir/x/optuna.db: cannot open it"),
    (["--storage", "postgresql://nobody@127.0.0.1:1/optuna"],
     "error: parameter storage=postgresql://nobody@127.0.0.1:1/optuna: cannot open it"),
])
def test_bad_settings_are_one_line_and_exit_2(args, message, tracking_uri):
    out = subprocess.run([sys.executable, "-m", "steps.tune", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr and "Traceback" not in out.stderr
    assert not MlflowClient().search_runs(["0"])    # nothing was started


# --- a pruned trial ---------------------------------------------------------------------

def test_a_pruned_trial_is_a_killed_child_run_tagged_pruned(tracking_uri, tmp_path):
    split_run = mlflow_run("split_data", {k: SEARCH[k] for k in
                                          ("num_images", "synthetic_height", "synthetic_width")},
                           tracking_uri)
    assert split_run.returncode == 0, split_run.stderr[-2000:]
    (split_id,) = [r.info.run_id for r in MlflowClient().search_runs(["0"])]
    split = splits.load_split(split_id, workdir=tmp_path)
    fixed = {**{k: SEARCH[k] for k in ("epochs", "image_height", "image_width", "features",
                                       "batch_size", "cache_dir", "system_metrics")},
             "split_run_id": split_id}
    precision = choose_precision("auto")
    _, plan = planning.configure(fixed, split.subsets["train"], split.subsets["val"], precision)
    job = tracking.Search(split, fixed, plan.values,
                          search.parse_space({"lr": {"low": 0.5, "high": 2, "log": True}}),
                          precision)
    # A Dice can't reach 2: this pruner stops every trial at its first report.
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    with mlflow.start_run() as parent:
        study.optimize(tracking.objective(job, "s"), n_trials=1)
        assert mlflow.active_run().info.run_id == parent.info.run_id   # the parent goes on
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
    (child,) = children(parent.info.run_id)
    assert child.info.run_id == trial.user_attrs[search.RUN_ID_ATTR]
    assert child.info.status == "KILLED" and child.data.tags["trial_state"] == "PRUNED"
    assert [m.step for m in MlflowClient().get_metric_history(child.info.run_id, "val_dice")] == [1]
    assert MlflowClient().get_run(parent.info.run_id).info.status == "FINISHED"


# --- real searches ------------------------------------------------------------------------

def tune_params(tmp_path: Path, n_trials: int, **more) -> dict[str, str]:
    return {**SEARCH, "n_trials": str(n_trials), "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
            **more}


def check_search(parent, study, last: bool = True) -> None:
    """What every finished search shows: each trial once, as a train-like child run whose
    status and tag say its state; the best trial's Dice, params and model on the parent
    (`last`: this worker ended last, so the best it logged is the study's final best; a worker
    that ended first logged the best of the trials finished then)."""
    trials = study.get_trials()
    run_ids = [t.user_attrs[search.RUN_ID_ATTR] for t in trials]
    assert len(set(run_ids)) == len(trials) == len({t.number for t in trials})
    for trial in trials:
        run = MlflowClient().get_run(trial.user_attrs[search.RUN_ID_ATTR])
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[trial.state.name]
        assert (run.info.status, run.data.tags["trial_state"]) == (status, trial.state.name)
        assert run.data.tags["step"] == "train"
        assert run.data.tags["trial_number"] == str(trial.number)
        steps = [m.step for m in MlflowClient().get_metric_history(run.info.run_id, "val_dice")]
        if trial.state == TrialState.FAIL:   # killed maybe between logging and reporting
            assert set(trial.intermediate_values) <= set(steps)
        else:
            assert steps == sorted(trial.intermediate_values)
    tags, metrics = parent.data.tags, parent.data.metrics
    if not last:
        done = {t.value for t in trials if t.state == TrialState.COMPLETE}
        assert metrics["best_val_dice"] in done and metrics["best_val_dice"] <= study.best_value
        return
    assert metrics["best_val_dice"] == study.best_value
    assert tags["best_run_id"] == study.best_trial.user_attrs[search.RUN_ID_ATTR]
    assert {f"best.{k}" for k in study.best_trial.params} <= set(parent.data.params)
    assert {"plots/history.png", "plots/epochs.png"} <= {
        a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "plots")}
    version = MlflowClient().get_model_version(tags["model_name"], tags["model_version"])
    evaluated = MlflowClient().get_run(tags["evaluate_run_id"])
    assert evaluated.data.params["train_run_id"] == tags["best_run_id"]   # the evaluate step
    assert version.run_id == tags["best_run_id"]


def test_a_tiny_search_has_a_parent_its_trials_and_a_registered_best(tracking_uri, tmp_path):
    params = {**tune_params(tmp_path, 4, study_name="tiny"), "system_metrics": "true"}
    out = mlflow_run("tune", params, tracking_uri)
    assert out.returncode == 0, out.stderr[-3000:]
    (parent,) = tune_parents()
    # the worker's CPU and memory, on its parent run
    assert any(name.startswith("system/cpu_utilization") for name in parent.data.metrics)
    study = optuna.load_study(study_name="tiny", storage=params["storage"])
    assert search.finished(study) == 4 == len(children(parent.info.run_id))
    assert parent.data.metrics["trials_this_worker"] == 4
    # features and batch_size were given: fixed, not searched; lr (auto) was searched
    assert all("features" not in t.params and "batch_size" not in t.params and "lr" in t.params
               for t in study.get_trials())
    # the first trial is the plan itself
    assert study.trials[0].params == {"lr": 1, "loss": "bce_dice",
                                      "color_jitter": PARAMS["plan"]["color_jitter"]}
    check_search(parent, study)

    # The same command again: the study is done, nothing is rerun, the evaluation is reused.
    again = mlflow_run("tune", params, tracking_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(study.get_trials()) == 4 and "evaluate reused" in again.stdout


def test_a_worker_that_loses_the_race_to_create_the_tables_opens_them(tmp_path, monkeypatch):
    """Workers started together on a new database race to create its tables; CI once saw the
    loser fail with "UNIQUE constraint failed: alembic_version.version_num". Here the other
    worker wins the first attempt: the loser's retry opens the tables it made."""
    url = f"sqlite:///{tmp_path / 'new.db'}"
    real, attempts = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        attempts.append(args[0])
        if len(attempts) == 1:
            real(url)              # the other worker creates the tables first
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed: "
                                                             "alembic_version.version_num"))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(search.time, "sleep", lambda s: None)
    storage = search.open_storage(url, heartbeat_s=60)
    assert attempts == [url, url] and storage.get_all_studies() == []


def test_only_a_lost_creation_race_is_retried():
    assert search._lost_creation_race(Exception(
        "(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num"))
    assert search._lost_creation_race(Exception('relation "studies" already exists'))
    assert not search._lost_creation_race(Exception("unable to open database file"))


@pytest.mark.slow
def test_two_workers_share_one_study(tracking_uri, tmp_path):
    """Two `mlflow run -e tune` at once, one sqlite storage: one parent run per worker, the
    study holds the sum of their trials, each once."""
    params = tune_params(tmp_path, 6, study_name="shared")
    # MLflow's own first use of a new sqlite store is not safe from two processes at once
    # (both migrate it): make the store first, as a team's store would already be.
    MlflowClient().search_experiments()
    workers = [subprocess.Popen(mlflow_command(params), env=run_env(tracking_uri),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    parents = tune_parents()
    assert len(parents) == 2
    study = optuna.load_study(study_name="shared", storage=params["storage"])
    ran = [len(children(p.info.run_id)) for p in parents]
    assert sum(ran) == len(study.get_trials()) == sum(
        p.data.metrics["trials_this_worker"] for p in parents)
    # Each worker stops once the study holds 6 finished trials; the other may be finishing
    # one of its own then: at most one more.
    assert 6 <= search.finished(study) <= 7
    assert all(t.state in search.FINISHED for t in study.get_trials())
    last = max(parents, key=lambda p: p.info.end_time)
    for parent in parents:
        check_search(parent, study, last=parent is last)


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_resumed_by_the_same_command(tracking_uri, tmp_path):
    params = tune_params(tmp_path, 4, study_name="killed", heartbeat_s="1", epochs="6")
    worker = subprocess.Popen(mlflow_command(params), env=run_env(tracking_uri),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    storage = params["storage"]
    try:
        running = wait_for_trial_mid_training(storage, worker)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)     # the worker and its step: as a machine dies
        worker.wait()
    study = optuna.load_study(study_name="killed", storage=storage)
    kept = {t.number: t.value for t in study.get_trials() if t.state == TrialState.COMPLETE}
    time.sleep(3)     # longer than the grace period (2 heartbeats)

    again = mlflow_run("tune", params, tracking_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    study = optuna.load_study(study_name="killed", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert search.finished(study) == 4
    assert {n: trials[n].value for n in kept} == kept                  # earlier trials kept
    assert trials[running].state == TrialState.FAIL                     # the killed one
    killed_run = MlflowClient().get_run(trials[running].user_attrs[search.RUN_ID_ATTR])
    assert killed_run.info.status == "FAILED" and killed_run.data.tags["trial_state"] == "FAIL"
    # ... retried once with its parameters (Optuna's RetryHeartbeatStaleTrialCallback)
    retried = [t for t in trials.values() if t.system_attrs.get("failed_trial") == running]
    assert len(retried) == 1 and retried[0].params == trials[running].params
    first_parent = MlflowClient().get_run(killed_run.data.tags["mlflow.parentRunId"])
    assert first_parent.info.status == "FAILED"
    (second,) = [p for p in tune_parents() if p.info.run_id != first_parent.info.run_id]
    check_search(second, study)


def mlflow_command(params: dict[str, str]) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "tune", "--env-manager", "local"]
    return cmd + [arg for k, v in params.items() for arg in ("-P", f"{k}={v}")]


def run_env(tracking_uri: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}


def wait_for_trial_mid_training(storage: str, worker, timeout: float = 600) -> int:
    """The number of a RUNNING trial that has reported an epoch, once one complete trial
    exists (so that the kill leaves something to keep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed"
        try:
            trials = optuna.load_study(study_name="killed", storage=storage).get_trials()
        except KeyError:        # not created yet
            trials = []
        done = any(t.state == TrialState.COMPLETE for t in trials)
        running = [t.number for t in trials
                   if t.state == TrialState.RUNNING and t.intermediate_values]
        if done and running:
            return running[0]
        time.sleep(0.5)
    raise AssertionError("no trial reached the middle of its training in time")
