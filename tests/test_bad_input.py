"""A user's mistake stops a step with one line naming the file or parameter; no traceback."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT, TINY, mlflow_run, only

from unet.data.synthetic import generate


def run_step(step: str, args: dict[str, str], tracking_uri: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", f"steps.{step}"]
    for key, value in args.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr + result.stdout
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_missing_mask_stops_mlflow_run_with_one_line(tracking_uri, tmp_path):
    stems = generate(tmp_path, 8, 32, 48, seed=0)
    (tmp_path / "train_masks" / f"{stems[3]}_mask.gif").unlink()
    result = mlflow_run("split_data", {"data_dir": str(tmp_path)}, tracking_uri)
    assert result.returncode != 0
    (line,) = error_lines(result)
    assert "1 bad file(s)" in line and f"train/{stems[3]}.jpg (image without mask)" in line
    assert "data_report.txt" in line


def test_unreadable_image_is_named(tracking_uri, tmp_path):
    stems = generate(tmp_path, 8, 32, 48, seed=0)
    (tmp_path / "train" / f"{stems[2]}.jpg").write_bytes(b"not a jpeg at all")
    result = run_step("split_data", {"data_dir": str(tmp_path)}, tracking_uri)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert f"{stems[2]}.jpg (unreadable or truncated image)" in line


def test_empty_folder_is_named(tracking_uri, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train_masks").mkdir()
    result = run_step("split_data", {"data_dir": str(tmp_path)}, tracking_uri)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "no images" in line and str(tmp_path / "train") in line


def test_bad_parameter_and_wrong_run_id_are_named(tracking_uri, tmp_path):
    result = run_step("split_data", {"val_fraction": "0.7", "test_fraction": "0.4"}, tracking_uri)
    (line,) = error_lines(result)
    assert "val_fraction + test_fraction" in line
    split = run_step("split_data", only(TINY, "split_data"), tracking_uri)
    assert split.returncode == 0, split.stderr
    split_id = split.stdout.split("split_data run ")[1].split(":")[0]
    result = run_step("evaluate", {"train_run_id": split_id}, tracking_uri)
    (line,) = error_lines(result)
    assert f"train_run_id={split_id}" in line and "'split_data' run" in line
    result = run_step("train", {"split_run_id": "0123456789abcdef"}, tracking_uri)
    (line,) = error_lines(result)
    assert "split_run_id=0123456789abcdef: no such run" in line
    result = run_step("train", {"split_run_id": split_id, "lr": "-1"}, tracking_uri)
    (line,) = error_lines(result)
    assert "parameter lr=-1.0" in line
    result = run_step("train", {**only(TINY, "train"), "split_run_id": split_id,
                                "resume_from": split_id}, tracking_uri)
    (line,) = error_lines(result)
    assert f"resume_from={split_id}: that run is a 'split_data' run" in line
    result = run_step("evaluate", {}, tracking_uri)
    (line,) = error_lines(result)
    assert "parameter train_run_id is missing" in line


def test_a_failing_step_stops_main_without_a_traceback(tracking_uri, tmp_path):
    result = mlflow_run("main", {"data_dir": str(tmp_path / "missing")}, tracking_uri)
    assert result.returncode != 0
    child, parent = error_lines(result)
    assert "folder not found" in child and str(tmp_path / "missing") in child
    assert parent == "error: step split_data failed (its error is printed above)"
