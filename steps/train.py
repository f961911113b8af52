"""Entry point train: fit a U-Net on a split_data run's split; log the plan, metrics,
checkpoints and the best model (unet/tracking/training.py).

With nproc > 1 this process only launches the training in nproc processes under torchrun;
rank 0 of those logs to the run, the others only train.
"""
import contextlib
import tempfile
from pathlib import Path

from unet.network.precision import choose_precision
from unet.tracking import cli, runs, training
from unet.training import distributed


def train() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inputs = training.handed_off() or training.fetch(cli.overrides("train"), Path(tmp))
        if inputs.cfg.nproc > 1 and not distributed.launched():
            training.launch(inputs, "steps.train", Path(tmp))
            return
        precision = choose_precision(inputs.cfg.precision, distributed.device(),
                                     inputs.cfg.memory_format)
        distributed.init(precision.device.type)
        try:
            # Only the main process has a run: the others never touch MLflow.
            with (runs.step_run("train", inputs.cfg.system_metrics) if distributed.is_main()
                  else contextlib.nullcontext()) as run:
                training.fit(inputs, precision, run)
        finally:
            distributed.finish()


if __name__ == "__main__":
    cli.main(train)
