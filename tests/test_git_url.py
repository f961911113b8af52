"""Runs straight from a git URL (`git daemon` on 127.0.0.1 serving this code), and main's reuse
of finished steps keyed on the commit."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from conftest import ROOT, TINY, background, free_port, mlflow_run, only
from mlflow.tracking import MlflowClient

COMMIT_TAG = "mlflow.source.git.commit"
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


def commit_working_tree(repo: Path) -> str:
    """A new repository holding this checkout's files as they are now (tracked and untracked,
    not ignored), so the served code is the code under test; returns the commit's full sha."""
    files = git(ROOT, "ls-files", "--cached", "--others", "--exclude-standard").splitlines()
    for name in files:
        if (ROOT / name).is_file():      # listed but deleted in the working tree: skip
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the code under test")
    return git(repo, "rev-parse", "HEAD")


def lines_of(stdout: str) -> dict[str, str]:
    """main's summary: step -> "ran" | "reused"."""
    return {line.split()[0]: line.split()[1] for line in stdout.splitlines()
            if line.startswith("  ") and len(line.split()) >= 3 and line.split()[2] == "run"}


def test_runs_from_a_git_url_carry_the_commit_and_reuse_only_at_that_commit(tracking_uri,
                                                                            tmp_path):
    served = tmp_path / "served"
    repo = served / "unet"
    repo.mkdir(parents=True)
    first = commit_working_tree(repo)
    port = free_port()
    url = f"git://127.0.0.1:{port}/unet"
    daemon = ["git", "daemon", "--reuseaddr", f"--base-path={served}", "--export-all",
              "--listen=127.0.0.1", f"--port={port}"]

    def serving() -> bool:
        return subprocess.run(["git", "ls-remote", url], capture_output=True).returncode == 0

    with background(daemon, tmp_path / "daemon.log", serving):
        result = mlflow_run("split_data", only(TINY, "split_data"), tracking_uri,
                            project=url, version=first)
        assert result.returncode == 0, result.stderr[-3000:]
        (split,) = MlflowClient().search_runs(["0"])
        assert split.data.tags[COMMIT_TAG] == first

        # main at the same commit reuses that split, runs the rest, all tagged with the commit
        result = mlflow_run("main", TINY, tracking_uri, project=url, version=first)
        assert result.returncode == 0, result.stderr[-3000:]
        assert lines_of(result.stdout) == {"split_data": "reused", "train": "ran",
                                           "evaluate": "ran"}
        assert f"split_data  reused  run {split.info.run_id}" in result.stdout
        runs = MlflowClient().search_runs(["0"])
        assert len(runs) == 4 and {r.data.tags[COMMIT_TAG] for r in runs} == {first}

        # another commit: the same parameters, but nothing from the first commit is reused
        (repo / "README.md").write_text((repo / "README.md").read_text() + "\nA change.\n")
        git(repo, "commit", "-q", "-am", "another commit")
        second = git(repo, "rev-parse", "HEAD")
        result = mlflow_run("main", TINY, tracking_uri, project=url, version=second)
        assert result.returncode == 0, result.stderr[-3000:]
        assert lines_of(result.stdout) == {"split_data": "ran", "train": "ran", "evaluate": "ran"}
        newer = [r for r in MlflowClient().search_runs(["0"]) if r.data.tags[COMMIT_TAG] == second]
        assert len(newer) == 4    # main and its three steps, all at the second commit
