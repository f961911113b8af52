"""Registry safety: evaluate touches the registry only after its metrics are logged, a failure
leaves the champion as it was, and re-running the promotion ends with the same aliases."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY, only
from mlflow.tracking import MlflowClient
from test_bad_input import run_step

from unet.tracking import registry

NAME = "cars"


def aliases() -> dict[str, str]:
    return {alias: str(v) for alias, v in
            MlflowClient().get_registered_model(NAME).aliases.items()}


def evaluate(monkeypatch, train_run_id: str) -> None:
    from steps.evaluate import evaluate as step
    # These tests are about failures of the registry, not the floor: every model clears it.
    monkeypatch.setattr("unet.evaluation.baselines.baseline_dice", lambda *args: {"all_background": 0.0})
    monkeypatch.setattr(sys, "argv", ["evaluate", "--train_run_id", train_run_id,
                                      "--model_name", NAME])
    step()


def train(split_id: str, tracking_uri: str, seed: str) -> str:
    result = run_step("train", {**only(TINY, "train"), "epochs": "1", "seed": seed,
                                "split_run_id": split_id}, tracking_uri)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.rsplit("train run ", 1)[1].split(":")[0]


def test_a_failed_promotion_keeps_the_champion_and_a_rerun_is_idempotent(tracking_uri,
                                                                         monkeypatch):
    split = run_step("split_data", only(TINY, "split_data"), tracking_uri)
    split_id = split.stdout.split("split_data run ")[1].split(":")[0]
    first, second = train(split_id, tracking_uri, "1"), train(split_id, tracking_uri, "2")
    evaluate(monkeypatch, first)
    assert aliases() == {"champion": "1"}

    def fail(*args, **kwargs):
        raise RuntimeError("registry down")
    for target in ("register_model", "score"):       # before and after the version exists
        with monkeypatch.context() as patch:
            if target == "register_model":
                patch.setattr(registry.mlflow, "register_model", fail)
            else:
                patch.setattr(MlflowClient, "set_registered_model_alias", fail)
            with pytest.raises(RuntimeError, match="registry down"):
                evaluate(patch, second)
        runs = MlflowClient().search_runs(
            [e.experiment_id for e in MlflowClient().search_experiments()],
            filter_string="tags.step = 'evaluate'", order_by=["attributes.start_time DESC"])
        assert runs[0].info.status == "FAILED" and "test_dice" in runs[0].data.metrics
        assert aliases() == {"champion": "1"}                 # untouched

    evaluate(monkeypatch, second)                            # finishes the half-made version
    after = aliases()
    assert "2" in after.values() and set(after) <= {"champion", "challenger"}
    evaluate(monkeypatch, second)                            # and again: nothing changes
    assert aliases() == after
    assert len(MlflowClient().search_model_versions(f"name = '{NAME}'")) == 2


# One evaluation's registration, as its own process: imports first, then waits for "go" so
# that all of them reach the registry together.
PROMOTE = """
import pathlib, sys, time
from unet.tracking import registry
uri, dice, name, ready, go, split = sys.argv[1:]
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
p = registry.register_and_promote(uri, name, {"dice": float(dice)}, registry.Setting(split), "t",
                                  lambda champion: 0.5,
                                  registry.Floor({"all_background": 0.30}, margin=0.05))
print(p.version, p.alias)
"""


def race(evaluations: list[tuple[str, float, str]], folder) -> list[str]:
    """Runs each (model uri, Dice, split) registration in its own process, all let go at once;
    their outputs ("version alias")."""
    folder.mkdir()
    go = folder / "go"
    procs, ready = [], []
    for k, (uri, dice, split) in enumerate(evaluations):
        ready.append(folder / f"ready{k}")
        procs.append(subprocess.Popen(
            [sys.executable, "-c", PROMOTE, uri, str(dice), "race", str(ready[-1]), str(go),
             split], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT))
    deadline = time.monotonic() + 120
    while not all(p.exists() for p in ready):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    outputs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outputs.append(out.strip())
    return outputs


def test_one_model_evaluated_on_two_splits_at_once_settles(tracking_uri, tmp_path):
    """Before, the evaluation on one split could find its version's split tag overwritten by
    the other's and crash with a TypeError; results are now kept per setting."""
    from test_tracking import logged_model
    uri = logged_model(7)
    outputs = race([(uri, 0.8, "split-a"), (uri, 0.9, "split-b")] * 2, tmp_path / "race")
    assert set(outputs) == {"1 champion"}
    results = registry.results("race")
    assert list(results) == ["1"] and results["1"] == {
        "result:split-a:0.5:auto:auto": (0.8, 0.35), "result:split-b:0.5:auto:auto": (0.9, 0.35)}


def test_concurrent_evaluations_leave_champion_on_the_best(tracking_uri, tmp_path):
    from test_tracking import logged_model
    client = MlflowClient()
    best_so_far, seen = None, {}                  # model uri -> its Dice
    # Each round: two models, each evaluated by two processes at once (four in all). Round 1
    # holds a model under the floor (0.30 + 0.05), round 3 two that don't beat round 2's best.
    for n, dices in enumerate([(0.84, 0.00), (0.80, 0.90), (0.88, 0.86)]):
        uris = [logged_model(10 * n + i) for i in range(len(dices))]
        seen.update(zip(uris, dices))
        race([(uri, dice, "split-a") for uri, dice in 2 * list(zip(uris, dices))],
             tmp_path / f"round{n}")

        versions = client.search_model_versions("name = 'race'")
        by_source = {}
        for v in versions:
            by_source.setdefault(v.source, []).append(v)
        assert all(len(vs) == 1 for vs in by_source.values()), "a model was registered twice"
        assert len(versions) == len(seen)
        best_so_far = max(d for d in seen.values())
        holder = client.get_model_version_by_alias("race", "champion")
        assert float(holder.tags["test_dice"]) == best_so_far, f"round {n + 1}"
        for v in versions:
            assert v.tags["compared_with"] == "none" or v.tags["compared_with"].startswith("v")
            if float(v.tags["test_dice"]) <= 0.35:
                assert not v.aliases and v.tags["promotion"].startswith("not promoted")
    challenger = client.get_model_version_by_alias("race", "challenger")
    assert float(challenger.tags["test_dice"]) in (0.88, 0.86)
    assert challenger.tags["promotion"].startswith("challenger:")
    assert f"champion v{holder.version}'s 0.9000" in challenger.tags["promotion"]


@pytest.fixture(params=["sqlite", "server"])
def store(request, tmp_path, monkeypatch) -> str:
    """A private registry: a sqlite file, or a real `mlflow server` on 127.0.0.1 (aliases come
    back over HTTP as text), stopped by its PID at the end."""
    if request.param == "sqlite":
        yield request.getfixturevalue("tracking_uri")
        return
    import mlflow
    from test_outbox import Server
    server = Server(tmp_path)
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    mlflow.set_tracking_uri(server.url)
    try:
        yield server.url
    finally:
        mlflow.set_tracking_uri(None)
        server.stop()


FLOOR = registry.Floor({"all_background": 0.35}, margin=0.05)     # floor Dice 0.40


def promote(model_uri: str, dice: float, split: str, champion_here: float | None = None,
            threshold: float = 0.5):
    """One evaluation's registration on `split` at `threshold`; champion_here: the champion's
    Dice there, if it has to be scored."""
    def score_champion(uri: str) -> float:
        assert champion_here is not None, "the champion was scored though it need not be"
        return champion_here
    return registry.register_and_promote(model_uri, "trust", {"dice": dice},
                                         registry.Setting(split, threshold), "t",
                                         score_champion, FLOOR)


def test_champion_moves_only_to_a_version_that_beat_it_under_the_same_setting(store):
    """docs/promotion.md's example, and the steps that broke the rule before results were kept
    per setting (one `test_dice` tag a version, overwritten by each evaluation)."""
    from test_tracking import aliases as aliases_of
    from test_tracking import logged_model
    m1, m2, m3, m4 = (logged_model(seed) for seed in (1, 2, 3, 4))
    assert promote(m1, 0.90, "split-a").alias == "champion"
    second = promote(m2, 0.95, "split-b", champion_here=0.80)     # v1 scored again on B
    assert second.alias == "champion" and second.compared_with == ("1", 0.80)
    third = promote(m3, 0.30, "split-a")                           # below the floor
    assert third.alias is None and third.reason.startswith("not promoted")
    assert aliases_of("trust") == {"champion": "2"}                # v2 was not beaten on A
    # Above the floor on A, but below v2 scored on A: v1's 0.90 on A does not count.
    fourth = promote(m4, 0.60, "split-a", champion_here=0.70)
    assert fourth.alias == "challenger" and "champion v2's 0.7000" in fourth.reason
    assert aliases_of("trust") == {"champion": "2", "challenger": "4"}
    # The example one step further: v1 evaluated again on A beats v2's 0.70 there, but lost
    # to v2 on B (0.80 against 0.95). Before, champion went back to v1.
    again = promote(m1, 0.90, "split-a")               # v2's result on A is recorded: no scoring
    assert again.alias == "challenger" and "v2 beat it under another setting" in again.reason
    assert aliases_of("trust")["champion"] == "2"
    # v4 at another threshold beats v2 there (v2 scored at it), but v2 beat v4 at 0.5: kept.
    other = promote(m4, 0.95, "split-a", champion_here=0.70, threshold=0.4)
    assert other.alias == "challenger" and aliases_of("trust")["champion"] == "2"
    results = registry.results("trust")
    assert results["2"] == {"result:split-b:0.5:auto:auto": (0.95, 0.40),
                            "result:split-a:0.5:auto:auto": (0.70, 0.40),
                            "result:split-a:0.4:auto:auto": (0.70, 0.40)}
    assert results["4"]["result:split-a:0.5:auto:auto"] == (0.60, 0.40)   # not overwritten


def test_a_below_floor_re_evaluation_of_the_champion_keeps_its_result_under_its_setting(store):
    """Champion v1 at 0.90 (threshold 0.5) evaluated again at threshold 0.9: 0.30, below the
    floor. Before, that overwrote its 0.90 and the next evaluation at 0.5 handed champion to a
    0.50 model."""
    from test_tracking import aliases as aliases_of
    from test_tracking import logged_model
    m1, m2 = logged_model(1), logged_model(2)
    assert promote(m1, 0.90, "split-a").alias == "champion"
    low = promote(m1, 0.30, "split-a", threshold=0.9)
    assert low.alias is None and aliases_of("trust") == {"champion": "1"}
    weaker = promote(m2, 0.50, "split-a")
    assert weaker.alias == "challenger" and "champion v1's 0.9000" in weaker.reason
    assert aliases_of("trust") == {"champion": "1", "challenger": "2"}
    # At threshold 0.9 the 0.50 model beats v1's 0.30, but it lost to v1 at 0.5: v1 is kept.
    assert promote(m2, 0.50, "split-a", threshold=0.9).alias == "challenger"
    assert aliases_of("trust")["champion"] == "1"
