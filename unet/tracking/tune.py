"""The tune step's MLflow side: the split all trials share, each trial as a nested child run
that looks like a train run (so `evaluate -P train_run_id=<child>` works on it), pruning, and
what the parent run shows at the end (the best trial, the study's plots).

Trials run in this process, one after another (Optuna's n_jobs=1: MLflow's active run is one
per thread); parallelism is several workers sharing the study's storage (unet/planning/search.py).
"""
from __future__ import annotations

import collections
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from unet.config import pipeline as config
from unet.config.checks import AUTO
from unet.errors import UserError
from unet.network.precision import Precision, choose_precision
from unet.planning import plan as planning
from unet.planning import search
from unet.tracking import reports, runs, splits, training

TRIAL_STATE_TAG = "trial_state"      # RUNNING, COMPLETE, PRUNED or FAIL, as Optuna says
# Train settings that change how fast a trial runs, not what it learns: not part of the study.
MACHINE_ONLY = ("cache_dir", "num_workers", "system_metrics", "compile", "precision")


@dataclasses.dataclass
class Search:
    """What every trial shares: the split, the fixed train parameters, the base plan whose
    values the space's factors multiply, the space."""
    split: splits.Split
    fixed: dict[str, str]              # train parameters as text, split_run_id included
    plan: dict[str, Any]               # the base plan's values
    space: dict[str, search.Dimension]
    precision: Precision


def shared_split(split_run_id: str, split_params: dict[str, str], workdir: Path) -> splits.Split:
    """The split every trial trains on: `split_run_id` when given, else the split_data step
    run as a child of this run (or an identical finished one reused, as `main` does)."""
    if not split_run_id:
        run, reused = runs.run_step("split_data", split_params)
        split_run_id = run.info.run_id
        print(f"split_data run {split_run_id} {'reused' if reused else 'made'} for the search")
    return splits.load_split(split_run_id, workdir=workdir)


def prepare(split: splits.Split, fixed: dict[str, str], space_table: dict) -> Search:
    """Checks the space and the fixed settings, plans once (logged on this run as the plan the
    space is centred on) and drops from the space what the user fixed with -P."""
    space = search.parse_space(space_table)
    given = config.given("train", fixed)
    if given.get("nproc", 1) != 1 or given.get("resume_from"):
        raise UserError("parameters nproc and resume_from: tune trains every trial in this "
                        "process from scratch; leave them at 1 and \"\" (run workers instead)")
    if not split.subsets["val"]:
        raise UserError(f"split run {split.run_id} has no validation images: trials are "
                        f"compared on them; run split_data with val_fraction > 0")
    precision = choose_precision(given.get("precision", AUTO))
    _, plan = planning.configure(fixed, split.subsets["train"], split.subsets["val"], precision,
                                 read_mask=split.plan_reader)
    reports.log_plan(plan)
    # Fixed: a value other than params.yaml's (`mlflow run` passes every default, so a -P
    # equal to the default, e.g. rotate_limit=35, can't be told apart and is searched).
    defaults = config.read_params()["train"]
    searched = {k: v for k, v in space.items() if str(fixed.get(k, defaults[k])) == str(defaults[k])}
    if not searched:
        raise UserError("every parameter of the search space is fixed with -P: nothing to "
                        "search; leave at least one of " + ", ".join(space) + " auto")
    fixed_here = sorted(set(space) - set(searched))
    print(plan.to_text(), flush=True)
    print("searching " + ", ".join(searched)
          + (f"; fixed by -P: {', '.join(fixed_here)}" if fixed_here else ""), flush=True)
    return Search(split, fixed, plan.values, searched, precision)


def study_settings(split_params: dict[str, str], fixed: dict[str, str], space: dict) -> dict:
    """What makes trials comparable (the study's identity): the data, the fixed train
    settings that change what is learnt, the space."""
    train = {k: v for k, v in fixed.items() if k not in MACHINE_ONLY + ("split_run_id",)}
    return {"data": str(sorted(split_params.items())), "train": str(sorted(train.items())),
            "space": str(space)}


def objective(job: Search, study_name: str):
    """Optuna's objective: one trial = one nested child run trained through the library's fit
    loop; returns its best validation Dice."""
    def run_trial(trial: optuna.Trial) -> float:
        suggested = {name: dim.suggest(trial) for name, dim in job.space.items()}
        overrides = {**job.fixed, **search.trial_overrides(
            suggested, job.plan, len(job.split.subsets["train"]))}
        trial.set_user_attr("train_params", {k: overrides[k] for k in job.space})
        cfg, plan = training.configure(overrides, job.split, job.precision)
        inputs = training.TrainInputs(cfg, plan, job.split, None)
        with mlflow.start_run(nested=True) as run:
            trial.set_user_attr(search.RUN_ID_ATTR, run.info.run_id)
            mlflow.set_tags({runs.STEP_TAG: "train", "study_name": study_name,
                             "trial_number": trial.number, TRIAL_STATE_TAG: "RUNNING"})
            mlflow.log_params({f"trial.{k}": config.as_text(v) for k, v in suggested.items()})
            return fit_trial(trial, inputs, job.precision, run)
    return run_trial


def fit_trial(trial: optuna.Trial, inputs: training.TrainInputs, precision: Precision,
              run) -> float:
    """Trains, reporting each epoch's val Dice to Optuna; a pruned trial's run ends KILLED,
    a failed one's FAILED, each tagged with the trial's state."""
    label = (f"trial {trial.number}: lr={inputs.cfg.lr:.3g} batch {inputs.cfg.batch_size} "
             f"features {config.as_text(inputs.cfg.features)} {inputs.cfg.loss}")

    def report(result) -> None:
        trial.report(result.val["dice"], result.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"val Dice {result.val['dice']:.4f} at epoch "
                                     f"{result.epoch}: below the median of earlier trials")
    try:
        trainer = training.fit(inputs, precision, run, on_epoch=report)
    except optuna.TrialPruned as e:
        print(f"{label}: pruned, {e}", flush=True)
        runs.name_run(f"{label} pruned")
        mlflow.set_tag(TRIAL_STATE_TAG, "PRUNED")
        mlflow.end_run("KILLED")
        raise
    except KeyboardInterrupt:     # Ctrl-C: Optuna fails the trial; the study goes on later
        mlflow.set_tags({TRIAL_STATE_TAG: "FAIL", runs.INTERRUPTED_TAG: "true"})
        mlflow.end_run("KILLED")
        raise KeyboardInterrupt(f"{label}: stopped (its run {run.info.run_id} marked KILLED, "
                                f"the trial FAIL); the same command goes on with the study") \
            from None
    except BaseException:
        mlflow.set_tag(TRIAL_STATE_TAG, "FAIL")
        raise
    finally:   # the model and the last checkpoint are logged: the local copy only fills disks
        shutil.rmtree(training.CHECKPOINTS / run.info.run_id, ignore_errors=True)
    mlflow.set_tag(TRIAL_STATE_TAG, "COMPLETE")
    runs.name_run(f"{label} Dice {trainer.kept_dice:.3f}")
    return trainer.kept_dice


def close_dead_runs(study) -> int:
    """The child runs of trials whose worker died (Optuna failed the trial through the
    heartbeat; the run, never ended, still says RUNNING): FAILED, with the parent run of that
    worker. Returns how many."""
    client, closed = MlflowClient(), 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(search.RUN_ID_ATTR)
        try:
            run = client.get_run(run_id) if run_id else None
        except MlflowException:     # a study shared by several tracking stores
            continue
        if run is None or run.info.status != "RUNNING":
            continue
        client.set_tag(run_id, TRIAL_STATE_TAG, "FAIL")
        client.set_terminated(run_id, "FAILED")
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent and client.get_run(parent).info.status == "RUNNING":
            client.set_tag(parent, runs.INTERRUPTED_TAG, "true")
            client.set_terminated(parent, "FAILED")
        closed += 1
    return closed


def log_study(study, ran_here: int):
    """On the parent run: trial counts, the best trial's params, Dice and run, the plots and a
    table of the trials. Returns the best FrozenTrial, or None if none completed."""
    states = collections.Counter(t.state.name for t in study.get_trials(deepcopy=False))
    mlflow.log_metrics({f"trials_{s.lower()}": states.get(s, 0)
                        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
                       | {"trials_this_worker": ran_here})
    log_plots(study)
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs",
                                          "duration"))
    mlflow.log_text(frame.to_csv(index=False), "trials.csv")
    if not states.get("COMPLETE"):
        return None
    best = study.best_trial
    mlflow.log_params({f"best.{k}": v for k, v in best.user_attrs["train_params"].items()})
    mlflow.log_metric("best_val_dice", best.value)
    mlflow.set_tags({"best_trial": best.number,
                     "best_run_id": best.user_attrs[search.RUN_ID_ATTR]})
    return best


def log_plots(study) -> None:
    """The optimization history, each trial's per-epoch val Dice (pruned ones stop early) and
    the parameters' importance, as PNGs under `plots/` (one that can't be drawn yet, e.g.
    importance before two trials complete, is left out with one line)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    from optuna.visualization import matplotlib as plots
    for name, plot, x, y in (
            ("history", plots.plot_optimization_history, "trial", "best val Dice of the trial"),
            ("epochs", plots.plot_intermediate_values, "epoch", "val Dice"),
            ("importance", plots.plot_param_importances, None, None)):
        try:
            axes = plot(study)
        except Exception as e:     # Optuna raises several types for "not enough trials"
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"plot {name}: not drawn ({reason})")
            continue
        if x:
            axes.set_xlabel(x)
            axes.set_ylabel(y)
        figure = axes.figure
        figure.set_size_inches(9, 5)
        figure.tight_layout()
        mlflow.log_figure(figure, f"plots/{name}.png")
        pyplot.close(figure)
