"""Interruptions of a real training process: kill -9 then resume, Ctrl-C, a non-finite loss."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import mlflow
import pytest
import torch
from conftest import ROOT, mlflow_run
from mlflow.tracking import MlflowClient
from test_bad_input import error_lines, run_step
from torch import nn

from unet.data.check import validate_folder
from unet.data.pairs import SegmentationDataset
from unet.data.synthetic import generate
from unet.errors import UserError
from unet.images.transforms import eval_transform
from unet.network.model import UNet
from unet.network.precision import choose_precision
from unet.training import engine
from unet.training.schedule import EpochSampler, Schedule

# Big enough for val Dice to mean something after 3 epochs, small enough for ~2 s epochs.
SPLIT = {"num_images": "48", "synthetic_height": "64", "synthetic_width": "96",
         "val_fraction": "0.25", "test_fraction": "0.1"}
TRAIN = {"epochs": "3", "image_height": "64", "image_width": "96", "features": "8,16,32",
         "batch_size": "4", "num_workers": "0", "lr": "3e-3"}


def split_run(tracking_uri: str) -> str:
    result = run_step("split_data", SPLIT, tracking_uri)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split("split_data run ")[1].split(":")[0]


def start(cmd: list[str], tracking_uri: str) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def read_until(proc: subprocess.Popen, prefix: str, timeout: float = 240) -> list[str]:
    """Lines of proc's stdout up to the first starting with prefix (kills proc on timeout)."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith(prefix):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"no line {prefix!r}: {''.join(lines)}{proc.stderr.read()[-2000:]}")


def train_cmd(split_id: str, **extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "steps.train", "--split_run_id", split_id]
    for key, value in {**TRAIN, **extra}.items():
        cmd += [f"--{key}", value]
    return cmd


def run_id_of(lines: list[str]) -> str:
    return next(line.split()[2].rstrip(":") for line in lines if line.startswith("train run "))


def checkpoint_files(run_id: str) -> list:
    local = sorted((ROOT / "checkpoints" / run_id).glob("*.pt"))
    logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints")
    return local + sorted(p for p in __import__("pathlib").Path(logged).glob("*.pt"))


def test_kill_9_in_epoch_2_then_resume_finishes_like_an_uninterrupted_run(tracking_uri):
    split_id = split_run(tracking_uri)
    whole = start(train_cmd(split_id), tracking_uri)
    whole_id = run_id_of(read_until(whole, "train run "))
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-2000:]

    killed = start(train_cmd(split_id), tracking_uri)
    killed_id = run_id_of(read_until(killed, "epoch 1/3:"))   # epoch 2 starts now
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert MlflowClient().get_run(killed_id).info.status == "RUNNING"   # nobody could close it

    resumed = mlflow_run("train", {**TRAIN, "split_run_id": split_id, "resume_from": killed_id},
                         tracking_uri)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {killed_id} after epoch 1" in resumed.stdout
    resumed_id = run_id_of(resumed.stdout.splitlines())
    assert MlflowClient().get_run(resumed_id).data.tags["resumed_from"] == killed_id

    def val_dice(run_id):
        return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, "val_dice")}
    assert sorted(val_dice(resumed_id)) == [2, 3]          # continues at epoch 2, ends at 3
    assert sorted(val_dice(killed_id)) == [1]
    final, reference = val_dice(resumed_id)[3], val_dice(whole_id)[3]
    assert reference > 0.5, reference                      # a Dice that means something
    assert final == reference                              # the same run: bitwise on CPU
    ends = [torch.load(ROOT / "checkpoints" / run_id / "last.pt", weights_only=True)
            for run_id in (whole_id, resumed_id)]
    assert ends[0]["average"]["updates"] == ends[1]["average"]["updates"] > 0
    for state in (lambda end: end["model"], lambda end: end["kept_model"],
                  lambda end: end["average"]["model"]):     # trained, kept, averaged weights
        assert state(ends[0]).keys() == state(ends[1]).keys()
        for name, tensor in state(ends[0]).items():
            assert torch.equal(tensor, state(ends[1])[name]), name
    assert ends[0]["optimizer"]["state"].keys() == ends[1]["optimizer"]["state"].keys()
    for k, moments in ends[0]["optimizer"]["state"].items():
        assert all(torch.equal(v, ends[1]["optimizer"]["state"][k][n]) for n, v in moments.items())
    assert torch.equal(ends[0]["rng"]["torch"], ends[1]["rng"]["torch"])

    for run_id, epoch in ((whole_id, 3), (killed_id, 1), (resumed_id, 3)):
        files = checkpoint_files(run_id)
        assert len(files) == 2
        for path in files:                                   # every checkpoint ever written loads
            assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] == epoch


def test_ctrl_c_under_mlflow_run_saves_a_checkpoint_and_marks_the_run_killed(tracking_uri):
    split_id = split_run(tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "-e", "train",
           "--env-manager", "local", "-P", f"split_run_id={split_id}"]
    for key, value in TRAIN.items():
        cmd += ["-P", f"{key}={value}"]
    proc = start(cmd, tracking_uri)
    run_id = run_id_of(read_until(proc, "epoch 1/3:"))
    os.killpg(proc.pid, signal.SIGINT)                       # what Ctrl-C in a terminal does
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode != 0 and "Traceback" not in stderr.split("interrupted:")[0][-500:]
    assert f"interrupted: train run {run_id} stopped during epoch 2/3" in stderr
    # The step marks its run KILLED; `mlflow run` 3.17 then overwrites that with FAILED (its
    # _maybe_set_run_terminated passes a string to RunStatus.is_terminated): the tag remains.
    run = MlflowClient().get_run(run_id)
    assert run.data.tags["interrupted"] == "true" and run.info.status in ("KILLED", "FAILED")
    for path in checkpoint_files(run_id):
        assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] == 1


def test_ctrl_c_of_the_step_itself_exits_130(tracking_uri):
    split_id = split_run(tracking_uri)
    proc = start(train_cmd(split_id), tracking_uri)
    run_id = run_id_of(read_until(proc, "epoch 1/3:"))
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    lines = proc.stderr.read().splitlines()
    assert [line for line in lines if line.startswith("interrupted: ")] == [
        next(line for line in lines if line.startswith("interrupted: "))]
    assert "Traceback" not in "\n".join(lines)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED" and run.data.tags["interrupted"] == "true"
    assert torch.load(ROOT / "checkpoints" / run_id / "last.pt", weights_only=True)["epoch"] == 1


class NaNAfter(nn.BCEWithLogitsLoss):
    """BCE that turns NaN after `calls` batches."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def forward(self, logits, target):
        self.calls -= 1
        loss = super().forward(logits, target)
        return loss * float("nan") if self.calls < 0 else loss


def tiny_trainer(folder, checkpoint) -> tuple[engine.Trainer, torch.utils.data.DataLoader]:
    """A Trainer of 3 epochs over 8 generated 32x48 pairs, and its loader."""
    generate(folder, 8, 32, 48, seed=1)
    pairs = validate_folder(folder / "train", folder / "train_masks").pairs
    data = SegmentationDataset(pairs, (32, 48), eval_transform())
    precision = choose_precision("fp32", "cpu")
    loader = engine.make_loader(data, 4, 0, 0, precision, EpochSampler(len(data), 8, seed=0))
    return engine.Trainer(UNet(features=(4, 8)), Schedule(1e-3, 3, len(loader)), precision,
                          checkpoint), loader


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, loader = tiny_trainer(tmp_path, tmp_path / "last.pt")
    trainer.loss_fn = NaNAfter(calls=len(loader) + len(loader) + 1)   # epoch 1 + its val, then NaN
    epochs = []
    with pytest.raises(engine.NonFiniteLoss, match="loss is nan at epoch 2/3"):
        for result in trainer.fit(loader, loader):
            epochs.append(result.epoch)
    assert epochs == [1]
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_exploding_lr_fails_the_run_with_one_line(tracking_uri):
    split_id = split_run(tracking_uri)
    result = subprocess.run(train_cmd(split_id, lr="1e30", epochs="2"), cwd=ROOT,
                            env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert line.startswith("error: training stopped:") and "nan" in line and "lower lr" in line
    run_id = run_id_of(result.stdout.splitlines())
    assert MlflowClient().get_run(run_id).info.status == "FAILED"
    state = torch.load(ROOT / "checkpoints" / run_id / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    trainer, loader = tiny_trainer(tmp_path, tmp_path / "ckpt" / "last.pt")
    saves, real_save = [], torch.save

    def save_until_the_disk_fills(state, f):
        saves.append(state["epoch"])
        if state["epoch"] == 2:                  # half the bytes, then ENOSPC
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(state, f)
    monkeypatch.setattr(engine.torch, "save", save_until_the_disk_fills)
    with pytest.raises(UserError) as e:
        list(trainer.fit(loader, loader))
    assert saves == [0, 1, 2]
    assert str(e.value) == (f"could not write the checkpoint of epoch 2 to {tmp_path}/ckpt/last.pt"
                            f" (No space left on device); the one there (epoch 1) is intact: "
                            f"free space and resume from it")
    monkeypatch.undo()
    assert torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)["epoch"] == 1
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["last.pt"]   # no temp left


def test_an_unreadable_local_checkpoint_falls_back_to_the_logged_one(tracking_uri, tmp_path,
                                                                    capsys):
    from unet.tracking import runs
    good = tmp_path / "logged" / "last.pt"
    good.parent.mkdir()
    torch.save({"epoch": 4}, good)
    with mlflow.start_run() as run:
        mlflow.set_tag("step", "train")
        mlflow.log_artifact(str(good), "checkpoints")
    local = tmp_path / "checkpoints" / run.info.run_id / "last.pt"
    local.parent.mkdir(parents=True)
    local.write_bytes(b"PK\x03\x04 torn")             # a truncated zip, as torch.save writes
    state = runs.load_checkpoint(run.info.run_id, tmp_path / "work", tmp_path / "checkpoints")
    assert state == {"epoch": 4}
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"warning: parameter resume_from={run.info.run_id}: {local} is not a "
                   f"readable checkpoint (RuntimeError); using the checkpoint the run logged "
                   f"instead"]
