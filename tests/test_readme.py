"""The README's five jobs (quick start, your own folder, predict a folder, serve, look at it),
each run by its command as the README writes it, in a fresh repository of this checkout.

Only sizes are added to the commands (fewer images, a tiny network, two epochs: see SMALL),
and machine-specific values replaced (the folder the README fetches to, the ports), so
that the five run in minutes; what each prints and writes is checked."""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, TINY, answers, background, free_port
from test_git_url import commit_working_tree

# What the test adds to main's commands: a small run of the same pipeline.
SMALL = {**TINY, "num_images": "24"}


def readme_commands() -> dict[str, list[str]]:
    """Section heading -> the commands of its ```bash blocks (a line continued with a
    backslash is one command; comments dropped)."""
    sections, heading = {}, ""
    for block_or_heading in re.finditer(r"^## ([^\n]+)$|^```bash\n(.*?)^```", ROOT.joinpath(
            "README.md").read_text(), re.M | re.S):
        if block_or_heading.group(1):
            heading = block_or_heading.group(1).strip()
            continue
        text = block_or_heading.group(2).replace("\\\n", " ")
        sections.setdefault(heading, []).extend(
            line.split(" #")[0].strip() for line in text.splitlines() if line.strip())
    return sections


def run(command: str, cwd: Path, env: dict, timeout: float = 900) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    return result.stdout


def small(command: str) -> str:
    return command + "".join(f" -P {k}={shlex.quote(v)}" for k, v in SMALL.items())


def test_the_readme_shows_the_five_jobs_one_command_each():
    jobs = readme_commands()
    assert jobs["Set up"] == ['python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]"']
    assert jobs["Tests"] == ["python -m pytest -q"]
    assert [c.split(" -P")[0] for c in jobs["Quick start"]] == [
        "mlflow run . --env-manager local --experiment-name unet-carvana"]
    own = jobs["Your own folder, predict a folder, serve"]
    assert [c.split()[:4] for c in own] == [["mlflow", "run", ".", "--env-manager"],
                                            ["mlflow", "run", ".", "-e"],
                                            ["mlflow", "models", "serve", "-m"]]
    assert jobs["Look at it"] == ["python -m steps.ui"]


@pytest.mark.slow
def test_the_five_jobs_run_in_a_fresh_clone(tmp_path):
    jobs = readme_commands()
    clone = tmp_path / "clone"
    clone.mkdir()
    commit_working_tree(clone)
    # As on a new machine: no tracking URI set, so runs go to ./mlflow.db of the clone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}

    # 1. Quick start: the pipeline on the built-in data, a registered champion.
    (quick,) = jobs["Quick start"]
    out = run(small(quick), clone, env)
    assert "=== pipeline summary ===" in out and "model unet-carvana version 1" in out, out[-2000:]
    assert (clone / "mlflow.db").is_file()

    # 2. Your own folder: label-image tiles of fluorescence fields, as the README's DSB tiles;
    # run as written (the plan sizes it: about a minute), as predict and serve need a champion.
    own, predict, serve = jobs["Your own folder, predict a folder, serve"]
    from tools.datasets import labelled_tiles_folder
    data = tmp_path / "dsb"
    labelled_tiles_folder(data / "tiles", seed=7, fields=2)
    (data / "field" / "images").mkdir(parents=True)
    for tile in sorted((data / "tiles" / "images").iterdir())[:3]:
        shutil.copy(tile, data / "field" / "images" / tile.name)
    out = run(own.replace("/tmp/dsb", str(data)), clone, env)
    assert "model nuclei version 1, aliases: champion" in out, out[-2000:]

    # 3. Predict a folder: one mask per image.
    run(predict.replace("/tmp/dsb", str(data)), clone, env)
    written = sorted(p.name for p in (data / "predicted").glob("*_mask.png"))
    assert written == sorted(f"{p.stem}_mask.png" for p in (data / "field" / "images").iterdir())
    # label masks: a model of objects, whose label images and object table come beside
    labelled = sorted(p.name for p in (data / "predicted").glob("*_labels.png"))
    assert labelled == sorted(f"{p.stem}_labels.png" for p in (data / "field" / "images").iterdir())
    assert (data / "predicted" / "objects.csv").read_text().startswith("image,label,area,")

    # 4. Serve: the champion answers a POST of a base64 image with a mask.
    port = free_port()
    command = shlex.split(serve.replace("-p 5001", f"-p {port}"))
    url = f"http://127.0.0.1:{port}"
    tiff = next((data / "field" / "images").iterdir()).read_bytes()    # 16-bit, as kept
    with background(command, tmp_path / "serve.log", answers(f"{url}/ping"), timeout=300,
                    cwd=clone, env=env):
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(tiff).decode()]]}}
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    (row,) = answer["predictions"]
    assert (row["height"], row["width"]) == (64, 64) and row["mask"] and row["labels"]

    # 5. Look at it: the UI on the clone's store.
    (look,) = jobs["Look at it"]
    port, log = free_port(), tmp_path / "ui.log"
    up = answers(f"http://127.0.0.1:{port}/health")
    with background([sys.executable, *shlex.split(look)[1:], "--port", str(port)], log,
                    lambda: up() and "Ctrl-C to stop" in log.read_text(), cwd=clone, env=env):
        pass
    assert (f"MLflow UI for sqlite:///{clone / 'mlflow.db'}\n  local:  http://127.0.0.1:{port}"
            in log.read_text())
