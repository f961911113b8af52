"""The UI pictures of README.md and docs/ui.md, taken from a real store with headless Chromium.

    python -m tools.screenshots STORE_URI OUT_DIR [--experiment unet-carvana] [--model
    unet-carvana]

Starts `mlflow server` on the store (127.0.0.1, a free port), opens the experiment's run list,
the train run's model metrics and system metrics, and the champion's version page (its model
card), and writes one PNG each into OUT_DIR. Needs Debian's `chromium`.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow import MlflowClient

from unet.tracking import ui

CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", "--window-size=1440,900",
            "--virtual-time-budget=90000"]   # charts load lazily


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pages(store: str, experiment: str, model: str) -> dict[str, str]:
    """file name -> UI path (after http://host:port/#)."""
    client = MlflowClient(store)
    exp = client.get_experiment_by_name(experiment)
    train = client.search_runs([exp.experiment_id], "tags.step = 'train'",
                               order_by=["attributes.start_time DESC"], max_results=1)[0]
    version = client.get_model_version_by_alias(model, "champion").version
    runs = f"/experiments/{exp.experiment_id}/runs/{train.info.run_id}"
    return {"ui-runs.png": f"/experiments/{exp.experiment_id}/runs",
            "ui-train-metrics.png": f"{runs}/model-metrics",
            "ui-system-metrics.png": f"{runs}/system-metrics",
            "ui-model-card.png": f"/models/{model}/versions/{version}"}


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("store")
    parser.add_argument("out", type=Path)
    parser.add_argument("--experiment", default="unet-carvana")
    parser.add_argument("--model", default="unet-carvana")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = ui.start_server(ui.server_command(args.store, "127.0.0.1", port, None))
    try:
        url = f"http://127.0.0.1:{port}"
        ui.wait_until_up(server, f"{url}/health")
        for name, path in pages(args.store, args.experiment, args.model).items():
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([*CHROMIUM, f"--user-data-dir={profile}",
                                f"--screenshot={args.out / name}", f"{url}/#{path}"],
                               check=True, capture_output=True, timeout=120)
            print(args.out / name, file=sys.stderr)
    finally:
        ui.stop_server(server)


if __name__ == "__main__":
    main()
